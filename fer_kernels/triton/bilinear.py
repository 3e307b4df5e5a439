"""bilinear Triton kernels: bilinear pooling and the fused bilinear classifier, forward and backward.

Math (DESIGN section 4), per sample n with A = a[n] (Ca, L), B = b[n] (Cb, L):
``Y = A B^T`` (/ L if mean), ``s = sign(Y) sqrt(|Y| + eps)``, ``z = s / max(||s||, 1e-12)``,
``logits = W z + bias``. float32 runs with ieee-precision dots, float16/bfloat16 load in their dtype and
accumulate in float32, float64 in float64.

Tiling: one program per (sample, BI x BJ tile of Y); Y is accumulated over L in BL chunks with ``tl.dot``
(tile sizes in ``_consts``: 32 x 32 x 32, smaller on a GPU where a kernel would otherwise spill registers).
Grids are 1-d, sample-major with the tile index fastest (the batch and the tile counts both grow, and only
axis 0 reaches 2^31 - 1). Offsets scaled by a sample, a channel row (``i * L``, ``i * Cb``) or a class
(``k * Ca*Cb``) are 64-bit; offsets along one row (a pixel of L, a column j) stay 32-bit.
The pool stores s and atomically adds its tile's ``||s||^2``; a second kernel scales by
``1/max(||s||, 1e-12)``.
The classifier never writes s: each program atomically adds its tile's ``||s||^2`` and its K partial dot
products ``W_k . s``. Backward recomputes Y tiles (classifier) or reads z (pool), forms the tile of
``dY = ds * sign(Y)^2 * 0.5 / sqrt(|Y| + eps)`` in registers and multiplies it straight into dA (programs own
rows of A) or dB (programs own rows of B); the classifier's dW is accumulated with atomics.
Saved for backward: a, b, norms and z (pool) or logits (classifier).

Launchers: ``bilinear_pool``, ``bilinear_pool_backward``, ``bilinear_classifier``,
``bilinear_classifier_backward``, each launching under the device guard of its inputs
(``_common.device_guard``); fer_kernels.ops.bilinear registers them as the ops
``fer_kernels::bilinear_*_triton`` with their autograd. On CPU tensors only under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.library import wrap_triton

from fer_kernels.triton import _common
from fer_kernels.triton._common import unravel3


@triton.jit
def _y_tile(A, B, n, offs_i, offs_j, Ca, Cb, L, BI: tl.constexpr, BJ: tl.constexpr, BL: tl.constexpr,
            ACC: tl.constexpr, PREC: tl.constexpr):
    """Y[offs_i, offs_j] of sample n (int64): sum over L of A[n, i, l] B[n, j, l], in ACC."""
    acc = tl.zeros((BI, BJ), dtype=ACC)
    offs_l = tl.arange(0, BL)
    a_rows = A + n * Ca * L + offs_i.to(tl.int64) * L  # n is int64
    b_rows = B + n * Cb * L + offs_j.to(tl.int64) * L
    for l0 in range(0, L, BL):
        ll = l0 + offs_l
        a = tl.load(a_rows[:, None] + ll[None, :], mask=(offs_i[:, None] < Ca) & (ll[None, :] < L), other=0.0)
        bt = tl.load(b_rows[None, :] + ll[:, None], mask=(offs_j[None, :] < Cb) & (ll[:, None] < L),
                     other=0.0)
        acc = tl.dot(a, bt, acc, input_precision=PREC, out_dtype=ACC)
    return acc


@triton.jit
def _tile_ij(Ca, Cb, BI: tl.constexpr, BJ: tl.constexpr):
    """(n, offs_i, offs_j) of a program of the 1-d grid over (n, i tile, j tile), j tiles fastest (they share
    the A rows of their i tile); n is int64."""
    pid_j, pid_i, n = unravel3(tl.program_id(0), tl.cdiv(Cb, BJ), tl.cdiv(Ca, BI))
    return n.to(tl.int64), pid_i * BI + tl.arange(0, BI), pid_j * BJ + tl.arange(0, BJ)


@triton.jit
def _row_tile(X, n, rows, R, cols, C):
    """(pointers, mask) of the tile ``X[n, rows, cols]`` of a contiguous (N, R, C) tensor; n is int64."""
    ptrs = X + n * R * C + (rows.to(tl.int64) * C)[:, None] + cols[None, :]
    return ptrs, (rows[:, None] < R) & (cols[None, :] < C)


@triton.jit
def _sqrt(x):
    """Correctly rounded square root (tl.sqrt_rn is float32 only; float64 tl.sqrt is exact)."""
    if x.dtype == tl.float64:
        return tl.sqrt(x)
    else:
        return tl.sqrt_rn(x)


@triton.jit
def _signed_sqrt(y, eps):
    """(s, ds/dy): sign(y) sqrt(|y| + eps) and sign(y)^2 * 0.5 / sqrt(|y| + eps) (both 0 at y = 0)."""
    root = _sqrt(tl.abs(y) + eps)
    s = tl.where(y > 0, root, tl.where(y < 0, -root, 0.0))
    g = tl.where(y != 0, 0.5 / root, 0.0)
    return s, g


@triton.jit
def _bilinear_pool_fwd_kernel(A, B, S, NRM2, Ca, Cb, L, EPS, MEAN: tl.constexpr, SIGNED: tl.constexpr,
                              BI: tl.constexpr, BJ: tl.constexpr, BL: tl.constexpr, ACC: tl.constexpr,
                              PREC: tl.constexpr):
    n, offs_i, offs_j = _tile_ij(Ca, Cb, BI, BJ)
    eps = tl.load(EPS)
    y = _y_tile(A, B, n, offs_i, offs_j, Ca, Cb, L, BI, BJ, BL, ACC, PREC)
    if MEAN:
        y = y / L  # a division in ACC, as the reference (a float scale argument would be float32)
    if SIGNED:
        s, g = _signed_sqrt(y, eps)
    else:
        s = y
    out, mask = _row_tile(S, n, offs_i, Ca, offs_j, Cb)
    tl.store(out, s.to(S.dtype.element_ty), mask=mask)
    tl.atomic_add(NRM2 + n, tl.sum(tl.sum(s * s, axis=1), axis=0))


@triton.jit
def _bilinear_pool_scale_kernel(S, NRM2, D, BLOCK: tl.constexpr):
    # 1-d grid over (n, block of the Ca*Cb entries), blocks fastest.
    pid = tl.program_id(0)
    nblk = tl.cdiv(D, BLOCK)
    n = pid // nblk
    offs = (pid % nblk) * BLOCK + tl.arange(0, BLOCK)
    inv = 1.0 / tl.maximum(_sqrt(tl.load(NRM2 + n)), 1e-12)
    row = S + n.to(tl.int64) * D
    x = tl.load(row + offs, mask=offs < D, other=0.0)
    tl.store(row + offs, (x * inv).to(S.dtype.element_ty), mask=offs < D)


@triton.jit
def _pool_dy(Z, DZ, n, offs_i, offs_j, Ca, Cb, L, proj, invd, sfac, MEAN: tl.constexpr,
             SIGNED: tl.constexpr, ACC: tl.constexpr):
    """dY tile of the pool from the saved output: ds = (dz - z <z,dz>) / d, dY = ds * 0.5/|s| (s = z d)."""
    mask = (offs_i[:, None] < Ca) & (offs_j[None, :] < Cb)
    off = n * Ca * Cb + (offs_i.to(tl.int64) * Cb)[:, None] + offs_j[None, :]  # n is int64
    z = tl.load(Z + off, mask=mask, other=0.0).to(ACC)
    dz = tl.load(DZ + off, mask=mask, other=0.0).to(ACC)
    dy = (dz - z * proj) * invd
    if SIGNED:
        s = tl.abs(z * sfac)
        dy = tl.where(s != 0, dy * 0.5 / tl.where(s != 0, s, 1.0), 0.0)
    if MEAN:
        dy = dy / L
    return dy


@triton.jit
def _bilinear_pool_bwd_kernel(A, B, Z, DZ, PROJ, INVD, SFAC, DX, Ca, Cb, L, FOR_B: tl.constexpr,
                              MEAN: tl.constexpr, SIGNED: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr,
                              BL: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr):
    # FOR_B = False: dA[n, i-tile, l-tile] = sum_j dY[i, j] B[j, l];
    # FOR_B = True: dB[n, j-tile, l-tile] = sum_i dY[i, j] A[i, l].
    # Rows r of the program's tile are i (dA) or j (dB); q, the other one, is reduced over with X = B or A.
    # 1-d grid over (n, row tile, l tile), l tiles fastest (they share the dY rows of their row tile).
    BR: tl.constexpr = BJ if FOR_B else BI
    BQ: tl.constexpr = BI if FOR_B else BJ
    R = Cb if FOR_B else Ca
    Q = Ca if FOR_B else Cb
    X = A if FOR_B else B
    pid_l, pid_r, n = unravel3(tl.program_id(0), tl.cdiv(L, BL), tl.cdiv(R, BR))
    n = n.to(tl.int64)
    offs_l = pid_l * BL + tl.arange(0, BL)
    offs_r = pid_r * BR + tl.arange(0, BR)
    proj = tl.load(PROJ + n)
    invd = tl.load(INVD + n)
    sfac = tl.load(SFAC + n)
    acc = tl.zeros((BR, BL), dtype=ACC)
    for q0 in range(0, Q, BQ):
        offs_q = q0 + tl.arange(0, BQ)
        if FOR_B:
            dy = _pool_dy(Z, DZ, n, offs_q, offs_r, Ca, Cb, L, proj, invd, sfac, MEAN, SIGNED, ACC)
            dy = tl.trans(dy.to(X.dtype.element_ty))
        else:
            dy = _pool_dy(Z, DZ, n, offs_r, offs_q, Ca, Cb, L, proj, invd, sfac, MEAN, SIGNED, ACC)
            dy = dy.to(X.dtype.element_ty)
        x_ptrs, x_mask = _row_tile(X, n, offs_q, Q, offs_l, L)
        acc = tl.dot(dy, tl.load(x_ptrs, mask=x_mask, other=0.0), acc, input_precision=PREC, out_dtype=ACC)
    out, out_mask = _row_tile(DX, n, offs_r, R, offs_l, L)
    tl.store(out, acc.to(DX.dtype.element_ty), mask=out_mask)


@triton.jit
def _bilinear_classifier_fwd_kernel(A, B, W, NRM2, DOTS, Ca, Cb, L, K, EPS, BI: tl.constexpr,
                                    BJ: tl.constexpr, BL: tl.constexpr, ACC: tl.constexpr,
                                    PREC: tl.constexpr):
    n, offs_i, offs_j = _tile_ij(Ca, Cb, BI, BJ)
    y = _y_tile(A, B, n, offs_i, offs_j, Ca, Cb, L, BI, BJ, BL, ACC, PREC)
    s, g = _signed_sqrt(y, tl.load(EPS))
    tl.atomic_add(NRM2 + n, tl.sum(tl.sum(s * s, axis=1), axis=0))
    mask = (offs_i[:, None] < Ca) & (offs_j[None, :] < Cb)
    w_k = W + (offs_i.to(tl.int64) * Cb)[:, None] + offs_j[None, :]  # the tile of W_k, k = 0
    plane = tl.cast(Ca, tl.int64) * Cb
    for k in range(0, K):
        w = tl.load(w_k, mask=mask, other=0.0).to(ACC)
        tl.atomic_add(DOTS + n * K + k, tl.sum(tl.sum(w * s, axis=1), axis=0))
        w_k += plane


@triton.jit
def _classifier_dy(A, B, W, GL, DW, n, offs_i, offs_j, Ca, Cb, L, K, eps, invd, gfac, WITH_DW: tl.constexpr,
                   BI: tl.constexpr, BJ: tl.constexpr, BL: tl.constexpr, ACC: tl.constexpr,
                   PREC: tl.constexpr):
    """Recomputed dY tile of the classifier (and, WITH_DW, dW_k += dl_k z on the tile)."""
    y = _y_tile(A, B, n, offs_i, offs_j, Ca, Cb, L, BI, BJ, BL, ACC, PREC)
    s, g = _signed_sqrt(y, eps)
    z = s * invd
    mask = (offs_i[:, None] < Ca) & (offs_j[None, :] < Cb)
    woff = (offs_i.to(tl.int64) * Cb)[:, None] + offs_j[None, :]
    plane = tl.cast(Ca, tl.int64) * Cb
    dz = tl.zeros((BI, BJ), dtype=ACC)
    for k in range(0, K):
        glk = tl.load(GL + n * K + k).to(ACC)
        dz += glk * tl.load(W + woff, mask=mask, other=0.0).to(ACC)
        if WITH_DW:
            tl.atomic_add(DW + woff, glk * z, mask=mask)
        woff += plane  # the tile of W_{k+1}
    return (dz * invd - z * gfac) * g


@triton.jit
def _bilinear_classifier_bwd_kernel(A, B, W, GL, INVD, GFAC, DX, DW, Ca, Cb, L, K, EPS, FOR_B: tl.constexpr,
                                    BI: tl.constexpr, BJ: tl.constexpr, BL: tl.constexpr, ACC: tl.constexpr,
                                    PREC: tl.constexpr):
    # FOR_B = False: program (n, i-tile) owns dA[n, i-tile, :] (accumulated in DX, ACC dtype) and adds dW;
    # FOR_B = True: program (n, j-tile) owns dB[n, j-tile, :]. dY tiles are recomputed, never stored.
    # Rows r and the reduced index q (operand X) as in _bilinear_pool_bwd_kernel.
    # 1-d grid over (n, row tile), row tiles fastest.
    BR: tl.constexpr = BJ if FOR_B else BI
    BQ: tl.constexpr = BI if FOR_B else BJ
    R = Cb if FOR_B else Ca
    Q = Ca if FOR_B else Cb
    X = A if FOR_B else B
    pid = tl.program_id(0)
    n_r = tl.cdiv(R, BR)
    offs_r = (pid % n_r) * BR + tl.arange(0, BR)
    n = (pid // n_r).to(tl.int64)
    invd = tl.load(INVD + n)
    gfac = tl.load(GFAC + n)
    eps = tl.load(EPS)
    for q0 in range(0, Q, BQ):
        offs_q = q0 + tl.arange(0, BQ)
        if FOR_B:
            dy = _classifier_dy(A, B, W, GL, DW, n, offs_q, offs_r, Ca, Cb, L, K, eps, invd, gfac, False,
                                BI, BJ, BL, ACC, PREC)
            dy = tl.trans(dy.to(X.dtype.element_ty))
        else:
            dy = _classifier_dy(A, B, W, GL, DW, n, offs_r, offs_q, Ca, Cb, L, K, eps, invd, gfac, True,
                                BI, BJ, BL, ACC, PREC)
            dy = dy.to(X.dtype.element_ty)
        for l0 in range(0, L, BL):
            offs_l = l0 + tl.arange(0, BL)
            x_ptrs, x_mask = _row_tile(X, n, offs_q, Q, offs_l, L)
            out, out_mask = _row_tile(DX, n, offs_r, R, offs_l, L)
            prev = tl.load(out, mask=out_mask, other=0.0)
            tl.store(out, tl.dot(dy, tl.load(x_ptrs, mask=x_mask, other=0.0), prev, input_precision=PREC,
                                 out_dtype=ACC), mask=out_mask)


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _consts(t: torch.Tensor, classifier_bwd: bool = False) -> dict:
    """Launch constants for tensors like ``t``: tiles BI x BJ of Y, chunk BL of L, accumulator, dot precision
    and, on a GPU, the pipeline depth.

    Smaller GPU tiles keep the kernels within the register file: float64 operands take twice the registers,
    and float32 ieee dots are FMA loops in which every thread holds K-slices of both operands (the classifier
    backward's dA/dB dots reduce over BJ/BI next to a live dY tile).
    """
    acc = tl.float64 if t.dtype == torch.float64 else tl.float32
    prec = "ieee" if t.dtype in (torch.float32, torch.float64) else None  # 16-bit inputs: native dot
    out = dict(BI=32, BJ=32, BL=32, ACC=acc, PREC=prec)
    if _common.on_gpu(t) and t.dtype == torch.float64:
        out.update(BI=16, BJ=16, BL=16)
    elif _common.on_gpu(t) and t.dtype == torch.float32:
        out.update(dict(BI=16, BJ=16) if classifier_bwd else dict(BL=16, num_stages=2))
    return out


def _eps(eps: float, a: torch.Tensor) -> torch.Tensor:
    """eps as a one-element tensor in the accumulator dtype: a float argument would reach the kernel as
    float32, and float64 kernels need it exact."""
    return torch.full((1,), eps, dtype=_acc_dtype(a.dtype), device=a.device)


def _flat(a: torch.Tensor, b: torch.Tensor):
    n, ca, h, w = a.shape
    return a.reshape(n, ca, h * w).contiguous(), b.reshape(n, b.shape[1], h * w).contiguous(), h * w


def bilinear_pool(a: torch.Tensor, b: torch.Tensor, eps: float, signed_sqrt: bool, l2_normalize: bool,
                         mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton bilinear pool: returns (z (N, Ca*Cb), norms (N,))."""
    with _common.device_guard(a):
        a3, b3, L = _flat(a, b)
        n, ca, cb = a.shape[0], a.shape[1], b.shape[1]
        z = torch.empty(n, ca * cb, device=a.device, dtype=a.dtype)
        nrm2 = torch.zeros(n, device=a.device, dtype=_acc_dtype(a.dtype))
        consts = _consts(a)
        grid = (n * triton.cdiv(ca, consts["BI"]) * triton.cdiv(cb, consts["BJ"]),)
        wrap_triton(_bilinear_pool_fwd_kernel)[grid](a3, b3, z, nrm2, ca, cb, L, _eps(eps, a), MEAN=mean,
                                                     SIGNED=signed_sqrt, **consts)
        if l2_normalize:
            block = 1024
            grid = (n * triton.cdiv(ca * cb, block),)
            wrap_triton(_bilinear_pool_scale_kernel)[grid](z, nrm2, ca * cb, BLOCK=block)
        return z, nrm2.sqrt().to(a.dtype)


def bilinear_pool_backward(grad_z: torch.Tensor, a: torch.Tensor, b: torch.Tensor, z: torch.Tensor,
                                  norms: torch.Tensor, eps: float, signed_sqrt: bool, l2_normalize: bool,
                                  mean: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (grad_a, grad_b) of :func:`bilinear_pool` from its saved output z and norms."""
    with _common.device_guard(a):
        a3, b3, L = _flat(a, b)
        n, ca, cb = a.shape[0], a.shape[1], b.shape[1]
        acc = _acc_dtype(a.dtype)
        gz, zc = grad_z.contiguous(), z.contiguous()
        nrm = norms.to(acc)
        d = nrm.clamp_min(1e-12)
        if l2_normalize:
            proj = torch.where(nrm >= 1e-12, (zc.to(acc) * gz.to(acc)).sum(1), torch.zeros_like(nrm))
            invd, sfac = 1.0 / d, d
        else:
            proj, invd, sfac = torch.zeros_like(nrm), torch.ones_like(nrm), torch.ones_like(nrm)
        da = torch.empty_like(a3)
        db = torch.empty_like(b3)
        consts = _consts(a)
        l_tiles = triton.cdiv(L, consts["BL"])
        wrap_triton(_bilinear_pool_bwd_kernel)[(n * triton.cdiv(ca, consts["BI"]) * l_tiles,)](
            a3, b3, zc, gz, proj, invd, sfac, da, ca, cb, L, FOR_B=False, MEAN=mean, SIGNED=signed_sqrt,
            **consts)
        wrap_triton(_bilinear_pool_bwd_kernel)[(n * triton.cdiv(cb, consts["BJ"]) * l_tiles,)](
            a3, b3, zc, gz, proj, invd, sfac, db, ca, cb, L, FOR_B=True, MEAN=mean, SIGNED=signed_sqrt,
            **consts)
        return da.view(a.shape), db.view(b.shape)


def bilinear_classifier(a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor,
                               bias: torch.Tensor | None, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton fused bilinear classifier: returns (logits (N, K), norms (N,)); z is never written."""
    with _common.device_guard(a):
        a3, b3, L = _flat(a, b)
        n, ca, cb, k = a.shape[0], a.shape[1], b.shape[1], weight.shape[0]
        acc = _acc_dtype(a.dtype)
        nrm2 = torch.zeros(n, device=a.device, dtype=acc)
        dots = torch.zeros(n, k, device=a.device, dtype=acc)
        consts = _consts(a)
        grid = (n * triton.cdiv(ca, consts["BI"]) * triton.cdiv(cb, consts["BJ"]),)
        wrap_triton(_bilinear_classifier_fwd_kernel)[grid](a3, b3, weight.contiguous(), nrm2, dots, ca, cb, L,
                                                           k, _eps(eps, a), **consts)
        norms = nrm2.sqrt()
        logits = dots / norms.clamp_min(1e-12)[:, None]
        if bias is not None:
            logits = logits + bias.to(acc)
        return logits.to(a.dtype), norms.to(a.dtype)


def bilinear_classifier_backward(grad_logits: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
                                        weight: torch.Tensor, bias: torch.Tensor | None, norms: torch.Tensor,
                                        logits: torch.Tensor, eps: float
                                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(grad_a, grad_b, grad_weight, grad_bias) of :func:`bilinear_classifier`, recomputing Y."""
    with _common.device_guard(a):
        a3, b3, L = _flat(a, b)
        n, ca, cb, k = a.shape[0], a.shape[1], b.shape[1], weight.shape[0]
        acc = _acc_dtype(a.dtype)
        gl = grad_logits.contiguous()
        nrm = norms.to(acc)
        d = nrm.clamp_min(1e-12)
        lmb = logits.to(acc) - (bias.to(acc) if bias is not None else 0.0)
        g = (gl.to(acc) * lmb).sum(1)  # <z, dz> = sum_k dl_k (logits_k - bias_k)
        invd = 1.0 / d
        gfac = torch.where(nrm >= 1e-12, g / d, torch.zeros_like(g))
        da = torch.zeros(a3.shape, device=a.device, dtype=acc)
        db = torch.zeros(b3.shape, device=a.device, dtype=acc)
        dw = torch.zeros(k, ca * cb, device=a.device, dtype=acc)
        w = weight.contiguous()
        consts = _consts(a, classifier_bwd=True)
        eps_t = _eps(eps, a)
        wrap_triton(_bilinear_classifier_bwd_kernel)[(n * triton.cdiv(ca, consts["BI"]),)](
            a3, b3, w, gl, invd, gfac, da, dw, ca, cb, L, k, eps_t, FOR_B=False, **consts)
        wrap_triton(_bilinear_classifier_bwd_kernel)[(n * triton.cdiv(cb, consts["BJ"]),)](
            a3, b3, w, gl, invd, gfac, db, dw, ca, cb, L, k, eps_t, FOR_B=True, **consts)
        return (da.to(a.dtype).view(a.shape), db.to(b.dtype).view(b.shape), dw.to(weight.dtype),
                gl.sum(0).to(weight.dtype))

