"""fp8kv: an FP8 (E4M3/E5M2) paged KV cache and attention that reads it directly.

Every function takes DLPack-capable arrays (PyTorch, NumPy, CuPy, ...) without copying them:
host arrays run the CPU reference, CUDA arrays run the Hopper kernels on the caller's current
stream (PyTorch's ``torch.cuda.current_stream()`` for torch tensors, CuPy's current stream for
CuPy arrays, or ``stream=`` given explicitly). Outputs are allocated in the framework of the
inputs, or written into ``out=``. A wrong device, dtype, shape or a non-contiguous array raises
:class:`InvalidArgument` (a ``ValueError``) naming the argument; nothing is copied silently.

FP8 data: ``torch.float8_e4m3fn`` / ``torch.float8_e5m2`` tensors are accepted as they are (they
cross as byte views). Frameworks without float8 types pass the codes as uint8 arrays together with
``fp8_dtype="fp8_e4m3"`` or ``"fp8_e5m2"``.

Dtype names follow vLLM's ``--kv-cache-dtype``: ``auto`` (the model's dtype), ``fp8`` (=
``fp8_e4m3``), ``fp8_e4m3``, ``fp8_e5m2``; ``bf16`` / ``fp16`` for explicit 16-bit storage. Scale
convention: ``stored = fp8(x / scale)``, ``x ~= stored * scale``, ``scale = max(amax, 1e-6) / fp8_max``.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

from . import _ext
from ._ext import (
    CacheFullError,
    Error,
    FileError,
    InvalidArgument,
    KvPlan,
    ModelShape,
    Unsupported,
    check_errors,
    cuda_available,
    kv_cache_dtype_name,
    model_preset,
    model_shape_from_config,
    parse_memory_size,
    plan_kv_cache,
    resolve_model_shape,
    rope_table,
)

__all__ = [
    "CacheFullError",
    "DecodePlan",
    "Error",
    "FileError",
    "InvalidArgument",
    "KvCache",
    "KvPlan",
    "ModelShape",
    "Unsupported",
    "amax",
    "check_errors",
    "cuda_available",
    "dequantize",
    "kv_cache_dtype_name",
    "model_preset",
    "model_shape_from_config",
    "paged_decode",
    "paged_prefill",
    "parse_memory_size",
    "plan_kv_cache",
    "prefill",
    "quantize",
    "quantize_heads",
    "resolve_model_shape",
    "rope_quantize",
    "rope_table",
    "scale_from_amax",
    "write_kv",
]

__version__ = "0.1.0"

_DEFAULT_HADAMARD_SEED = 0x5EED5EED


# ---- framework plumbing ----------------------------------------------------------------------


def _framework(x: Any) -> str:
    """'torch', 'numpy', 'cupy', ... : the top-level module of the array's type."""
    return type(x).__module__.partition(".")[0]


def _torch():
    import torch

    return torch


def _torch_fp8_name(x: Any) -> Optional[str]:
    if _framework(x) != "torch":
        return None
    torch = _torch()
    if x.dtype == torch.float8_e4m3fn:
        return "fp8_e4m3"
    if x.dtype == torch.float8_e5m2:
        return "fp8_e5m2"
    return None


def _fp8_input(arrays: Sequence[Any], fp8_dtype: Optional[str], names: Sequence[str]):
    """Byte views of torch float8 tensors, and the one FP8 format they (or fp8_dtype) name.

    DLPack's float8 codes are recent and not every exporter/importer pair agrees on them, so torch
    float8 tensors cross as uint8 views (no copy) with the format passed alongside.
    """
    found = fp8_dtype
    out = []
    for x, name in zip(arrays, names):
        fmt = _torch_fp8_name(x) if x is not None else None
        if fmt is not None:
            if found is not None and _ext.kv_cache_dtype_name(found) != fmt:
                raise InvalidArgument(
                    f"fp8kv: argument '{name}': holds {fmt} but the other FP8 inputs are {found}; "
                    "all FP8 inputs of one call share one format"
                )
            found = fmt
            x = x.view(_torch().uint8)
        out.append(x)
    return out, found


def _stream(x: Any, stream: Any) -> int:
    """The CUDA stream to launch on, as an integer cudaStream_t (0 for host arrays)."""
    if stream is not None:
        return int(getattr(stream, "cuda_stream", getattr(stream, "ptr", stream)))
    fw = _framework(x)
    if fw == "torch" and x.is_cuda:
        torch = _torch()
        return torch.cuda.current_stream(x.device).cuda_stream
    if fw == "cupy":
        import cupy

        return cupy.cuda.get_current_stream().ptr
    return 0


def _dtype_name(x: Any) -> str:
    """'float32', 'bfloat16', 'float8_e4m3fn', ... for torch, NumPy and CuPy arrays."""
    return str(x.dtype).rpartition(".")[2]


def _empty(like: Any, shape: Tuple[int, ...], dtype: str) -> Any:
    """An uninitialised array in `like`'s framework and on its device."""
    fw = _framework(like)
    if fw == "torch":
        torch = _torch()
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.device)
    if fw == "numpy":
        import numpy

        return numpy.empty(shape, dtype=dtype)
    if fw == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(shape, dtype=dtype)
    raise InvalidArgument(
        f"fp8kv: argument 'out': cannot allocate an output for a {type(like).__name__}; pass out= explicitly"
    )


def _out_dtype(q: Any, fp8: bool) -> str:
    """Output dtype: the query's for 16/32-bit queries; bf16 (torch) / float32 (others) after FP8."""
    if fp8:
        return "bfloat16" if _framework(q) == "torch" else "float32"
    return _dtype_name(q)


def _softmax_scale(head_dim: int, softmax_scale: Optional[float]) -> float:
    return 1.0 / math.sqrt(head_dim) if softmax_scale is None else float(softmax_scale)


# ---- the paged cache -------------------------------------------------------------------------


class KvCache(_ext.KvCache):
    """A paged KV cache owning its memory and its block allocator.

    ``KvCache(num_layers, num_kv_heads, head_dim, num_blocks, block_size=16, kv_cache_dtype="fp8",
    kv_scales="per_tensor", device="cpu", model_dtype="bfloat16")``, or ``KvCache.from_plan(plan,
    model, device)``. Layout per layer: K and V pools ``[num_blocks, num_kv_heads, block_size,
    head_dim]`` (HND) when ``sub_block_size == block_size`` (16-bit storage, FP8 blocks of up to 16
    tokens); FP8 blocks of more tokens are stored as 16-token sub-blocks, ``[num_blocks,
    block_size // 16, num_kv_heads, 16, head_dim]``. Sequences: ``create_sequence``, ``append_tokens`` (returns the slots
    to write), ``fork`` (copy-on-write), ``free_sequence``, ``block_table(s)``, ``seq_lens``.
    """

    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, num_blocks: int, block_size: int = 16,
                 kv_cache_dtype: str = "fp8", kv_scales: str = "per_tensor", device: str = "cpu",
                 model_dtype: str = "bfloat16"):
        args = (num_layers, num_kv_heads, head_dim, num_blocks, block_size, kv_cache_dtype, kv_scales, device,
                model_dtype)
        _ext.check_cache_args(*args)  # argument errors raise here, before the native object exists
        super().__init__(*args)

    @classmethod
    def from_plan(cls, plan: KvPlan, model: ModelShape, device: str = "cpu") -> "KvCache":
        """Allocates the cache `plan` describes; ``allocated_bytes == plan.total_bytes``."""
        return cls(
            model.num_layers,
            model.num_kv_heads,
            model.head_dim,
            plan.num_blocks,
            plan.block_size,
            plan.kv_cache_dtype,
            plan.kv_scales,
            device,
        )

    def _default_framework(self) -> str:
        return "numpy" if self.device == "cpu" else "torch"

    def _import(self, raw: Any, framework: Optional[str], storage: Optional[str]) -> Any:
        fw = framework or self._default_framework()
        if fw == "torch":
            torch = _torch()
            t = torch.from_dlpack(raw)
            if storage is not None:
                view = {"fp8_e4m3": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2,
                        "bf16": torch.bfloat16, "fp16": torch.float16}[storage]
                t = t.view(view)
            return t
        if fw == "numpy":
            if self.device != "cpu":
                raise InvalidArgument("fp8kv: argument 'framework': a CUDA cache cannot be viewed as NumPy")
            return raw
        if fw == "cupy":
            import cupy

            return cupy.from_dlpack(raw)
        raise InvalidArgument(f"fp8kv: argument 'framework': expected 'torch', 'numpy' or 'cupy', got {fw!r}")

    def k_cache(self, layer: int, framework: Optional[str] = None) -> Any:
        """Layer's K pool, zero-copy: torch gets the storage dtype (float8/bf16/fp16); NumPy and
        CuPy get the raw codes as uint8 (FP8) or uint16 (16-bit). Default framework: NumPy for a
        host cache, torch for a CUDA cache."""
        return self._import(self.k_pool(layer), framework, self.kv_cache_dtype)

    def v_cache(self, layer: int, framework: Optional[str] = None) -> Any:
        """Layer's V pool; see :meth:`k_cache`."""
        return self._import(self.v_pool(layer), framework, self.kv_cache_dtype)

    def token_scales(self, layer: int, framework: Optional[str] = None):
        """per_token caches: (K scales, V scales), float32, zero-copy, in the pools' order: ``[num_blocks,
        num_kv_heads, block_size]``, or ``[num_blocks, block_size // 16, num_kv_heads, 16]`` for FP8
        blocks of more than 16 tokens; None for other granularities."""
        k, v = self.k_token_scales(layer), self.v_token_scales(layer)
        if k is None:
            return None
        return self._import(k, framework, None), self._import(v, framework, None)

    def block_tables(self, seqs: Sequence[int], max_blocks: Optional[int] = None, device: Any = None) -> Any:
        """Block tables ``[batch, max_blocks]`` int32 (padded with block 0): a NumPy array, or a
        torch tensor on `device` when one is given (one explicit host-to-device copy)."""
        tables = super().block_tables(list(seqs), max_blocks)
        return tables if device is None else _torch().from_numpy(tables).to(device)

    def seq_lens(self, seqs: Sequence[int], device: Any = None) -> Any:
        """Sequence lengths ``[batch]`` int32, as NumPy or, with `device`, a torch tensor there."""
        lens = super().seq_lens(list(seqs))
        return lens if device is None else _torch().from_numpy(lens).to(device)

    def calibrate(self, layer: int, key: Any, value: Any) -> Tuple[Any, Any]:
        """Sets a per_tensor / per_head layer's static scales from sample K/V activations
        ``[num_tokens, num_kv_heads, head_dim]``: ``scale = max(amax, 1e-6) / fp8_max``.
        Returns the (k_scales, v_scales) lists that were set."""
        if self.kv_scales == "per_token":
            raise InvalidArgument("fp8kv: argument 'cache': per_token scales are computed on write; nothing to calibrate")
        per_head = self.kv_scales == "per_head"
        k_amax = _as_list(amax(key, per_head=per_head))
        v_amax = _as_list(amax(value, per_head=per_head))
        k_scales = [scale_from_amax(a, self.kv_cache_dtype) for a in k_amax]
        v_scales = [scale_from_amax(a, self.kv_cache_dtype) for a in v_amax]
        self.set_scales(layer, k_scales, v_scales)
        return k_scales, v_scales


def _as_list(x: Any):
    if isinstance(x, (int, float)):
        return [float(x)]
    return [float(v) for v in (x.tolist() if hasattr(x, "tolist") else x)]


# ---- operations ------------------------------------------------------------------------------


def write_kv(
    cache: KvCache,
    layer: int,
    key: Any,
    value: Any,
    slot_mapping: Any,
    positions: Any = None,
    rope: Any = None,
    stream: Any = None,
) -> None:
    """Writes new K/V tokens ``[num_tokens, num_kv_heads, head_dim]`` into their slots
    (``slot_mapping`` int64 ``[num_tokens]``, ``slot = block * block_size + position``, negative =
    skip), converting to the cache's storage dtype with its scales (per_token scales are computed
    from each token's amax). With ``rope`` (``rope_table(...)``, on the same device) and
    ``positions`` (int32), rotate-half RoPE is applied to K first."""
    _ext.write_kv(cache, layer, key, value, slot_mapping, positions, rope, _stream(key, stream))


def paged_decode(
    q: Any,
    cache: KvCache,
    layer: int,
    block_tables: Any,
    seq_lens: Any,
    out: Any = None,
    softmax_scale: Optional[float] = None,
    stream: Any = None,
) -> Any:
    """One query token per sequence against its pages: ``q [batch, num_q_heads, head_dim]``,
    ``block_tables [batch, max_blocks] int32``, ``seq_lens [batch] int32``. Returns ``out``
    (same shape and dtype as q; allocated in q's framework unless given). GQA: num_q_heads must
    be a multiple of the cache's num_kv_heads. ``softmax_scale`` defaults to 1/sqrt(head_dim).
    On CUDA this plans and runs in one call, reading ``seq_lens`` on the host (a synchronisation
    when they live on the device); in a decoding loop or a CUDA graph use :class:`DecodePlan`."""
    if out is None:
        out = _empty(q, tuple(q.shape), _dtype_name(q))
    _ext.paged_decode(cache, layer, q, block_tables, seq_lens, out,
                      _softmax_scale(q.shape[-1], softmax_scale), _stream(q, stream))
    return out


class DecodePlan:
    """Paged decode, planned once and run many times (the way to decode in a loop).

    The plan fixes the batch's shapes, the cache format and the split-KV work partition, computed
    from the sequence lengths (read on the host: a torch CUDA tensor is copied once, here). On CUDA,
    :meth:`run` neither allocates nor synchronises, so it can be captured in a CUDA graph and the
    graph replayed while the sequences grow by up to ``headroom_tokens``. One plan serves every
    layer (the partition depends on lengths only). On the CPU, run() is the reference.
    """

    def __init__(self, q: Any, cache: KvCache, layer: int, block_tables: Any, seq_lens: Any, out: Any = None,
                 headroom_tokens: int = 0, max_splits: int = 0):
        if out is None:
            out = _empty(q, tuple(q.shape), _dtype_name(q))
        host_lens = [int(n) for n in seq_lens.tolist()]
        self._plan = _ext.DecodePlan(cache, layer, q, block_tables, seq_lens, out, host_lens, headroom_tokens,
                                     max_splits)

    def run(self, q: Any, cache: KvCache, layer: int, block_tables: Any, seq_lens: Any, out: Any = None,
            softmax_scale: Optional[float] = None, stream: Any = None) -> Any:
        """Decode attention for one layer; returns ``out`` (allocated in q's framework if None;
        pass a preallocated ``out`` inside CUDA graph capture)."""
        if out is None:
            out = _empty(q, tuple(q.shape), _dtype_name(q))
        self._plan.run(cache, layer, q, block_tables, seq_lens, out, _softmax_scale(q.shape[-1], softmax_scale),
                       _stream(q, stream))
        return out

    @property
    def batch(self) -> int:
        return self._plan.batch

    @property
    def chunk_tokens(self) -> Optional[int]:
        """Keys per split (CUDA plans; None on the CPU)."""
        return self._plan.chunk_tokens

    @property
    def num_work_items(self) -> Optional[int]:
        return self._plan.num_work_items

    @property
    def workspace_bytes(self) -> Optional[int]:
        return self._plan.workspace_bytes

    def num_splits(self, sequence: int) -> Optional[int]:
        return self._plan.num_splits(sequence)


def prefill(
    q: Any,
    k: Any,
    v: Any,
    cu_seqlens_q: Any,
    cu_seqlens_k: Any,
    out: Any = None,
    softmax_scale: Optional[float] = None,
    causal: bool = True,
    q_descale: Any = None,
    k_descale: Any = None,
    v_descale: Any = None,
    fp8_dtype: Optional[str] = None,
    two_level_accumulation: bool = True,
    one_level_max_keys: Optional[int] = None,
    key_tile: int = 0,
    query_tile: int = 0,
    stream: Any = None,
) -> Any:
    """Dense variable-length attention (fresh prompts): ``q [total_q, num_q_heads, head_dim]``,
    ``k, v [total_k, num_kv_heads, head_dim]``, ``cu_seqlens_q/k [batch + 1] int32``. q/k/v are all
    bf16 (fp16/float32 on the CPU too) or all FP8 with optional descales (``[1]`` or
    ``[num_kv_heads]`` float32; x ~= stored * descale). Causal masking is bottom-right aligned.
    Returns ``out [total_q, num_q_heads, head_dim]`` (bf16 after FP8 inputs in torch).
    ``two_level_accumulation`` and ``one_level_max_keys`` (>= 0; 0 = two-level in every thread
    block; None = the library's default, 512) are the CUDA FP8 kernel's ``PrefillOptions``, as is
    ``key_tile`` (keys per K/V tile: 0 = chosen per launch, 128, or 256 for FP8 at head dim 128)
    and ``query_tile`` (query rows per thread block: 0 = chosen per launch, 128, or 192 for FP8 at
    head dims 64 and 128 with 128-key tiles); the CPU reference accumulates exactly."""
    (q, k, v), fmt = _fp8_input((q, k, v), fp8_dtype, ("q", "k", "v"))
    if out is None:
        out = _empty(q, tuple(q.shape), _out_dtype(q, fmt is not None))
    _ext.prefill(q, k, v, cu_seqlens_q, cu_seqlens_k, out, _softmax_scale(q.shape[-1], softmax_scale), causal,
                 q_descale, k_descale, v_descale, fmt, two_level_accumulation, one_level_max_keys, key_tile,
                 query_tile, _stream(q, stream))
    return out


def paged_prefill(
    q: Any,
    cache: KvCache,
    layer: int,
    block_tables: Any,
    cu_seqlens_q: Any,
    seq_lens: Any,
    out: Any = None,
    softmax_scale: Optional[float] = None,
    q_descale: Any = None,
    fp8_dtype: Optional[str] = None,
    two_level_accumulation: bool = True,
    one_level_max_keys: Optional[int] = None,
    stream: Any = None,
) -> Any:
    """Chunked prefill / prefix reuse: new queries ``q [total_q, num_q_heads, head_dim]`` attend to
    their sequence's pages, which already hold the cached prefix and the new tokens (write them
    first with :func:`write_kv` or :func:`rope_quantize`). ``seq_lens`` counts all keys (prefix +
    new); query i of a sequence sees keys ``j <= i + seq_len - len_q``. The accumulation options
    are :func:`prefill`'s."""
    (q,), fmt = _fp8_input((q,), fp8_dtype, ("q",))
    if out is None:
        out = _empty(q, tuple(q.shape), _out_dtype(q, fmt is not None))
    _ext.paged_prefill(cache, layer, q, block_tables, cu_seqlens_q, seq_lens, out,
                       _softmax_scale(q.shape[-1], softmax_scale), q_descale, fmt, two_level_accumulation,
                       one_level_max_keys, _stream(q, stream))
    return out


def rope_quantize(
    q: Any,
    k: Any,
    v: Any,
    positions: Any,
    rope: Any,
    slot_mapping: Any,
    cache: KvCache,
    layer: int,
    q_out: Any = None,
    q_scale: Any = None,
    incoherent_processing: bool = False,
    hadamard_seed: int = _DEFAULT_HADAMARD_SEED,
    stream: Any = None,
) -> Tuple[Any, Any]:
    """CUDA only: the fused step before :func:`paged_prefill`. Applies RoPE to q and k, optionally
    the random-sign Hadamard rotation (``incoherent_processing``: spreads outlier channels; Q.K is
    unchanged), quantises q to FP8 E4M3 with one scale per KV-head group, and writes k and v into
    the cache. Returns ``(q_out, q_scale)``: q_out float8_e4m3fn ``[num_tokens, num_q_heads,
    head_dim]``, q_scale float32 ``[num_kv_heads]`` (the ``q_descale`` of paged_prefill)."""
    if q_out is None:
        q_out = _empty(q, tuple(q.shape), "float8_e4m3fn")
    if q_scale is None:
        q_scale = _empty(q, (cache.num_kv_heads,), "float32")
    (q_bytes,), _ = _fp8_input((q_out,), "fp8_e4m3", ("q_out",))
    _ext.rope_quantize(cache, layer, q, k, v, positions, rope, slot_mapping, q_bytes, q_scale,
                       incoherent_processing, hadamard_seed, _stream(q, stream))
    return q_out, q_scale


def quantize(x: Any, scales: Any, kv_scales: str = "per_tensor", fp8_dtype: str = "fp8_e4m3",
             out: Any = None) -> Any:
    """CPU reference: ``out = fp8(x / scale)`` for ``x [num_tokens, num_heads, head_dim]``, with
    ``kv_scales`` ``per_tensor`` (scales ``[1]``), ``per_head`` (``[num_heads]``) or
    ``per_token`` (``[num_tokens, num_heads]``, computed from each row's amax and written into
    ``scales``). Returns the codes (uint8 for NumPy, float8 for torch). On CUDA use
    :func:`quantize_heads`."""
    if out is None:
        out = _empty(x, tuple(x.shape), _fp8_storage_name(x, fp8_dtype))
    (out_bytes,), fmt = _fp8_input((out,), fp8_dtype, ("out",))
    _ext.quantize(x, out_bytes, kv_scales, scales, fmt)
    return out


def quantize_heads(x: Any, num_groups: int = 1, out: Any = None, scale: Any = None,
                   incoherent_processing: bool = False, hadamard_seed: int = _DEFAULT_HADAMARD_SEED,
                   stream: Any = None) -> Tuple[Any, Any]:
    """CUDA: bf16 ``x [num_tokens, num_heads, head_dim]`` -> FP8 E4M3 with one scale per group of
    heads, computed on the device (``scale[g] = max(amax of the group, 1e-6) / 448``), optionally
    after the random-sign Hadamard rotation (``incoherent_processing``; rotate q and k with the
    same seed). Feeds :func:`prefill` from bf16 activations. Returns ``(out, scale)``: out
    float8_e4m3fn, scale float32 ``[num_groups]`` (the descale for prefill)."""
    if out is None:
        out = _empty(x, tuple(x.shape), "float8_e4m3fn")
    if scale is None:
        scale = _empty(x, (num_groups,), "float32")
    (out_bytes,), _ = _fp8_input((out,), "fp8_e4m3", ("out",))
    _ext.quantize_heads(x, out_bytes, scale, incoherent_processing, hadamard_seed, _stream(x, stream))
    return out, scale


def _fp8_storage_name(like: Any, fp8_dtype: str) -> str:
    """The array dtype that holds `fp8_dtype` codes in `like`'s framework."""
    name = _ext.kv_cache_dtype_name(fp8_dtype)
    if name not in ("fp8_e4m3", "fp8_e5m2"):
        raise InvalidArgument(f"fp8kv: argument 'fp8_dtype': must name an FP8 format, got {fp8_dtype!r}")
    if _framework(like) != "torch":
        return "uint8"
    return "float8_e4m3fn" if name == "fp8_e4m3" else "float8_e5m2"


def dequantize(x: Any, scales: Any, kv_scales: str = "per_tensor", fp8_dtype: Optional[str] = None,
               out: Any = None) -> Any:
    """CPU reference: ``out (float32) = float(x) * scale`` with the scale shapes of :func:`quantize`."""
    (x,), fmt = _fp8_input((x,), fp8_dtype, ("x",))
    if fmt is None:
        raise InvalidArgument("fp8kv: argument 'fp8_dtype': required for uint8 codes ('fp8_e4m3' or 'fp8_e5m2')")
    if out is None:
        out = _empty(x, tuple(x.shape), "float32")
    _ext.dequantize(x, out, kv_scales, scales, fmt)
    return out


def amax(x: Any, per_head: bool = False) -> Any:
    """Calibration amax of K/V activations: a float (per tensor) or, with ``per_head``, one value
    per head of ``x [num_tokens, num_heads, head_dim]``. NaN or inf raises InvalidArgument.
    Host arrays run the C++ reduction; CUDA torch tensors reduce on the device."""
    if _framework(x) == "torch" and x.is_cuda:
        torch = _torch()
        if per_head and x.dim() != 3:
            raise InvalidArgument(
                f"fp8kv: argument 'x': expected shape [num_tokens, num_heads, head_dim], got {list(x.shape)}")
        a = x.float().abs()
        if not bool(torch.isfinite(a).all()):
            raise InvalidArgument("fp8kv: argument 'x': calibration data must be finite (found NaN or inf)")
        return a.amax(dim=(0, 2)).cpu().tolist() if per_head else float(a.max()) if a.numel() else 0.0
    values = _ext.amax(x, per_head)
    return values if per_head else values[0]


def scale_from_amax(amax_value: float, kv_cache_dtype: str = "fp8") -> float:
    """``max(amax, 1e-6) / fp8_max`` (448 for E4M3, 57344 for E5M2): the scale convention."""
    return _ext.scale_from_amax(float(amax_value), kv_cache_dtype)
