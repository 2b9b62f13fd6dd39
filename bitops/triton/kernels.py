"""Triton kernels of the ``bitops`` ops (pack, unpack, packed GEMM forward int8/float, grad_input).

Layouts: :mod:`bitops.formats` (codes packed along K into int32 words, LSB first). Arithmetic:
:mod:`bitops.reference`. Every GEMM kernel decodes the packed words it needs into registers inside
its reduction loop; no dense or unpacked copy of a weight is ever written to memory.

Whether these are compiled (GPU) or interpreted (CPU tensors) is fixed when this module is imported:
``@triton.jit`` reads ``TRITON_INTERPRET`` at decoration time. :data:`INTERPRETED` says which.
The kernels call only Triton builtins (``tl.full``, not the ``@jit`` helpers ``tl.zeros``/``tl.cdiv``/
``tl.sum`` of triton.language.standard), so re-importing this module under the interpreter works even
when Triton itself was first imported compiled (see bitops.triton.interpreter).

Kernel arguments common to the GEMM kernels (all tensors contiguous, row-major):

* ``w_ptr``: packed weight int32 (N, W), W = ceil(K * BITS / 32); ``ws_ptr``: weight scale f32 (N, G),
  G = ceil(K / GROUP_SIZE).
* Split-K: program axis 1 indexes a slice of the reduction of length ``K_PER_SPLIT`` (``N_PER_SPLIT``
  for grad_input). Without ``SPLIT_K`` (one slice) the epilogue runs in the kernel; with it the kernel
  writes partial results to ``part_ptr`` (see each kernel) and the wrapper finishes.
* ``M_BUCKET`` is unused by the code: it is an autotuning key (the next power of two of M).
"""
from __future__ import annotations

import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction


@triton.jit
def _decode(words, shift, BITS: tl.constexpr):
    """int32 words, bit offsets -> int32 code values (SIGN1: {-1,+1}; 2-bit: sign-extended [-2, 1])."""
    if BITS == 1:
        return ((words >> shift) & 1) * 2 - 1
    else:
        f = (words >> shift) & 3
        return f - ((f & 2) << 1)


@triton.jit
def pack_kernel(codes_ptr, out_ptr, R, K, W, BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_W: tl.constexpr):
    """codes int8 (R, K) -> packed int32 (R, W). Fields past K are read as 0 (pattern 0, per the format)."""
    CPW: tl.constexpr = 32 // BITS
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    wcols = tl.program_id(1) * BLOCK_W + tl.arange(0, BLOCK_W)
    rmask = rows[:, None] < R
    src = codes_ptr + rows[:, None].to(tl.int64) * K
    words = tl.full((BLOCK_R, BLOCK_W), 0, dtype=tl.int32)
    for j in tl.static_range(CPW):  # field j of every word: code wcols * CPW + j
        cols = wcols * CPW + j
        c = tl.load(src + cols[None, :], mask=rmask & (cols[None, :] < K), other=0).to(tl.int32)
        if BITS == 1:
            f = (c > 0).to(tl.int32)
        else:
            f = c & 3
        words = words | (f << (j * BITS))
    tl.store(out_ptr + rows[:, None].to(tl.int64) * W + wcols[None, :], words, mask=rmask & (wcols[None, :] < W))


@triton.jit
def unpack_kernel(packed_ptr, out_ptr, R, K, W, BITS: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """packed int32 (R, W) -> codes int8 (R, K)."""
    CPW: tl.constexpr = 32 // BITS
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    mask = (rows[:, None] < R) & (cols[None, :] < K)
    words = tl.load(packed_ptr + rows[:, None].to(tl.int64) * W + (cols // CPW)[None, :], mask=mask, other=0)
    v = _decode(words, ((cols % CPW) * BITS)[None, :], BITS)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * K + cols[None, :], v.to(tl.int8), mask=mask)


@triton.jit
def _tile_ids(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
    # Grouped ordering: GROUP_M row blocks share each weight column block while it is in L2.
    pid = tl.program_id(0)
    num_m = (M + BLOCK_M - 1) // BLOCK_M
    num_n = (N + BLOCK_N - 1) // BLOCK_N
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % size_m
    pid_n = (pid % width) // size_m
    return pid_m, pid_n


@triton.jit
def linear_fwd_kernel(
    x_ptr, xs_ptr, w_ptr, ws_ptr, bias_ptr, y_ptr, part_ptr,
    M, N, K, W, G, GROUP_SIZE, K_PER_SPLIT, M_BUCKET,
    BITS: tl.constexpr, IS_INT8: tl.constexpr, HAS_BIAS: tl.constexpr, SPLIT_K: tl.constexpr,
    DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """y (M, N) = x (M, K) times the packed weight (N, K) transposed, per weight-scale group.

    IS_INT8: x int8, xs_ptr f32 (M,) row scales, int32 accumulation per group then the reference
    epilogue ``y = y + float(acc_g) * ws[n, g]`` (g ascending), ``y * xs[m]``, ``+ bias`` (launch with
    ``enable_fp_fusion=False`` so no step becomes an FMA). SPLIT_K: the int32 group sums are
    atomically added into part_ptr int32 (M, N, G) (integer adds: exact in any order), the epilogue
    is :func:`int8_epilogue_kernel`.
    Float: x f16/bf16/f32 is multiplied in DOT_DTYPE with f32 accumulation; each group's sum is scaled
    by ws[n, g]. SPLIT_K: part_ptr f32 (SPLIT, M, N) receives the partial sums (no bias).
    """
    CPW: tl.constexpr = 32 // BITS
    pid_m, pid_n = _tile_ids(M, N, BLOCK_M, BLOCK_N, GROUP_M)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = offs_m < M
    rn = offs_n < N
    x_rows = x_ptr + offs_m[:, None].to(tl.int64) * K
    w_rows = w_ptr + offs_n[:, None].to(tl.int64) * W
    k_lo = pid_s * K_PER_SPLIT
    k_hi = tl.minimum(K, k_lo + K_PER_SPLIT)
    y = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.float32)
    shifts = tl.arange(0, CPW) * BITS
    for g in range(k_lo // GROUP_SIZE, (k_hi + GROUP_SIZE - 1) // GROUP_SIZE):
        g_lo = tl.maximum(g * GROUP_SIZE, k_lo)
        g_hi = tl.minimum(g * GROUP_SIZE + GROUP_SIZE, k_hi)
        if IS_INT8:
            acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.int32)
        else:
            acc = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.float32)
        # Tiles start on a word boundary; codes of the tile outside [g_lo, g_hi) meet x = 0.
        for k0 in range((g_lo // CPW) * CPW, g_hi, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mk = (offs_k >= g_lo) & (offs_k < g_hi)
            # Activations outside the group (and past K) load as 0: they also cancel the 1-bit pad's -1.
            x = tl.load(x_rows + offs_k[None, :], mask=rm[:, None] & mk[None, :], other=0)
            # One load per word (BLOCK_N, BLOCK_K / CPW), unpacked in registers to (BLOCK_K, BLOCK_N) codes.
            offs_w = k0 // CPW + tl.arange(0, BLOCK_K // CPW)
            words = tl.load(w_rows + offs_w[None, :], mask=rn[:, None] & (offs_w[None, :] < W), other=0)
            codes = _decode(words[:, :, None], shifts[None, None, :], BITS)
            codes = tl.trans(tl.reshape(codes, (BLOCK_N, BLOCK_K)))
            if IS_INT8:
                acc = tl.dot(x, codes.to(tl.int8), acc, out_dtype=tl.int32)
            else:
                acc = tl.dot(x.to(DOT_DTYPE), codes.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
        if IS_INT8 and SPLIT_K:
            dst = part_ptr + (offs_m[:, None].to(tl.int64) * N + offs_n[None, :]) * G + g
            tl.atomic_add(dst, acc, mask=rm[:, None] & rn[None, :])
        else:
            s = tl.load(ws_ptr + offs_n.to(tl.int64) * G + g, mask=rn, other=0.0)
            y = y + acc.to(tl.float32) * s[None, :]
    out_mask = rm[:, None] & rn[None, :]
    out_off = offs_m[:, None].to(tl.int64) * N + offs_n[None, :]
    if not SPLIT_K:
        if IS_INT8:
            y = y * tl.load(xs_ptr + offs_m, mask=rm, other=0.0)[:, None]
        if HAS_BIAS:
            y = y + tl.load(bias_ptr + offs_n, mask=rn, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + out_off, y.to(y_ptr.dtype.element_ty), mask=out_mask)
    elif not IS_INT8:
        tl.store(part_ptr + pid_s.to(tl.int64) * M * N + out_off, y, mask=out_mask)


@triton.jit
def int8_epilogue_kernel(
    acc_ptr, xs_ptr, ws_ptr, bias_ptr, y_ptr, M, N, G,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """The reference epilogue on int32 group sums acc (M, N, G): y f32 (M, N). No FMA (see above)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = offs_m < M
    rn = offs_n < N
    mask = rm[:, None] & rn[None, :]
    base = (offs_m[:, None].to(tl.int64) * N + offs_n[None, :]) * G
    y = tl.full((BLOCK_M, BLOCK_N), 0, dtype=tl.float32)
    for g in range(0, G):
        a = tl.load(acc_ptr + base + g, mask=mask, other=0)
        s = tl.load(ws_ptr + offs_n.to(tl.int64) * G + g, mask=rn, other=0.0)
        y = y + a.to(tl.float32) * s[None, :]
    y = y * tl.load(xs_ptr + offs_m, mask=rm, other=0.0)[:, None]
    if HAS_BIAS:
        y = y + tl.load(bias_ptr + offs_n, mask=rn, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], y, mask=mask)


@triton.jit
def grad_input_kernel(
    g_ptr, w_ptr, ws_ptr, out_ptr, part_ptr,
    M, N, K, W, G, GROUP_SIZE, N_PER_SPLIT, M_BUCKET,
    BITS: tl.constexpr, SPLIT_K: tl.constexpr, PER_ROW: tl.constexpr, DOT_DTYPE: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """grad_input (M, K) = grad_output (M, N) times the dequantized packed weight (N, K).

    The reduction runs over N; each (BLOCK_N, BLOCK_K) code tile is decoded in registers from the same
    packed (N, W) words as the forward; per weight-scale group g in the tile, grad_output * ws[:, g]
    (f32, then DOT_DTYPE) times the codes of group g is accumulated in f32. BLOCK_N here is the
    reduction block, BLOCK_K the output block.
    SPLIT_K: part_ptr f32 (SPLIT, M, K) receives partial sums over slices of N. PER_ROW: G == 1.
    """
    CPW: tl.constexpr = 32 // BITS
    pid_m, pid_k = _tile_ids(M, K, BLOCK_M, BLOCK_K, GROUP_M)
    pid_s = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    rm = offs_m < M
    rk = offs_k < K
    # The output tile starts on a word boundary (BLOCK_K is a multiple of CPW): one load per word.
    offs_w = pid_k * (BLOCK_K // CPW) + tl.arange(0, BLOCK_K // CPW)
    shifts = tl.arange(0, CPW) * BITS
    group = (offs_k // GROUP_SIZE)[None, :]
    g_first = (pid_k * BLOCK_K) // GROUP_SIZE
    g_last = (tl.minimum(K, pid_k * BLOCK_K + BLOCK_K) - 1) // GROUP_SIZE
    n_lo = pid_s * N_PER_SPLIT
    n_hi = tl.minimum(N, n_lo + N_PER_SPLIT)
    acc = tl.full((BLOCK_M, BLOCK_K), 0, dtype=tl.float32)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        mn = offs_n < n_hi
        go = tl.load(g_ptr + offs_m[:, None].to(tl.int64) * N + offs_n[None, :], mask=rm[:, None] & mn[None, :], other=0)
        go = go.to(tl.float32)
        words = tl.load(w_ptr + offs_n[:, None].to(tl.int64) * W + offs_w[None, :],
                        mask=mn[:, None] & (offs_w[None, :] < W), other=0)
        codes = tl.reshape(_decode(words[:, :, None], shifts[None, None, :], BITS), (BLOCK_N, BLOCK_K))
        # The scale ws[n, g] goes on grad_output's columns, one product per weight-scale group in the
        # tile (one when G == 1 or the tile lies in one group): only (BLOCK_N,) scales are loaded.
        for g in range(g_first, g_last + 1):
            s = tl.load(ws_ptr + offs_n.to(tl.int64) * G + g, mask=mn, other=0.0)
            a = (go * s[None, :]).to(DOT_DTYPE)
            if PER_ROW:
                c = codes
            else:
                c = tl.where(group == g, codes, 0)
            acc = tl.dot(a, c.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)
    out_mask = rm[:, None] & rk[None, :]
    out_off = offs_m[:, None].to(tl.int64) * K + offs_k[None, :]
    if not SPLIT_K:
        tl.store(out_ptr + out_off, acc.to(out_ptr.dtype.element_ty), mask=out_mask)
    else:
        tl.store(part_ptr + pid_s.to(tl.int64) * M * K + out_off, acc, mask=out_mask)


INTERPRETED = isinstance(linear_fwd_kernel, InterpretedFunction)
