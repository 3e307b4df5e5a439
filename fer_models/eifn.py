"""EIFN: Expression-Identity Fusion Network (Zhang, Su, Wang), with its ablations EFN and EIFN*.

Two VGG-16 convolutional stacks, the identity-related extractor ``I`` and the expression-related extractor
``E`` (each truncated at conv5_3, followed by ReLU and max-pool), a bilinear fusion module (sum-pooled outer
product ``I(l) (x) E(l)``, signed square root, L2 normalisation, softmax classifier: the fused
:class:`fer_kernels.nn.BilinearClassifier`), and a face-recognition branch (two fully connected layers,
softmax loss and center loss) on ``I``'s feature maps. Loss (eq. 5):
``L = lambda2 (L_S_id + lambda1 L_C_id) + lambda3 L_S_exp``.

Reading of the paper where DESIGN section 5 leaves details open:

- The bilinear vector is indexed identity-major: ``a = F_id`` (``ca`` channels), ``b = F_exp``
  (``cb``), element ``i * cb + j`` (eq. 3 writes ``I(l) (x) E(l)``). Sum pooling over locations (eq. 4).
- Face-recognition branch: ``flatten(F_id)`` (512 x 2 x 2 at 64x64) -> FC1 -> deep feature (512-d, the
  feature size of Wen et al.'s face model; the paper gives none) -> FC2 -> identity logits. As in Wen et
  al., the center loss acts on the FC1 output and FC2 reads it directly. No dropout (none is mentioned).
- Center loss: Wen et al.'s, centers moved by their update rule with rate 0.5 (see
  :class:`fer_models.losses.CenterLoss`), not by SGD.
- Loss weights: (lambda1, lambda2, lambda3) = (0.0001, 1, 6), the paper's setting when training on
  Oulu-CASIA (fine-tuning stage) and when pre-training on it; (0.0001, 2, 1) is its setting on CK+. They are
  plain attributes, so a training script can change them between the two stages.
- Variants (section 3.2): ``EIFN``: L_S_exp is back-propagated into the expression branch *and* the
  identity extractor ``I``; ``EIFN*``: only into the expression branch (``F_id`` enters the bilinear module
  detached); ``EFN``: lambda2 = 0, the identity loss is off, so ``I`` is trained by L_S_exp alone. With
  lambda2 = 0 the two FC layers and the centers would receive nothing and never affect the expression
  output, so EFN does not build them (``out.identity`` is None); its architecture is otherwise EIFN's.
- Training recipe (section 3.1; :data:`RECIPE`, applied by ``fer-train``): SGD, batch 100, momentum 0.9, lr
  0.01, weight decay 5e-4; fine-tuning divides the lr by 10 every 20 epochs (pre-training: no schedule is
  given, the lr stays 0.01); (lambda1, lambda2, lambda3) by the database a stage trains on: CK+ (0.0001, 2,
  1), Oulu-CASIA (0.0001, 1, 6), any other (0.0001, 1, 6); EFN the same with lambda2 = 0 (section 3.2).
  ``fer-train --id-rate 0`` trains EFN for EIFN and EIFN* (the baseline without identity).
- Grayscale input (N, 1, 64, 64) is repeated to three channels, so ImageNet conv1_1 weights apply as they
  are. :meth:`EIFN.load_vgg16_weights` reads a local torchvision-format VGG-16 state dict
  (``features.N.weight`` / ``features.N.bias``) into both extractors; nothing is downloaded. A model built
  with ``batch_norm=True`` takes a torchvision ``vgg16_bn`` state dict instead (its BatchNorm weights and
  running statistics too); a dict of the other layout is refused, naming both.

From scratch (``eifn_bn_slim``, ``eifn_star_bn_slim``, ``efn_bn_slim``; deviations from the paper, for
training without ImageNet weights within a two-core CPU's budget; :data:`SLIM_RECIPE`):

- Why: from random weights the paper's plain VGG-16 stacks stall for hundreds of steps predicting one class,
  the signed-sqrt / L2-normalised bilinear head passes the convolutions a gradient ~20x smaller than a
  linear head would, and full-width VGG-16 at 64x64 trains at 3-4 images/s on this CPU.
- BatchNorm after every conv (``batch_norm=True``, torchvision ``vgg16_bn`` layout, so ImageNet vgg16_bn
  weights of the full width would load; none are needed): trains from scratch, and at a higher lr.
- Narrow stages :data:`SLIM_WIDTHS` ``(16, 32, 64, 128, 128)``, VGG-16's 13 convs in its 2-2-3-3-3 stages:
  ~80 M MACs per extractor at 64x64 (full VGG-16: ~1.25 G), ~68 images/s for EIFN training on one thread
  (full width: 3-4). Width 128 at conv4-5 keeps a 128 x 128 = 16384-d bilinear vector; (16, 32, 64, 64, 64)
  is only ~25% faster. FC1 (``id_hidden``) is 128, a quarter of its 512-d input (flattened 128 x 2 x 2
  ``F_id``), as 512 is of full VGG-16's 2048.
- ``bilinear_scale`` :data:`SLIM_BILINEAR_SCALE` = 4: the softmax layer reads ``4 z``. ``z`` is a unit vector
  (16384-d), so with ``nn.Linear``'s initialisation the expression logits start at ~0.01 and the gradient
  reaching ``z`` (hence the convs) is small; a fixed scale on the normalised vector, as is common for
  normalised features, multiplies that gradient by 4 (and the head's effective step by 16: scales of 10
  diverged at lr 0.05). Fold 0 of SynthFER (40 subjects, 8 epochs of 2000 images): scale 4 reaches 50% test
  accuracy on unseen subjects (91% on training images), scale 1 36.8% (70%); efn_bn_slim (scale 4, same
  budget) 60.4%: on this single fold the identity branch does not help yet.
- lr 0.05 (paper 0.01, fine-tuning) and x0.1 after 75% of ``--epochs`` (paper: every 20 epochs, past the end
  of a short run). Batch 100, momentum 0.9, weight decay 5e-4 and the loss weights are the paper's.
- Epochs are not part of a recipe: ``--epochs 8 --epoch-images 2000`` (~4 min on one thread) is the budget
  these settings were chosen for.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels.nn as fnn
from fer_models.losses import CenterLoss, masked_cross_entropy
from fer_models.recipes import Recipe, Schedule, register_recipe, with_values
from fer_models.registry import register_model

__all__ = [
    "EIFNOutput",
    "EIFN",
    "vgg16_features",
    "VGG16_WIDTHS",
    "load_vgg16_features",
    "RECIPE",
    "SLIM_WIDTHS",
    "SLIM_BILINEAR_SCALE",
    "SLIM_RECIPE",
]

#: Output channels of VGG-16's five conv stages (conv1_x .. conv5_x).
VGG16_WIDTHS = (64, 128, 256, 512, 512)
_VGG16_CONVS_PER_STAGE = (2, 2, 3, 3, 3)
#: Stage widths of the from-scratch ``*_bn_slim`` variants: VGG-16's / 4 up to conv3, / 4 for conv4-5 too.
SLIM_WIDTHS = (16, 32, 64, 128, 128)
#: ``bilinear_scale`` of the ``*_bn_slim`` variants.
SLIM_BILINEAR_SCALE = 4.0
#: Keyword arguments of the ``*_bn_slim`` builders (each can be overridden).
SLIM = dict(widths=SLIM_WIDTHS, id_hidden=128, batch_norm=True, bilinear_scale=SLIM_BILINEAR_SCALE)


@dataclass
class EIFNOutput:
    """What EIFN returns.

    Attributes:
        expression (Tensor[N, E]): expression logits (bilinear fusion + softmax layer).
        identity (Tensor[N, I] | None): identity logits (None for EFN).
        identity_features (Tensor[N, D] | None): FC1 output, the deep feature of the center loss.
    """

    expression: torch.Tensor
    identity: torch.Tensor | None
    identity_features: torch.Tensor | None


def vgg16_features(
    widths: Sequence[int] = VGG16_WIDTHS, in_chans: int = 3, batch_norm: bool = False
) -> nn.Sequential:
    """VGG-16's convolutional part up to conv5_3 + ReLU + max-pool, laid out as torchvision's
    ``vgg16().features`` (indices 0..30; ``batch_norm``: ``vgg16_bn().features``, indices 0..43), so
    ``features.N.*`` state-dict keys load as ``N.*``.

    Args:
        widths (Sequence[int]): channels of the five stages (VGG-16: 64, 128, 256, 512, 512); smaller values
            give the same topology at lower cost (tests, the ``*_bn_slim`` variants).
        in_chans (int): input channels of conv1_1.
        batch_norm (bool): a BatchNorm2d after each conv, before its ReLU (torchvision ``vgg16_bn``: conv at
            index i, BN at i+1, ReLU at i+2; convs 0, 3, 7, 10, 14, 17, 20, 24, 27, 30, 34, 37, 40).

    Shape: (N, in_chans, H, W) -> (N, widths[-1], H // 32, W // 32).
    """
    if len(widths) != 5:
        raise ValueError(f"widths: expected 5 stage widths, got {tuple(widths)}")
    layers: list[nn.Module] = []
    c = in_chans
    for width, convs in zip(widths, _VGG16_CONVS_PER_STAGE, strict=True):
        for _ in range(convs):
            layers.append(nn.Conv2d(c, width, 3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(width))
            layers.append(nn.ReLU(inplace=True))
            c = width
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


_FEATURE_KEY = re.compile(
    r"(?:^|\.)features\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$"
)


def load_vgg16_features(source: str | os.PathLike | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ``features.N.*`` tensors of a torchvision-format VGG-16 (or ``vgg16_bn``) state dict, keyed ``N.*``
    (conv ``weight`` / ``bias``; BatchNorm ``weight``, ``bias``, ``running_mean``, ``running_var``,
    ``num_batches_tracked``).

    Args:
        source: a path to a file saved with ``torch.save(state_dict)`` (loaded with ``weights_only=True``,
            nothing is downloaded), or the state dict itself. Keys may carry a prefix (``module.``,
            ``vgg.``); a ``{"state_dict": ...}`` wrapper is unwrapped.

    Raises:
        ValueError: one line naming the file: missing, unreadable, not plain data, or no VGG-16 keys.
    """
    sd = source
    name = "the state dict" if isinstance(source, Mapping) else os.fspath(source)
    if not isinstance(source, Mapping):
        if not os.path.isfile(name):
            raise ValueError(f"{name}: no such file")
        try:
            sd = torch.load(name, map_location="cpu", weights_only=True)
        except Exception as exc:  # not a torch file, truncated, or a pickle that would run code
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise ValueError(
                f"{name}: not a torch-saved state dict of plain tensors ({type(exc).__name__}: {first[:200]})"
            ) from None
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    out = {}
    for key, value in sd.items() if isinstance(sd, Mapping) else ():
        m = _FEATURE_KEY.search(str(key))
        if m and torch.is_tensor(value):
            out[f"{m.group(1)}.{m.group(2)}"] = value
    if not out:
        raise ValueError(f"{name}: no 'features.N.weight' keys; expected a torchvision VGG-16 state dict")
    return out


class EIFN(nn.Module):
    """Expression-identity fusion network (Fig. 1) in the variants ``EFN``, ``EIFN*`` and ``EIFN``.

    Args:
        variant (str): ``EIFN``, ``EIFN*`` (alias ``EIFN_star``) or ``EFN`` (case-insensitive).
        num_expressions (int): expression classes. num_identities (int): training subjects.
        in_chans (int): channels of the images the data pipeline gives (1 or 3; recorded in ``input_size``;
            forward accepts both).
        img_size (int): input height and width (paper: 64), a multiple of 32.
        widths (Sequence[int]): VGG stage widths (default VGG-16's; smaller for tests).
        id_hidden (int): FC1 width, the center-loss feature (512).
        lambda1, lambda2, lambda3 (float): loss weights of eq. 5 (0.0001, 1, 6; EFN: lambda2 = 0).
        center_alpha (float): center update rate (Wen et al.: 0.5).
        eps (float): epsilon inside the signed square root of the bilinear module.
        batch_norm (bool): a BatchNorm2d after every conv of both extractors (torchvision ``vgg16_bn``
            layout; not in the paper, which fine-tunes plain ImageNet VGG-16: the from-scratch variants).
        bilinear_scale (float): the expression logits are ``bilinear_scale * classifier(F_id, F_exp)``, i.e.
            the softmax layer reads ``s * z`` (``z`` the signed-sqrt, L2-normalised bilinear vector) with its
            bias scaled by ``s`` too. 1 (the paper) adds nothing; the from-scratch variants use
            :data:`SLIM_BILINEAR_SCALE`.
        vgg16_weights: optional path to (or state dict of) torchvision VGG-16 weights, loaded into both
            extractors (:meth:`load_vgg16_weights`).
        bilinear_layer: the bilinear classifier class (fused :class:`fer_kernels.nn.BilinearClassifier` by
            default; :class:`fer_models.export.BilinearClassifierPlain` fits too).

    Shape:
        x (Tensor[N, 1 or 3, img_size, img_size]) -> ``out.expression`` (N, num_expressions),
        ``out.identity`` (N, num_identities) or None, ``out.identity_features`` (N, id_hidden) or None.

    Submodules: ``identity_extractor`` and ``expression_extractor`` (VGG-16 conv stacks), ``classifier``
    (the bilinear fusion module with its softmax layer), and except for EFN ``fc1``, ``fc2`` and
    ``center_loss`` (its ``centers`` buffer).
    """

    VARIANTS = ("EFN", "EIFN*", "EIFN")

    def __init__(
        self,
        variant: str = "EIFN",
        num_expressions: int = 7,
        num_identities: int = 118,
        in_chans: int = 1,
        img_size: int = 64,
        widths: Sequence[int] = VGG16_WIDTHS,
        id_hidden: int = 512,
        lambda1: float = 1e-4,
        lambda2: float | None = None,
        lambda3: float = 6.0,
        center_alpha: float = 0.5,
        eps: float = 1e-5,
        batch_norm: bool = False,
        bilinear_scale: float = 1.0,
        vgg16_weights: str | os.PathLike | Mapping[str, torch.Tensor] | None = None,
        bilinear_layer: type[nn.Module] = fnn.BilinearClassifier,
    ):
        super().__init__()
        self.variant = self.canonical_variant(variant)
        if in_chans not in (1, 3):
            raise ValueError(f"in_chans: expected 1 or 3, got {in_chans}")
        if img_size % 32 or img_size < 32:
            raise ValueError(f"img_size: expected a multiple of 32, got {img_size}")
        if lambda2 is None:
            lambda2 = 0.0 if self.variant == "EFN" else 1.0
        if self.variant == "EFN" and lambda2 != 0:
            raise ValueError(f"lambda2: EFN is EIFN with lambda2 = 0, got {lambda2}")
        self.num_expressions, self.in_chans, self.img_size = num_expressions, in_chans, img_size
        self.widths = tuple(int(w) for w in widths)
        self.lambda1, self.lambda2, self.lambda3 = lambda1, lambda2, lambda3
        if not (math.isfinite(bilinear_scale) and bilinear_scale > 0):
            raise ValueError(f"bilinear_scale: expected a finite value > 0, got {bilinear_scale}")
        self.batch_norm, self.bilinear_scale = bool(batch_norm), float(bilinear_scale)
        self.detach_identity = self.variant == "EIFN*"
        self.has_identity_branch = self.variant != "EFN"
        self.num_identities = num_identities if self.has_identity_branch else None
        self.identity_extractor = vgg16_features(self.widths, batch_norm=self.batch_norm)
        self.expression_extractor = vgg16_features(self.widths, batch_norm=self.batch_norm)
        c = self.widths[-1]
        self.classifier = bilinear_layer(c, c, num_expressions, True, eps)
        if self.has_identity_branch:
            if num_identities is None or num_identities < 1:
                raise ValueError(f"num_identities: expected >= 1, got {num_identities}")
            side = img_size // 32
            self.fc1 = nn.Linear(c * side * side, id_hidden)
            self.fc2 = nn.Linear(id_hidden, num_identities)
            self.center_loss = CenterLoss(num_identities, id_hidden, center_alpha)
        self.input_size = (in_chans, img_size, img_size)
        self._init_weights()
        if vgg16_weights is not None:
            self.load_vgg16_weights(vgg16_weights)

    @classmethod
    def canonical_variant(cls, variant: str) -> str:
        v = {"efn": "EFN", "eifn": "EIFN", "eifn*": "EIFN*", "eifn_star": "EIFN*"}.get(str(variant).lower())
        if v is None:
            raise ValueError(f"variant: expected one of {', '.join(cls.VARIANTS)}, got {variant!r}")
        return v

    def _init_weights(self) -> None:
        # torchvision VGG's initialisation (the bilinear classifier keeps nn.Linear's).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def load_vgg16_weights(
        self,
        source: str | os.PathLike | Mapping[str, torch.Tensor],
        extractors: Sequence[str] = ("identity", "expression"),
    ) -> EIFN:
        """Initialise the extractors from ImageNet VGG-16 weights on disk (torchvision format): ``vgg16``
        for a model built without ``batch_norm``, ``vgg16_bn`` (conv and BatchNorm weights and running
        statistics) for one built with it.

        Args:
            source: path to a ``torch.save``-d VGG-16 state dict (``features.N.weight`` keys), or the dict.
            extractors: which of ``identity`` / ``expression`` to load (both by default, as in the paper).

        Raises:
            ValueError: the dict's layout (vgg16 / vgg16_bn) is not the model's, or a tensor is missing or has
                another shape (e.g. a model built with ``widths``).
        """
        weights = load_vgg16_features(source)
        has_bn = any(k.endswith(".running_mean") for k in weights)
        if has_bn != self.batch_norm:
            given, built = ("vgg16_bn", "without") if has_bn else ("vgg16", "with")
            want = "vgg16_bn" if self.batch_norm else "vgg16"
            raise ValueError(
                f"VGG-16 weights: a torchvision {given} state dict (BatchNorm layout: "
                f"{'yes' if has_bn else 'no'}), but this model is built {built} batch_norm; it takes a "
                f"{want} state dict"
            )
        for which in extractors:
            ext = {"identity": self.identity_extractor, "expression": self.expression_extractor}[which]
            own = ext.state_dict()
            # num_batches_tracked only counts steps (older torchvision files lack it): kept when absent
            need = [k for k in own if not k.endswith(".num_batches_tracked") or k in weights]
            missing = sorted(set(need) - set(weights), key=lambda k: (int(k.split(".")[0]), k))
            if missing:
                raise ValueError(
                    f"VGG-16 weights: missing features.{missing[0]} (and {len(missing) - 1} more)"
                )
            for k in need:
                if weights[k].shape != own[k].shape:
                    raise ValueError(
                        f"VGG-16 weights: features.{k} has shape {tuple(weights[k].shape)}, the "
                        f"{which} extractor expects {tuple(own[k].shape)}"
                    )
            ext.load_state_dict({**own, **{k: weights[k] for k in need}})
        return self

    def forward(self, x: torch.Tensor) -> EIFNOutput:
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"x: expected (N, 1 or 3, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        f_id = self.identity_extractor(x)
        f_exp = self.expression_extractor(x)
        expression = self.classifier(f_id.detach() if self.detach_identity else f_id, f_exp)
        if self.bilinear_scale != 1.0:
            expression = expression * self.bilinear_scale
        if not self.has_identity_branch:
            return EIFNOutput(expression, None, None)
        feat = self.fc1(f_id.flatten(1))
        return EIFNOutput(expression, self.fc2(feat), feat)

    def loss(
        self, out: EIFNOutput, expression: torch.Tensor, identity: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """``L = lambda2 (L_S_id + lambda1 L_C_id) + lambda3 L_S_exp`` (eq. 5).

        In training mode this also moves the identity centers (center-loss update rule), once per call.

        Args:
            out: this model's output.
            expression (Tensor[N], int64): expression labels.
            identity (Tensor[N], int64 | None): identity labels; -1 (or None for all) = unknown, adding no
                identity loss and moving no center.

        Returns:
            dict: ``total`` (weighted), ``expression`` (L_S_exp),
            ``identity`` (L_id = L_S_id + lambda1 L_C_id),
            ``identity_softmax`` (L_S_id), ``identity_center`` (L_C_id); unweighted but ``total``.
        """
        l_exp = F.cross_entropy(out.expression, expression)
        zero = l_exp.new_zeros(())
        if self.has_identity_branch and identity is not None:
            l_sid = masked_cross_entropy(out.identity, identity)
            l_cid = self.center_loss(out.identity_features, identity)
        else:
            l_sid = l_cid = zero
        l_id = l_sid + self.lambda1 * l_cid
        total = (
            self.lambda2 * l_id + self.lambda3 * l_exp if self.has_identity_branch else self.lambda3 * l_exp
        )
        return {
            "total": total,
            "expression": l_exp,
            "identity": l_id,
            "identity_softmax": l_sid,
            "identity_center": l_cid,
        }

    def to_reference(self) -> EIFN:
        """A plain-PyTorch copy with the same weights (see :func:`fer_models.export.to_reference`)."""
        from fer_kernels.nn import to_reference

        return to_reference(self)


def _create_eifn(variant: str, num_expressions: int = 7, num_identities: int = 118, **kwargs) -> EIFN:
    return EIFN(variant, num_expressions, num_identities, **kwargs)


def _create_eifn_bn_slim(variant: str, **kwargs) -> EIFN:
    return _create_eifn(variant, **{**SLIM, **kwargs})


# fmt: off
@register_model
def eifn(**kw): return _create_eifn("EIFN", **kw)  # noqa: E704
@register_model
def eifn_star(**kw): return _create_eifn("EIFN*", **kw)  # noqa: E704
@register_model
def efn(**kw): return _create_eifn("EFN", **kw)  # noqa: E704
@register_model
def eifn_bn_slim(**kw): return _create_eifn_bn_slim("EIFN", **kw)  # noqa: E704
@register_model
def eifn_star_bn_slim(**kw): return _create_eifn_bn_slim("EIFN*", **kw)  # noqa: E704
@register_model
def efn_bn_slim(**kw): return _create_eifn_bn_slim("EFN", **kw)  # noqa: E704
# fmt: on


#: EIFN's training recipe (Zhang, Su, Wang, sec. 3.1), applied by fer-train to every option not given.
RECIPE = Recipe(
    family="EIFN",
    paper="Zhang, Su, Wang, Expression-Identity Fusion Network, sec. 3.1",
    lr=0.01,
    schedule=Schedule("every", (20,)),
    pretrain_schedule=Schedule("constant"),
    batch_size=100,
    weight_decay=5e-4,
    input_size=64,
    resize=64,
    loss_weight_names=("lambda1", "lambda2", "lambda3"),
    loss_weights=(1e-4, 1.0, 6.0),
    loss_weights_by_dataset={"ckplus": (1e-4, 2.0, 1.0), "oulu": (1e-4, 1.0, 6.0)},
    id_rate_zero=lambda name: "efn",
    sources={
        "optimizer": "sec. 3.1",
        "momentum": "sec. 3.1",
        "lr": "sec. 3.1, both stages",
        "schedule": "sec. 3.1: fine-tuning every 20 epochs; pre-training: none given, constant",
        "batch_size": "sec. 3.1",
        "weight_decay": "sec. 3.1",
        "loss_weights": "sec. 3.1: by the database a stage trains on (CK+ 0.0001,2,1; Oulu-CASIA and "
        "others 0.0001,1,6)",
        "input": "sec. 3.1: 64x64, no crop",
        "id_rate_zero": "sec. 3.2: EFN (lambda2 = 0) is the baseline without identity",
    },
)
register_recipe(["eifn", "eifn_star"], RECIPE)
register_recipe(
    "efn",
    with_values(
        RECIPE,
        family="EFN",
        loss_weights=(1e-4, 0.0, 6.0),
        loss_weights_by_dataset={"ckplus": (1e-4, 0.0, 1.0), "oulu": (1e-4, 0.0, 6.0)},
        id_rate_zero=None,
        sources={**RECIPE.sources, "loss_weights": "sec. 3.2: EIFN's with lambda2 = 0 in both stages"},
    ),
)

#: The from-scratch ``*_bn_slim`` variants' recipe: EIFN's, but for what training without ImageNet weights
#: on a CPU budget changes (module docstring, "From scratch").
SLIM_RECIPE = with_values(
    RECIPE,
    family="EIFN-BN-slim",
    paper="Zhang, Su, Wang, sec. 3.1, with from-scratch deviations (fer_models/eifn.py)",
    lr=0.05,
    schedule=Schedule("fractions", (0.75,)),
    pretrain_schedule=None,
    id_rate_zero=lambda name: "efn_bn_slim",
    sources={
        **RECIPE.sources,
        "lr": "deviation: 0.05 (paper 0.01, fine-tuning ImageNet weights); BatchNorm lets training from "
        "scratch take 5x",
        "schedule": "deviation: x0.1 after 75% of --epochs (paper: every 20 epochs), for short from-scratch "
        "runs; both stages",
        "id_rate_zero": "sec. 3.2: EFN (lambda2 = 0) is the baseline without identity; efn_bn_slim",
        "model": "deviation: from scratch (paper: ImageNet VGG-16), BatchNorm after every conv, stage widths "
        "16,32,64,128,128, FC1 128, bilinear scale 4",
        "epochs": "deviation: none in the paper; settings chosen for --epochs 8 --epoch-images 2000 (~4 min "
        "on 1 thread)",
    },
)
register_recipe(["eifn_bn_slim", "eifn_star_bn_slim"], SLIM_RECIPE)
register_recipe(
    "efn_bn_slim",
    with_values(
        SLIM_RECIPE,
        family="EFN-BN-slim",
        loss_weights=(1e-4, 0.0, 6.0),
        loss_weights_by_dataset={"ckplus": (1e-4, 0.0, 1.0), "oulu": (1e-4, 0.0, 6.0)},
        id_rate_zero=None,
        sources={**SLIM_RECIPE.sources, "loss_weights": "sec. 3.2: EIFN's with lambda2 = 0 in both stages"},
    ),
)
