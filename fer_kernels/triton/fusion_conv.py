"""Triton kernels of the fusion_conv family: pooled concatenation + 1x1 conv, and the DenseNet transition.

Math (see csrc/cpu/fusion_conv.cpp for the derivation): ``y = W * P + b`` with ``P = AvgPool_p(cat(xs))`` or,
for the transition, ``P = AvgPool_p(relu(x * s + t))`` (per-channel BN scale/shift, ReLU per pixel before
pooling). Backward: ``dP = W^T dy``; fusion: ``dx_i = spread_p(dP_i) / p^2``; transition:
``dz = spread_p(dP) / p^2 * [z > 0]``, ``dgamma = sum dz*xhat``, ``dbeta = sum dz``,
``dx = s * (dz - mean(dz) - xhat * mean(dz*xhat))`` (batch statistics) or ``s * dz``;
``dW = sum_n dy_n P_n^T``.

Kernels (accumulate in float32, float64 for float64 inputs: every ``tl.dot`` names its ``out_dtype``, the
accumulator's; float32 dots use ``input_precision="ieee"``):
- ``_fusion_pool_kernel``: one program per (n, c) plane x a block of pooled pixels; reads the input through
  its strides (no copy for non-contiguous / channels_last inputs), optional BN-ReLU prologue, writes its
  channel slice of P.
- ``_fusion_conv_fwd_kernel``: tile (BLOCK_O out channels x BLOCK_L pooled pixels) per sample, K loop over C.
- ``_fusion_conv_bwd_kernel``: tile (BLOCK_C in channels x BLOCK_L pooled pixels) of ``W_i^T dy``; writes it
  spread over each p x p window into ``dx_i`` (fusion) or as is into ``dP`` (transition).
- ``_fusion_conv_dw_kernel``: tile (BLOCK_O x BLOCK_C) of ``dW`` per slice of the batch (split-K), loop over
  its samples and pixels; ``db``.
- ``_transition_stats_kernel``, ``_transition_bwd_reduce_kernel``: per-channel reductions split over the
  batch: program (c, s) reduces a contiguous run of (sample, pixel block) units of channel c into partial
  sums ``part[c, s]`` that the host adds up (deterministic, no atomics; C x S programs instead of C).
  Statistics are accumulated around the channel's first value ``x[0, c, 0, 0]`` (the same shift in every
  partial); the backward reduction forms ``sum dz``, ``sum dz*xhat`` and writes the recomputed P.
- ``_transition_bwd_dx_kernel``: the elementwise BN backward per (n, c) plane x pixel block.

Grids: every grid axis beyond x is bounded by the launcher (split counts); tile counts that grow with the
batch, channels or pixels are folded into axis 0 (limit 2^31 - 1; y and z stop at 65535), the fastest-varying
tile index first. Offsets: anything scaled by a sample, plane, channel or image row is 64-bit
(``.to(tl.int64)``); offsets along one image row or inside one contiguous plane (pixel, p x p tap) stay
32-bit.
Every op launches under the device guard of its inputs (``_common.device_guard``).

Saved for backward: fusion_conv saves P (1/p^2 of the concatenation) and W; the transition saves x, the
statistics and the weights, and recomputes P in its reduction pass.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fer_kernels.triton import _common
from fer_kernels.triton._common import load_2d, span, store_2d, unravel3

_BLOCK_1D = 256


def _gemm_consts(t: torch.Tensor) -> dict:
    """PRECISION and ACC of the GEMM kernels for inputs like ``t``."""
    return dict(PRECISION="ieee" if t.dtype in (torch.float32, torch.float64) else "tf32", ACC=_tl_acc(t))


def _acc(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _tl_acc(t: torch.Tensor):
    return tl.float64 if t.dtype == torch.float64 else tl.float32


@triton.jit
def _dot_k(a_ptr, a_rows, a_mask, a_sk, b_ptr, b_sk, b_cols, b_mask, K, acc, BLOCK_K: tl.constexpr,
           PRECISION: tl.constexpr, ACC: tl.constexpr):
    """``acc + A B`` over k < K in BLOCK_K chunks: ``A[r, k]`` at ``a_ptr + a_rows[r] + k * a_sk``,
    ``B[k, j]`` at ``b_ptr + k * b_sk + b_cols[j]`` (``k * stride`` in 64 bits)."""
    for k0 in range(0, K, BLOCK_K):
        offs_k, mask_k = span(k0, BLOCK_K, K)
        k64 = offs_k.to(tl.int64)
        a = load_2d(a_ptr, a_rows, a_mask, k64 * a_sk, mask_k)
        b = load_2d(b_ptr, k64 * b_sk, mask_k, b_cols, b_mask)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    return acc


@triton.jit
def _unit_pixels(u, nblk, L, BLOCK: tl.constexpr):
    """(n, offs, mask) of reduction unit ``u``: pixel block ``u % nblk`` of sample ``u // nblk``."""
    offs, mask = span((u % nblk) * BLOCK, BLOCK, L)
    return u // nblk, offs, mask


@triton.jit
def _store_partials(part_ptr, c, s_id, a, b):
    """part[c, s_id, 0:2] = (sum a, sum b) of a per-channel reduction split over axis 1 of the grid."""
    out = part_ptr + (c.to(tl.int64) * tl.num_programs(1) + s_id) * 2
    tl.store(out, tl.sum(a, axis=0))
    tl.store(out + 1, tl.sum(b, axis=0))


@triton.jit
def _fusion_pool_kernel(x_ptr, out_ptr, scale_ptr, shift_ptr, C_in, C_total, c_off, Ho, Wo, sxn, sxc, sxh,
                        sxw, P: tl.constexpr, HAS_BN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    # 1-d grid over (plane = n * C_in + c, block of pooled pixels), pixel blocks fastest.
    L = Ho * Wo
    blk, c, n = unravel3(tl.program_id(0), tl.cdiv(L, BLOCK), C_in)
    offs, mask = span(blk * BLOCK, BLOCK, L)
    base = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc
    # window corners; the row stride is W*C for channels_last inputs
    pix = ((offs // Wo) * P).to(tl.int64) * sxh + ((offs % Wo) * P) * sxw
    if HAS_BN:
        s = tl.load(scale_ptr + c)
        t = tl.load(shift_ptr + c)
    acc = tl.zeros([BLOCK], dtype=ACC)
    for dy in tl.static_range(P):
        for dx in tl.static_range(P):
            v = tl.load(base + pix + (dy * sxh + dx * sxw), mask=mask, other=0.0).to(ACC)
            if HAS_BN:
                v = tl.maximum(v * s + t, 0.0)
            acc += v
    acc = acc / (P * P)
    out = out_ptr + (n.to(tl.int64) * C_total + c_off + c) * L
    tl.store(out + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _fusion_conv_fwd_kernel(p_ptr, w_ptr, b_ptr, out_ptr, C, C_out, L, HAS_BIAS: tl.constexpr,
                            BLOCK_O: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_K: tl.constexpr,
                            PRECISION: tl.constexpr, ACC: tl.constexpr):
    # 1-d grid over (n, pixel tile, out-channel tile), out-channel tiles fastest (they share the P tile).
    pid_o, pid_l, n = unravel3(tl.program_id(0), tl.cdiv(C_out, BLOCK_O), tl.cdiv(L, BLOCK_L))
    n64 = n.to(tl.int64)
    offs_o, mask_o = span(pid_o * BLOCK_O, BLOCK_O, C_out)
    offs_l, mask_l = span(pid_l * BLOCK_L, BLOCK_L, L)
    acc = _dot_k(w_ptr, offs_o.to(tl.int64) * C, mask_o, 1, p_ptr + n64 * C * L, L, offs_l, mask_l, C,
                 tl.zeros([BLOCK_O, BLOCK_L], dtype=ACC), BLOCK_K, PRECISION, ACC)
    if HAS_BIAS:
        b = tl.load(b_ptr + offs_o, mask=mask_o, other=0.0).to(ACC)
        acc += b[:, None]
    store_2d(out_ptr + n64 * C_out * L, offs_o.to(tl.int64) * L, mask_o, offs_l, mask_l, acc)


@triton.jit
def _fusion_conv_bwd_kernel(dy_ptr, w_ptr, gp_ptr, dx_ptr, C_in, c_off, C_total, C_out, H, W, Ho, Wo,
                            P: tl.constexpr, SPREAD: tl.constexpr, HAS_GP: tl.constexpr,
                            BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_O: tl.constexpr,
                            PRECISION: tl.constexpr, ACC: tl.constexpr):
    # 1-d grid over (n, pixel tile, in-channel tile), in-channel tiles fastest (they share the dy tile).
    L = Ho * Wo
    pid_c, pid_l, n = unravel3(tl.program_id(0), tl.cdiv(C_in, BLOCK_C), tl.cdiv(L, BLOCK_L))
    n64 = n.to(tl.int64)
    offs_c, mask_c = span(pid_c * BLOCK_C, BLOCK_C, C_in)
    offs_l, mask_l = span(pid_l * BLOCK_L, BLOCK_L, L)
    # W_i^T dy, the W^T tile wt[c, o] = W[o, c_off + c]
    acc = _dot_k(w_ptr, c_off + offs_c, mask_c, C_total, dy_ptr + n64 * C_out * L, L, offs_l, mask_l, C_out,
                 tl.zeros([BLOCK_C, BLOCK_L], dtype=ACC), BLOCK_O, PRECISION, ACC)
    if HAS_GP:
        gp_rows = (c_off + offs_c).to(tl.int64) * L
        acc += load_2d(gp_ptr + n64 * C_total * L, gp_rows, mask_c, offs_l, mask_l).to(ACC)
    if SPREAD:
        acc = acc / (P * P)
        oy = offs_l // Wo
        ox = offs_l % Wo
        m2 = mask_c[:, None] & mask_l[None, :]
        base = dx_ptr + n64 * C_in * H * W + (offs_c.to(tl.int64) * H * W)[:, None]
        val = acc.to(dx_ptr.dtype.element_ty)
        for dy in tl.static_range(P):
            for dx in tl.static_range(P):
                tl.store(base + ((oy * P + dy) * W + ox * P + dx)[None, :], val, mask=m2)
    else:
        store_2d(dx_ptr + n64 * C_in * L, offs_c.to(tl.int64) * L, mask_c, offs_l, mask_l, acc)


@triton.jit
def _fusion_conv_dw_kernel(dy_ptr, p_ptr, dw_ptr, db_ptr, N, C, C_out, L, N_PER, BLOCK_O: tl.constexpr,
                           BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, PRECISION: tl.constexpr,
                           ACC: tl.constexpr):
    # Split-K over the batch: program (s, c, o) (1-d grid, o fastest) sums samples
    # [s * N_PER, (s + 1) * N_PER) into partial s of dW (and of db when c == 0); the host sums the partials
    # (deterministic, no atomics).
    pid_o, pid_c, pid_s = unravel3(tl.program_id(0), tl.cdiv(C_out, BLOCK_O), tl.cdiv(C, BLOCK_C))
    offs_o, mask_o = span(pid_o * BLOCK_O, BLOCK_O, C_out)
    offs_c, mask_c = span(pid_c * BLOCK_C, BLOCK_C, C)
    o_rows = offs_o.to(tl.int64) * L
    c_rows = offs_c.to(tl.int64) * L
    acc = tl.zeros([BLOCK_O, BLOCK_C], dtype=ACC)
    dbias = tl.zeros([BLOCK_O], dtype=ACC)
    # one loop over the (sample, pixel chunk) units of the slice: a single pipelined loop, also for small L
    n_l = tl.cdiv(L, BLOCK_L)
    u_end = tl.minimum(N, (pid_s + 1) * N_PER) * n_l
    for u in range(pid_s * N_PER * n_l, u_end):
        n, offs_l, mask_l = _unit_pixels(u, n_l, L, BLOCK_L)
        n64 = n.to(tl.int64)
        g = load_2d(dy_ptr + n64 * C_out * L, o_rows, mask_o, offs_l, mask_l)
        pt = load_2d(p_ptr + n64 * C * L, offs_l, mask_l, c_rows, mask_c)
        acc = tl.dot(g, pt, acc, input_precision=PRECISION, out_dtype=ACC)
        dbias += tl.sum(g.to(ACC), axis=1)
    part = pid_s.to(tl.int64) * C_out
    store_2d(dw_ptr, (part + offs_o) * C, mask_o, offs_c, mask_c, acc)
    if pid_c == 0:
        tl.store(db_ptr + part + offs_o, dbias.to(db_ptr.dtype.element_ty), mask=mask_o)


@triton.jit
def _transition_stats_kernel(x_ptr, shift_ptr, part_ptr, N, HW, W, sxn, sxc, sxh, sxw, U_PER,
                             BLOCK: tl.constexpr):
    # Program (c, s): sums of d = x - shift[c] and of d^2 over units [s * U_PER, (s + 1) * U_PER) of channel
    # c, a unit being one BLOCK of one sample's pixels; stored in part[c, s, 0:2] (part's dtype: float32,
    # float64 for float64 inputs). The host adds the partials: mean = shift + sum d / M,
    # var = sum d^2 / M - (sum d / M)^2.
    c = tl.program_id(0)
    s_id = tl.program_id(1)
    nblk = tl.cdiv(HW, BLOCK)
    cbase = x_ptr + c.to(tl.int64) * sxc
    shift = tl.load(shift_ptr + c)
    s = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    ss = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    for u in range(s_id * U_PER, tl.minimum(N * nblk, (s_id + 1) * U_PER)):
        n, offs, m = _unit_pixels(u, nblk, HW, BLOCK)
        ptr = cbase + n.to(tl.int64) * sxn + (offs // W).to(tl.int64) * sxh + (offs % W) * sxw
        v = tl.load(ptr, mask=m, other=0.0)
        d = tl.where(m, v.to(s.dtype) - shift, 0.0)
        s += d
        ss += d * d
    _store_partials(part_ptr, c, s_id, s, ss)


@triton.jit
def _transition_bwd_reduce_kernel(x_ptr, dp_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, p_ptr, part_ptr,
                                  N, C, Ho, Wo, sxn, sxc, sxh, sxw, U_PER, P: tl.constexpr,
                                  BLOCK: tl.constexpr):
    # Program (c, s), units as in _transition_stats_kernel over the pooled pixels: part[c, s] = (sum dz,
    # sum dz*xhat) over the pooled area (dz is 0 outside it), and P = AvgPool(relu(z)) of its units.
    c = tl.program_id(0)
    s_id = tl.program_id(1)
    s = tl.load(scale_ptr + c)
    t = tl.load(shift_ptr + c)
    mu = tl.load(mean_ptr + c)
    inv = tl.load(invstd_ptr + c)
    L = Ho * Wo
    nblk = tl.cdiv(L, BLOCK)
    cbase = x_ptr + c.to(tl.int64) * sxc
    sdz = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    sdzx = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
    for u in range(s_id * U_PER, tl.minimum(N * nblk, (s_id + 1) * U_PER)):
        n, offs, m = _unit_pixels(u, nblk, L, BLOCK)
        plane = (n.to(tl.int64) * C + c) * L
        g = tl.load(dp_ptr + plane + offs, mask=m, other=0.0) / (P * P)
        xbase = cbase + n.to(tl.int64) * sxn + ((offs // Wo) * P).to(tl.int64) * sxh + ((offs % Wo) * P) * sxw
        a = tl.zeros([BLOCK], dtype=part_ptr.dtype.element_ty)
        for dy in tl.static_range(P):
            for dx in tl.static_range(P):
                v = tl.load(xbase + (dy * sxh + dx * sxw), mask=m, other=0.0).to(sdz.dtype)
                z = v * s + t
                on = (z > 0.0) & m
                dz = tl.where(on, g, 0.0)
                a += tl.where(on, z, 0.0)
                sdz += dz
                sdzx += dz * ((v - mu) * inv)
        tl.store(p_ptr + plane + offs, (a / (P * P)).to(p_ptr.dtype.element_ty), mask=m)
    _store_partials(part_ptr, c, s_id, sdz, sdzx)


@triton.jit
def _transition_bwd_dx_kernel(x_ptr, dp_ptr, scale_ptr, shift_ptr, mean_ptr, invstd_ptr, red_ptr, dx_ptr, C,
                              H, W, Ho, Wo, sxn, sxc, sxh, sxw, count, P: tl.constexpr, BATCH: tl.constexpr,
                              BLOCK: tl.constexpr):
    # 1-d grid over (plane = n * C + c, pixel block), pixel blocks fastest.
    HW = H * W
    blk, c, n = unravel3(tl.program_id(0), tl.cdiv(HW, BLOCK), C)
    plane = n.to(tl.int64) * C + c
    offs, m = span(blk * BLOCK, BLOCK, HW)
    y = offs // W
    xx = offs % W
    oy = y // P
    ox = xx // P
    inside = m & (oy < Ho) & (ox < Wo)
    s = tl.load(scale_ptr + c)
    t = tl.load(shift_ptr + c)
    xptr = x_ptr + n.to(tl.int64) * sxn + c.to(tl.int64) * sxc + y.to(tl.int64) * sxh + xx * sxw
    v = tl.load(xptr, mask=m, other=0.0).to(dp_ptr.dtype.element_ty)
    g = tl.load(dp_ptr + plane * Ho * Wo + oy * Wo + ox, mask=inside, other=0.0) / (P * P)
    dz = tl.where(v * s + t > 0.0, g, 0.0)
    if BATCH:
        mu = tl.load(mean_ptr + c)
        inv = tl.load(invstd_ptr + c)
        k0 = tl.load(red_ptr + c * 2) / count
        k1 = tl.load(red_ptr + c * 2 + 1) / count
        dx = s * (dz - k0 - (v - mu) * inv * k1)
    else:
        dx = s * dz
    tl.store(dx_ptr + plane * HW + offs, dx.to(dx_ptr.dtype.element_ty), mask=m)


def _blocks(c_out: int, c: int, t: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_O, BLOCK_L, BLOCK_K) of the forward GEMM: float64 on a GPU takes 32 pixels and a 16-channel K
    chunk (a 32 x 64 float64 accumulator and its dot operands crowd the register file)."""
    bo = 32 if c_out > 16 else 16
    if t.dtype == torch.float64 and _common.on_gpu(t):
        return bo, 32, 16
    return bo, 64, 32 if c > 16 else 16


def _split(c: int, units: int, t: torch.Tensor) -> tuple[int, int]:
    """(S, units per program) for the per-channel reductions over ``units`` (sample, pixel block) units.

    On a GPU, C x S programs should fill the device (about 2048 resident programs); under the interpreter two
    programs per channel keep the partial-sum path exercised at little cost.
    """
    target = triton.cdiv(2048, c) if _common.on_gpu(t) else 2
    u_per = triton.cdiv(units, max(1, min(units, target)))
    return triton.cdiv(units, u_per), u_per


def _launch_pool(x, out, scale, shift, c_total, c_off, pool, has_bn):
    n, ci, h, w = x.shape
    ho, wo = h // pool, w // pool
    grid = (n * ci * triton.cdiv(ho * wo, _BLOCK_1D),)
    wrap_triton(_fusion_pool_kernel)[grid](x, out, scale, shift, ci, c_total, c_off, ho, wo, *x.stride(),
                                           P=pool, HAS_BN=has_bn, ACC=_tl_acc(x), BLOCK=_BLOCK_1D)


def _launch_gemm(pooled: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    n, c, ho, wo = pooled.shape
    c_out = weight.shape[0]
    out = pooled.new_empty(n, c_out, ho, wo)
    bo, bl, bk = _blocks(c_out, c, pooled)
    grid = (triton.cdiv(c_out, bo) * triton.cdiv(ho * wo, bl) * n,)
    w2 = weight.reshape(c_out, c).contiguous()
    wrap_triton(_fusion_conv_fwd_kernel)[grid](pooled, w2, bias if bias is not None else w2, out, c, c_out,
                                               ho * wo, HAS_BIAS=bias is not None, BLOCK_O=bo, BLOCK_L=bl,
                                               BLOCK_K=bk, **_gemm_consts(pooled))
    return out


def _launch_weight_grads(dy: torch.Tensor, pooled: torch.Tensor, weight: torch.Tensor):
    n, c, ho, wo = pooled.shape
    c_out = weight.shape[0]
    # float32 dots are ieee FMA loops, each thread holding BLOCK_L-long slices of its rows and columns: a
    # 16-pixel chunk keeps them in registers
    bo, bl, bc = 32 if c_out > 16 else 16, 16 if pooled.dtype == torch.float32 else 32, 32 if c > 16 else 16
    tiles = triton.cdiv(c_out, bo) * triton.cdiv(c, bc)
    split = max(1, min(n, 256 // tiles))  # enough programs to fill a GPU when C_out x C is small
    n_per = triton.cdiv(max(n, 1), split)
    split = triton.cdiv(max(n, 1), n_per)
    gw_parts = torch.empty(split, c_out, c, dtype=_acc(pooled), device=pooled.device)
    gb_parts = torch.empty(split, c_out, dtype=_acc(pooled), device=pooled.device)
    grid = (tiles * split,)
    wrap_triton(_fusion_conv_dw_kernel)[grid](dy, pooled, gw_parts, gb_parts, n, c, c_out, ho * wo, n_per,
                                              BLOCK_O=bo, BLOCK_C=bc, BLOCK_L=bl, **_gemm_consts(pooled))
    gw = gw_parts.sum(0).reshape(weight.shape).to(weight.dtype)
    gb = gb_parts.sum(0).to(weight.dtype)
    return gw, gb


def _launch_dp(dy, weight, gp, out, c_in, c_off, c_total, h, w, ho, wo, pool, spread):
    n, c_out = dy.shape[:2]
    bc, bl, bo = 32 if c_in > 16 else 16, 64, 32 if c_out > 16 else 16
    grid = (triton.cdiv(c_in, bc) * triton.cdiv(ho * wo, bl) * n,)
    w2 = weight.reshape(c_out, c_total).contiguous()
    wrap_triton(_fusion_conv_bwd_kernel)[grid](dy, w2, gp if gp is not None else dy, out, c_in, c_off,
                                               c_total, c_out, h, w, ho, wo, P=pool, SPREAD=spread,
                                               HAS_GP=gp is not None, BLOCK_C=bc, BLOCK_L=bl, BLOCK_O=bo,
                                               **_gemm_consts(dy))


# ---- fusion_conv ----


def fusion_conv(
    xs: list[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor | None, pool: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton ``fusion_conv``: returns ``(y, P)`` like ``fer_kernels::fusion_conv``."""
    n, _, h, w = xs[0].shape
    c_total = sum(x.shape[1] for x in xs)
    with _common.device_guard(xs[0]):
        pooled = xs[0].new_empty(n, c_total, h // pool, w // pool)
        off = 0
        for x in xs:
            _launch_pool(x, pooled, x, x, c_total, off, pool, False)
            off += x.shape[1]
        return _launch_gemm(pooled, weight, bias), pooled


def fusion_conv_backward(
    grad_out: torch.Tensor,
    grad_pooled: torch.Tensor | None,
    pooled: torch.Tensor,
    weight: torch.Tensor,
    channels: list[int],
    height: int,
    width: int,
    pool: int,
    input_grad: bool,
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    dy = grad_out.contiguous()
    gp = grad_pooled.contiguous() if grad_pooled is not None else None
    with _common.device_guard(pooled):
        gw, gb = _launch_weight_grads(dy, pooled, weight)
        gxs = []
        if input_grad:
            n, c_total, ho, wo = pooled.shape
            ragged = height % pool != 0 or width % pool != 0
            off = 0
            for ci in channels:
                make = torch.zeros if ragged else torch.empty
                gx = make(n, ci, height, width, dtype=pooled.dtype, device=pooled.device)
                _launch_dp(dy, weight, gp, gx, ci, off, c_total, height, width, ho, wo, pool, True)
                gxs.append(gx)
                off += ci
    return gxs, gw, gb


# ---- transition ----


def _scale_shift(norm_weight, norm_bias, mean32, var32, eps):
    invstd = torch.rsqrt(var32 + eps)
    scale = norm_weight.to(mean32.dtype) * invstd
    shift = norm_bias.to(mean32.dtype) - mean32 * scale
    return scale.contiguous(), shift.contiguous(), invstd.contiguous()


def _stats32(x, mean, var):
    """Batch statistics (mean/var None) or the given statistics, in the accumulation dtype."""
    n, c, h, w = x.shape
    if mean is None:
        shift = x[0, :, 0, 0].to(_acc(x)).contiguous()
        s, u_per = _split(c, n * triton.cdiv(h * w, _BLOCK_1D), x)
        part = torch.empty(c, s, 2, dtype=_acc(x), device=x.device)
        wrap_triton(_transition_stats_kernel)[(c, s)](
            x, shift, part, n, h * w, w, *x.stride(), u_per, BLOCK=_BLOCK_1D
        )
        sums = part.sum(1)
        mu = sums[:, 0] / (n * h * w)
        return shift + mu, (sums[:, 1] / (n * h * w) - mu * mu).clamp_min(0)
    return mean.to(_acc(x)).contiguous(), var.to(_acc(x)).contiguous()


def transition(
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    mean: torch.Tensor | None,
    var: torch.Tensor | None,
    conv_weight: torch.Tensor,
    conv_bias: torch.Tensor | None,
    eps: float,
    pool: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triton ``transition``: returns ``(y, mean, var)`` like ``fer_kernels::transition``."""
    n, c, h, w = x.shape
    with _common.device_guard(x):
        m32, v32 = _stats32(x, mean, var)
        scale, shift, _ = _scale_shift(norm_weight, norm_bias, m32, v32, eps)
        pooled = x.new_empty(n, c, h // pool, w // pool)
        _launch_pool(x, pooled, scale, shift, c, 0, pool, True)
        return (
            _launch_gemm(pooled, conv_weight, conv_bias),
            m32.to(x.dtype, copy=True),
            v32.to(x.dtype, copy=True),
        )


def transition_backward(
    grad_out: torch.Tensor,
    x: torch.Tensor,
    norm_weight: torch.Tensor,
    norm_bias: torch.Tensor,
    mean: torch.Tensor,
    var: torch.Tensor,
    conv_weight: torch.Tensor,
    batch_stats: bool,
    eps: float,
    pool: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, c, h, w = x.shape
    ho, wo = h // pool, w // pool
    dy = grad_out.contiguous()
    with _common.device_guard(x):
        m32, v32 = mean.to(_acc(x)).contiguous(), var.to(_acc(x)).contiguous()
        scale, shift, invstd = _scale_shift(norm_weight, norm_bias, m32, v32, eps)
        dp = torch.empty(n, c, ho, wo, dtype=_acc(x), device=x.device)
        _launch_dp(dy, conv_weight, None, dp, c, 0, c, h, w, ho, wo, pool, False)
        pooled = x.new_empty(n, c, ho, wo)
        s, u_per = _split(c, n * triton.cdiv(ho * wo, _BLOCK_1D), x)
        part = torch.empty(c, s, 2, dtype=_acc(x), device=x.device)
        wrap_triton(_transition_bwd_reduce_kernel)[(c, s)](
            x, dp, scale, shift, m32, invstd, pooled, part, n, c, ho, wo, *x.stride(), u_per, P=pool,
            BLOCK=_BLOCK_1D
        )
        red = part.sum(1)  # (C, 2): sum dz, sum dz*xhat
        gx = torch.empty(n, c, h, w, dtype=x.dtype, device=x.device)
        grid = (n * c * triton.cdiv(h * w, _BLOCK_1D),)
        wrap_triton(_transition_bwd_dx_kernel)[grid](
            x,
            dp,
            scale,
            shift,
            m32,
            invstd,
            red,
            gx,
            c,
            h,
            w,
            ho,
            wo,
            *x.stride(),
            n * h * w,
            P=pool,
            BATCH=batch_stats,
            BLOCK=_BLOCK_1D,
        )
        gw, gb = _launch_weight_grads(dy, pooled, conv_weight)
    return gx, red[:, 1].to(x.dtype, copy=True), red[:, 0].to(x.dtype, copy=True), gw, gb
