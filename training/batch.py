"""One G-phase batch (`SwapBatch`) and the mask regions the swap may repaint.

**Both swap directions.** Each row of a :class:`SwapBatch` is one direction (source -> target).
:meth:`SwapBatch.both_directions` appends the reversed rows (the target gives identity to the
source), so a batch of ``B`` pairs becomes ``2B`` swaps and every loss term sees both;
``SwapBatch.directions`` records the split.

**Mask region.** ``SwapBatch.mask`` is either a region already (a floating ``(B, 1, H, W)`` mask in
[0, 1], 1 = the region the swap may repaint), or an integer CelebAMask-HQ label map
(``pipeline.sources.CELEBA_LABELS`` order, 0 = background), turned into the region named by
``mask_region`` (:data:`MASK_REGIONS`): ``inner_face`` (official: skin, brows, eyes, nose, mouth and
lips; beards are skin in CelebAMask-HQ) or ``face_hair`` (inner face plus ears and hair). A flipped
label map swaps ``l_*``/``r_*`` meanings, which no region here depends on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import get_args

import torch
from torch import Tensor

from pipeline.sources import CELEBA_LABELS
from training.config import MaskRegion

_INNER_FACE = ("skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth", "u_lip", "l_lip")
MASK_REGIONS: dict[str, tuple[str, ...]] = {
    "inner_face": _INNER_FACE,  # official: the swap repaints the inner face only
    "face_hair": (*_INNER_FACE, "l_ear", "r_ear", "hair"),  # also ears and hair (hair then never constrained)
}
assert set(MASK_REGIONS) == set(get_args(MaskRegion)), "every MaskRegion has its classes here"


def region_mask(mask: Tensor, region: MaskRegion) -> Tensor:
    """The float region (1 = the swap may repaint) of a ``(B, 1, H, W)`` mask: a floating mask is one
    already; an integer CelebAMask-HQ label map becomes the union of ``MASK_REGIONS[region]``."""
    if mask.is_floating_point():
        return mask
    ids = torch.tensor([CELEBA_LABELS.index(c) for c in MASK_REGIONS[region]], device=mask.device)
    return torch.isin(mask.long(), ids).float()


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
