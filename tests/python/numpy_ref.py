"""Independent NumPy oracles for the Python tests: FP8 decoding and float64 attention.

Written from the format definitions (OCP E4M3FN / E5M2) and the attention formula, not from
fp8kv's code, so that the package is checked against something it does not share.
"""

import numpy as np


def fp8_decode_table(fmt: str) -> np.ndarray:
    """float64 value of every byte code of `fmt` ('fp8_e4m3' or 'fp8_e5m2')."""
    exp_bits, man_bits = (4, 3) if fmt == "fp8_e4m3" else (5, 2)
    bias = (1 << (exp_bits - 1)) - 1
    table = np.empty(256, dtype=np.float64)
    for code in range(256):
        sign = -1.0 if code & 0x80 else 1.0
        e = (code >> man_bits) & ((1 << exp_bits) - 1)
        m = code & ((1 << man_bits) - 1)
        if fmt == "fp8_e4m3" and e == 15 and m == 7:
            value = np.nan
        elif fmt == "fp8_e5m2" and e == 31:
            value = np.inf if m == 0 else np.nan
        elif e == 0:
            value = m / (1 << man_bits) * 2.0 ** (1 - bias)
        else:
            value = (1 + m / (1 << man_bits)) * 2.0 ** (e - bias)
        table[code] = sign * value
    return table


def decode_storage(raw: np.ndarray, kv_cache_dtype: str) -> np.ndarray:
    """Cache pool codes (uint8 FP8 / uint16 bf16 or fp16) -> float64."""
    if kv_cache_dtype in ("fp8_e4m3", "fp8_e5m2"):
        return fp8_decode_table(kv_cache_dtype)[raw]
    if kv_cache_dtype == "bf16":
        return (raw.astype(np.uint32) << 16).view(np.float32).astype(np.float64)
    return raw.view(np.float16).astype(np.float64)


def bf16_round(x: np.ndarray) -> np.ndarray:
    """float32 -> nearest-even bfloat16, returned as float32."""
    bits = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16
    return rounded.astype(np.uint32).view(np.float32)


def attention(q, k, v, scale, causal):
    """float64 attention of one sequence: q [lq, hq, d], k/v [lk, hk, d]; causal aligned bottom-right."""
    lq, hq, _ = q.shape
    lk, hk, _ = k.shape
    out = np.zeros(q.shape, dtype=np.float64)
    if lk == 0:
        return out
    group = hq // hk
    for h in range(hq):
        s = q[:, h, :].astype(np.float64) @ k[:, h // group, :].astype(np.float64).T * scale
        if causal:
            i = np.arange(lq)[:, None]
            j = np.arange(lk)[None, :]
            s = np.where(j <= i + (lk - lq), s, -np.inf)
        s = s - s.max(axis=1, keepdims=True)
        p = np.exp(s)
        p /= p.sum(axis=1, keepdims=True)
        out[:, h, :] = p @ v[:, h // group, :].astype(np.float64)
    return out


def hnd(pool, cache):
    """A pool as [num_blocks, num_kv_heads, block_size, head_dim], whatever its sub-blocks: the
    [num_blocks, sub-blocks, num_kv_heads, sub_block_size, head_dim] array of FP8 caches with
    blocks of more than 16 tokens is regrouped (a copy). Token scales go through it with a unit
    trailing axis."""
    if pool.ndim == 4:
        assert cache.sub_block_size == cache.block_size
        return pool
    blocks, subs, heads, sub, dim = pool.shape
    assert sub == cache.sub_block_size and subs * sub == cache.block_size
    return pool.transpose(0, 2, 1, 3, 4).reshape(blocks, heads, subs * sub, dim)


def cache_tokens(cache, layer: int, seq_block_table, length: int, static_scales=None):
    """Dequantized K and V [length, num_kv_heads, head_dim] (float64) of a sequence of a host
    cache, read through the package's zero-copy pool views. `static_scales` = (k_scales, v_scales)
    as set with set_scales (per_tensor: 1 value, per_head: one per KV head)."""
    bs = cache.block_size
    dtype = cache.kv_cache_dtype
    k_pool = hnd(decode_storage(np.asarray(cache.k_cache(layer)), dtype), cache)
    v_pool = hnd(decode_storage(np.asarray(cache.v_cache(layer)), dtype), cache)
    heads = cache.num_kv_heads
    ks, vs = [], []
    scales = cache.token_scales(layer)
    if scales is not None:
        scales = tuple(hnd(np.asarray(s)[..., None], cache)[..., 0] for s in scales)
    for t in range(length):
        block, pos = seq_block_table[t // bs], t % bs
        k = k_pool[block, :, pos, :].copy()
        v = v_pool[block, :, pos, :].copy()
        if scales is not None:
            k *= np.asarray(scales[0])[block, :, pos][:, None]
            v *= np.asarray(scales[1])[block, :, pos][:, None]
        elif static_scales is not None:
            k *= np.asarray(static_scales[0], dtype=np.float64)[:, None]
            v *= np.asarray(static_scales[1], dtype=np.float64)[:, None]
        ks.append(k)
        vs.append(v)
    shape = (0, heads, cache.head_dim)
    return (np.stack(ks) if ks else np.zeros(shape)), (np.stack(vs) if vs else np.zeros(shape))
