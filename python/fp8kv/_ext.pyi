# Type stubs of fp8kv._ext (generated with `python -m nanobind.stubgen -m fp8kv._ext`, exception
# classes written out by hand since they are created at import).
"""
fp8kv native extension: FP8 paged KV cache and attention (use the fp8kv package, not this module)
"""

from collections.abc import Sequence

import numpy
from numpy.typing import NDArray

class Error(RuntimeError):
    """Base class of every error fp8kv raises."""

class InvalidArgument(Error, ValueError):
    """An argument broke a documented rule (shape, dtype, device, range); the message names it."""

class CacheFullError(Error):
    """The paged cache has no free block; nothing was changed."""

class Unsupported(Error, NotImplementedError):
    """Not supported by this build or device."""

class FileError(Error, OSError):
    """A file (config.json, checkpoint) is missing, truncated or inconsistent."""



class ModelShape:
    """
    The attention-relevant shape of a decoder-only model (layers, heads, head_dim, dtype).
    """

    def __init__(self) -> None: ...

    @property
    def name(self) -> str: ...

    @name.setter
    def name(self, arg: str, /) -> None: ...

    @property
    def num_layers(self) -> int: ...

    @num_layers.setter
    def num_layers(self, arg: int, /) -> None: ...

    @property
    def num_q_heads(self) -> int: ...

    @num_q_heads.setter
    def num_q_heads(self, arg: int, /) -> None: ...

    @property
    def num_kv_heads(self) -> int: ...

    @num_kv_heads.setter
    def num_kv_heads(self, arg: int, /) -> None: ...

    @property
    def head_dim(self) -> int: ...

    @head_dim.setter
    def head_dim(self, arg: int, /) -> None: ...

    @property
    def dtype(self) -> str:
        """The model's activation dtype: 'bfloat16', 'float16' or 'float32'."""

    @dtype.setter
    def dtype(self, arg: str, /) -> None: ...

    @property
    def max_position(self) -> int: ...

    @max_position.setter
    def max_position(self, arg: int, /) -> None: ...

    def __repr__(self) -> str: ...

def model_preset(name: str) -> ModelShape:
    """
    A built-in model shape: 'qwen3-0.6b', 'qwen3-8b', 'llama-3.1-8b', 'llama-3.1-70b'.
    """

def model_shape_from_config(config_json_path: str) -> ModelShape:
    """
    Reads a Hugging Face config.json (layers, heads, head_dim, dtype, max positions).
    """

def resolve_model_shape(name_or_path: str) -> ModelShape:
    """
    A preset name, a config.json path, or a model directory holding config.json.
    """

class KvPlan:
    """
    How many KV tokens fit in a memory budget; byte counts equal what KvCache allocates.
    """

    @property
    def kv_cache_dtype(self) -> str: ...

    @property
    def kv_scales(self) -> str: ...

    @property
    def block_size(self) -> int: ...

    @property
    def budget_bytes(self) -> int: ...

    @property
    def bytes_per_token(self) -> int: ...

    @property
    def bytes_per_block(self) -> int: ...

    @property
    def token_scale_bytes_per_token(self) -> int: ...

    @property
    def fixed_bytes(self) -> int: ...

    @property
    def num_blocks(self) -> int: ...

    @property
    def max_tokens(self) -> int: ...

    @property
    def total_bytes(self) -> int: ...

    def max_sequences(self, context: int) -> int:
        """Sequences of `context` tokens that fit at once."""

    def __repr__(self) -> str: ...

def plan_kv_cache(model: ModelShape, budget: int | str, kv_cache_dtype: str = 'fp8', kv_scales: str = 'per_tensor', block_size: int = 16) -> KvPlan:
    """
    Plans a paged KV cache for `model` in `budget` bytes (an int, or a string such as '40GiB').
    """

def parse_memory_size(text: str) -> int:
    """'40GiB', '512MiB', '1.5GB', '1073741824' -> bytes."""

def kv_cache_dtype_name(kv_cache_dtype: str, model_dtype: str = 'bfloat16') -> str:
    """
    Canonical storage name of a vLLM-style --kv-cache-dtype ('auto', 'fp8', 'fp8_e4m3', 'fp8_e5m2', ...).
    """

def check_cache_args(num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int, block_size: int = 16, kv_cache_dtype: str = 'fp8', kv_scales: str = 'per_tensor', device: str = 'cpu', model_dtype: str = 'bfloat16') -> None: ...

class KvCache:
    """
    A paged KV cache that owns its memory (every layer's K/V pools, per-token scales, static scales) and its block allocator.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int, block_size: int = 16, kv_cache_dtype: str = 'fp8', kv_scales: str = 'per_tensor', device: str = 'cpu', model_dtype: str = 'bfloat16') -> None: ...

    @staticmethod
    def from_plan(plan: KvPlan, model: ModelShape, device: str = 'cpu') -> KvCache:
        """
        Allocates the cache a plan describes (allocated_bytes == plan.total_bytes).
        """

    @property
    def num_layers(self) -> int: ...

    @property
    def num_kv_heads(self) -> int: ...

    @property
    def head_dim(self) -> int: ...

    @property
    def block_size(self) -> int: ...

    @property
    def sub_block_size(self) -> int:
        """
        Tokens per head-major run of a block: block_size, or 16 for FP8 blocks of more than 16 tokens.
        """

    @property
    def num_blocks(self) -> int: ...

    @property
    def kv_cache_dtype(self) -> str: ...

    @property
    def kv_scales(self) -> str: ...

    @property
    def device(self) -> str: ...

    @property
    def allocated_bytes(self) -> int: ...

    @property
    def num_free_blocks(self) -> int: ...

    def create_sequence(self) -> int:
        """A new, empty sequence; returns its id."""

    def append_tokens(self, seq: int, num_tokens: int) -> NDArray[numpy.int64]:
        """
        Grows `seq` by `num_tokens` and returns their slots (int64 NumPy array, the slot_mapping of write_kv). All or nothing: raises CacheFullError and changes nothing when blocks run out.
        """

    def fork(self, seq: int) -> int:
        """
        A new sequence sharing all of `seq`'s blocks (copy-on-write on the next append).
        """

    def free_sequence(self, seq: int) -> None: ...

    def length(self, seq: int) -> int: ...

    def __contains__(self, seq: int) -> bool: ...

    def blocks_needed(self, seq: int, num_tokens: int) -> int: ...

    def can_append(self, seq: int, num_tokens: int) -> bool: ...

    def ref_count(self, block: int) -> int: ...

    def slot_of(self, seq: int, index: int) -> int: ...

    def block_table(self, seq: int) -> NDArray[numpy.int32]:
        """The blocks of `seq`, in token order (int32 NumPy array)."""

    def block_tables(self, seqs: Sequence[int], max_blocks: int | None = None) -> NDArray[numpy.int32]:
        """
        Block tables of `seqs` as one int32 NumPy array [batch, max_blocks], padded with block 0.
        """

    def seq_lens(self, seqs: Sequence[int]) -> NDArray[numpy.int32]:
        """Lengths of `seqs` as an int32 NumPy array [batch]."""

    def set_scales(self, layer: int, k_scales: Sequence[float], v_scales: Sequence[float]) -> None:
        """
        Sets a layer's static K and V scales (per_tensor: 1 value each, per_head: num_kv_heads). Convention: stored = fp8(x / scale), x ~= stored * scale.
        """

    def k_pool(self, layer: int) -> object:
        """
        Layer's K pool as storage-width unsigned ints: [num_blocks, num_kv_heads, block_size, head_dim], or [num_blocks, block_size // sub_block_size, num_kv_heads, sub_block_size, head_dim] when sub_block_size < block_size.
        """

    def v_pool(self, layer: int) -> object:
        """
        Layer's V pool, shaped like k_pool.
        """

    def k_token_scales(self, layer: int) -> object | None:
        """
        per_token caches: K scales float32 in the pool's order ([num_blocks, num_kv_heads, block_size], or [num_blocks, block_size // sub_block_size, num_kv_heads, sub_block_size]); else None.
        """

    def v_token_scales(self, layer: int) -> object | None:
        """
        per_token caches: V scales, shaped like k_token_scales; else None.
        """

def write_kv(cache: KvCache, layer: int, key: NDArray, value: NDArray, slot_mapping: NDArray, positions: NDArray | None = None, rope: NDArray | None = None, stream: int = 0) -> None: ...

def paged_decode(cache: KvCache, layer: int, q: NDArray, block_tables: NDArray, seq_lens: NDArray, out: NDArray, softmax_scale: float, stream: int = 0) -> None: ...

def prefill(q: NDArray, k: NDArray, v: NDArray, cu_seqlens_q: NDArray, cu_seqlens_k: NDArray, out: NDArray, softmax_scale: float, causal: bool = True, q_descale: NDArray | None = None, k_descale: NDArray | None = None, v_descale: NDArray | None = None, fp8_dtype: str | None = None, two_level_accumulation: bool = True, one_level_max_keys: int | None = None, stream: int = 0) -> None: ...

def paged_prefill(cache: KvCache, layer: int, q: NDArray, block_tables: NDArray, cu_seqlens_q: NDArray, seq_lens: NDArray, out: NDArray, softmax_scale: float, q_descale: NDArray | None = None, fp8_dtype: str | None = None, two_level_accumulation: bool = True, one_level_max_keys: int | None = None, stream: int = 0) -> None: ...

def rope_quantize(cache: KvCache, layer: int, q: NDArray, k: NDArray, v: NDArray, positions: NDArray, rope: NDArray, slot_mapping: NDArray, q_out: NDArray, q_scale: NDArray, incoherent_processing: bool = False, hadamard_seed: int = 1592614637, stream: int = 0) -> None: ...

def quantize(x: NDArray, out: NDArray, kv_scales: str, scales: NDArray, fp8_dtype: str) -> None: ...

def quantize_heads(x: NDArray, out: NDArray, scale: NDArray, incoherent_processing: bool = False, hadamard_seed: int = 1592614637, stream: int = 0) -> None: ...

def dequantize(x: NDArray, out: NDArray, kv_scales: str, scales: NDArray, fp8_dtype: str) -> None: ...

def amax(x: NDArray, per_head: bool = False) -> list[float]: ...

def scale_from_amax(amax: float, kv_cache_dtype: str = 'fp8') -> float: ...

def rope_table(max_position: int, rotary_dim: int, theta: float = 10000.0, llama3_factor: float = 0.0, llama3_low_freq_factor: float = 1.0, llama3_high_freq_factor: float = 4.0, llama3_original_max_position: int = 8192) -> NDArray[numpy.float32]: ...

class DecodePlan:
    def __init__(self, cache: KvCache, layer: int, q: NDArray, block_tables: NDArray, seq_lens: NDArray, out: NDArray, host_seq_lens: Sequence[int], headroom_tokens: int = 0, max_splits: int = 0) -> None: ...

    def run(self, cache: KvCache, layer: int, q: NDArray, block_tables: NDArray, seq_lens: NDArray, out: NDArray, softmax_scale: float, stream: int = 0) -> None: ...

    @property
    def batch(self) -> int: ...

    @property
    def chunk_tokens(self) -> int | None: ...

    @property
    def num_work_items(self) -> int | None: ...

    @property
    def workspace_bytes(self) -> int | None: ...

    def num_splits(self, sequence: int) -> int | None: ...

def check_errors() -> None: ...

def cuda_available() -> bool: ...
