"""DE-GAN: Disentangled Expression learning Generative Adversarial Network (Ali & Hughes, arXiv 1909.13135
and 1912.01456).

Built from :mod:`fer_kernels.nn` (fused ``DenseBlock``, ``Transition``, ``FusionConv``); every fused layer is
a ``*_layer`` argument, and :func:`fer_kernels.nn.to_reference` gives a copy that runs no custom op. The
encoder, decoder and sample-grid pieces are IPD-FER's (:mod:`fer_models.ipd_fer`).

What the papers (their abstracts) fix: an encoder-decoder generator learns the expression representation by
reconstructing the expression image, the identity code being given to the decoder, so the representation
need not carry identity; a multi-task discriminator (real / fake, expression, identity) improves both the
synthesised images and the representation; classification uses the disentangled expression representation
together with the expressive component recorded by the encoder (1912.01456). Where they are silent, the
choices below follow the precursors (DR-GAN for the identity-conditioned encoder-decoder and the multi-task
discriminator; DeRL for residue learning: L1 reconstruction, an adversarial term, classification from
intermediate generator features), sized for minutes of CPU training:

- Input (N, C, 64, 64) normalised to [-1, 1] (``fer_models.data.transforms``); the decoder ends in ``tanh``.
- Generator encoder (:class:`~fer_models.ipd_fer.DenseEncoder`): conv3x3 stride 2 (16 ch) - BN-ReLU -
  conv3x3 stride 2 (24 ch, 16x16), dense block (4 layers, growth 12) at 16x16, transition (0.5, 2x2 average
  pool), dense block (4 layers) at 8x8. The disentangled expression representation is ReLU(BN(last block)),
  78 x 8 x 8.
- Identity code: a learned embedding per training identity (64-d: DR-GAN's one-hot code times a matrix)
  mapped by a linear layer to a 16 x 8 x 8 grid. An unknown identity (label -1, or none given, as at test
  time) gets the zero embedding, i.e. the learned "average identity" grid (the bias); that path is trained
  only by samples whose identity is unknown. No noise vector: the target is the input itself
  (reconstruction), so the mapping is deterministic.
- Decoder: ``FusionConv`` (1x1 convolution over the concatenated expression representation and identity
  grid, no pool) to 64 channels, then IPD-FER's upsample + convolution decoder (64 -> 32 -> 16 -> image,
  tanh).
- Classification (DeRL-style residue learning): BN-ReLU-GAP of the first dense block's output (16x16, the
  expressive component recorded by the encoder's intermediate layer) concatenated with the GAP of the
  disentangled representation, dropout, linear: ``out.expression``. Trained jointly with the GAN (the papers
  train an SVM / MLP afterwards; one stage fits ``fer-train``).
- Discriminator: the same encoder layout (3 + 3 dense layers), BN-ReLU-GAP, three linear heads: real / fake
  (1 logit, binary cross-entropy), expression (E) and identity (I) logits (AC-GAN / DR-GAN style).
- Discriminator loss: ``BCE(D(x), real) + BCE(D(fake.detach()), fake) + lambda_cls (CE(D_exp(x), y_exp)
  + CE(D_id(x), y_id))``, identity -1 adding no term. The synthesis is detached: no generator parameter is
  reached.
- Generator loss: ``CE(expression logits) + lambda_rec L1(fake, x) + lambda_adv BCE(D(fake), real)
  + lambda_cls (CE(D_exp(fake), y_exp) + CE(D_id(fake), y_id))``, the identity term only where the decoder
  got that identity's code. Weights (1, 0.1, 0.1): the recognition CE trains the same encoder jointly, and
  with pix2pix-like weights (L1 10, adversarial and classification 1: DeRL trains its generator with
  pix2pix's objective, L1 far above the adversarial term) the image terms drowned it: 23% training accuracy
  after 40,000 SynthFER v2 images, 17% on the test subjects (fold 0, lr 2e-4); with (1, 0.1, 0.1) and lr
  1e-3, 81% and 40%, and the synthesis draws eyes and mouths. The L1 term still outweighs the adversarial
  one 10 to 1.
- :meth:`DEGAN.training_step`: a discriminator step on the detached synthesis, then a generator step (the
  discriminator's parameters do not require grad during it).
- Recipe (:data:`RECIPE`): Adam (betas 0.5, 0.999: DR-GAN / DCGAN), lr 1e-3 (not DCGAN's 2e-4: see the
  weights above), x0.1 at 75% of the epochs, batch 32, no weight decay, 64x64 input without crop.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

import fer_kernels.nn as fnn
from fer_models.idennet import _init_weights
from fer_models.ipd_fer import RECIPE as IPD_FER_RECIPE
from fer_models.ipd_fer import ConvDecoder, DenseEncoder, _check_input, save_image_grid
from fer_models.losses import masked_cross_entropy
from fer_models.recipes import register_recipe, with_values
from fer_models.registry import register_model

__all__ = ["DEGANOutput", "DiscriminatorOutput", "DEGANGenerator", "DEGANDiscriminator", "DEGAN", "RECIPE"]


@dataclass
class DEGANOutput:
    """What DE-GAN returns.

    Attributes:
        expression (Tensor[N, E]): expression logits (disentangled representation + encoder residue).
        synthesized (Tensor[N, C, H, W]): the decoder's image in [-1, 1] (the input, reconstructed for the
            identity code given).
        conditioned_on (Tensor[N], int64): the identity label whose code the decoder got (-1: none).
        identity (None): no identity head on the recognition path (kept for code that reads ``out.identity``).
    """

    expression: torch.Tensor
    synthesized: torch.Tensor
    conditioned_on: torch.Tensor
    identity: torch.Tensor | None = None


@dataclass
class DiscriminatorOutput:
    """The discriminator's heads: ``adversarial`` (N,) real-vs-fake logits, ``expression`` (N, E),
    ``identity`` (N, I) logits."""

    adversarial: torch.Tensor
    expression: torch.Tensor
    identity: torch.Tensor


class DEGANGenerator(nn.Module):
    """Encoder, expression classifier, identity code and decoder (see the module docstring).

    Shape:
        x (Tensor[N, C, H, W]), identity (Tensor[N] int64 | None) -> (expression logits (N, E), synthesis
        (N, C, H, W)).
    """

    def __init__(
        self,
        num_expressions: int,
        num_identities: int,
        in_chans: int = 1,
        image_size: int = 64,
        encoder_layers: Sequence[int] = (4, 4),
        identity_dim: int = 64,
        identity_channels: int = 16,
        decoder_widths: Sequence[int] = (64, 32, 16),
        growth_rate: int = 12,
        drop_rate: float = 0.0,
        block_layer: type[nn.Module] = fnn.DenseBlock,
        transition_layer: type[nn.Module] = fnn.Transition,
        fusion_layer: type[nn.Module] = fnn.FusionConv,
    ):
        super().__init__()
        self.code_side = image_size // 8
        self.identity_channels = identity_channels
        self.encoder = DenseEncoder(
            in_chans,
            encoder_layers,
            growth_rate=growth_rate,
            block_layer=block_layer,
            transition_layer=transition_layer,
        )
        c_res, c_exp = self.encoder.channels
        self.residue_norm = nn.BatchNorm2d(c_res)
        self.expression_norm = nn.BatchNorm2d(c_exp)
        self.dropout = nn.Dropout(drop_rate)
        self.classifier = nn.Linear(c_res + c_exp, num_expressions)
        self.identity_embedding = nn.Embedding(num_identities, identity_dim)
        self.identity_map = nn.Linear(identity_dim, identity_channels * self.code_side**2)
        self.fusion = fusion_layer((c_exp, identity_channels), decoder_widths[0], 1, True)
        self.decoder = ConvDecoder(decoder_widths[0], decoder_widths, in_chans)

    def identity_grid(self, identity: torch.Tensor | None, n: int, like: torch.Tensor) -> torch.Tensor:
        """The identity code grid (N, identity_channels, S, S); unknown (-1) or None: the zero embedding."""
        if identity is None:
            emb = like.new_zeros(n, self.identity_embedding.embedding_dim)
        else:
            known = (identity >= 0).unsqueeze(1).to(like.dtype)
            emb = self.identity_embedding(identity.clamp(min=0)) * known
        s = self.code_side
        return self.identity_map(emb).view(n, self.identity_channels, s, s)

    def forward(
        self, x: torch.Tensor, identity: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h_res, h_exp = self.encoder(x)
        residue = F.relu(self.residue_norm(h_res))
        code = F.relu(self.expression_norm(h_exp))
        feats = torch.cat([residue.mean((2, 3)), code.mean((2, 3))], 1)
        logits = self.classifier(self.dropout(feats))
        z = self.fusion(code, self.identity_grid(identity, x.shape[0], code))
        return logits, self.decoder(z)


class DEGANDiscriminator(nn.Module):
    """Multi-task discriminator: a dense encoder, BN-ReLU-GAP, real/fake, expression and identity heads.

    Shape:
        x (Tensor[N, C, H, W]) -> :class:`DiscriminatorOutput`.
    """

    def __init__(
        self,
        num_expressions: int,
        num_identities: int,
        in_chans: int = 1,
        layers: Sequence[int] = (3, 3),
        growth_rate: int = 12,
        block_layer: type[nn.Module] = fnn.DenseBlock,
        transition_layer: type[nn.Module] = fnn.Transition,
    ):
        super().__init__()
        self.features = DenseEncoder(
            in_chans,
            layers,
            growth_rate=growth_rate,
            block_layer=block_layer,
            transition_layer=transition_layer,
        )
        c = self.features.out_channels
        self.norm = nn.BatchNorm2d(c)
        self.adversarial = nn.Linear(c, 1)
        self.expression = nn.Linear(c, num_expressions)
        self.identity = nn.Linear(c, num_identities)

    def forward(self, x: torch.Tensor) -> DiscriminatorOutput:
        h = F.relu(self.norm(self.features(x)[-1])).mean((2, 3))
        return DiscriminatorOutput(self.adversarial(h).squeeze(1), self.expression(h), self.identity(h))


@contextlib.contextmanager
def _no_param_grads(module: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in module.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


class DEGAN(nn.Module):
    """DE-GAN (see the module docstring for the reading of the papers).

    Args:
        num_expressions (int): expression classes. num_identities (int): training identities (the decoder's
            identity codes and the discriminator's identity head).
        in_chans (int): image channels. image_size (int): input side (a multiple of 8; 64).
        encoder_layers, discriminator_layers (Sequence[int]): dense layers of the generator's encoder and the
            discriminator's.
        identity_dim (int), identity_channels (int): identity embedding width and identity grid channels.
        decoder_widths (Sequence[int]): decoder channels per resolution (3 entries: 8x upsampling).
        drop_rate (float): dropout before the expression classifier.
        lambda_rec, lambda_adv, lambda_cls (float): loss weights (see :meth:`generator_loss`).
        block_layer, transition_layer, fusion_layer: dense block, transition and fusion-conv classes.

    Shape:
        x (Tensor[N, in_chans, image_size, image_size]), identity (Tensor[N] int64 | None) ->
        :class:`DEGANOutput`.
    """

    generative = True

    def __init__(
        self,
        num_expressions: int = 6,
        num_identities: int = 20,
        in_chans: int = 1,
        image_size: int = 64,
        encoder_layers: Sequence[int] = (4, 4),
        discriminator_layers: Sequence[int] = (3, 3),
        identity_dim: int = 64,
        identity_channels: int = 16,
        decoder_widths: Sequence[int] = (64, 32, 16),
        growth_rate: int = 12,
        drop_rate: float = 0.0,
        lambda_rec: float = 1.0,
        lambda_adv: float = 0.1,
        lambda_cls: float = 0.1,
        block_layer: type[nn.Module] = fnn.DenseBlock,
        transition_layer: type[nn.Module] = fnn.Transition,
        fusion_layer: type[nn.Module] = fnn.FusionConv,
    ):
        super().__init__()
        if image_size % 8 or len(decoder_widths) != 3:
            raise ValueError(
                f"image_size ({image_size}) must be a multiple of 8 and decoder_widths must have 3 entries "
                f"(8x upsampling), got {len(decoder_widths)}"
            )
        if num_expressions < 2 or num_identities is None or num_identities < 1:
            raise ValueError(
                f"num_expressions >= 2 and num_identities >= 1 expected, got {num_expressions}, "
                f"{num_identities}"
            )
        self.num_expressions, self.num_identities = num_expressions, num_identities
        self.in_chans, self.image_size = in_chans, image_size
        self.lambda_rec, self.lambda_adv, self.lambda_cls = lambda_rec, lambda_adv, lambda_cls
        self.input_size = (in_chans, image_size, image_size)
        layers = dict(growth_rate=growth_rate, block_layer=block_layer, transition_layer=transition_layer)
        self.generator = DEGANGenerator(
            num_expressions,
            num_identities,
            in_chans,
            image_size,
            encoder_layers,
            identity_dim,
            identity_channels,
            decoder_widths,
            drop_rate=drop_rate,
            fusion_layer=fusion_layer,
            **layers,
        )
        self.discriminator = DEGANDiscriminator(
            num_expressions, num_identities, in_chans, discriminator_layers, **layers
        )
        _init_weights(self)

    def optimizer_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"generator": [...], "discriminator": [...]}`` (the expression classifier is the generator's)."""
        return {
            "generator": [p for p in self.generator.parameters() if p.requires_grad],
            "discriminator": [p for p in self.discriminator.parameters() if p.requires_grad],
        }

    def forward(self, x: torch.Tensor, identity: torch.Tensor | None = None) -> DEGANOutput:
        """Classify ``x`` and synthesise it for the identity codes ``identity`` (Tensor[N] int64, -1 unknown;
        None: every code unknown, the "average identity")."""
        _check_input(x, self.input_size)
        if identity is not None:
            top = int(identity.max()) if identity.numel() else -1
            if tuple(identity.shape) != (x.shape[0],) or top >= self.num_identities:
                raise ValueError(
                    f"identity: expected ({x.shape[0]},) labels in [-1, {self.num_identities}), got shape "
                    f"{tuple(identity.shape)}, largest {top}"
                )
        logits, synthesized = self.generator(x, identity)
        cond = (
            identity
            if identity is not None
            else torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        )
        return DEGANOutput(logits, synthesized, cond)

    # -------------------------------------------------------------------------------- losses
    def discriminator_loss(
        self,
        out: DEGANOutput,
        x: torch.Tensor,
        expression: torch.Tensor,
        identity: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The discriminator's objective on real ``x`` and the detached synthesis (reaches no generator
        parameter).

        Args:
            out: this model's output for ``x``. x (Tensor[N, C, H, W]): real images.
            expression (Tensor[N], int64): expression labels.
            identity (Tensor[N], int64 | None): identity labels, -1 = unknown (no identity term for that
                sample).

        Returns:
            dict: ``total``, ``adversarial`` (real + fake BCE), ``expression``, ``identity`` (CE on the real
            images).
        """
        real = self.discriminator(x)
        fake = self.discriminator(out.synthesized.detach())
        adv = F.binary_cross_entropy_with_logits(real.adversarial, torch.ones_like(real.adversarial)) + (
            F.binary_cross_entropy_with_logits(fake.adversarial, torch.zeros_like(fake.adversarial))
        )
        ce = F.cross_entropy(real.expression, expression)
        l_id = masked_cross_entropy(real.identity, identity) if identity is not None else ce.new_zeros(())
        total = adv + self.lambda_cls * (ce + l_id)
        return {"total": total, "adversarial": adv, "expression": ce, "identity": l_id}

    def generator_loss(
        self,
        out: DEGANOutput,
        x: torch.Tensor,
        expression: torch.Tensor,
        identity: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The generator's objective: recognition CE + ``lambda_rec`` L1 reconstruction + ``lambda_adv``
        non-saturating adversarial term + ``lambda_cls`` discriminator classification of the synthesis.

        Args:
            out: this model's output for ``x``. x (Tensor[N, C, H, W]): the reconstruction target.
            expression (Tensor[N], int64): expression labels.
            identity (Tensor[N], int64 | None): identity labels; the synthesis is scored on identity only
                where the decoder got that identity's code (``out.conditioned_on >= 0``) and the label is
                known.

        Returns:
            dict: ``total``, ``expression`` (recognition CE), ``reconstruction``, ``adversarial``,
            ``synthesis_expression``, ``synthesis_identity`` (unweighted terms). Its backward also reaches the
            discriminator's parameters unless they are frozen (:meth:`training_step` freezes them).
        """
        fake = self.discriminator(out.synthesized)
        ce = F.cross_entropy(out.expression, expression)
        rec = F.l1_loss(out.synthesized, x)
        adv = F.binary_cross_entropy_with_logits(fake.adversarial, torch.ones_like(fake.adversarial))
        s_exp = F.cross_entropy(fake.expression, expression)
        if identity is not None:
            target = torch.where(out.conditioned_on >= 0, identity, torch.full_like(identity, -1))
            s_id = masked_cross_entropy(fake.identity, target)
        else:
            s_id = ce.new_zeros(())
        total = ce + self.lambda_rec * rec + self.lambda_adv * adv + self.lambda_cls * (s_exp + s_id)
        return {
            "total": total,
            "expression": ce,
            "reconstruction": rec,
            "adversarial": adv,
            "synthesis_expression": s_exp,
            "synthesis_identity": s_id,
        }

    def training_step(
        self, batch: Mapping[str, torch.Tensor | None], optimizers: Mapping[str, torch.optim.Optimizer]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """A discriminator step on the detached synthesis, then a generator step.

        Args:
            batch: ``x``, ``expression``, ``identity`` (-1 unknown, or None); ``pose`` and ``neutral`` unused.
            optimizers: ``"generator"`` and ``"discriminator"`` (over :meth:`optimizer_groups`).

        Returns:
            (expression logits, detached; ``{loss name: float}``: the generator's terms with ``total`` (the
            generator objective) and the discriminator's prefixed ``d_``, ``d_total`` among them).
        """
        self.train()
        x, expression, identity = batch["x"], batch["expression"], batch.get("identity")
        out = self(x, identity)
        opt_d, opt_g = optimizers["discriminator"], optimizers["generator"]
        opt_d.zero_grad(set_to_none=True)
        d_losses = self.discriminator_loss(out, x, expression, identity)
        d_losses["total"].backward()
        opt_d.step()
        opt_g.zero_grad(set_to_none=True)
        with _no_param_grads(self.discriminator):
            g_losses = self.generator_loss(out, x, expression, identity)
            g_losses["total"].backward()
        opt_g.step()
        logs = {k: float(v.detach()) for k, v in g_losses.items()}
        logs.update({f"d_{k}": float(v.detach()) for k, v in d_losses.items()})
        return out.expression.detach(), logs

    @torch.no_grad()
    def save_sample_grid(
        self,
        x: torch.Tensor,
        neutral: torch.Tensor | None,
        path: str | os.PathLike,
        n: int = 8,
        identity: torch.Tensor | None = None,
    ) -> str:
        """A PNG for a person to look at: rows input, true neutral (if given), synthesis without identity code
        (the "average identity" with the input's expression), and synthesis with the identity code (if
        ``identity`` is given), for the first ``n`` images (eval mode; the mode is restored).

        Returns:
            str: ``path`` (see :func:`fer_models.ipd_fer.save_image_grid` for the size).
        """
        was = self.training
        self.eval()
        try:
            x = x[:n]
            rows = [("input", x)]
            if neutral is not None:
                rows.append(("neutral", neutral[:n]))
            rows.append(("synthesis", self(x).synthesized))
            if identity is not None:
                rows.append(("synth. + id", self(x, identity[:n]).synthesized))
        finally:
            self.train(was)
        return save_image_grid(rows, path)

    def to_reference(self) -> DEGAN:
        """A plain-PyTorch copy with the same weights (see :func:`fer_kernels.nn.to_reference`)."""
        return fnn.to_reference(self)


# ----------------------------------------------------------------------------------------------- builder
def _create_de_gan(
    num_expressions: int = 6,
    num_identities: int | None = 20,
    num_poses: int | None = None,
    in_channels: int = 1,
    image_size: int = 64,
    **kwargs,
) -> DEGAN:
    # num_poses: fer-train passes it to every builder; DE-GAN has no pose head.
    in_chans = kwargs.pop("in_chans", in_channels)
    return DEGAN(num_expressions, num_identities if num_identities else 20, in_chans, image_size, **kwargs)


# fmt: off
@register_model
def de_gan(**kw): return _create_de_gan(**kw)  # noqa: E704
# fmt: on


#: DE-GAN's training recipe, applied by fer-train to every option not given: IPD-FER's optimiser, schedule,
#: batch and input (the same DeRL / pix2pix choices, none stated in either paper), its own loss weights.
RECIPE = with_values(
    IPD_FER_RECIPE,
    family="DE-GAN",
    paper="Ali & Hughes, DE-GAN, arXiv 1909.13135 / 1912.01456 (abstracts); unstated values: DR-GAN, DeRL",
    loss_weight_names=("lambda_rec", "lambda_adv", "lambda_cls"),
    loss_weights=(1.0, 0.1, 0.1),
    sources={
        **IPD_FER_RECIPE.sources,
        "lr": "not in the abstracts: 1e-3; DCGAN's 2e-4 with L1 weight 10 left the recognition at 23% "
        "training accuracy after 40,000 SynthFER images",
        "loss_weights": "abstracts: reconstruction, adversarial, expression and identity classification in "
        "the discriminator; weights not given: L1 1, adversarial 0.1, classification 0.1 (L1 ten times the "
        "adversarial term, as DeRL / pix2pix weight it far above; small enough for the recognition CE)",
        "input": "64x64 faces, no crop (the reconstruction target is the whole face)",
    },
)
register_recipe("de_gan", RECIPE)
