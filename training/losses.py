"""AlphaFace losses: one object with named phases ``G`` and ``D``.

Terms (DESIGN section 7, official weights as defaults), for a swap ``s = G(x_t, E_id(x_s))``:

======================  =====================================================================  ======
term (``Loss/G/...``)   definition                                                             weight
======================  =====================================================================  ======
``id``                  ``1 - cos(E_id(s), E_id(x_s))``                                         10
``rec``                 ``L1(G(x_t, E_id(x_t)), x_t)``                                          0.5
``perceptual``          VGG16 feature L1 between ``s`` and ``x_t`` (relu 3/8/15/22, 224 px)      0.5
``cycle``               ``L1(G(s, E_id(x_t)), x_t)``                                            0.5
``mask``                ``L1((1 - m_t) * (s - x_t))`` over rows that have a face+hair mask      0.5
``clip_id``             ``1 - cos(CLIP_img(s), CLIP_img(x_s))``                                 1
``clip_text``           ``relu(cos(CLIP_img(x_t), T_t) - cos(CLIP_img(s), T_t))``               1
``adv``                 LSGAN (or hinge) generator loss, from ``adv_start_step`` on            1
======================  =====================================================================  ======

Only ``CLIP_img(s)`` runs: ``CLIP_img(x_s)``, ``CLIP_img(x_t)``, the caption embedding ``T_t`` and
their cosine come cached from the embed stage (:class:`SwapBatch`).

**Both swap directions.** Each row of a :class:`SwapBatch` is one direction (source -> target).
The trainer gets both directions of a pair by calling :meth:`SwapBatch.both_directions`, which
appends the reversed rows (the target gives identity to the source), so a batch of ``B`` pairs
becomes ``2B`` swaps and every loss term sees both. The cycle term of a row swaps back with the
row's own target identity, so the pair's other image is never needed inside the loss.
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


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class LossConfig:
    # Weights (official defaults)
    id_weight: float = 10.0  # 1 - cos of ArcFace embeddings
    rec_weight: float = 0.5  # self-reconstruction L1
    perceptual_weight: float = 0.5  # VGG16 feature L1 to the target
    cycle_weight: float = 0.5  # swap there and back
    mask_weight: float = 0.5  # L1 outside the target's face+hair mask
    clip_id_weight: float = 1.0  # 1 - cos of CLIP image embeddings (swap, source)
    clip_text_weight: float = 1.0  # gated caption consistency
    adv_weight: float = 1.0  # generator adversarial loss
    # Schedules and variants
    adv_start_step: int = 200_000  # the G adversarial term is on from this step (D trains throughout)
    adv_loss: AdvLoss = "lsgan"  # "lsgan" (MSE, official) or "hinge"
    rec_mode: RecMode = "forward"  # "forward": extra pass G(x_t, E_id(x_t)); "self_pairs": rows flagged is_self
    clip_text_factorised: bool = False  # per-attribute gates when the batch has attribute embeddings

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
    mask: Tensor | None = None  # (B, 1, H, W) target face+hair mask, 1 = face or hair
    mask_valid: Tensor | None = None  # (B,) bool, rows whose mask exists; None = all rows when mask is set
    attr_embs: dict[str, Tensor] | None = None  # name -> (B, D) text embeddings of the target's attributes
    is_self: Tensor | None = None  # (B,) bool, rows where source is target (rec_mode="self_pairs")
    # The source image's own caption fields: needed only to build the reversed direction.
    source_text_emb: Tensor | None = None  # (B, D)
    source_text_image_sim: Tensor | None = None  # (B,)
    source_mask: Tensor | None = None  # (B, 1, H, W)
    source_mask_valid: Tensor | None = None  # (B,) bool
    source_attr_embs: dict[str, Tensor] | None = None  # name -> (B, D)

    def __post_init__(self) -> None:
        b = self.source.shape[0]
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
        )

    def to(self, device: torch.device | str) -> SwapBatch:
        def move(v: object) -> object:
            if isinstance(v, Tensor):
                return v.to(device, non_blocking=True)
            if isinstance(v, dict):
                return {k: t.to(device, non_blocking=True) for k, t in v.items()}
            return v

        return dataclasses.replace(self, **{f.name: move(getattr(self, f.name)) for f in dataclasses.fields(self)})


# ---------------------------------------------------------------------------------------------
# Loss terms (pure functions of tensors)


def identity_loss(emb: Tensor, reference: Tensor) -> Tensor:
    """Mean ``1 - cos`` between rows of two embedding batches."""
    return (1.0 - F.cosine_similarity(emb, reference.to(emb.dtype), dim=1)).mean()


def masked_l1(images: Tensor, reference: Tensor, mask: Tensor, valid: Tensor | None = None) -> Tensor | None:
    """Mean of ``|(1 - mask) * (images - reference)|`` over the rows in ``valid``; the face+hair
    region (mask 1) is ignored. None when no row has a mask."""
    if valid is not None:
        if not bool(valid.any()):
            return None
        images, reference, mask = images[valid], reference[valid], mask[valid]
    return ((1.0 - mask) * (images - reference)).abs().mean()


def clip_text_gate(swap_emb: Tensor, text_emb: Tensor, target_sim: Tensor) -> Tensor:
    """``relu(cos(CLIP_img(x_t), T) - cos(CLIP_img(s), T))`` per row: zero whenever the swap matches
    the target's description at least as well as the target itself. Returns ``(B,)``."""
    text = text_emb.float()
    swap_sim = (swap_emb * F.normalize(text, dim=1)).sum(dim=1)  # swap_emb is already normalised
    gate = F.relu(target_sim.float() - swap_sim)
    present = text.abs().sum(dim=1) > 0  # an all-zero embedding marks a missing caption/attribute
    return gate * present


def adversarial_g_loss(fake_logits: Tensor, kind: AdvLoss) -> Tensor:
    if kind == "lsgan":
        return ((fake_logits - 1.0) ** 2).mean()
    return -fake_logits.mean()


def adversarial_d_loss(real_logits: Tensor, fake_logits: Tensor, kind: AdvLoss) -> tuple[Tensor, Tensor]:
    """``(real term, fake term)``; the D loss is their sum."""
    if kind == "lsgan":
        return ((real_logits - 1.0) ** 2).mean(), (fake_logits**2).mean()
    return F.relu(1.0 - real_logits).mean(), F.relu(1.0 + fake_logits).mean()


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
    ``batch.target`` (real) and the detached swap (fake).

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

        def add(name: str, value: Tensor | None, weight: float) -> None:
            if value is not None:
                terms[name], weights[name] = value, weight

        if cfg.id_weight:
            add("id", identity_loss(self.identity(swap), id_source), cfg.id_weight)
        if cfg.rec_weight:
            add("rec", self._reconstruction(batch, swap, id_target), cfg.rec_weight)
        if cfg.perceptual_weight:
            assert self.vgg is not None
            add("perceptual", self.vgg.distance(swap, x_t), cfg.perceptual_weight)
        if cfg.cycle_weight:
            add("cycle", F.l1_loss(self.G(swap, id_target), x_t), cfg.cycle_weight)
        if cfg.mask_weight and batch.mask is not None:
            add("mask", masked_l1(swap, x_t, batch.mask, batch.valid_mask_rows), cfg.mask_weight)
        if cfg.clip_id_weight or cfg.clip_text_weight:
            assert self.clip is not None
            swap_emb = self.clip(swap)  # (B, D), the only CLIP pass
            if swap_emb.shape[1] != batch.text_emb.shape[1]:
                raise ValueError(
                    f"CLIP tower gives {swap_emb.shape[1]}-d embeddings, cached ones are {batch.text_emb.shape[1]}-d"
                )
            if cfg.clip_id_weight:
                add("clip_id", identity_loss(swap_emb, batch.source_image_emb.float()), cfg.clip_id_weight)
            if cfg.clip_text_weight:
                text_terms = self._clip_text(batch, swap_emb)
                for name, value in text_terms.items():
                    if name != "clip_text":
                        terms[name] = value  # per-attribute gates: logged, already inside clip_text
                add("clip_text", text_terms["clip_text"], cfg.clip_text_weight)
        if self.adv_active(step):
            assert self.D is not None
            add("adv", adversarial_g_loss(self.D(swap), cfg.adv_loss), cfg.adv_weight)

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
        real_term, fake_term = adversarial_d_loss(self.D(batch.target), self.D(fake), self.config.adv_loss)
        total = real_term + fake_term
        terms = {
            "Loss/D/real": real_term.detach(),
            "Loss/D/fake": fake_term.detach(),
            "Loss/D/total": total.detach(),
        }
        return LossOutput(total=total, terms=terms, swap=fake)

    # -- helpers ----------------------------------------------------------------------------

    def _reconstruction(self, batch: SwapBatch, swap: Tensor, id_target: Tensor | None) -> Tensor | None:
        if self.config.rec_mode == "forward":
            return F.l1_loss(self.G(batch.target, id_target), batch.target)
        if batch.is_self is None or not bool(batch.is_self.any()):
            return None  # no self pairs in this batch
        rows = batch.is_self.bool()
        return F.l1_loss(swap[rows], batch.target[rows])

    def _clip_text(self, batch: SwapBatch, swap_emb: Tensor) -> dict[str, Tensor]:
        """``{"clip_text": mean gate}``; factorised, also ``{"clip_text/<attr>": gate}`` per attribute
        and ``clip_text`` is their mean."""
        if not (self.config.clip_text_factorised and batch.attr_embs):
            return {"clip_text": clip_text_gate(swap_emb, batch.text_emb, batch.text_image_sim).mean()}
        target_emb = batch.target_image_emb.float()
        out = {}
        for name, emb in sorted(batch.attr_embs.items()):
            target_sim = (target_emb * F.normalize(emb.float(), dim=1)).sum(dim=1)  # cached target side
            out[f"clip_text/{name}"] = clip_text_gate(swap_emb, emb, target_sim).mean()
        out["clip_text"] = torch.stack(list(out.values())).mean()
        return out
