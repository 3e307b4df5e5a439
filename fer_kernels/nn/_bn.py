"""BatchNorm bookkeeping shared by the fused modules: exactly what ``nn.BatchNorm2d.forward`` does before
it calls ``F.batch_norm``."""

from __future__ import annotations

from torch import nn


def bn_momentum(bn: nn.BatchNorm2d) -> float:
    """Increment ``num_batches_tracked`` (when training and tracking) and return the effective factor:
    ``momentum``, or ``1 / num_batches_tracked`` for ``momentum=None`` (cumulative average)."""
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    return factor


def bn_uses_batch_stats(bn: nn.BatchNorm2d) -> bool:
    return bn.training or (bn.running_mean is None and bn.running_var is None)


def bn_buffers(bn: nn.BatchNorm2d):
    """Running buffers passed to the op: None when they are not tracked or not updated (eval with batch stats)."""
    use = not bn.training or bn.track_running_stats
    return (bn.running_mean if use else None), (bn.running_var if use else None)



