"""Drop-in modules of the dense_block family, state-dict compatible with torchvision's DenseNet."""

from __future__ import annotations

import torch
from torch import nn

from fer_kernels.nn._bn import bn_buffers, bn_count_batch, bn_momentum, bn_uses_batch_stats
from fer_kernels.nn.convert import is_bn, is_conv, only_children, rebuild, register_converter, register_reference, same_place
from fer_kernels.nn.plain import DenseBlockLayout, DenseBlockPlain, DenseLayerLayout, DenseLayerPlain
from fer_kernels.ops.dense_block import dense_block
from fer_kernels.reference.dense_block import DenseLayerParams


class DenseLayer(DenseLayerLayout):
    """DenseNet-BC bottleneck ``BN-ReLU-Conv1x1-BN-ReLU-Conv3x3`` (torchvision ``_DenseLayer``).

    Keys: ``norm1``, ``conv1`` (1x1, ``bn_size * growth_rate`` out), ``norm2``, ``conv2`` (3x3, pad 1,
    ``growth_rate`` out); no conv bias. Called alone it returns the new features ``(N, growth_rate, H, W)``;
    inside :class:`DenseBlock` the whole block runs as one fused op (:func:`fer_kernels.dense_block`).
    """

    def params(self) -> DenseLayerParams:
        m1, v1 = bn_buffers(self.norm1)
        m2, v2 = bn_buffers(self.norm2)
        # affine=False BatchNorms pass None weight / bias: the op uses ones / zeros.
        return DenseLayerParams(self.norm1.weight, self.norm1.bias, m1, v1, self.conv1.weight,
                                self.norm2.weight, self.norm2.bias, m2, v2, self.conv2.weight)

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        if isinstance(x, (list, tuple)):
            x = torch.cat(list(x), 1)
        out = _run(x, [("", self)], backend, "DenseLayer")
        return out[:, x.shape[1]:]


def _run(x: torch.Tensor, layers: list[tuple[str, DenseLayer]], backend: str | None,
         owner: str) -> torch.Tensor:
    """One fused op over ``layers`` (name prefix, layer): its BatchNorms must share one eps, one momentum and
    one mode, as the op takes one of each."""
    bns = [(f"{prefix}{n}", getattr(layer, n)) for prefix, layer in layers for n in ("norm1", "norm2")]
    name0, bn0 = bns[0]
    training = bn_uses_batch_stats(bn0)
    for name, bn in bns[1:]:
        for attr in ("eps", "momentum"):
            if getattr(bn, attr) != getattr(bn0, attr):
                raise ValueError(
                    f"{owner}: {name0} has {attr}={getattr(bn0, attr)} but {name} has "
                    f"{attr}={getattr(bn, attr)}; the fused op takes one {attr} for all the BatchNorms of a "
                    f"block: give them the same {attr}, or keep it plain (fer_kernels.nn.to_reference)")
        if bn_uses_batch_stats(bn) != training:
            raise RuntimeError(
                f"{owner}: {name0} uses {'batch' if training else 'running'} statistics but {name} does not; "
                f"all BatchNorms of a block must be in the same mode (train or eval, tracking running "
                f"statistics or not)")
    updated = [(name, bn) for name, bn in bns if training and bn_buffers(bn)[0] is not None]
    factors = {bn_momentum(bn) for _, bn in updated}
    if len(factors) > 1:  # momentum=None with different num_batches_tracked
        counts = ", ".join(f"{name}={int(bn.num_batches_tracked)}" for name, bn in updated)
        raise ValueError(f"{owner}: momentum=None BatchNorms with different num_batches_tracked ({counts}) "
                         f"average their running statistics differently; the fused op takes one factor per "
                         f"block")
    momentum = factors.pop() if factors else 0.0
    params = [layer.params() for _, layer in layers]
    out = dense_block(x, params, training, momentum, bn0.eps, backend=backend)
    for _, bn in bns:
        bn_count_batch(bn)
    return out


class DenseBlock(DenseBlockLayout):
    """A DenseNet-BC dense block (torchvision ``_DenseBlock``): ``denselayer1 .. denselayerN``.

    Returns ``cat(x, new features)``, ``(N, in_channels + num_layers * growth_rate, H, W)``, computed by
    :func:`fer_kernels.dense_block`. Each BatchNorm may be ``affine=False`` or
    ``track_running_stats=False``, but they must share one eps, one momentum (``None``: the same
    ``num_batches_tracked``) and one mode, as the op takes one of each: forward raises, naming the
    BatchNorms, when they do not.
    """

    layer_type = DenseLayer

    def forward(self, x: torch.Tensor, *, backend: str | None = None) -> torch.Tensor:
        return _run(x, [(f"{name}.", layer) for name, layer in self.named_children()], backend, "DenseBlock")


# ---- convert / to_reference ----


def _layer_parts(m: nn.Module):
    """``(norm1, conv1, norm2, conv2)`` of a bottleneck layer that :class:`DenseLayer` computes exactly:
    a :class:`DenseLayerPlain` (or a fused :class:`DenseLayer`, when merging a block) or a torchvision-style
    ``_DenseLayer`` (children norm1, relu1, conv1, norm2, relu2, conv2; no dropout); else None."""
    if isinstance(m, (DenseLayerPlain, DenseLayer)):
        relus = {}
    elif type(m).__name__ == "_DenseLayer" and not float(getattr(m, "drop_rate", 0.0) or 0.0):
        relus = {"relu1": nn.ReLU, "relu2": nn.ReLU}
    else:
        return None
    if not (only_children(m, {"norm1", "conv1", "norm2", "conv2"}, relus)
            and all(type(getattr(m, name, None)) is nn.ReLU for name in relus)):
        return None
    norm1, conv1, norm2, conv2 = m.norm1, m.conv1, m.norm2, m.conv2
    if not (is_bn(norm1) and is_bn(norm2) and is_conv(conv1, 1, 0, bias=False)
            and is_conv(conv2, 3, 1, bias=False) and norm1.num_features == conv1.in_channels
            and norm2.num_features == conv1.out_channels
            and conv2.in_channels == conv1.out_channels and conv1.out_channels % conv2.out_channels == 0
            and same_place(norm1, conv1, norm2, conv2)):
        return None
    return norm1, conv1, norm2, conv2


def _bn_key(bn: nn.BatchNorm2d):
    """What the BatchNorms of one fused op must share (the running-average factor of momentum=None depends
    on num_batches_tracked)."""
    count = None
    if bn.momentum is None and bn.num_batches_tracked is not None:
        count = int(bn.num_batches_tracked)
    return bn.eps, bn.momentum, bn.track_running_stats, bn.training, count


def _fused_layer(m: nn.Module, parts) -> DenseLayer:
    norm1, conv1, norm2, conv2 = parts
    k = conv2.out_channels
    return rebuild(lambda: DenseLayer(conv1.in_channels, k, conv1.out_channels // k), m.training,
                   norm1=norm1, conv1=conv1, norm2=norm2, conv2=conv2)


@register_converter
def _convert_dense(m: nn.Module):
    """``DenseBlockPlain`` / torchvision-style ``_DenseBlock`` (children denselayer1..N) -> DenseBlock;
    ``DenseLayerPlain`` / ``_DenseLayer`` -> DenseLayer (a block whose BatchNorms disagree is left to its
    layers)."""
    if isinstance(m, (DenseBlock, DenseLayer)):
        return None
    if isinstance(m, DenseLayerPlain) or type(m).__name__ == "_DenseLayer":
        parts = _layer_parts(m)
        if parts is None or _bn_key(parts[0]) != _bn_key(parts[2]):
            return None
        return _fused_layer(m, parts)
    if not (isinstance(m, DenseBlockPlain) or type(m).__name__ == "_DenseBlock"):
        return None
    children = list(m.named_children())
    if not children or any(n != f"denselayer{i + 1}" for i, (n, _) in enumerate(children)):
        return None
    parts = [_layer_parts(c) for _, c in children]
    if any(p is None for p in parts):
        return None
    c0, width, k = parts[0][1].in_channels, parts[0][1].out_channels, parts[0][3].out_channels
    if any(p[1].in_channels != c0 + i * k or p[1].out_channels != width or p[3].out_channels != k
           for i, p in enumerate(parts)):
        return None
    bns = [bn for p in parts for bn in (p[0], p[2])]
    if any(_bn_key(bn) != _bn_key(bns[0]) for bn in bns) or not same_place(*bns, *(p[1] for p in parts)):
        return None
    layers = {name: _fused_layer(c, p) for (name, c), p in zip(children, parts, strict=True)}
    return rebuild(lambda: DenseBlock(len(children), c0, k, width // k), m.training, **layers)


def _plain_layer(m: DenseLayer) -> DenseLayerPlain:
    return rebuild(lambda: DenseLayerPlain(m.in_channels, m.growth_rate, m.bn_size), m.training,
                   norm1=m.norm1, conv1=m.conv1, norm2=m.norm2, conv2=m.conv2)


@register_reference
def _reference_dense(m: nn.Module):
    """DenseBlock -> DenseBlockPlain, DenseLayer -> DenseLayerPlain, adopting BatchNorms and convolutions."""
    if isinstance(m, DenseLayer):
        return _plain_layer(m)
    if isinstance(m, DenseBlock):
        layers = {name: _plain_layer(layer) for name, layer in m.named_children()}
        return rebuild(lambda: DenseBlockPlain(m.num_layers, m.in_channels, m.growth_rate, m.bn_size),
                       m.training, **layers)
    return None
