"""AlphaFace losses: one object with named phases ``G`` and ``D``.

Terms (docs/design.md §7, official weights as defaults), for a swap ``s = G(x_t, E_id(x_s))``:

======================  =====================================================================  ======
term (``Loss/G/...``)   definition                                                             weight
======================  =====================================================================  ======
``id``                  ``1 - cos(E_id(s), E_id(x_s))``                                         10
``rec``                 ``L1(G(x_t, E_id(x_t)), x_t)``                                          0.5
``perceptual``          VGG16 feature L1 between ``s`` and ``x_t`` (relu 3/8/15/22, 224 px)      0.5
``cycle``               ``L1(G(s, E_id(x_t)), x_t)``                                            0.5
``mask``                ``L1((1 - m_t) * (s - x_t))`` over rows that have a mask (region below)  0.5
``clip_id``             ``1 - cos(CLIP_img(s), CLIP_img(x_s))``                                 1
``clip_text``           ``relu(cos(CLIP_img(x_t), T_t) - cos(CLIP_img(s), T_t))``               1
``adv``                 LSGAN (or hinge) generator loss, from ``adv_start_step`` on            1
======================  =====================================================================  ======

Only ``CLIP_img(s)`` runs: ``CLIP_img(x_s)``, ``CLIP_img(x_t)``, the caption embedding ``T_t`` and
their cosine come cached from the embed stage (:class:`SwapBatch`). With ``clip_x255`` (the official
code's defect, kept for exact reproduction: CLIP sees bilinear-224 images multiplied by 255 before
its normalisation) ``CLIP_img(x_s)`` and ``CLIP_img(x_t)`` are computed here too, with the same
defective input, because the cache holds correctly preprocessed embeddings.

**Reductions.** Every term is first a value per row (swap). ``reduction: mean`` (ours) averages
over all rows, so both directions together weigh what one direction would. ``reduction:
official`` reproduces the official code: each direction's batch mean, the directions *added*
(twice ours with both directions), and the CLIP-text hinge *summed* over the batch (``2B`` times
ours). The D loss is ``(real + fake) / 2`` of the added direction means, which equals ours.

**Mask region.** ``SwapBatch.mask`` is either a region already (a floating ``(B, 1, H, W)`` mask in
[0, 1], 1 = the region the swap may repaint), or an integer CelebAMask-HQ label map
(``CELEBA_LABELS`` order, 0 = background), turned into the region named by ``mask_region``:
``inner_face`` (official: skin, brows, eyes, nose, mouth and lips; beards are skin in
CelebAMask-HQ) or ``face_hair`` (inner face plus ears and hair). The masked L1 then constrains
everything outside the region; with ``inner_face`` that is hair, ears, glasses frames, neck and
background. A flipped label map swaps ``l_*``/``r_*`` meanings, which no region here depends on.

**Both swap directions.** Each row of a :class:`SwapBatch` is one direction (source -> target).
The trainer gets both directions of a pair by calling :meth:`SwapBatch.both_directions`, which
appends the reversed rows (the target gives identity to the source), so a batch of ``B`` pairs
becomes ``2B`` swaps and every loss term sees both; ``SwapBatch.directions`` records the split.
The cycle term of a row swaps back with the row's own target identity, so the pair's other image
is never needed inside the loss.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.clip_image import ClipImageTower
from training.models.identity import IdentityEncoder
from training.perceptual import VGGPerceptual

AdvLoss = Literal["lsgan", "hinge"]
RecMode = Literal["forward", "self_pairs"]
Reduction = Literal["mean", "official"]
REDUCTIONS: tuple[str, ...] = ("mean", "official")

# CelebAMask-HQ classes in label-map order (the face-parsing convention): value i means CELEBA_LABELS[i].
CELEBA_LABELS: tuple[str, ...] = (
    "background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
    "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth",
)  # fmt: skip
_INNER_FACE = ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
MASK_REGIONS: dict[str, tuple[str, ...]] = {
    "inner_face": _INNER_FACE,  # official: the swap repaints the inner face only
    "face_hair": (*_INNER_FACE, "l_ear", "r_ear", "hair"),  # also ears and hair (hair then never constrained)
}


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class LossConfig:
    """Every default is the official code's (alphaface.yaml); alphaface-improved.yaml fixes the defects."""

    # Weights (official defaults)
    id_weight: float = 10.0  # 1 - cos of ArcFace embeddings
    rec_weight: float = 0.5  # self-reconstruction L1
    perceptual_weight: float = 0.5  # VGG16 feature L1 to the target
    cycle_weight: float = 0.5  # swap there and back
    mask_weight: float = 0.5  # L1 outside the mask region (`mask_region`) the swap may repaint
    clip_id_weight: float = 1.0  # 1 - cos of CLIP image embeddings (swap, source)
    clip_text_weight: float = 1.0  # gated caption consistency
    adv_weight: float = 1.0  # generator adversarial loss
    # Schedules and variants
    adv_start_step: int = 200_001  # first (0-based) step of the adversarial phase; official: global_step > 200000
    train_d_before_adv: bool = False  # also train D (and step its schedule) before adv_start_step; official: no
    adv_loss: AdvLoss = "lsgan"  # "lsgan" (MSE, official) or "hinge"
    rec_mode: RecMode = "forward"  # "forward": extra pass G(x_t, E_id(x_t)); "self_pairs": rows flagged is_self
    clip_text_factorised: bool = False  # per-attribute gates when the batch has attribute embeddings
    # Official-code reproduction switches
    reduction: Reduction = "official"  # "official" (directions added, clip_text summed) or "mean" over all rows
    clip_x255: bool = True  # the official CLIP input defect (x255 before normalising); only alphaface.yaml keeps it
    mask_region: str = "inner_face"  # region of a label-map mask the swap may repaint (MASK_REGIONS)

    def __post_init__(self) -> None:
        weights = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name.endswith("_weight")}
        negative = [k for k, v in weights.items() if v < 0]
        if negative:
            raise ValueError(f"loss weights must be >= 0: {negative}")
        if self.adv_start_step < 0:
            raise ValueError("adv_start_step must be >= 0")
        if self.adv_loss not in ("lsgan", "hinge"):
            raise ValueError(f"adv_loss must be 'lsgan' or 'hinge', got {self.adv_loss!r}")
        if self.rec_mode not in ("forward", "self_pairs"):
            raise ValueError(f"rec_mode must be 'forward' or 'self_pairs', got {self.rec_mode!r}")
        if self.reduction not in REDUCTIONS:
            raise ValueError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.mask_region not in MASK_REGIONS:
            raise ValueError(f"mask_region must be one of {sorted(MASK_REGIONS)}, got {self.mask_region!r}")


# ---------------------------------------------------------------------------------------------
# Batch


def _cat(a: Tensor | None, b: Tensor | None) -> Tensor | None:
    return None if a is None or b is None else torch.cat([a, b])


@dataclass(frozen=True)
class SwapBatch:
    """One G-phase batch: ``B`` swap directions, images in [0, 1], cached CLIP embeddings.

    Embeddings may be float16 as stored; they are used in float32. ``text_image_sim`` is the
    cached ``cos(target_image_emb, text_emb)``. Rows whose ``text_emb`` (or an attribute
    embedding) is all zeros contribute nothing to the gated text loss, which is how a reader marks
    a missing caption or attribute.
    """

    source: Tensor  # (B, 3, H, W) gives the identity
    target: Tensor  # (B, 3, H, W) gives pose, expression, lighting, background
    text_emb: Tensor  # (B, D) CLIP text embedding of the target's caption, L2-normalised
    target_image_emb: Tensor  # (B, D) CLIP image embedding of the target, L2-normalised
    source_image_emb: Tensor  # (B, D) CLIP image embedding of the source, L2-normalised
    text_image_sim: Tensor  # (B,) cosine of the target's image and caption embeddings
    mask: Tensor | None = None  # (B, 1, H, W) target mask: float region (1 = repaint) or integer label map
    mask_valid: Tensor | None = None  # (B,) bool, rows whose mask exists; None = all rows when mask is set
    attr_embs: dict[str, Tensor] | None = None  # name -> (B, D) text embeddings of the target's attributes
    is_self: Tensor | None = None  # (B,) bool, rows where source is target (rec_mode="self_pairs")
    # The source image's own caption fields: needed only to build the reversed direction.
    source_text_emb: Tensor | None = None  # (B, D)
    source_text_image_sim: Tensor | None = None  # (B,)
    source_mask: Tensor | None = None  # (B, 1, H, W)
    source_mask_valid: Tensor | None = None  # (B,) bool
    source_attr_embs: dict[str, Tensor] | None = None  # name -> (B, D)
    directions: int = 1  # equal row blocks that are separate swap directions (2 after both_directions)

    def __post_init__(self) -> None:
        b = self.source.shape[0]
        if self.directions < 1 or b % self.directions:
            raise ValueError(f"{b} rows do not split into {self.directions} equal swap directions")
        if self.source.shape != self.target.shape or self.source.dim() != 4 or self.source.shape[1] != 3:
            raise ValueError(f"source/target must be equal (B, 3, H, W), got {self.source.shape}, {self.target.shape}")
        for name in ("text_emb", "target_image_emb", "source_image_emb"):
            emb = getattr(self, name)
            if emb.dim() != 2 or emb.shape[0] != b:
                raise ValueError(f"{name} must be (B, D) with B={b}, got {tuple(emb.shape)}")
        if self.text_image_sim.shape != (b,):
            raise ValueError(f"text_image_sim must be (B,), got {tuple(self.text_image_sim.shape)}")
        if self.mask is not None and self.mask.shape != (b, 1, *self.source.shape[-2:]):
            raise ValueError(f"mask must be (B, 1, H, W), got {tuple(self.mask.shape)}")

    @property
    def valid_mask_rows(self) -> Tensor | None:
        """(B,) bool rows with a usable mask, or None when the batch has no mask at all."""
        if self.mask is None:
            return None
        if self.mask_valid is None:
            return torch.ones(self.mask.shape[0], dtype=torch.bool, device=self.mask.device)
        return self.mask_valid.bool()

    def _mask_or_blank(self, like: Tensor) -> tuple[Tensor, Tensor]:
        if self.mask is None:
            return torch.zeros_like(like), torch.zeros(like.shape[0], dtype=torch.bool, device=like.device)
        valid = self.valid_mask_rows
        assert valid is not None
        return self.mask, valid

    def reversed(self) -> SwapBatch:
        """The other direction: the target gives identity to the source."""
        if self.source_text_emb is None or self.source_text_image_sim is None:
            raise ValueError("reversing a batch needs source_text_emb and source_text_image_sim")
        return SwapBatch(
            source=self.target,
            target=self.source,
            text_emb=self.source_text_emb,
            target_image_emb=self.source_image_emb,
            source_image_emb=self.target_image_emb,
            text_image_sim=self.source_text_image_sim,
            mask=self.source_mask,
            mask_valid=self.source_mask_valid,
            attr_embs=self.source_attr_embs,
            is_self=self.is_self,
            source_text_emb=self.text_emb,
            source_text_image_sim=self.text_image_sim,
            source_mask=self.mask,
            source_mask_valid=self.mask_valid,
            source_attr_embs=self.attr_embs,
        )

    def both_directions(self) -> SwapBatch:
        """``2B`` rows: these ``B`` directions, then their reverses."""
        if self.directions != 1:
            raise ValueError("both_directions() takes a batch of one direction")
        rev = self.reversed()
        mask = mask_valid = None
        if self.mask is not None or rev.mask is not None:  # a side without masks gets invalid rows
            ref = self.mask if self.mask is not None else rev.mask
            assert ref is not None
            mask_a, valid_a = self._mask_or_blank(ref)
            mask_b, valid_b = rev._mask_or_blank(ref)
            mask, mask_valid = torch.cat([mask_a, mask_b]), torch.cat([valid_a, valid_b])
        attrs = None
        if self.attr_embs is not None and rev.attr_embs is not None:
            attrs = {k: torch.cat([self.attr_embs[k], rev.attr_embs[k]]) for k in self.attr_embs if k in rev.attr_embs}
        return SwapBatch(
            source=torch.cat([self.source, rev.source]),
            target=torch.cat([self.target, rev.target]),
            text_emb=torch.cat([self.text_emb, rev.text_emb]),
            target_image_emb=torch.cat([self.target_image_emb, rev.target_image_emb]),
            source_image_emb=torch.cat([self.source_image_emb, rev.source_image_emb]),
            text_image_sim=torch.cat([self.text_image_sim, rev.text_image_sim]),
            mask=mask,
            mask_valid=mask_valid,
            attr_embs=attrs,
            is_self=_cat(self.is_self, rev.is_self),
            directions=2,
        )


# ---------------------------------------------------------------------------------------------
# Loss terms (pure functions of tensors)


def l1_rows(images: Tensor, reference: Tensor) -> Tensor:
    """Mean absolute difference per row: ``(B, ...)`` pair -> ``(B,)``."""
    return (images - reference).abs().flatten(1).mean(dim=1)


def identity_rows(emb: Tensor, reference: Tensor) -> Tensor:
    """``1 - cos`` per row of two embedding batches, ``(B,)``."""
    return 1.0 - F.cosine_similarity(emb, reference.to(emb.dtype), dim=1)


def identity_loss(emb: Tensor, reference: Tensor) -> Tensor:
    """Mean ``1 - cos`` between rows of two embedding batches."""
    return identity_rows(emb, reference).mean()


def region_mask(mask: Tensor, region: str) -> Tensor:
    """The float region (1 = the swap may repaint) of a ``(B, 1, H, W)`` mask: a floating mask is one
    already; an integer CelebAMask-HQ label map becomes the union of ``MASK_REGIONS[region]``."""
    if mask.is_floating_point():
        return mask
    ids = torch.tensor([CELEBA_LABELS.index(c) for c in MASK_REGIONS[region]], device=mask.device)
    return torch.isin(mask.long(), ids).float()


def masked_l1_rows(images: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """``|(1 - mask) * (images - reference)|`` averaged per row, ``(B,)``: the region (mask 1) is free."""
    return l1_rows((1.0 - mask) * images, (1.0 - mask) * reference)


def masked_l1(images: Tensor, reference: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor | None:
    """Mean of ``|(1 - mask) * (images - reference)|`` over the rows in ``valid``; the region
    (mask 1) is ignored. None when no row has a mask."""
    if valid is not None:
        if not bool(valid.any()):
            return None
        images, reference, mask = images[valid], reference[valid], mask[valid]
    return masked_l1_rows(images, reference, mask).mean()


def clip_text_gate(swap_emb: Tensor, text_emb: Tensor, target_sim: Tensor) -> Tensor:
    """``relu(cos(CLIP_img(x_t), T) - cos(CLIP_img(s), T))`` per row: zero whenever the swap matches
    the target's description at least as well as the target itself. Returns ``(B,)``."""
    text = text_emb.float()
    swap_sim = (swap_emb * F.normalize(text, dim=1)).sum(dim=1)  # swap_emb is already normalised
    gate = F.relu(target_sim.float() - swap_sim)
    present = text.abs().sum(dim=1) > 0  # an all-zero embedding marks a missing caption/attribute
    return gate * present


def _rows(x: Tensor) -> Tensor:
    return x.flatten(1).mean(dim=1)  # per-row mean over the patch logits, (B,)


def adversarial_g_rows(fake_logits: Tensor, kind: AdvLoss) -> Tensor:
    return _rows((fake_logits - 1.0) ** 2) if kind == "lsgan" else _rows(-fake_logits)


def adversarial_d_rows(real_logits: Tensor, fake_logits: Tensor, kind: AdvLoss) -> tuple[Tensor, Tensor]:
    """Per-row ``(real term, fake term)``, each ``(B,)``."""
    if kind == "lsgan":
        return _rows((real_logits - 1.0) ** 2), _rows(fake_logits**2)
    return _rows(F.relu(1.0 - real_logits)), _rows(F.relu(1.0 + fake_logits))


def adversarial_g_loss(fake_logits: Tensor, kind: AdvLoss) -> Tensor:
    return adversarial_g_rows(fake_logits, kind).mean()


def adversarial_d_loss(real_logits: Tensor, fake_logits: Tensor, kind: AdvLoss) -> tuple[Tensor, Tensor]:
    """``(real term, fake term)``; the D loss is their sum."""
    real, fake = adversarial_d_rows(real_logits, fake_logits, kind)
    return real.mean(), fake.mean()


def reduce_rows(rows: Tensor, directions: int, reduction: Reduction, valid: Tensor | None = None) -> Tensor | None:
    """A term from its per-row values ``(B,)``. ``mean``: the mean over the (valid) rows. ``official``:
    the mean within each of ``directions`` equal row blocks, added over the blocks (a block without a
    valid row adds nothing). None when no row is valid."""
    if valid is not None and not bool(valid.any()):
        return None
    if reduction == "mean":
        return rows.mean() if valid is None else rows[valid].mean()
    keep = torch.ones_like(rows, dtype=torch.bool) if valid is None else valid.bool()
    parts = [r[k].mean() for r, k in zip(rows.chunk(directions), keep.chunk(directions), strict=True) if k.any()]
    return torch.stack(parts).sum()


def reduce_sum_rows(rows: Tensor, reduction: Reduction) -> Tensor:
    """The CLIP-text hinge: ``official`` sums it over every row (batch and directions), ``mean`` averages."""
    return rows.sum() if reduction == "official" else rows.mean()


# ---------------------------------------------------------------------------------------------
# The loss object


@dataclass
class LossOutput:
    total: Tensor  # the scalar to backpropagate
    terms: dict[str, Tensor]  # detached, unweighted, named like "Loss/G/id"; plus "Loss/<phase>/total"
    swap: Tensor  # the detached swap, for the D phase and image logging


class AlphaFaceLoss:
    """The GAN loss with named phases.

    ``loss("G", batch, step)`` computes every generator term whose weight is non-zero (a term is
    reported only when it contributed: ``mask`` only when a row has a mask, ``adv`` only from
    ``adv_start_step`` on). ``loss("D", batch, step, fake=out.swap)`` is the discriminator's loss on
    ``batch.target`` (real) and the detached swap (fake); :meth:`d_active` says on which steps the
    trainer runs it (official: only in the adversarial phase).

    ``generator`` and ``discriminator`` are the trainer's (possibly wrapped) modules; the frozen
    networks are owned here. From ``adv_start_step`` on the G phase backpropagates through the
    discriminator, so the trainer zeroes D's gradients before the D phase (as usual).
    """

    def __init__(
        self,
        config: LossConfig,
        generator: nn.Module,
        identity: IdentityEncoder,
        discriminator: nn.Module | None = None,
        clip: ClipImageTower | None = None,
        vgg: VGGPerceptual | None = None,
    ) -> None:
        if (config.clip_id_weight or config.clip_text_weight) and clip is None:
            raise ValueError("CLIP loss weights are non-zero but no CLIP image tower was given")
        if config.perceptual_weight and vgg is None:
            raise ValueError("perceptual_weight is non-zero but no VGG16 was given")
        if config.adv_weight and discriminator is None:
            raise ValueError("adv_weight is non-zero but no discriminator was given")
        self.config = config
        self.G = generator
        self.D = discriminator
        self.identity = identity
        self.clip = clip
        self.vgg = vgg

    def to(self, device: torch.device | str) -> AlphaFaceLoss:
        """Move the frozen networks (G and D are the trainer's to place)."""
        for net in (self.identity, self.clip, self.vgg):
            if net is not None:
                net.to(device)
        return self

    def adv_active(self, step: int) -> bool:
        return bool(self.config.adv_weight) and step >= self.config.adv_start_step

    def d_active(self, step: int) -> bool:
        """Whether the D phase (and D's learning-rate schedule) runs at ``step``."""
        return bool(self.config.adv_weight) and (self.config.train_d_before_adv or self.adv_active(step))

    def __call__(self, phase: str, batch: SwapBatch, step: int, fake: Tensor | None = None) -> LossOutput:
        if phase == "G":
            return self.g_phase(batch, step)
        if phase == "D":
            return self.d_phase(batch, fake)
        raise ValueError(f"unknown phase {phase!r}; expected 'G' or 'D'")

    def g_phase(self, batch: SwapBatch, step: int) -> LossOutput:
        cfg = self.config
        x_s, x_t = batch.source, batch.target
        with torch.no_grad():
            id_source = self.identity(x_s)  # (B, 512)
            needs_target_id = (cfg.rec_weight and cfg.rec_mode == "forward") or cfg.cycle_weight
            id_target = self.identity(x_t) if needs_target_id else None
        swap = self.G(x_t, id_source)
        terms: dict[str, Tensor] = {}
        weights: dict[str, float] = {}

        def add(name: str, rows: Tensor | None, weight: float, valid: Tensor | None = None) -> None:
            """A term from its per-row values, reduced as the config says (None: no term this batch)."""
            if rows is not None:
                value = reduce_rows(rows, batch.directions, cfg.reduction, valid)
                if value is not None:
                    terms[name], weights[name] = value, weight

        if cfg.id_weight:
            add("id", identity_rows(self.identity(swap), id_source), cfg.id_weight)
        if cfg.rec_weight:
            rows, rows_valid = self._reconstruction(batch, swap, id_target)
            add("rec", rows, cfg.rec_weight, rows_valid)
        if cfg.perceptual_weight:
            add("perceptual", self._perceptual_rows(swap, x_t), cfg.perceptual_weight)
        if cfg.cycle_weight:
            add("cycle", l1_rows(self.G(swap, id_target), x_t), cfg.cycle_weight)
        if cfg.mask_weight and batch.mask is not None:
            region = region_mask(batch.mask, cfg.mask_region)  # (B, 1, H, W), 1 = may repaint
            add("mask", masked_l1_rows(swap, x_t, region), cfg.mask_weight, batch.valid_mask_rows)
        if cfg.clip_id_weight or cfg.clip_text_weight:
            assert self.clip is not None
            swap_emb, source_emb, target_emb = self._clip_embeddings(batch, swap)
            if swap_emb.shape[1] != batch.text_emb.shape[1]:
                raise ValueError(
                    f"CLIP tower gives {swap_emb.shape[1]}-d embeddings, cached ones are {batch.text_emb.shape[1]}-d"
                )
            if cfg.clip_id_weight:
                add("clip_id", identity_rows(swap_emb, source_emb), cfg.clip_id_weight)
            if cfg.clip_text_weight:
                text_terms = self._clip_text(batch, swap_emb, target_emb)
                for name, value in text_terms.items():
                    if name != "clip_text":
                        terms[name] = value  # per-attribute gates: logged, already inside clip_text
                terms["clip_text"], weights["clip_text"] = text_terms["clip_text"], cfg.clip_text_weight
        if self.adv_active(step):
            assert self.D is not None
            add("adv", adversarial_g_rows(self.D(swap), cfg.adv_loss), cfg.adv_weight)

        total = sum((weights[k] * terms[k] for k in weights), swap.new_zeros(()))
        logged = {f"Loss/G/{k}": v.detach() for k, v in terms.items()}
        logged["Loss/G/total"] = total.detach()
        return LossOutput(total=total, terms=logged, swap=swap.detach())

    def d_phase(self, batch: SwapBatch, fake: Tensor | None = None) -> LossOutput:
        if self.D is None:
            raise ValueError("the D phase needs a discriminator")
        if fake is None:
            with torch.no_grad():
                fake = self.G(batch.target, self.identity(batch.source))
        fake = fake.detach()
        cfg = self.config
        real_rows, fake_rows = adversarial_d_rows(self.D(batch.target), self.D(fake), cfg.adv_loss)
        real_term = reduce_rows(real_rows, batch.directions, cfg.reduction)
        fake_term = reduce_rows(fake_rows, batch.directions, cfg.reduction)
        assert real_term is not None and fake_term is not None
        # official: (real + fake) / 2 of the added direction means, the same value as ours with both directions
        total = (real_term + fake_term) / 2 if cfg.reduction == "official" else real_term + fake_term
        terms = {
            "Loss/D/real": real_term.detach(),
            "Loss/D/fake": fake_term.detach(),
            "Loss/D/total": total.detach(),
        }
        return LossOutput(total=total, terms=terms, swap=fake)

    # -- helpers ----------------------------------------------------------------------------

    def _reconstruction(
        self, batch: SwapBatch, swap: Tensor, id_target: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """(per-row values, valid rows) of the reconstruction term."""
        if self.config.rec_mode == "forward":
            return l1_rows(self.G(batch.target, id_target), batch.target), None
        if batch.is_self is None or not bool(batch.is_self.any()):
            return None, None  # no self pairs in this batch
        return l1_rows(swap, batch.target), batch.is_self.bool()

    def _perceptual_rows(self, swap: Tensor, target: Tensor) -> Tensor:
        """Per row, the sum over VGG taps of the mean L1 feature difference (the target is data)."""
        assert self.vgg is not None
        with torch.no_grad():
            ref = self.vgg(target)
        return sum((l1_rows(a, b) for a, b in zip(self.vgg(swap), ref, strict=True)), swap.new_zeros(swap.shape[0]))

    def _clip_official(self, images: Tensor) -> Tensor:
        """The official CLIP input: bilinear resize to CLIP's size, x255, then CLIP's normalisation."""
        assert self.clip is not None
        x = F.interpolate(images, size=self.clip.size, mode="bilinear", align_corners=False) * 255.0
        out = self.clip.visual((x - self.clip.mean) / self.clip.std)
        if isinstance(out, tuple):
            out = out[0]
        return F.normalize(out.float(), dim=-1)

    def _clip_embeddings(self, batch: SwapBatch, swap: Tensor) -> tuple[Tensor, Tensor, Tensor | None]:
        """``(CLIP_img(swap), CLIP_img(source), CLIP_img(target) or None)``, each ``(B, D)``.

        Correct preprocessing: one CLIP pass, source and target from the cache (the target's cosine to
        its caption too, so None). ``clip_x255``: all three with the official defective input."""
        assert self.clip is not None
        if not self.config.clip_x255:
            return self.clip(swap), batch.source_image_emb.float(), None
        with torch.no_grad():
            source_emb, target_emb = self._clip_official(batch.source), self._clip_official(batch.target)
        return self._clip_official(swap), source_emb, target_emb

    def _clip_text(self, batch: SwapBatch, swap_emb: Tensor, target_emb: Tensor | None) -> dict[str, Tensor]:
        """``{"clip_text": gate}``; factorised, also ``{"clip_text/<attr>": gate}`` per attribute and
        ``clip_text`` is their mean. ``target_emb`` (``clip_x255``) replaces the cached target side."""
        reduction = self.config.reduction
        if not (self.config.clip_text_factorised and batch.attr_embs):
            target_sim = batch.text_image_sim
            if target_emb is not None:
                target_sim = (target_emb * F.normalize(batch.text_emb.float(), dim=1)).sum(dim=1)
            return {"clip_text": reduce_sum_rows(clip_text_gate(swap_emb, batch.text_emb, target_sim), reduction)}
        target = (batch.target_image_emb if target_emb is None else target_emb).float()
        out = {}
        for name, emb in sorted(batch.attr_embs.items()):
            target_sim = (target * F.normalize(emb.float(), dim=1)).sum(dim=1)  # cached target side
            out[f"clip_text/{name}"] = reduce_sum_rows(clip_text_gate(swap_emb, emb, target_sim), reduction)
        out["clip_text"] = torch.stack(list(out.values())).mean()
        return out
