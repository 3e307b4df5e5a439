"""Losses of the two papers: IDEnNet's self-constrained identity loss and the center loss used by EIFN.

Both ignore samples whose label is ``ignore_index`` (default -1, "identity unknown"): such samples add
exactly nothing, and a batch of unknown identities gives a loss of exactly 0 (with a graph, so
``backward`` still works and gives zero gradients).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "self_constrained_identity_loss",
    "SelfConstrainedIdentityLoss",
    "masked_cross_entropy",
    "center_loss",
    "update_centers_",
    "CenterLoss",
]


def _reduce(per_sample: torch.Tensor, known: torch.Tensor, reduction: str) -> torch.Tensor:
    if reduction == "none":
        return per_sample
    total = per_sample.sum()
    if reduction == "sum":
        return total
    if reduction == "mean":
        return total / known.sum().clamp(min=1).to(total.dtype)
    raise ValueError(f"reduction: expected 'mean', 'sum' or 'none', got {reduction!r}")


def _check_logits_target(logits: torch.Tensor, target: torch.Tensor, ignore_index: int) -> torch.Tensor:
    if logits.dim() != 2:
        raise ValueError(f"logits: expected (N, C), got shape {tuple(logits.shape)}")
    if target.dim() != 1 or target.shape[0] != logits.shape[0]:
        raise ValueError(
            f"target: expected ({logits.shape[0]},) class indices, got shape {tuple(target.shape)}"
        )
    known = target != ignore_index
    if known.any():
        t = target[known]
        if int(t.min()) < 0 or int(t.max()) >= logits.shape[1]:
            raise ValueError(
                f"target: class indices must be in [0, {logits.shape[1]}) or {ignore_index}, "
                f"got values in [{int(t.min())}, {int(t.max())}]"
            )
    return known


def self_constrained_identity_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.1,
    gamma: float = 15.0,
    ignore_index: int = -1,
    reduction: str = "mean",
) -> torch.Tensor:
    """IDEnNet's self-constrained identity loss (eq. 4): ``L_id = -sum_j alpha (1 - p_j)^gamma y_j log p_j``.

    With one-hot ``y`` this is ``-alpha (1 - p_t)^gamma log p_t`` per sample (a multi-class focal loss). It
    is computed in log space from the margin ``d = z_t - logsumexp_{j != t} z_j``:
    ``-log p_t = softplus(-d)`` and ``log(1 - p_t) = -softplus(d)``, so neither ``p_t -> 1`` (where
    ``1 - p_t`` cancels) nor ``p_t -> 0`` loses precision or gives inf/NaN. The factor
    ``(1 - p_t)^gamma`` is not
    detached: as in focal loss, its gradient is part of the loss's.

    Args:
        logits (Tensor[N, C]): identity logits, C >= 2.
        target (Tensor[N], int64): identity indices in ``[0, C)``, or ``ignore_index`` for unknown.
        alpha (float): scale (paper: 0.1). gamma (float): focusing exponent (paper: 15), >= 0.
        ignore_index (int): label of samples that add no loss.
        reduction (str): ``mean`` (over samples with a known identity, as ``F.cross_entropy`` with
            ``ignore_index``; 0 when there are none), ``sum`` or ``none`` (Tensor[N], 0 for unknown).

    Returns:
        Tensor: the loss (scalar unless ``reduction='none'``).
    """
    if gamma < 0 or alpha < 0:
        raise ValueError(f"alpha and gamma must be >= 0, got alpha={alpha}, gamma={gamma}")
    known = _check_logits_target(logits, target, ignore_index)
    if logits.shape[1] < 2:
        raise ValueError(
            f"logits: the identity loss needs at least 2 classes, got shape {tuple(logits.shape)}"
        )
    t = torch.where(known, target, torch.zeros_like(target))
    # d = z_t - logsumexp_{j != t} z_j; then -log p_t = softplus(-d) and log(1 - p_t) = -softplus(d), both
    # exact to rounding for any d (softplus(x) = logaddexp(x, 0)), so p_t ~ 1 keeps its tiny loss.
    is_t = F.one_hot(t, logits.shape[1]).bool()
    d = logits.gather(1, t[:, None]).squeeze(1) - torch.logsumexp(
        logits.masked_fill(is_t, float("-inf")), dim=1
    )
    zero = torch.zeros_like(d)
    neg_log_p = torch.logaddexp(-d, zero)
    log_1mp = -torch.logaddexp(d, zero)
    per_sample = alpha * torch.exp(gamma * log_1mp) * neg_log_p
    per_sample = torch.where(known, per_sample, torch.zeros_like(per_sample))
    return _reduce(per_sample, known, reduction)


class SelfConstrainedIdentityLoss(nn.Module):
    """Module form of :func:`self_constrained_identity_loss` (``alpha``, ``gamma``, ``ignore_index``)."""

    def __init__(
        self, alpha: float = 0.1, gamma: float = 15.0, ignore_index: int = -1, reduction: str = "mean"
    ):
        super().__init__()
        self.alpha, self.gamma, self.ignore_index, self.reduction = alpha, gamma, ignore_index, reduction

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self_constrained_identity_loss(
            logits, target, self.alpha, self.gamma, self.ignore_index, self.reduction
        )

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, gamma={self.gamma}, ignore_index={self.ignore_index}"


def masked_cross_entropy(logits: torch.Tensor, target: torch.Tensor, ignore_index: int = -1) -> torch.Tensor:
    """Softmax cross-entropy averaged over samples whose label is not ``ignore_index``; exactly 0 when no
    sample has a label (where ``F.cross_entropy`` would give NaN).

    Args:
        logits (Tensor[N, C]), target (Tensor[N], int64).
    """
    known = _check_logits_target(logits, target, ignore_index)
    total = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    return total / known.sum().clamp(min=1).to(total.dtype)


def center_loss(
    features: torch.Tensor,
    target: torch.Tensor,
    centers: torch.Tensor,
    ignore_index: int = -1,
    reduction: str = "mean",
) -> torch.Tensor:
    """Center loss (Wen et al., ECCV 2016, eq. 2): ``L_C = 1/2 sum_i ||x_i - c_{y_i}||^2``.

    ``mean`` divides by the number of labelled samples, as the authors' Caffe layer divides by the batch
    size. The centers enter as constants: they are not learned by gradient descent but moved by
    :func:`update_centers_` (the paper's eq. 4).

    Args:
        features (Tensor[N, D]): deep features x_i.
        target (Tensor[N], int64): class indices, or ``ignore_index`` (adds nothing).
        centers (Tensor[K, D]): class centers (treated as constants).
        reduction (str): ``mean``, ``sum`` or ``none`` (Tensor[N]).

    Returns:
        Tensor: the loss; its gradient w.r.t. ``x_i`` is ``(x_i - c_{y_i}) / n`` for ``mean``.
    """
    if features.dim() != 2 or centers.dim() != 2 or features.shape[1] != centers.shape[1]:
        raise ValueError(
            f"features (N, D) and centers (K, D) must agree in D, got {tuple(features.shape)} and "
            f"{tuple(centers.shape)}"
        )
    known = _check_logits_target(
        features.new_empty(features.shape[0], centers.shape[0]), target, ignore_index
    )
    t = torch.where(known, target, torch.zeros_like(target))
    diff = features - centers.detach()[t]
    per_sample = 0.5 * diff.pow(2).sum(1)
    per_sample = torch.where(known, per_sample, torch.zeros_like(per_sample))
    return _reduce(per_sample, known, reduction)


@torch.no_grad()
def update_centers_(
    centers: torch.Tensor,
    features: torch.Tensor,
    target: torch.Tensor,
    alpha: float = 0.5,
    ignore_index: int = -1,
) -> torch.Tensor:
    """Wen et al.'s center update (eqs. 4-5), in place:
    ``delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])``, ``c_j <- c_j - alpha * delta_c_j``.

    Classes absent from the batch do not move; samples labelled ``ignore_index`` are skipped.

    Args:
        centers (Tensor[K, D]): updated in place. features (Tensor[N, D]): the batch's features (detached).
        target (Tensor[N], int64). alpha (float): the center learning rate, in [0, 1].

    Returns:
        Tensor[K, D]: ``centers``.
    """
    known = target != ignore_index
    x, t = features.detach()[known].to(centers.dtype), target[known]
    if t.numel() == 0:
        return centers
    count = torch.zeros(centers.shape[0], dtype=centers.dtype, device=centers.device)
    count.index_add_(0, t, torch.ones_like(t, dtype=centers.dtype))
    summed = torch.zeros_like(centers).index_add_(0, t, x)
    delta = (count[:, None] * centers - summed) / (1.0 + count[:, None])
    centers.sub_(alpha * delta)
    return centers


class CenterLoss(nn.Module):
    """Center loss with the center-update rule of Wen et al.

    The centers are a buffer (saved in the state dict, never given to the optimiser). In training mode,
    each forward returns the loss against the current centers and then moves the centers of the classes in
    the batch by :func:`update_centers_` with rate ``alpha`` (like BatchNorm's running statistics); in eval
    mode, or with ``update=False``, the centers stay put.

    Centers start as in the authors' released Caffe model (``xavier`` filler): uniform in
    ``+-sqrt(3 / feat_dim)``.

    Args:
        num_classes (int): K. feat_dim (int): D. alpha (float): center learning rate (Wen et al.: 0.5).
        ignore_index (int): label that adds no loss and moves no center.
    """

    def __init__(self, num_classes: int, feat_dim: int, alpha: float = 0.5, ignore_index: int = -1):
        super().__init__()
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: expected in [0, 1], got {alpha}")
        self.num_classes, self.feat_dim, self.alpha, self.ignore_index = (
            num_classes,
            feat_dim,
            alpha,
            ignore_index,
        )
        self.update = True
        bound = math.sqrt(3.0 / feat_dim)
        self.register_buffer("centers", torch.empty(num_classes, feat_dim).uniform_(-bound, bound))

    def forward(self, features: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """features (Tensor[N, D]), target (Tensor[N]) -> scalar loss (mean over labelled samples)."""
        loss = center_loss(features, target, self.centers.clone(), self.ignore_index)
        if self.training and self.update:
            update_centers_(self.centers, features, target, self.alpha, self.ignore_index)
        return loss

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feat_dim={self.feat_dim}, alpha={self.alpha}"
