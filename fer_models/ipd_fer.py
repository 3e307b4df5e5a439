"""IPD-FER: identity and pose disentangled facial expression recognition (Jiang & Deng, arXiv 2208.08106).

Built from :mod:`fer_kernels.nn` (fused ``DenseBlock``, ``Transition``, ``FusionConv``); every fused layer is
a ``*_layer`` argument, so the plain twins of :mod:`fer_kernels.nn.plain` can be swapped in, and
:func:`fer_kernels.nn.to_reference` gives a copy that runs no custom op. The encoder, decoder and sample-grid
pieces here are shared with DE-GAN (:mod:`fer_models.de_gan`).

What the paper (its abstract) fixes: three encoders (identity: a pre-trained face-recognition network,
frozen; pose: trained with pose labels; expression: trained with expression labels); a decoder that
synthesises the subject's neutral face from identity + pose and reconstructs the input when the expression
feature is added; the difference between the synthesised neutral and expressive images further separates
expression from identity and pose. Where it is silent, the choices below follow its precursor DeRL
(de-expression residue learning: L1 image terms, classification from the expressive residue), sized for
minutes of CPU training:

- Input (N, C, 64, 64) normalised to [-1, 1] (``fer_models.data.transforms``: (p / 255 - 0.5) / 0.5); the
  decoder ends in ``tanh``, so synthesised images live in the same range.
- Identity encoder: the feature extraction group (stem, dense block 1, transition 1, dense block 2) of
  IDEnNet's identity DenseNet-BC (``densenet_bc_identity_<identity_depth>``, default 16: growth 12, 48
  channels at 24x24 for a 48x48 face), so a network pre-trained by ``fer-train --stage pretrain --model
  densenet_bc_identity_16`` on an identity population loads as it is (:meth:`IPDFER.load_identity_encoder`).
  The face is resized 64 -> 48 (bilinear, antialiased) for it, that network's input size; its output is
  average-pooled 3x3 to the 8x8 code grid. It is always frozen (``requires_grad=False``, kept in eval mode
  by :meth:`IPDFER.train`, run under ``torch.no_grad``): no loss reaches it and its running statistics never
  change. From random initialisation it is a fixed random feature extractor (tests, or no pre-trained net).
- Pose and expression encoders (:class:`DenseEncoder`): conv3x3 stride 2 (16 ch, 32x32) - BN-ReLU - conv3x3
  stride 2 (24 ch, 16x16), dense block (4 bottleneck layers, growth 12) at 16x16, transition (compression
  0.5, 2x2 average pool), dense block (4 layers) at 8x8: 78 channels at 8x8. Each code is ReLU(BN(features));
  its classifier is GAP - dropout - linear (the expression classifier's logits are the model's prediction).
- The codes are fused by 1x1 convolutions (``FusionConv``, no pool, at 8x8):
  ``z_neutral = W_i id + W_p pose + b`` and ``z_expressive = z_neutral + W_e expression``, i.e. the
  expression code is literally *added*. The same sums are formed at 16x16 (``skip_channels``, default 32:
  the identity features area-resampled 24 -> 16, the pose and expression encoders' first dense block), a
  finer code grid that joins the decoder after its first upsampling, U-Net style: from the 8x8 grid alone
  the decoder drew faces without eyes or mouths. The decoder (:class:`ConvDecoder`: BN-ReLU, nearest 2x
  upsampling + 3x3 convolutions 64 -> 32 -> 16 -> image channels with BN-ReLU between them, tanh; no
  transposed convolutions, whose checkerboard showed in the first sample grids) runs on both codes in one
  batch and gives ``neutral`` and ``reconstruction``.
- Disentanglement term: the residue ``reconstruction - neutral`` (what the expression code adds to the face,
  DeRL's expressive residue) is classified by a small residue encoder (the same layout, 2 + 2 dense layers)
  with cross-entropy on the expression label. Its gradient reaches the decoder, the fusion and the pose and
  expression encoders: the neutral synthesis from identity + pose must not carry the expression, and the
  expression code must. Its logits are ``out.residue_expression``.
- Loss: ``CE(expression) + lambda_pose CE(pose) + lambda_neutral L1(neutral, the sequence's neutral frame)
  + lambda_rec L1(reconstruction, x) + lambda_dis CE(residue)``; samples with pose -1 add no pose term, and
  the neutral term is skipped when the data set has no neutral frames. Every weight is 1 by default (the
  abstract gives none). No adversarial term: the abstract names none, and it keeps one optimizer group.
- Recipe (:data:`RECIPE`): Adam (betas 0.5, 0.999: pix2pix's, as DeRL's generator is pix2pix's cGAN), lr
  1e-3, x0.1 at 75% of the epochs, batch 32, no weight decay, 64x64 input stored at 64 (no crop). Not
  pix2pix's constant 2e-4: IPD-FER has no adversarial term to keep stable, and at 2e-4 the expression encoder
  was still at 25% training accuracy (chance 17%) after 6,000 SynthFER v2 images; at 1e-3 it reached 65% in
  40,000 (fold 0, the run that chose it).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels.nn as fnn
from fer_models.idennet import _feature_group, _init_weights, densenet_bc_channels
from fer_models.losses import masked_cross_entropy
from fer_models.recipes import Recipe, Schedule, register_recipe
from fer_models.registry import register_model

__all__ = [
    "DenseEncoder",
    "ConvDecoder",
    "CodeHead",
    "IPDFEROutput",
    "IPDFER",
    "save_image_grid",
    "LABEL_WIDTH",
    "RECIPE",
]


# ------------------------------------------------------------------------------------------- shared pieces
class DenseEncoder(nn.Module):
    """A small DenseNet-BC encoder for 64x64 faces: stride-2 stem to H/4, dense block, transition, dense block
    at H/8.

    Args:
        in_chans (int): input channels.
        layers (Sequence[int]): bottleneck layers of the two dense blocks.
        stem_channels (Sequence[int]): widths of the two stride-2 stem convolutions.
        growth_rate (int), bn_size (int), compression (float): DenseNet-BC hyper-parameters (12, 4, 0.5).
        block_layer, transition_layer: dense block and transition classes (fused by default).

    Shape:
        x (Tensor[N, in_chans, H, W]) -> list of the dense blocks' outputs, ``(N, c1, H/4, W/4)`` and
        ``(N, out_channels, H/8, W/8)``; ``channels`` gives ``[c1, out_channels]``.
    """

    def __init__(
        self,
        in_chans: int = 1,
        layers: Sequence[int] = (4, 4),
        stem_channels: Sequence[int] = (16, 24),
        growth_rate: int = 12,
        bn_size: int = 4,
        compression: float = 0.5,
        block_layer: type[nn.Module] = fnn.DenseBlock,
        transition_layer: type[nn.Module] = fnn.Transition,
    ):
        super().__init__()
        s1, s2 = stem_channels
        self.stem = nn.Sequential(
            OrderedDict(
                [
                    ("conv0", nn.Conv2d(in_chans, s1, 3, stride=2, padding=1, bias=False)),
                    ("norm0", nn.BatchNorm2d(s1)),
                    ("relu0", nn.ReLU(inplace=True)),
                    ("conv1", nn.Conv2d(s1, s2, 3, stride=2, padding=1, bias=False)),
                ]
            )
        )
        c1 = s2 + layers[0] * growth_rate
        t1 = int(c1 * compression)
        self.denseblock1 = block_layer(layers[0], s2, growth_rate, bn_size)
        self.transition1 = transition_layer(c1, t1, 2)
        self.denseblock2 = block_layer(layers[1], t1, growth_rate, bn_size)
        self.channels = [c1, t1 + layers[1] * growth_rate]
        self.out_channels = self.channels[-1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h1 = self.denseblock1(self.stem(x))
        return [h1, self.denseblock2(self.transition1(h1))]


class ConvDecoder(nn.Module):
    """Code grid -> image: BN-ReLU, then per resolution step a nearest-neighbour 2x upsampling and a 3x3
    convolution through ``widths`` (each but the last followed by BN-ReLU), the last one to ``out_chans``
    channels, and ``tanh`` (images in [-1, 1], like the inputs). Upsample + convolution instead of strided
    transposed convolutions: those leave a checkerboard (uneven kernel overlap) that training takes long to
    undo (Odena et al., "Deconvolution and checkerboard artifacts", Distill 2016).

    With ``skip_channels > 0`` a second, finer code grid at twice the first one's side (BN-ReLU'd) joins the
    first step's output before the second convolution, U-Net style: the 8x8 code alone cannot carry a face's
    small features (eyes, brows, mouth: a few pixels each at 64x64).

    Args:
        in_channels (int): code channels (= ``widths[0]``).
        widths (Sequence[int]): channels at each resolution below the output (at least 2 entries).
        out_chans (int): image channels.
        skip_channels (int): channels of the finer code grid (0: none).

    Shape:
        z (Tensor[N, in_channels, S, S]), skip (Tensor[N, skip_channels, 2S, 2S] | None)
        -> (N, out_chans, S * 2^len(widths), same).
    """

    def __init__(
        self, in_channels: int, widths: Sequence[int] = (64, 32, 16), out_chans: int = 1, skip_channels: int = 0
    ):
        super().__init__()
        if in_channels != widths[0]:
            raise ValueError(f"in_channels ({in_channels}) must equal widths[0] ({widths[0]})")
        if len(widths) < 2:
            raise ValueError(f"widths: expected at least 2 entries, got {list(widths)}")
        self.norm0 = nn.BatchNorm2d(widths[0])
        self.skip_channels = skip_channels
        self.skip_norm = nn.BatchNorm2d(skip_channels) if skip_channels else None
        # step i upsamples and convolves ins[i] -> widths[i + 1] channels; the finer grid joins step 1's input
        ins = [w + (skip_channels if i == 1 else 0) for i, w in enumerate(widths)]
        up = lambda: ("up", nn.Upsample(scale_factor=2, mode="nearest"))  # noqa: E731
        self.stages = nn.ModuleList(
            nn.Sequential(
                OrderedDict(
                    [up(), ("conv", nn.Conv2d(a, b, 3, padding=1, bias=False)), ("norm", nn.BatchNorm2d(b)),
                     ("relu", nn.ReLU(inplace=True))]
                )
            )
            for a, b in zip(ins[:-1], widths[1:], strict=True)
        )
        self.out = nn.Sequential(
            OrderedDict([up(), ("conv", nn.Conv2d(ins[-1], out_chans, 3, padding=1)), ("tanh", nn.Tanh())])
        )
        self.upscale = 2 ** len(widths)

    def forward(self, z: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if (skip is None) != (self.skip_norm is None):
            raise ValueError(
                f"skip: this decoder takes {'a' if self.skip_norm is not None else 'no'} finer code grid "
                f"({self.skip_channels} channels), got {'none' if skip is None else tuple(skip.shape)}"
            )
        h = F.relu(self.norm0(z))
        for i, stage in enumerate([*self.stages, self.out]):
            if i == 1 and skip is not None:
                h = torch.cat([h, F.relu(self.skip_norm(skip))], 1)
            h = stage(h)
        return h


class CodeHead(nn.Module):
    """ReLU(BN(features)) (the code) and GAP - dropout - linear on it (the logits)."""

    def __init__(self, channels: int, num_classes: int, drop_rate: float = 0.0):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels)
        self.dropout = nn.Dropout(drop_rate)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = F.relu(self.norm(h))
        return code, self.fc(self.dropout(code.mean((2, 3))))


def _to_uint8(t: torch.Tensor) -> torch.Tensor:
    """[-1, 1] images (N, C, H, W) -> uint8 (N, H, W, C)."""
    t = t.detach().float().cpu()
    return ((t.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1)


def save_image_grid(
    rows: Sequence[tuple[str, torch.Tensor]], path: str | os.PathLike, scale: int | None = None, gap: int = 2
) -> str:
    """Write a PNG grid of [-1, 1] images: one row per ``(label, Tensor[n, C, H, W])``, the label on the left.

    Args:
        rows: the rows, top to bottom; each with the same ``n`` and image size, C in {1, 3}.
        path: the PNG file to write (folders are created).
        scale (int | None): integer upscaling; None: 2 for images under 128 pixels, else 1.
        gap (int): white pixels between cells.

    Returns:
        str: ``path``. The image is ``LABEL_WIDTH + n * (S + gap)`` wide and ``len(rows) * (S + gap) - gap``
        high, ``S = H * scale``, RGB.
    """
    from PIL import Image, ImageDraw

    if not rows:
        raise ValueError("rows: nothing to draw")
    n, _, h, w = rows[0][1].shape
    scale = scale or (2 if max(h, w) < 128 else 1)
    sh, sw = h * scale, w * scale
    width = LABEL_WIDTH + n * (sw + gap)
    height = len(rows) * (sh + gap) - gap
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        if images.shape[0] != n or images.shape[2:] != (h, w):
            raise ValueError(
                f"rows[{r}] ({label}): expected {n} images of {h}x{w}, got {tuple(images.shape)}"
            )
        top = r * (sh + gap)
        draw.text((4, top + sh // 2 - 6), label, fill=(0, 0, 0))
        pixels = _to_uint8(images).numpy()
        for i in range(n):
            px = pixels[i]
            img = (
                Image.fromarray(np.ascontiguousarray(px[..., 0]), "L")
                if px.shape[-1] == 1
                else Image.fromarray(np.ascontiguousarray(px[..., :3]), "RGB")
            )
            if scale != 1:
                img = img.resize((sw, sh), Image.NEAREST)
            canvas.paste(img.convert("RGB"), (LABEL_WIDTH + i * (sw + gap), top))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, format="PNG")
    return path


#: Width in pixels of the label column of :func:`save_image_grid`.
LABEL_WIDTH = 84


def _check_input(x: torch.Tensor, input_size: tuple[int, int, int]) -> None:
    if x.dim() != 4 or tuple(x.shape[1:]) != tuple(input_size):
        raise ValueError(f"x: expected (N, {', '.join(map(str, input_size))}), got {tuple(x.shape)}")


def _extract_state_dict(obj, prefixes: Sequence[str]) -> dict[str, torch.Tensor]:
    """The sub-state-dict under the first of ``prefixes`` found in a (possibly wrapped) checkpoint."""
    if isinstance(obj, (str, os.PathLike)):
        obj = torch.load(os.fspath(obj), map_location="cpu", weights_only=True)
    if isinstance(obj, nn.Module):
        for attr in ("feature_group", "identity_group", "identity_encoder"):
            if isinstance(getattr(obj, attr, None), nn.Module):
                return getattr(obj, attr).state_dict()
        obj = obj.state_dict()
    if not isinstance(obj, Mapping):
        raise TypeError(f"expected a module, a state dict, a checkpoint or a path, got {type(obj).__name__}")
    for wrapper in ("model", "state_dict"):
        if wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
    sd = {(k[len("module.") :] if k.startswith("module.") else k): v for k, v in obj.items()}
    for p in prefixes:
        sub = {k[len(p) :]: v for k, v in sd.items() if k.startswith(p)}
        if sub:
            return sub
    return sd


# ----------------------------------------------------------------------------------------------- IPD-FER
@dataclass
class IPDFEROutput:
    """What IPD-FER returns.

    Attributes:
        expression (Tensor[N, E]): expression logits (the expression encoder's classifier).
        pose (Tensor[N, P]): pose logits.
        neutral (Tensor[N, C, H, W]): the synthesised neutral face (identity + pose codes), in [-1, 1].
        reconstruction (Tensor[N, C, H, W]): the input synthesised from identity + pose + expression codes.
        residue_expression (Tensor[N, E]): expression logits of the residue ``reconstruction - neutral``.
        identity (None): no identity head (kept so code that reads ``out.identity`` works).
    """

    expression: torch.Tensor
    pose: torch.Tensor
    neutral: torch.Tensor
    reconstruction: torch.Tensor
    residue_expression: torch.Tensor
    identity: torch.Tensor | None = None


class IPDFER(nn.Module):
    """IPD-FER (see the module docstring for the reading of the paper).

    Args:
        num_expressions (int): expression classes. num_poses (int): pose classes.
        in_chans (int): image channels (1: grayscale). image_size (int): input side (64; a multiple of 8).
        identity_depth (int): depth of the identity DenseNet-BC whose feature group is the identity encoder.
        identity_size (int): side the face is resized to for the identity encoder (48: IDEnNet's input).
        code_channels (int): channels of the fused code grid (the decoder's first width).
        skip_channels (int): channels of the fused 16x16 code grid joining the decoder (0: none).
        decoder_widths (Sequence[int]): decoder channels per resolution (``code_channels`` first).
        encoder_layers, residue_layers (Sequence[int]): dense layers of the pose / expression encoders and of
            the residue encoder.
        drop_rate (float): dropout before the linear classifiers.
        lambda_pose, lambda_neutral, lambda_rec, lambda_dis (float): loss weights (see :meth:`loss`).
        block_layer, transition_layer, fusion_layer: dense block, transition and fusion-conv classes.

    Shape:
        x (Tensor[N, in_chans, image_size, image_size]) -> :class:`IPDFEROutput`.
    """

    generative = True

    def __init__(
        self,
        num_expressions: int = 6,
        num_poses: int = 5,
        in_chans: int = 1,
        image_size: int = 64,
        identity_depth: int = 16,
        identity_size: int = 48,
        code_channels: int = 64,
        decoder_widths: Sequence[int] = (64, 32, 16),
        encoder_layers: Sequence[int] = (4, 4),
        residue_layers: Sequence[int] = (2, 2),
        skip_channels: int = 32,
        growth_rate: int = 12,
        drop_rate: float = 0.0,
        lambda_pose: float = 1.0,
        lambda_neutral: float = 1.0,
        lambda_rec: float = 1.0,
        lambda_dis: float = 1.0,
        block_layer: type[nn.Module] = fnn.DenseBlock,
        transition_layer: type[nn.Module] = fnn.Transition,
        fusion_layer: type[nn.Module] = fnn.FusionConv,
    ):
        super().__init__()
        code_side = image_size // 8
        if image_size % 8 or len(decoder_widths) != 3:
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of 8 and the decoder must upsample 8x "
                f"(decoder_widths has {len(decoder_widths)} entries, expected 3)"
            )
        if num_expressions < 2 or num_poses < 1:
            raise ValueError(
                f"num_expressions >= 2 and num_poses >= 1 expected, got {num_expressions}, {num_poses}"
            )
        self.num_expressions, self.num_poses = num_expressions, num_poses
        self.in_chans, self.image_size = in_chans, image_size
        self.identity_depth, self.identity_size = identity_depth, identity_size
        self.lambda_pose, self.lambda_neutral = lambda_pose, lambda_neutral
        self.lambda_rec, self.lambda_dis = lambda_rec, lambda_dis
        self.input_size = (in_chans, image_size, image_size)

        self.identity_encoder = _feature_group(
            identity_depth, growth_rate, 0.5, 4, in_chans, block_layer, transition_layer
        )
        id_channels = densenet_bc_channels(identity_depth, growth_rate)["block2"]
        id_side = identity_size // 2
        if id_side % code_side:
            raise ValueError(
                f"identity_size ({identity_size}): its feature side {id_side} must be a multiple of the code "
                f"side {code_side}"
            )
        self._id_pool = id_side // code_side
        self.identity_norm = nn.BatchNorm2d(id_channels)
        enc = dict(growth_rate=growth_rate, block_layer=block_layer, transition_layer=transition_layer)
        self.pose_encoder = DenseEncoder(in_chans, encoder_layers, **enc)
        self.expression_encoder = DenseEncoder(in_chans, encoder_layers, **enc)
        self.pose_head = CodeHead(self.pose_encoder.out_channels, num_poses, drop_rate)
        self.expression_head = CodeHead(self.expression_encoder.out_channels, num_expressions, drop_rate)
        c_p, c_e = self.pose_encoder.out_channels, self.expression_encoder.out_channels
        self.fuse_neutral = fusion_layer((id_channels, c_p), code_channels, 1, True)
        self.fuse_expression = fusion_layer((c_e,), code_channels, 1, False)
        self.skip_channels = skip_channels
        if skip_channels:  # the same sums at 16x16: identity (resampled) + pose, + expression
            self.identity_norm_fine = nn.BatchNorm2d(id_channels)
            p1, e1 = self.pose_encoder.channels[0], self.expression_encoder.channels[0]
            self.fuse_neutral_fine = fusion_layer((id_channels, p1), skip_channels, 1, True)
            self.fuse_expression_fine = fusion_layer((e1,), skip_channels, 1, False)
        self.decoder = ConvDecoder(code_channels, decoder_widths, in_chans, skip_channels)
        self.residue_encoder = DenseEncoder(in_chans, residue_layers, **enc)
        self.residue_head = CodeHead(self.residue_encoder.out_channels, num_expressions, drop_rate)
        _init_weights(self)
        self.identity_encoder.requires_grad_(False)
        self.identity_encoder.eval()

    # -------------------------------------------------------------------------------- freezing
    def train(self, mode: bool = True) -> IPDFER:
        """Train / eval mode; the frozen identity encoder stays in eval mode (its BatchNorms keep their
        running statistics)."""
        super().train(mode)
        self.identity_encoder.eval()
        return self

    def load_identity_encoder(self, source) -> IPDFER:
        """Initialise the identity encoder from a pre-trained identity network, then freeze it.

        Args:
            source: a :class:`fer_models.idennet.DenseNetBC` (``densenet_bc_identity_<identity_depth>``; its
                ``feature_group`` is taken), an :class:`~fer_models.idennet.IDEnNet` (its ``identity_group``),
                another IPD-FER (its ``identity_encoder``), a state dict of any of these or of the feature
                group itself, a fer-train checkpoint (``{"model": state_dict, ...}``), or a path to one
                (loaded with ``weights_only=True``).

        Returns:
            self.

        Raises:
            ValueError: the weights do not fit (naming missing / unexpected keys or the shape that differs).
        """
        sd = _extract_state_dict(source, ("feature_group.", "identity_group.", "identity_encoder."))
        own = self.identity_encoder.state_dict()
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if missing or unexpected:
            raise ValueError(
                f"identity encoder weights do not fit densenet_bc_identity_{self.identity_depth}'s feature "
                f"group: missing {missing[:3]}, unexpected {unexpected[:3]}"
            )
        for k, v in sd.items():
            if tuple(v.shape) != tuple(own[k].shape):
                raise ValueError(
                    f"identity encoder weight {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}"
                )
        self.identity_encoder.load_state_dict(sd)
        self.identity_encoder.requires_grad_(False)
        self.identity_encoder.eval()
        return self

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"model": [...]}``: every trainable parameter (not the frozen identity encoder's)."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    # -------------------------------------------------------------------------------- forward
    def identity_code(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen identity features of ``x (Tensor[N, C, H, W])``, pooled to the code grid
        (N, D, H/8, W/8), without gradient."""
        return self._identity_features(x)[0]

    def _identity_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The frozen identity features pooled to the code grid and (area-resampled) to twice its side."""
        with torch.no_grad():
            s = self.identity_size
            xi = (
                x
                if x.shape[-1] == s
                else F.interpolate(x, (s, s), mode="bilinear", align_corners=False, antialias=True)
            )
            h = self.identity_encoder(xi)
            coarse = F.avg_pool2d(h, self._id_pool) if self._id_pool > 1 else h
            fine = F.adaptive_avg_pool2d(h, 2 * coarse.shape[-1])
        return coarse, fine

    def forward(self, x: torch.Tensor) -> IPDFEROutput:
        _check_input(x, self.input_size)
        id_coarse, id_fine = self._identity_features(x)
        ident = F.relu(self.identity_norm(id_coarse))
        pose_h1, pose_h2 = self.pose_encoder(x)
        expr_h1, expr_h2 = self.expression_encoder(x)
        pose_code, pose = self.pose_head(pose_h2)
        expr_code, expression = self.expression_head(expr_h2)
        z_neutral = self.fuse_neutral(ident, pose_code)
        z_expressive = z_neutral + self.fuse_expression(expr_code)
        skip = None
        if self.skip_channels:
            s_neutral = self.fuse_neutral_fine(F.relu(self.identity_norm_fine(id_fine)), pose_h1)
            skip = torch.cat([s_neutral, s_neutral + self.fuse_expression_fine(expr_h1)])
        images = self.decoder(torch.cat([z_neutral, z_expressive]), skip)
        neutral, reconstruction = images.chunk(2)
        _, residue_expression = self.residue_head(self.residue_encoder(reconstruction - neutral)[-1])
        return IPDFEROutput(expression, pose, neutral, reconstruction, residue_expression)

    # -------------------------------------------------------------------------------- losses and training
    def loss(
        self,
        out: IPDFEROutput,
        x: torch.Tensor,
        expression: torch.Tensor,
        pose: torch.Tensor | None = None,
        neutral: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``CE(expression) + lambda_pose CE(pose) + lambda_neutral L1(neutral)
        + lambda_rec L1(reconstruction) + lambda_dis CE(residue)``.

        Args:
            out: this model's output for ``x``.
            x (Tensor[N, C, H, W]): the input (target of the reconstruction).
            expression (Tensor[N], int64): expression labels.
            pose (Tensor[N], int64 | None): pose labels; -1 = unknown (no pose term for that sample; the term
                is the mean over known poses, 0 when none is known); None = all unknown.
            neutral (Tensor[N, C, H, W] | None): the sequence's neutral frame; None: no neutral term.

        Returns:
            dict: ``total``, ``expression``, ``pose``, ``neutral``, ``reconstruction``, ``disentangle``
            (unweighted terms; ``total`` is the weighted sum).
        """
        ce = F.cross_entropy(out.expression, expression)
        zero = ce.new_zeros(())
        l_pose = masked_cross_entropy(out.pose, pose) if pose is not None else zero
        l_neu = F.l1_loss(out.neutral, neutral) if neutral is not None else zero
        l_rec = F.l1_loss(out.reconstruction, x)
        l_dis = F.cross_entropy(out.residue_expression, expression)
        total = (
            ce
            + self.lambda_pose * l_pose
            + self.lambda_neutral * l_neu
            + self.lambda_rec * l_rec
            + self.lambda_dis * l_dis
        )
        return {
            "total": total,
            "expression": ce,
            "pose": l_pose,
            "neutral": l_neu,
            "reconstruction": l_rec,
            "disentangle": l_dis,
        }

    def training_step(
        self, batch: Mapping[str, torch.Tensor | None], optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One optimisation step on ``batch`` (keys ``x``, ``expression``, ``pose`` (-1 unknown), ``neutral``
        (or None); ``identity`` is not used) with ``optimizers["model"]``.

        Returns:
            (expression logits, detached; ``{loss name: float}`` with ``total``).
        """
        self.train()
        x = batch["x"]
        out = self(x)
        losses = self.loss(out, x, batch["expression"], batch.get("pose"), batch.get("neutral"))
        opt = optimizers["model"]
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()
        return out.expression.detach(), {k: float(v.detach()) for k, v in losses.items()}

    @torch.no_grad()
    def save_sample_grid(
        self, x: torch.Tensor, neutral: torch.Tensor | None, path: str | os.PathLike, n: int = 8
    ) -> str:
        """A PNG for a person to look at: rows input, true neutral (if given), synthesised neutral,
        reconstruction, for the first ``n`` images of ``x`` (eval mode; the mode is restored).

        Returns:
            str: ``path`` (see :func:`save_image_grid` for the size).
        """
        was = self.training
        self.eval()
        try:
            x = x[:n]
            out = self(x)
        finally:
            self.train(was)
        rows = [("input", x)]
        if neutral is not None:
            rows.append(("neutral", neutral[:n]))
        rows += [("synth. neutral", out.neutral), ("reconstruction", out.reconstruction)]
        return save_image_grid(rows, path)

    def to_reference(self) -> IPDFER:
        """A plain-PyTorch copy with the same weights (see :func:`fer_kernels.nn.to_reference`)."""
        return fnn.to_reference(self)


# ----------------------------------------------------------------------------------------------- builder
def _create_ipd_fer(
    num_expressions: int = 6,
    num_poses: int | None = 5,
    num_identities: int | None = None,
    in_channels: int = 1,
    image_size: int = 64,
    **kwargs,
) -> IPDFER:
    # num_identities: fer-train passes it to every builder; IPD-FER has no identity classifier.
    in_chans = kwargs.pop("in_chans", in_channels)
    return IPDFER(num_expressions, num_poses if num_poses else 5, in_chans, image_size, **kwargs)


# fmt: off
@register_model
def ipd_fer(**kw): return _create_ipd_fer(**kw)  # noqa: E704
# fmt: on


#: IPD-FER's training recipe, applied by fer-train to every option not given.
RECIPE = Recipe(
    family="IPD-FER",
    paper="Jiang & Deng, IPD-FER, arXiv 2208.08106 (abstract); unstated values from DeRL / pix2pix",
    lr=1e-3,
    batch_size=32,
    weight_decay=0.0,
    schedule=Schedule("fractions", (0.75,)),
    input_size=64,
    resize=64,
    optimizer="Adam",
    momentum=0.5,
    loss_weight_names=("lambda_pose", "lambda_neutral", "lambda_rec", "lambda_dis"),
    loss_weights=(1.0, 1.0, 1.0, 1.0),
    sources={
        "optimizer": "not in the abstract: Adam, betas (0.5, 0.999) (momentum = beta1), as DeRL's generator",
        "lr": "not in the abstract: 1e-3 (Adam's default; no adversarial term to keep stable). pix2pix's 2e-4 "
        "left the expression encoder at 25% training accuracy after 6,000 SynthFER images",
        "schedule": "not in the abstract: x0.1 at 75% of the epochs",
        "batch_size": "not in the abstract: 32 (CPU-sized)",
        "weight_decay": "not in the abstract: 0 (generator training)",
        "loss_weights": "abstract: expression CE, pose CE, neutral and reconstruction L1, residue term; "
        "weights not given: all 1",
        "input": "64x64 faces, no crop (the synthesis targets are whole faces)",
    },
)
register_recipe("ipd_fer", RECIPE)
