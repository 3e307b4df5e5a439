"""BatchNorm bookkeeping shared by the fused modules: exactly what ``nn.BatchNorm2d.forward`` does before
it calls ``F.batch_norm``."""

from __future__ import annotations

from torch import nn


def _counts_batches(bn: nn.BatchNorm2d) -> bool:
    return bn.training and bn.track_running_stats and bn.num_batches_tracked is not None


def bn_momentum(bn: nn.BatchNorm2d) -> float:
    """The effective factor of the coming running-statistics update, without side effects: ``momentum``, or
    ``1 / num_batches_tracked`` after this batch for ``momentum=None`` (cumulative average)."""
    if bn.momentum is not None:
        return bn.momentum
    return 1.0 / (float(bn.num_batches_tracked) + 1.0) if _counts_batches(bn) else 0.0


def bn_count_batch(bn: nn.BatchNorm2d) -> None:
    """Increment ``num_batches_tracked`` (when training and tracking), after the op has accepted its inputs,
    so a rejected input changes nothing."""
    if _counts_batches(bn):
        bn.num_batches_tracked.add_(1)


def bn_uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def bn_buffers(bn: nn.BatchNorm2d):
    """Running buffers passed to the op: None when they are not tracked or not updated (eval with batch stats)."""
    use = not bn.training or bn.track_running_stats
    return (bn.running_mean if use else None), (bn.running_var if use else None)
