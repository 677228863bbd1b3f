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

**Masks and directions** are the batch's (training.batch): the masked L1 constrains everything
outside the region a mask lets the swap repaint (with ``inner_face``: hair, ears, glasses frames,
neck and background), and a batch of both directions is reduced per direction as above. The cycle
term of a row swaps back with the row's own target identity, so the pair's other image is never
needed inside the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from training.batch import SwapBatch, region_mask
from training.clip_image import ClipImageTower
from training.config import AdvLoss, LossConfig, Reduction
from training.models.identity import IdentityEncoder
from training.perceptual import VGGPerceptual

# ---------------------------------------------------------------------------------------------
# Loss terms (pure functions of tensors)


def l1_rows(images: Tensor, reference: Tensor) -> Tensor:
    """Mean absolute difference per row: ``(B, ...)`` pair -> ``(B,)``."""
    return (images - reference).abs().flatten(1).mean(dim=1)


def identity_rows(emb: Tensor, reference: Tensor) -> Tensor:
    """``1 - cos`` per row of two embedding batches, ``(B,)``."""
    return 1.0 - F.cosine_similarity(emb, reference.to(emb.dtype), dim=1)


def masked_l1_rows(images: Tensor, reference: Tensor, mask: Tensor) -> Tensor:
    """``|(1 - mask) * (images - reference)|`` averaged per row, ``(B,)``: the region (mask 1) is free."""
    return l1_rows((1.0 - mask) * images, (1.0 - mask) * reference)


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
