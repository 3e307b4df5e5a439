"""Triton kernels of the dense_block family (DESIGN section 4), forward and backward.

Kernels (all on the block buffer ``buf`` (N, C0+L*k, H*W), the saved bottleneck outputs ``h``
(L, N, 4k, H*W)):

- ``_dense_block_fwd_kernel``: implicit-GEMM convolution (1x1 or 3x3 pad 1, optionally flipped), rows =
  pixels, columns = output channels, reduction over (input channel, tap). Prologue: BN-ReLU
  ``relu(scale[c] * v + shift[c])`` applied to the loaded tile (never written out), zero outside the image.
  Epilogue: store, plus per-channel ``sum`` / ``sum of squares`` atomically added (the statistics of the
  channels it produces, computed once and reused by every later layer); or, in backward, the ReLU mask of a
  recomputed BN pre-activation and the BN-backward sums ``sum(dz)``, ``sum(dz * xhat)``.
  Forward uses it for conv1 (BN1-ReLU prologue) and conv2 (BN2-ReLU prologue); backward for the data
  gradients ``dc = W2r * flip(gy)`` and ``da = W1^T dh`` with the mask epilogue.
- ``_dense_block_bwd_kernel``: weight gradient ``dW[o, q] = sum_m g[m, o] * col[m, q]`` with the BN-ReLU
  prologue recomputing ``col`` (a or c) from the buffer / h; split over pixels, atomically reduced.
- ``_dense_block_stats_kernel``: statistics of the block input channels.
- ``_dense_block_bn_bwd_kernel``: the per-channel BN input gradient ``A*((dz - B) - C*(x - mean))``
  (written, or accumulated into the buffer's gradient).

Every ``tl.dot`` names its ``out_dtype`` (the accumulator's): float32 uses ``input_precision="ieee"``;
float16/bfloat16 feed the tensor cores in their dtype and accumulate in float32; float64 (for gradcheck)
stays float64. Saved for backward: the buffer, h and the statistics, as in the C++ backend.

Grids are 1-d (tile counts grow with the batch and the channels; only axis 0 reaches 2^31 - 1), pixel
tiles fastest. A pixel tile is a run of the flattened (sample, pixel) index ``m`` and may straddle samples:
its rows' sample index is 64-bit and so is every offset scaled by a sample stride or a channel plane
(``c * H*W``); offsets within one plane (pixel, 3x3 tap) are 32-bit. Tile sizes (``_conv_config``,
``_wgrad_config``) follow the tensors (``_common.on_gpu``): small for the interpreter, and on a GPU sized so
that every kernel compiles without register spills on sm_80/sm_90. Both ops launch under the device guard of
their inputs.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fer_kernels.triton import _common
from fer_kernels.triton._common import load_2d, span, store_2d, unravel3


@triton.jit
def _pixel_rows(m0, M, HW, BLOCK_M: tl.constexpr):
    """Rows m0 .. m0 + BLOCK_M - 1 of the flattened (sample, pixel) index, m0 a 64-bit scalar.

    Returns (n, p, mask): each row's sample (int64) and pixel (int32), one 64-bit division per tile.
    """
    n0 = m0 // HW
    q = (m0 - n0 * HW).to(tl.int32) + tl.arange(0, BLOCK_M)
    n = n0 + q // HW
    p = q % HW
    mask = tl.arange(0, BLOCK_M) < M - m0
    return n, p, mask


@triton.jit
def _pixel_channel_tile(M, HW, C, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """(n, p, mmask, offs_c, cmask, planes) of a program of the 1-d grid over (channel tile, pixel tile),
    pixel tiles fastest: rows as in _pixel_rows, its channels and their 64-bit plane offsets ``c * HW``."""
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n, p, mmask = _pixel_rows((pid % n_m).to(tl.int64) * BLOCK_M, M, HW, BLOCK_M)
    offs_c, cmask = span((pid // n_m) * BLOCK_C, BLOCK_C, C)
    return n, p, mmask, offs_c, cmask, offs_c.to(tl.int64) * HW


@triton.jit
def _taps(k, KS: tl.constexpr, FLIP: tl.constexpr):
    """(ci, oy, ox) of reduction indices ``k = ci * KS*KS + tap``: a 3x3 tap's row and column offset (pad 1),
    mirrored when FLIP; 1x1 offsets are never read."""
    if KS == 1:
        return k, k * 0, k * 0
    else:
        r = k % 9
        if FLIP:
            return k // 9, 1 - r // 3, 1 - r % 3
        else:
            return k // 9, r // 3 - 1, r % 3 - 1


@triton.jit
def _im2col(src, rows, planes, p, y, x, oy, ox, mmask, kmask, H, W, KS: tl.constexpr):
    """(col, valid): ``col[m, k] = src[rows[m] + planes[k] + (y[m] + oy[k]) * W + x[m] + ox[k]]`` of the
    implicit GEMM, masked to the tile and (3x3) the image; ``valid`` says where it was read."""
    if KS == 1:
        valid = mmask[:, None] & kmask[None, :]
        sp = p[:, None]
    else:
        sy = y[:, None] + oy[None, :]
        sx = x[:, None] + ox[None, :]
        valid = mmask[:, None] & kmask[None, :] & (sy >= 0) & (sy < H) & (sx >= 0) & (sx < W)
        sp = sy * W + sx
    return tl.load(src + rows[:, None] + planes[None, :] + sp, mask=valid, other=0.0), valid


@triton.jit
def _mma(a, b, acc, DOT: tl.constexpr, ACC: tl.constexpr):
    """``acc + a @ b`` in ACC. DOT 0: float64; 1: float32 with exact products; 2: float16/bfloat16 inputs, the
    float32 operand converted back to the other's dtype for the tensor cores."""
    if DOT == 0:
        return tl.dot(a.to(ACC), b.to(ACC), acc, out_dtype=ACC)
    elif DOT == 1:
        return tl.dot(a.to(ACC), b.to(ACC), acc, input_precision="ieee", out_dtype=ACC)
    elif a.dtype == tl.float32:
        return tl.dot(a.to(b.dtype), b, acc, out_dtype=ACC)
    else:
        return tl.dot(a, b.to(a.dtype), acc, out_dtype=ACC)


@triton.jit
def _chan(ptr, offs, mask, ACC: tl.constexpr):
    """Per-channel vector ``ptr[offs]`` in ACC (0 where masked)."""
    return tl.load(ptr + offs, mask=mask, other=0.0).to(ACC)


@triton.jit
def _add_col_sums(s1_ptr, s2_ptr, offs, mask, x, y):
    """Atomically add the column sums of x to ``s1[offs]`` and those of y to ``s2[offs]``."""
    tl.atomic_add(s1_ptr + offs, tl.sum(x, 0).to(s1_ptr.dtype.element_ty), mask=mask)
    tl.atomic_add(s2_ptr + offs, tl.sum(y, 0).to(s2_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dense_block_fwd_kernel(src, src_sn, scale, shift, w, dst, dst_sn, aux, aux_sn, mean, invstd, s1_ptr,
                            s2_ptr, M, HW, H, W, CIN, COUT,
                            KS: tl.constexpr, FLIP: tl.constexpr, PRO: tl.constexpr, EPI: tl.constexpr,
                            STATS: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # 1-d grid over (output-channel tile, pixel tile), pixel tiles fastest.
    pid = tl.program_id(0)
    n_m = tl.cdiv(M, BLOCK_M)
    n, p, mmask = _pixel_rows((pid % n_m).to(tl.int64) * BLOCK_M, M, HW, BLOCK_M)
    y = p // W
    x = p % W
    src_rows = n * src_sn
    offs_n, nmask = span((pid // n_m) * BLOCK_N, BLOCK_N, COUT)
    ktot = CIN * KS * KS
    w_cols = offs_n.to(tl.int64) * ktot
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    for k0 in range(0, ktot, BLOCK_K):
        offs_k, kmask = span(k0, BLOCK_K, ktot)
        ci, oy, ox = _taps(offs_k, KS, FLIP)
        v, valid = _im2col(src, src_rows, ci.to(tl.int64) * HW, p, y, x, oy, ox, mmask, kmask, H, W, KS)
        v = v.to(ACC)
        if PRO:
            s = _chan(scale, ci, kmask, ACC)
            t = _chan(shift, ci, kmask, ACC)
            v = tl.where(valid, tl.maximum(v * s[None, :] + t[None, :], 0.0), 0.0)
        acc = _mma(v, load_2d(w, offs_k, kmask, w_cols, nmask), acc, DOT, ACC)
    omask = mmask[:, None] & nmask[None, :]
    planes = offs_n.to(tl.int64) * HW
    if EPI == 1:
        # backward: ReLU mask of the recomputed BN pre-activation of aux (h or x), and BN-backward sums
        hv = load_2d(aux, n * aux_sn + p, mmask, planes, nmask).to(ACC)
        s = _chan(scale, offs_n, nmask, ACC)
        t = _chan(shift, offs_n, nmask, ACC)
        xhat = (hv - _chan(mean, offs_n, nmask, ACC)[None, :]) * _chan(invstd, offs_n, nmask, ACC)[None, :]
        acc = tl.where(omask & (hv * s[None, :] + t[None, :] > 0), acc, 0.0)
        second = acc * xhat
    else:
        acc = tl.where(omask, acc, 0.0)
        second = acc * acc
    if STATS:
        _add_col_sums(s1_ptr, s2_ptr, offs_n, nmask, acc, second)
    store_2d(dst, n * dst_sn + p, mmask, planes, nmask, acc)


@triton.jit
def _dense_block_bwd_kernel(g, g_sn, src, src_sn, scale, shift, dw, M, HW, H, W, CIN, COUT, M_PER_PROG,
                            KS: tl.constexpr, DOT: tl.constexpr, ACC: tl.constexpr,
                            BLOCK_M: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_Q: tl.constexpr):
    # 1-d grid over (pixel split s, q tile, o tile), o tiles fastest; program s reduces rows
    # [s * M_PER_PROG, (s + 1) * M_PER_PROG) in BLOCK_M chunks and atomically adds its dW tile.
    qtot = CIN * KS * KS
    pid_o, pid_q, pid_s = unravel3(tl.program_id(0), tl.cdiv(COUT, BLOCK_O), tl.cdiv(qtot, BLOCK_Q))
    offs_o, omask = span(pid_o * BLOCK_O, BLOCK_O, COUT)
    offs_q, qmask = span(pid_q * BLOCK_Q, BLOCK_Q, qtot)
    ci, oy, ox = _taps(offs_q, KS, False)
    g_planes = offs_o.to(tl.int64) * HW
    src_planes = ci.to(tl.int64) * HW
    s = _chan(scale, ci, qmask, ACC)
    t = _chan(shift, ci, qmask, ACC)
    acc = tl.zeros((BLOCK_O, BLOCK_Q), dtype=ACC)
    m_start = pid_s.to(tl.int64) * M_PER_PROG
    m_end = tl.minimum(M, m_start + M_PER_PROG)
    for mi in range(0, M_PER_PROG, BLOCK_M):
        n, p, mmask = _pixel_rows(m_start + mi, m_end, HW, BLOCK_M)
        gt = load_2d(g, n * g_sn + p, mmask, g_planes, omask)
        v, valid = _im2col(src, n * src_sn, src_planes, p, p // W, p % W, oy, ox, mmask, qmask, H, W, KS)
        v = tl.where(valid, tl.maximum(v.to(ACC) * s[None, :] + t[None, :], 0.0), 0.0)
        acc = _mma(tl.trans(gt), v, acc, DOT, ACC)
    tl.atomic_add(dw + (offs_o.to(tl.int64) * qtot)[:, None] + offs_q[None, :], acc.to(dw.dtype.element_ty),
                  mask=omask[:, None] & qmask[None, :])


@triton.jit
def _dense_block_stats_kernel(src, src_sn, s1_ptr, s2_ptr, M, HW, C, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                              BLOCK_C: tl.constexpr):
    n, p, mmask, offs_c, cmask, planes = _pixel_channel_tile(M, HW, C, BLOCK_M, BLOCK_C)
    v = load_2d(src, n * src_sn + p, mmask, planes, cmask).to(ACC)
    _add_col_sums(s1_ptr, s2_ptr, offs_c, cmask, v, v * v)


@triton.jit
def _dense_block_bn_bwd_kernel(dst, dst_sn, d, d_sn, xs, xs_sn, A, Bc, Cc, mean, M, HW, C,
                               ACCUM: tl.constexpr, ACC: tl.constexpr, BLOCK_M: tl.constexpr,
                               BLOCK_C: tl.constexpr):
    n, p, mmask, offs_c, cmask, planes = _pixel_channel_tile(M, HW, C, BLOCK_M, BLOCK_C)
    dz = load_2d(d, n * d_sn + p, mmask, planes, cmask).to(ACC)
    xv = load_2d(xs, n * xs_sn + p, mmask, planes, cmask).to(ACC)
    a = _chan(A, offs_c, cmask, ACC)
    b = _chan(Bc, offs_c, cmask, ACC)
    c = _chan(Cc, offs_c, cmask, ACC)
    mu = _chan(mean, offs_c, cmask, ACC)
    out = a[None, :] * ((dz - b[None, :]) - c[None, :] * (xv - mu[None, :]))
    rows = n * dst_sn + p
    if ACCUM:
        out += load_2d(dst, rows, mmask, planes, cmask).to(ACC)
    store_2d(dst, rows, mmask, planes, cmask, out)


def _modes(dtype):
    """(DOT mode, accumulator dtype, statistics dtype) for an input dtype."""
    if dtype == torch.float64:
        return 0, tl.float64, torch.float64
    if dtype == torch.float32:
        return 1, tl.float32, torch.float32
    return 2, tl.float32, torch.float32


def _conv_config(t):
    """Tiles (and pipeline depth) of the convolution kernel for tensors like ``t``.

    The interpreter runs on CPU: small tiles keep it quick (tl.dot needs every dimension >= 16); float64 keeps
    them on a GPU too (its dots are slow and only gradcheck uses it). float32 dots are ieee FMA loops in which
    every thread holds a BLOCK_K slice of its rows and columns: float32 takes half the K chunk of the
    tensor-core dtypes and a 2-stage pipeline, which keeps it within the register file on sm_80/sm_90.
    """
    if t.dtype == torch.float64 or not _common.on_gpu(t):
        return dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=16)
    if t.dtype == torch.float32:
        return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=16, num_stages=2)
    return dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=32)


def _wgrad_config(t):
    """Tiles of the weight-gradient kernel for tensors like ``t``.

    BLOCK_M is the dot's reduction chunk: the gathered BN-ReLU column tile (BLOCK_M x BLOCK_Q) and, in
    float32, the FMA dot's per-thread row and column slices must fit in registers next to the 16 x BLOCK_Q dW
    tile.
    """
    if t.dtype == torch.float64 or not _common.on_gpu(t):
        return dict(BLOCK_M=16, BLOCK_O=16, BLOCK_Q=16)
    if t.dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_O=16, BLOCK_Q=32)
    return dict(BLOCK_M=64, BLOCK_O=16, BLOCK_Q=32)


def _conv(src, scale, shift, w, dst, m, hw, h, wd, cin, cout, ks, flip, pro, epi, stats, aux=None, mean=None,
          invstd=None, s1=None, s2=None):
    dot, acc, _ = _modes(src.dtype)
    cfg = _conv_config(src)
    dummy = scale if scale is not None else w
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(cout, cfg["BLOCK_N"]),)
    wrap_triton(_dense_block_fwd_kernel)[grid](
        src, src.stride(0), dummy if scale is None else scale, dummy if shift is None else shift, w, dst,
        dst.stride(0), dst if aux is None else aux, 0 if aux is None else aux.stride(0),
        dummy if mean is None else mean, dummy if invstd is None else invstd,
        dummy if s1 is None else s1, dummy if s2 is None else s2,
        m, hw, h, wd, cin, cout, KS=ks, FLIP=flip, PRO=pro, EPI=epi, STATS=stats, DOT=dot, ACC=acc, **cfg)


def _wgrad(g, src, scale, shift, dw, m, hw, h, wd, cin, cout, ks):
    dot, acc, _ = _modes(src.dtype)
    cfg = _wgrad_config(src)
    bm = cfg["BLOCK_M"]
    m_per = max(bm, triton.cdiv(triton.cdiv(m, 64), bm) * bm)  # at most 64 pixel splits
    tiles = triton.cdiv(cout, cfg["BLOCK_O"]) * triton.cdiv(cin * ks * ks, cfg["BLOCK_Q"])
    grid = (tiles * triton.cdiv(m, m_per),)
    wrap_triton(_dense_block_bwd_kernel)[grid](g, g.stride(0), src, src.stride(0), scale, shift, dw, m, hw, h,
                                               wd, cin, cout, m_per, KS=ks, DOT=dot, ACC=acc, **cfg)


def _stats(src, s1, s2, m, hw, c):
    grid = (triton.cdiv(m, 64) * triton.cdiv(c, 16),)
    wrap_triton(_dense_block_stats_kernel)[grid](src, src.stride(0), s1, s2, m, hw, c,
                                                 ACC=_modes(src.dtype)[1], BLOCK_M=64, BLOCK_C=16)


def _bn_bwd(dst, d, xs, A, Bc, Cc, mean, m, hw, c, accum):
    _, acc, _ = _modes(dst.dtype)
    grid = (triton.cdiv(m, 64) * triton.cdiv(c, 16),)
    wrap_triton(_dense_block_bn_bwd_kernel)[grid](dst, dst.stride(0), d, d.stride(0), xs, xs.stride(0), A, Bc,
                                                  Cc, mean, m, hw, c, ACCUM=accum, ACC=acc, BLOCK_M=64,
                                                  BLOCK_C=16)


def _affine(gamma, beta, mean, var, eps):
    invstd = (var + eps).rsqrt()
    scale = gamma.to(invstd.dtype) * invstd
    return scale, beta.to(invstd.dtype) - mean * scale, invstd


def dense_block(x: torch.Tensor, norm1_weight: list[torch.Tensor], norm1_bias: list[torch.Tensor],
                        norm1_mean: list[torch.Tensor], norm1_var: list[torch.Tensor],
                        conv1_weight: list[torch.Tensor], norm2_weight: list[torch.Tensor],
                        norm2_bias: list[torch.Tensor], norm2_mean: list[torch.Tensor],
                        norm2_var: list[torch.Tensor], conv2_weight: list[torch.Tensor], training: bool,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                                             torch.Tensor, torch.Tensor]:
    """Triton dense block; same arguments and outputs as ``fer_kernels::dense_block`` (statistics in float32,
    float64 for float64 inputs). Registered as ``fer_kernels::dense_block_triton`` by fer_kernels.ops."""
    with _common.device_guard(x):
        n, c0, hh, ww = x.shape
        L, k, b = len(conv1_weight), conv2_weight[0].shape[0], conv1_weight[0].shape[0]
        ctot, hw = c0 + L * k, hh * ww
        m = n * hw
        _, _, sdt = _modes(x.dtype)
        buf = x.new_empty(n, ctot, hh, ww)
        buf[:, :c0].copy_(x)
        hbuf = x.new_empty(L, n, b, hh, ww)
        xs1 = torch.zeros(ctot, dtype=sdt, device=x.device)
        xs2 = torch.zeros(ctot, dtype=sdt, device=x.device)
        hs1 = torch.zeros(L, b, dtype=sdt, device=x.device)
        hs2 = torch.zeros(L, b, dtype=sdt, device=x.device)
        xmean = xvar = None
        if training:
            _stats(buf, xs1, xs2, m, hw, c0)
        for i in range(L):
            c = c0 + i * k
            if training:
                xmean = xs1 / m
                xvar = (xs2 / m - xmean * xmean).clamp_min(0)
                s1, t1, _ = _affine(norm1_weight[i], norm1_bias[i], xmean[:c], xvar[:c], eps)
            else:
                s1, t1, _ = _affine(norm1_weight[i], norm1_bias[i], norm1_mean[i].to(sdt),
                                    norm1_var[i].to(sdt), eps)
            hl = hbuf[i]
            _conv(buf, s1, t1, conv1_weight[i].contiguous(), hl, m, hw, hh, ww, c, b, 1, False, True, 0,
                  training, s1=hs1[i], s2=hs2[i])
            if training:
                hm = hs1[i] / m
                hv = (hs2[i] / m - hm * hm).clamp_min(0)
                s2, t2, _ = _affine(norm2_weight[i], norm2_bias[i], hm, hv, eps)
            else:
                s2, t2, _ = _affine(norm2_weight[i], norm2_bias[i], norm2_mean[i].to(sdt),
                                    norm2_var[i].to(sdt), eps)
            _conv(hl, s2, t2, conv2_weight[i].contiguous(), buf[:, c:], m, hw, hh, ww, b, k, 3, False, True,
                  0, training, s1=xs1[c:], s2=xs2[c:])
        if not training:
            e = x.new_empty(0, dtype=sdt)
            return buf, hbuf, e, e.clone(), e.clone(), e.clone()
        xmean = xs1 / m
        hmean = hs1 / m
        return (buf, hbuf, xmean, (xs2 / m - xmean * xmean).clamp_min(0), hmean,
                (hs2 / m - hmean * hmean).clamp_min(0))


def dense_block_backward(
        grad_out: torch.Tensor, out: torch.Tensor, h: torch.Tensor, xmean: torch.Tensor, xvar: torch.Tensor,
        hmean: torch.Tensor, hvar: torch.Tensor, norm1_weight: list[torch.Tensor],
        norm1_bias: list[torch.Tensor], norm1_mean: list[torch.Tensor], norm1_var: list[torch.Tensor],
        conv1_weight: list[torch.Tensor],
        norm2_weight: list[torch.Tensor], norm2_bias: list[torch.Tensor], norm2_mean: list[torch.Tensor],
        norm2_var: list[torch.Tensor], conv2_weight: list[torch.Tensor], training: bool, eps: float,
) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor],
           list[torch.Tensor], list[torch.Tensor]]:
    """Backward of :func:`dense_block`: layers in reverse, a and c recomputed inside the kernels."""
    with _common.device_guard(out):
        n, ctot, hh, ww = out.shape
        L, k, b = len(conv1_weight), conv2_weight[0].shape[0], conv1_weight[0].shape[0]
        c0, hw = ctot - L * k, hh * ww
        m = n * hw
        _, _, sdt = _modes(out.dtype)
        gbuf = grad_out.contiguous().clone()
        dz2 = out.new_empty(n, b, hh, ww)
        dh = out.new_empty(n, b, hh, ww)
        dz1 = out.new_empty(n, ctot - k, hh, ww)
        gg1, gb1, gw1, gg2, gb2, gw2 = ([None] * L for _ in range(6))
        for i in range(L - 1, -1, -1):
            c = c0 + i * k
            if training:
                m1, v1, m2, v2 = xmean[:c], xvar[:c], hmean[i], hvar[i]
            else:
                m1, v1 = norm1_mean[i].to(sdt), norm1_var[i].to(sdt)
                m2, v2 = norm2_mean[i].to(sdt), norm2_var[i].to(sdt)
            s1, t1, is1 = _affine(norm1_weight[i], norm1_bias[i], m1, v1, eps)
            s2, t2, is2 = _affine(norm2_weight[i], norm2_bias[i], m2, v2, eps)
            hl = h[i]
            gy = gbuf[:, c:]
            w2 = conv2_weight[i]
            dw2 = torch.zeros(w2.shape, dtype=sdt, device=out.device)
            _wgrad(gy, hl, s2, t2, dw2, m, hw, hh, ww, b, k, 3)
            sum2 = torch.zeros(b, dtype=sdt, device=out.device)
            sumx2 = torch.zeros(b, dtype=sdt, device=out.device)
            w2r = w2.permute(1, 0, 2, 3).contiguous()
            _conv(gy, s2, t2, w2r, dz2, m, hw, hh, ww, k, b, 3, True, False, 1, True, aux=hl, mean=m2,
                  invstd=is2, s1=sum2, s2=sumx2)
            A2, B2, C2 = _bn_coefs(norm2_weight[i], is2, m2, sum2, sumx2, m, training)
            _bn_bwd(dh, dz2, hl, A2, B2, C2, m2, m, hw, b, False)
            w1 = conv1_weight[i]
            dw1 = torch.zeros(w1.shape, dtype=sdt, device=out.device)
            _wgrad(dh, out, s1, t1, dw1, m, hw, hh, ww, c, b, 1)
            sum1 = torch.zeros(c, dtype=sdt, device=out.device)
            sumx1 = torch.zeros(c, dtype=sdt, device=out.device)
            w1t = w1.reshape(b, c).t().contiguous()
            _conv(dh, s1, t1, w1t, dz1, m, hw, hh, ww, b, c, 1, False, False, 1, True, aux=out, mean=m1,
                  invstd=is1, s1=sum1, s2=sumx1)
            A1, B1, C1 = _bn_coefs(norm1_weight[i], is1, m1, sum1, sumx1, m, training)
            _bn_bwd(gbuf, dz1, out, A1, B1, C1, m1, m, hw, c, True)
            gg1[i], gb1[i], gw1[i] = sumx1.to(out.dtype), sum1.to(out.dtype), dw1.to(out.dtype)
            gg2[i], gb2[i], gw2[i] = sumx2.to(out.dtype), sum2.to(out.dtype), dw2.to(out.dtype)
        return gbuf[:, :c0].contiguous(), gg1, gb1, gw1, gg2, gb2, gw2


def _bn_coefs(gamma, invstd, mean, s_dz, s_dzx, m, training):
    """BN input gradient as ``A * ((dz - B) - C * (x - mean))`` per channel (DESIGN section 4): the
    subtractions come before the scaling, so a nearly constant dz (or |mean| >> std) cancels exactly."""
    a = gamma.to(invstd.dtype) * invstd
    if not training:
        return a, torch.zeros_like(a), torch.zeros_like(a)
    return a, s_dz / m, invstd * s_dzx / m
