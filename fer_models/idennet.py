"""IDEnNet: Identity-Enhanced Network for facial expression recognition (Li et al., arXiv 1812.04207).

Built from :mod:`fer_kernels.nn` (fused ``DenseBlock``, ``Transition``, ``FusionConv``); every fused layer
is a ``*_layer`` argument, so the plain twins of :mod:`fer_models.export` can be swapped in.

Reading of the paper (sections 3-4) where DESIGN section 5 leaves details open:

- Backbone: DenseNet-BC for 48x48 grayscale faces. CIFAR-style stem (a 3x3 convolution with ``2k``
  channels, stride 1, no max-pool: the paper says every pool but the global one is a 2x2 average pool),
  three dense blocks of ``(depth - 4) / 6`` bottleneck layers with growth ``k = 12``, transitions with
  compression 0.5 (BN-ReLU-Conv1x1-AvgPool2x2), then BN-ReLU-GAP and the classifier. For depth 40 the
  channels are 24 -> 96 -> 48 -> 120 -> 60 -> 132 at 48, 48, 24, 24, 12, 12 pixels.
- Feature extraction group = stem, dense block 1, transition 1, dense block 2. ``x_e`` and ``x_i`` are the
  outputs of emotion / identity dense block 2 (``D`` channels at 24x24). Spatial fusion (eqs. 1-2) is
  ``FusionConv``: concat, 1x1 conv with bias to ``D_c`` channels, 2x2 average pool, with no BN-ReLU before
  it (the paper has none). ``D_c`` = the input width of emotion dense block 3, so the Fusion Dense Block
  can start from emotion block 3's weights.
- Variants (section 3.3): ``original`` = emotion dense blocks 1-2, Fusion Dense Block and the expression
  branch, i.e. the emotion DenseNet itself (its transition 2 joins block 2 to the Fusion Dense Block, as
  there is no identity stream to fuse); ``I`` = original + identity-enhancing branch; ``F`` = both feature
  extraction groups + spatial fusion + Fusion Dense Block + expression branch; ``IF`` = all of it.
- FC_id sits on the same GAP features as FC_emo ("located below the global average pooling").
- Dropout 0.5 (section 4.3) is applied to the GAP features before FC_emo / FC_id: the fused dense block
  has no dropout inside, and the paper does not place it.
- Fine-tuning freezes the feature extraction groups: their parameters get ``requires_grad=False`` and their
  BatchNorms stay in eval mode (running statistics are not updated), so the extracted features do not
  change. Transition 2 / the fusion conv and everything after are trained.
- Training recipe (section 4.3; :data:`RECIPE`, applied by ``fer-train``): SGD, momentum 0.9, batch 128,
  weight decay 1e-4, lr 0.1 (pre-training) / 0.01 (fine-tuning), divided by 10 at 50% and 75% of the
  epochs; 60x60 faces, random 48x48 crops. The paper gives batch and weight decay for fine-tuning only; the
  recipe uses them for pre-training too. ID rate 0 (Fig. 3) is the Original Network: ``fer-train --id-rate
  0`` trains ``idennet_original_<depth>`` for the variants I, F and IF.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels.nn as fnn
from fer_models.losses import masked_cross_entropy, self_constrained_identity_loss
from fer_models.recipes import Recipe, Schedule, register_recipe, with_values
from fer_models.registry import register_model

__all__ = ["IDEnNetOutput", "DenseNetBC", "IDEnNet", "densenet_bc_channels", "RECIPE"]


@dataclass
class IDEnNetOutput:
    """What IDEnNet and the pre-training DenseNets return.

    Attributes:
        expression (Tensor[N, E] | None): expression logits (None for an identity pre-training net).
        identity (Tensor[N, I] | None): identity logits, when the model has an identity head.
        features (Tensor[N, C]): the GAP features the heads read (before dropout).
    """

    expression: torch.Tensor | None
    identity: torch.Tensor | None
    features: torch.Tensor


def _layers_per_block(depth: int) -> int:
    if depth < 10 or (depth - 4) % 6:
        raise ValueError(
            f"depth: DenseNet-BC depth must be 6n + 4 with n >= 1 (16, 22, 40, ...), got {depth}"
        )
    return (depth - 4) // 6


def densenet_bc_channels(depth: int, growth_rate: int = 12, compression: float = 0.5) -> dict:
    """Channel widths of the DenseNet-BC backbone.

    Returns:
        dict: ``stem``, ``block1``, ``trans1``, ``block2`` (D, the feature group output), ``trans2`` (D_c,
        dense block 3 input), ``block3`` (the GAP width).
    """
    n = _layers_per_block(depth)
    c = {"stem": 2 * growth_rate}
    c["block1"] = c["stem"] + n * growth_rate
    c["trans1"] = int(c["block1"] * compression)
    c["block2"] = c["trans1"] + n * growth_rate
    c["trans2"] = int(c["block2"] * compression)
    c["block3"] = c["trans2"] + n * growth_rate
    return c


def _feature_group(depth, growth_rate, compression, bn_size, in_chans, block_layer, transition_layer):
    n, c = _layers_per_block(depth), densenet_bc_channels(depth, growth_rate, compression)
    return nn.Sequential(
        OrderedDict(
            [
                ("conv0", nn.Conv2d(in_chans, c["stem"], 3, padding=1, bias=False)),
                ("denseblock1", block_layer(n, c["stem"], growth_rate, bn_size)),
                ("transition1", transition_layer(c["block1"], c["trans1"], 2)),
                ("denseblock2", block_layer(n, c["trans1"], growth_rate, bn_size)),
            ]
        )
    )


def _init_weights(module: nn.Module) -> None:
    # torchvision DenseNet's initialisation.
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


class DenseNetBC(nn.Module):
    """The emotion or identity DenseNet-BC of IDEnNet's pre-training stage (paper section 4.3): feature
    extraction group (stem, blocks 1-2), transition 2, dense block 3, BN-ReLU-GAP, classifier.

    Args:
        depth (int): 16, 22, 40, ... (6n + 4).
        num_classes (int): classifier width.
        task (str): ``expression`` (the emotion net: ``out.expression`` holds the logits, trained with
            cross-entropy on expression labels) or ``identity`` (the identity net: ``out.identity``, trained
            with cross-entropy on identity labels, -1 ignored).
        growth_rate (int), compression (float), bn_size (int): DenseNet-BC hyper-parameters (12, 0.5, 4).
        in_chans (int): input channels (1: grayscale).
        drop_rate (float): dropout on the GAP features before the classifier (0: none).
        block_layer, transition_layer: dense block and transition classes (fused by default).

    Shape:
        x (Tensor[N, in_chans, 48, 48]) -> logits (N, num_classes).
    """

    def __init__(
        self,
        depth: int = 40,
        num_classes: int = 8,
        task: str = "expression",
        growth_rate: int = 12,
        compression: float = 0.5,
        bn_size: int = 4,
        in_chans: int = 1,
        drop_rate: float = 0.0,
        block_layer: type[nn.Module] = fnn.DenseBlock,
        transition_layer: type[nn.Module] = fnn.Transition,
    ):
        super().__init__()
        if task not in ("expression", "identity"):
            raise ValueError(f"task: expected 'expression' or 'identity', got {task!r}")
        self.depth, self.growth_rate = depth, growth_rate
        self.compression, self.bn_size = compression, bn_size
        self.task, self.num_classes, self.in_chans = task, num_classes, in_chans
        n, c = _layers_per_block(depth), densenet_bc_channels(depth, growth_rate, compression)
        self.feature_group = _feature_group(
            depth, growth_rate, compression, bn_size, in_chans, block_layer, transition_layer
        )
        self.transition2 = transition_layer(c["block2"], c["trans2"], 2)
        self.denseblock3 = block_layer(n, c["trans2"], growth_rate, bn_size)
        self.norm = nn.BatchNorm2d(c["block3"])
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(c["block3"], num_classes)
        self.num_features = c["block3"]
        self.input_size = (in_chans, 48, 48)
        _init_weights(self)

    @property
    def cam_head(self) -> nn.Linear:
        """The linear layer whose weights weight the class-activation maps."""
        return self.classifier

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[N, C, H, W]) -> ReLU(BN(dense block 3 output)), (N, num_features, H/4, W/4)."""
        h = self.denseblock3(self.transition2(self.feature_group(x)))
        return F.relu(self.norm(h))

    def forward(self, x: torch.Tensor) -> IDEnNetOutput:
        pooled = self.forward_features(x).mean((2, 3))
        logits = self.classifier(self.dropout(pooled))
        if self.task == "expression":
            return IDEnNetOutput(logits, None, pooled)
        return IDEnNetOutput(None, logits, pooled)

    def loss(
        self, out: IDEnNetOutput, expression: torch.Tensor | None = None, identity: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Cross-entropy on the net's task: expression labels (N,) or identity labels (N,) (-1 ignored)."""
        if self.task == "expression":
            ce = F.cross_entropy(out.expression, expression)
            return {"total": ce, "expression": ce, "identity": ce.new_zeros(())}
        if identity is None:
            raise ValueError("identity: the identity DenseNet needs identity labels")
        ce = masked_cross_entropy(out.identity, identity)
        return {"total": ce, "expression": ce.new_zeros(()), "identity": ce}

    def to_reference(self) -> DenseNetBC:
        """A plain-PyTorch copy with the same weights (see :func:`fer_models.export.to_reference`)."""
        from fer_kernels.nn import to_reference

        return to_reference(self)


def _reapply_freeze(module: IDEnNet, incompatible_keys) -> None:
    module.freeze_feature_groups(module.frozen)


class IDEnNet(nn.Module):
    """IDEnNet (Fig. 2): feature extraction groups, spatial fusion, Fusion Dense Block, expression branch
    and identity-enhancing branch, in the paper's four variants.

    Args:
        variant (str): ``original``, ``I``, ``F`` or ``IF`` (case-insensitive).
        depth (int): backbone depth, 16, 22 or 40 (any 6n + 4).
        num_expressions (int): FC_emo width. num_identities (int): FC_id width (variants I and IF).
        growth_rate (int), compression (float), bn_size (int): DenseNet-BC hyper-parameters (12, 0.5, 4).
        in_chans (int): input channels (1: grayscale).
        drop_rate (float): dropout on the GAP features before FC_emo / FC_id (paper: 0.5).
        id_alpha (float), id_gamma (float): alpha and gamma of the self-constrained identity loss (0.1, 15).
        block_layer, transition_layer, fusion_layer: dense block, transition and fusion-conv classes (fused
            :mod:`fer_kernels.nn` modules by default; the plain twins in :mod:`fer_models.export` also fit).

    Shape:
        x (Tensor[N, in_chans, 48, 48]) -> ``out.expression`` (N, num_expressions),
        ``out.identity`` (N, num_identities) or None, ``out.features`` (N, C) GAP features.

    Submodules: ``emotion_group`` and (F, IF) ``identity_group`` (Sequential conv0, denseblock1, transition1,
    denseblock2); ``transition2`` (original, I) or ``fusion`` (F, IF); ``fusion_block``; ``norm``;
    ``fc_emo``; ``fc_id`` (I, IF).
    """

    VARIANTS = ("original", "I", "F", "IF")

    def __init__(
        self,
        variant: str = "IF",
        depth: int = 40,
        num_expressions: int = 6,
        num_identities: int = 80,
        growth_rate: int = 12,
        compression: float = 0.5,
        bn_size: int = 4,
        in_chans: int = 1,
        drop_rate: float = 0.5,
        id_alpha: float = 0.1,
        id_gamma: float = 15.0,
        block_layer: type[nn.Module] = fnn.DenseBlock,
        transition_layer: type[nn.Module] = fnn.Transition,
        fusion_layer: type[nn.Module] = fnn.FusionConv,
    ):
        super().__init__()
        self.variant = self.canonical_variant(variant)
        self.depth, self.growth_rate = depth, growth_rate
        self.compression, self.bn_size = compression, bn_size
        self.num_expressions, self.in_chans = num_expressions, in_chans
        self.id_alpha, self.id_gamma = id_alpha, id_gamma
        self.has_fusion = "F" in self.variant
        self.has_identity_branch = "I" in self.variant
        self.num_identities = num_identities if self.has_identity_branch else None
        n, c = _layers_per_block(depth), densenet_bc_channels(depth, growth_rate, compression)
        group = (depth, growth_rate, compression, bn_size, in_chans, block_layer, transition_layer)
        self.emotion_group = _feature_group(*group)
        if self.has_fusion:
            self.identity_group = _feature_group(*group)
            self.fusion = fusion_layer((c["block2"], c["block2"]), c["trans2"], 2, True)
        else:
            self.transition2 = transition_layer(c["block2"], c["trans2"], 2)
        self.fusion_block = block_layer(n, c["trans2"], growth_rate, bn_size)
        self.norm = nn.BatchNorm2d(c["block3"])
        self.dropout = nn.Dropout(drop_rate)
        self.fc_emo = nn.Linear(c["block3"], num_expressions)
        if self.has_identity_branch:
            if num_identities is None or num_identities < 2:
                raise ValueError(
                    f"num_identities: variant {self.variant} needs >= 2 identities, got {num_identities}"
                )
            self.fc_id = nn.Linear(c["block3"], num_identities)
        self.num_features = c["block3"]
        self.input_size = (in_chans, 48, 48)
        # In the state dict (uint8: every DDP backend broadcasts it), so a fine-tuning checkpoint resumes
        # with its feature groups frozen; the hook re-applies the freeze after load_state_dict.
        self.register_buffer("feature_groups_frozen", torch.zeros((), dtype=torch.uint8))
        self.register_load_state_dict_post_hook(_reapply_freeze)
        _init_weights(self)

    @property
    def frozen(self) -> bool:
        """Whether the feature extraction groups are frozen."""
        return bool(self.feature_groups_frozen)

    @classmethod
    def canonical_variant(cls, variant: str) -> str:
        v = {"original": "original", "i": "I", "f": "F", "if": "IF"}.get(str(variant).lower())
        if v is None:
            raise ValueError(f"variant: expected one of {', '.join(cls.VARIANTS)}, got {variant!r}")
        return v

    @property
    def feature_groups(self) -> list[nn.Module]:
        """The feature extraction groups (frozen in fine-tuning)."""
        return [self.emotion_group, self.identity_group] if self.has_fusion else [self.emotion_group]

    @property
    def cam_head(self) -> nn.Linear:
        """FC_emo: its weights weight the class-activation maps of the Fusion Dense Block features."""
        return self.fc_emo

    def freeze_feature_groups(self, frozen: bool = True) -> IDEnNet:
        """Freeze (or unfreeze) the feature extraction groups: ``requires_grad`` off and BatchNorms kept in
        eval mode, so neither their weights nor their running statistics change."""
        self.feature_groups_frozen.fill_(int(frozen))
        for g in self.feature_groups:
            g.requires_grad_(not frozen)
        return self.train(self.training)

    def train(self, mode: bool = True) -> IDEnNet:
        super().train(mode)
        if self.frozen:
            for g in self.feature_groups:
                g.eval()
        return self

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x (Tensor[N, C, 48, 48]) -> ReLU(BN(Fusion Dense Block output)), (N, num_features, 12, 12)."""
        e = self.emotion_group(x)
        h = self.fusion(e, self.identity_group(x)) if self.has_fusion else self.transition2(e)
        return F.relu(self.norm(self.fusion_block(h)))

    def forward(self, x: torch.Tensor) -> IDEnNetOutput:
        pooled = self.forward_features(x).mean((2, 3))
        d = self.dropout(pooled)
        identity = self.fc_id(d) if self.has_identity_branch else None
        return IDEnNetOutput(self.fc_emo(d), identity, pooled)

    def loss(
        self, out: IDEnNetOutput, expression: torch.Tensor, identity: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``L = CE(expression) + L_id`` (eq. 5).

        Args:
            out: this model's output.
            expression (Tensor[N], int64): expression labels.
            identity (Tensor[N], int64 | None): identity labels, -1 = unknown (adds no L_id); None = all
                unknown. Ignored by the variants without identity branch.

        Returns:
            dict: ``total``, ``expression`` (CE) and ``identity`` (L_id, mean over known identities; exactly
            0 when none is known or the variant has no identity branch).
        """
        ce = F.cross_entropy(out.expression, expression)
        if self.has_identity_branch and identity is not None:
            l_id = self_constrained_identity_loss(out.identity, identity, self.id_alpha, self.id_gamma)
        else:
            l_id = ce.new_zeros(())
        return {"total": ce + l_id, "expression": ce, "identity": l_id}

    @classmethod
    def from_pretrained(
        cls,
        emotion_net: DenseNetBC,
        identity_net: DenseNetBC | None = None,
        variant: str = "IF",
        num_expressions: int | None = None,
        num_identities: int | None = None,
        freeze: bool = True,
        **kwargs,
    ) -> IDEnNet:
        """Second stage: build IDEnNet from the two pre-trained DenseNets.

        Copies the emotion net's feature extraction group (stem, blocks 1-2) and, for F / IF, the identity
        net's; initialises the Fusion Dense Block (and the final BN) from emotion dense block 3 (and its BN),
        and for ``original`` / ``I`` transition 2 from the emotion net's. The fusion conv and the heads
        FC_emo / FC_id start fresh (the target dataset's classes differ from the pre-training ones).

        Args:
            emotion_net (DenseNetBC): pre-trained on expressions (``task='expression'``).
            identity_net (DenseNetBC | None): pre-trained on identities; needed for F and IF.
            variant (str): ``original``, ``I``, ``F`` or ``IF``.
            num_expressions (int | None): default: the emotion net's classes.
            num_identities (int | None): identities of the target dataset; needed for I and IF.
            freeze (bool): freeze the feature extraction groups (the paper's fine-tuning).
            **kwargs: other :class:`IDEnNet` arguments (``drop_rate``, ``*_layer``, ...).
        """
        variant = cls.canonical_variant(variant)
        if "F" in variant:
            if identity_net is None:
                raise ValueError(
                    f"identity_net: variant {variant} fuses identity features, pass the identity DenseNet"
                )
            for name in ("depth", "growth_rate", "compression", "bn_size", "in_chans"):
                if getattr(identity_net, name) != getattr(emotion_net, name):
                    raise ValueError(
                        f"identity_net.{name} ({getattr(identity_net, name)}) differs from "
                        f"emotion_net.{name} ({getattr(emotion_net, name)})"
                    )
        if "I" in variant and num_identities is None:
            raise ValueError(
                f"num_identities: variant {variant} needs the target dataset's number of identities"
            )
        model = cls(
            variant,
            emotion_net.depth,
            num_expressions or emotion_net.num_classes,
            num_identities if num_identities is not None else 80,
            emotion_net.growth_rate,
            emotion_net.compression,
            emotion_net.bn_size,
            emotion_net.in_chans,
            **kwargs,
        )
        ref = next(emotion_net.parameters())
        model = model.to(ref.device, ref.dtype)
        model.emotion_group.load_state_dict(emotion_net.feature_group.state_dict())
        if model.has_fusion:
            model.identity_group.load_state_dict(identity_net.feature_group.state_dict())
        else:
            model.transition2.load_state_dict(emotion_net.transition2.state_dict())
        model.fusion_block.load_state_dict(emotion_net.denseblock3.state_dict())
        model.norm.load_state_dict(emotion_net.norm.state_dict())
        return model.freeze_feature_groups(freeze)

    def to_reference(self) -> IDEnNet:
        """A plain-PyTorch copy with the same weights (see :func:`fer_models.export.to_reference`)."""
        from fer_kernels.nn import to_reference

        return to_reference(self)


def _create_idennet(
    variant: str, depth: int, num_expressions: int = 6, num_identities: int = 80, **kwargs
) -> IDEnNet:
    return IDEnNet(variant, depth, num_expressions, num_identities, **kwargs)


def _create_densenet(
    task: str, depth: int, num_expressions: int = 8, num_identities: int = 10575, **kwargs
) -> DenseNetBC:
    # Defaults: the paper pre-trains on FER+ (8 classes) and CASIA-WebFace (10,575 identities).
    return DenseNetBC(depth, num_expressions if task == "expression" else num_identities, task, **kwargs)


# fmt: off
@register_model
def idennet_original_16(**kw): return _create_idennet("original", 16, **kw)  # noqa: E704
@register_model
def idennet_i_16(**kw): return _create_idennet("I", 16, **kw)  # noqa: E704
@register_model
def idennet_f_16(**kw): return _create_idennet("F", 16, **kw)  # noqa: E704
@register_model
def idennet_if_16(**kw): return _create_idennet("IF", 16, **kw)  # noqa: E704
@register_model
def idennet_original_22(**kw): return _create_idennet("original", 22, **kw)  # noqa: E704
@register_model
def idennet_i_22(**kw): return _create_idennet("I", 22, **kw)  # noqa: E704
@register_model
def idennet_f_22(**kw): return _create_idennet("F", 22, **kw)  # noqa: E704
@register_model
def idennet_if_22(**kw): return _create_idennet("IF", 22, **kw)  # noqa: E704
@register_model
def idennet_original_40(**kw): return _create_idennet("original", 40, **kw)  # noqa: E704
@register_model
def idennet_i_40(**kw): return _create_idennet("I", 40, **kw)  # noqa: E704
@register_model
def idennet_f_40(**kw): return _create_idennet("F", 40, **kw)  # noqa: E704
@register_model
def idennet_if_40(**kw): return _create_idennet("IF", 40, **kw)  # noqa: E704
@register_model
def densenet_bc_16(**kw): return _create_densenet("expression", 16, **kw)  # noqa: E704
@register_model
def densenet_bc_22(**kw): return _create_densenet("expression", 22, **kw)  # noqa: E704
@register_model
def densenet_bc_40(**kw): return _create_densenet("expression", 40, **kw)  # noqa: E704
@register_model
def densenet_bc_identity_16(**kw): return _create_densenet("identity", 16, **kw)  # noqa: E704
@register_model
def densenet_bc_identity_22(**kw): return _create_densenet("identity", 22, **kw)  # noqa: E704
@register_model
def densenet_bc_identity_40(**kw): return _create_densenet("identity", 40, **kw)  # noqa: E704
# fmt: on


def _original_of(name: str) -> str:
    """``idennet_{i,f,if}_<depth>`` -> ``idennet_original_<depth>``, the baseline (Fig. 3 at ID rate 0)."""
    return re.sub(r"^idennet_(?:i|f|if)_(\d+)$", r"idennet_original_\1", name)


#: IDEnNet's training recipe (Li et al., arXiv 1812.04207), applied by fer-train to every option not given.
RECIPE = Recipe(
    family="IDEnNet",
    paper="Li et al., IDEnNet, arXiv 1812.04207, sec. 4.3",
    lr=0.01,
    pretrain_lr=0.1,
    schedule=Schedule("fractions", (0.5, 0.75)),
    batch_size=128,
    weight_decay=1e-4,
    input_size=48,
    resize=60,
    id_rate_zero=_original_of,
    sources={
        "optimizer": "sec. 4.3",
        "momentum": "sec. 4.3",
        "lr": "sec. 4.3: pre-training 0.1, fine-tuning 0.01",
        "schedule": "sec. 4.3: at 50% and 75% of the epochs, both stages",
        "batch_size": "sec. 4.3, given for fine-tuning",
        "weight_decay": "sec. 4.3, given for fine-tuning",
        "loss_weights": "sec. 3.2, eqs. 4-5: L = L_emo + L_id, alpha 0.1, gamma 15",
        "input": "sec. 4.2-4.3: 60x60 faces, random 48x48 crops, centre crop at test",
        "id_rate_zero": "sec. 4.5, Fig. 3: ID rate 0 is the Original Network (87.18%)",
    },
)
register_recipe(["idennet_*", "densenet_bc_*"], RECIPE)
# the variants with the identity-enhancing branch: --lambdas sets alpha and gamma of L_id (eq. 4)
register_recipe(
    ["idennet_i_*", "idennet_if_*"],
    with_values(
        RECIPE, family="IDEnNet I/IF", loss_weight_names=("id_alpha", "id_gamma"), loss_weights=(0.1, 15.0)
    ),
)
