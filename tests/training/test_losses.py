"""Loss terms, the G/D loss object, the frozen CLIP and VGG towers, and a tiny overfit run."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from tests.training.conftest import TINY_CLIP_MEAN, TINY_CLIP_STD, smooth_images
from training.batch import SwapBatch
from training.clip_image import ClipImageTower
from training.config import AdvLoss, LossConfig
from training.losses import (
    AlphaFaceLoss,
    adversarial_d_rows,
    adversarial_g_rows,
    clip_text_gate,
    identity_rows,
    masked_l1_rows,
)
from training.models import IdentityEncoder, MissingWeights, build_discriminator, build_generator
from training.perceptual import VGG_LAYERS, VGGPerceptual

SIZE = 64  # test images; the tiny generator's stride is 8
D_CLIP = 32  # tiny CLIP embedding size


# Batch means of the loss's own per-row terms, as the checks below state them.
def identity_loss(emb: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    return identity_rows(emb, reference).mean()


def masked_l1(images, reference, mask, valid=None) -> torch.Tensor | None:
    if valid is not None:
        if not bool(valid.any()):
            return None
        images, reference, mask = images[valid], reference[valid], mask[valid]
    return masked_l1_rows(images, reference, mask).mean()


def adversarial_g_loss(fake_logits: torch.Tensor, kind: AdvLoss) -> torch.Tensor:
    return adversarial_g_rows(fake_logits, kind).mean()


def adversarial_d_loss(real_logits, fake_logits, kind: AdvLoss) -> tuple[torch.Tensor, torch.Tensor]:
    real, fake = adversarial_d_rows(real_logits, fake_logits, kind)
    return real.mean(), fake.mean()


def make_batch(b: int = 2, seed: int = 0, mask: bool = True) -> SwapBatch:
    g = torch.Generator().manual_seed(seed)
    src, tgt = smooth_images(b, SIZE, g), smooth_images(b, SIZE, g)

    def emb() -> torch.Tensor:
        return F.normalize(torch.randn(b, D_CLIP, generator=g), dim=1)

    text, t_img, s_img, s_text = emb(), emb(), emb(), emb()
    face = torch.zeros(b, 1, SIZE, SIZE)
    face[..., 16:48, 16:48] = 1.0
    return SwapBatch(
        source=src,
        target=tgt,
        text_emb=text,
        target_image_emb=t_img,
        source_image_emb=s_img,
        text_image_sim=(text * t_img).sum(1),
        mask=face if mask else None,
        source_text_emb=s_text,
        source_text_image_sim=(s_text * s_img).sum(1),
    )


@pytest.fixture()
def vgg_tiny() -> VGGPerceptual:
    torch.manual_seed(0)
    return VGGPerceptual(allow_random=True, input_size=32)


def make_loss(identity: IdentityEncoder, clip: ClipImageTower, vgg: VGGPerceptual, **cfg: object) -> AlphaFaceLoss:
    torch.manual_seed(0)
    gen = build_generator("tiny")
    disc = build_discriminator(image_size=SIZE, base_channels=8, max_channels=16, num_down=2)
    return AlphaFaceLoss(LossConfig(**cfg), gen, identity, discriminator=disc, clip=clip, vgg=vgg)


class FixedOutput(nn.Module):
    """A stand-in generator that returns a given image, to pin the swap exactly."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = image
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.image + 0 * self.dummy


# ---------------------------------------------------------------------------------------------
# Terms


def test_identity_loss_is_zero_exactly_when_embeddings_match(tiny_identity: IdentityEncoder) -> None:
    e = F.normalize(torch.randn(4, 512), dim=1)
    assert identity_loss(e, e).abs() < 1e-6
    assert identity_loss(e, F.normalize(torch.randn(4, 512), dim=1)) > 0.5

    # Through the loss object: a swap equal to the source has the source's embedding.
    batch = make_batch(mask=False)
    cfg = dict.fromkeys(
        ["rec_weight", "perceptual_weight", "cycle_weight", "mask_weight", "clip_id_weight", "clip_text_weight"], 0.0
    )
    same = AlphaFaceLoss(LossConfig(**cfg, adv_weight=0.0), FixedOutput(batch.source), tiny_identity)
    other = AlphaFaceLoss(LossConfig(**cfg, adv_weight=0.0), FixedOutput(batch.target), tiny_identity)
    assert same("G", batch, step=0).terms["Loss/G/id"] < 1e-6
    assert other("G", batch, step=0).terms["Loss/G/id"] > 1e-3


def test_clip_text_gate_fires_only_when_the_swap_drifts() -> None:
    text = F.normalize(torch.randn(3, D_CLIP), dim=1)
    swap = F.normalize(torch.randn(3, D_CLIP), dim=1)
    swap_sim = (swap * text).sum(1)
    # Swap scores better than or as well as the target: zero.
    assert torch.equal(clip_text_gate(swap, text, swap_sim - 0.1), torch.zeros(3))
    assert clip_text_gate(swap, text, swap_sim).abs().max() < 1e-6
    # Worse: exactly the shortfall.
    torch.testing.assert_close(clip_text_gate(swap, text, swap_sim + 0.2), torch.full((3,), 0.2))
    # A missing caption (all-zero embedding) never fires.
    missing = text.clone()
    missing[1] = 0
    assert clip_text_gate(swap, missing, swap_sim + 0.2)[1] == 0


def test_masked_loss_ignores_the_face_region() -> None:
    batch = make_batch()
    mask = batch.mask
    assert mask is not None
    swap = torch.rand_like(batch.target)
    base = masked_l1(swap, batch.target, mask)
    assert base is not None and base > 0
    inside = swap + mask * torch.rand_like(swap)  # change only face+hair pixels
    assert torch.equal(masked_l1(inside, batch.target, mask), base)
    outside = swap + (1 - mask) * 0.5
    assert masked_l1(outside, batch.target, mask) > base
    # Rows without a mask do not count; no valid row gives no term at all.
    valid = torch.tensor([True, False])
    changed_row1 = swap.clone()
    changed_row1[1] += 1.0
    assert torch.equal(masked_l1(changed_row1, batch.target, mask, valid), masked_l1(swap, batch.target, mask, valid))
    assert masked_l1(swap, batch.target, mask, torch.tensor([False, False])) is None
    # A perfect swap outside the face region gives zero even if the face differs completely.
    assert masked_l1(batch.target * (1 - mask) + mask, batch.target, mask) == 0


def test_adversarial_losses() -> None:
    ones, zeros = torch.ones(2, 1, 4, 4), torch.zeros(2, 1, 4, 4)
    real, fake = adversarial_d_loss(ones, zeros, "lsgan")
    assert real == 0 and fake == 0
    assert adversarial_g_loss(ones, "lsgan") == 0 and adversarial_g_loss(zeros, "lsgan") == 1
    real, fake = adversarial_d_loss(zeros, ones, "lsgan")
    assert real == 1 and fake == 1
    real, fake = adversarial_d_loss(2 * ones, -2 * ones, "hinge")
    assert real == 0 and fake == 0
    assert adversarial_g_loss(ones, "hinge") == -1


# ---------------------------------------------------------------------------------------------
# Frozen towers


def test_clip_tower_uses_open_clip_preprocessing(tiny_clip_model: nn.Module) -> None:
    tower = ClipImageTower(tiny_clip_model)
    assert tower.size == (32, 32)
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(TINY_CLIP_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TINY_CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = F.normalize(tiny_clip_model.encode_image((x - mean) / std), dim=1)
        torch.testing.assert_close(tower(x), expected, rtol=1e-4, atol=1e-5)
        # [0, 1] inputs, not x255, and the model's own statistics (the official bug would fail this).
        wrong = F.normalize(tiny_clip_model.encode_image((x * 255 - mean) / std), dim=1)
        assert (tower(x) - wrong).abs().max() > 1e-2
    assert tower.preprocess(torch.rand(1, 3, 64, 96)).shape == (1, 3, 32, 32)  # shortest side + centre crop
    assert not any(p.requires_grad for p in tower.parameters())


def test_vgg_needs_weights_and_loads_them_strictly(tmp_path) -> None:
    with pytest.raises(MissingWeights, match="allow_random"):  # like every frozen network without weights
        VGGPerceptual()
    torch.manual_seed(1)
    source = VGGPerceptual(allow_random=True)
    # A torchvision-style checkpoint: "features.<i>.*" plus classifier keys (ignored).
    state = {f"features.{k}": v for k, v in source.features.state_dict().items()}
    state["classifier.6.bias"] = torch.zeros(1000)
    save_file(state, str(tmp_path / "vgg16.safetensors"))
    loaded = VGGPerceptual(tmp_path / "vgg16.safetensors", input_size=32)
    for a, b in zip(source.parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b)
    state.pop("features.21.bias")
    save_file(state, str(tmp_path / "broken.safetensors"))
    with pytest.raises(RuntimeError, match="Missing key"):
        VGGPerceptual(tmp_path / "broken.safetensors")

    # Taps: relu1_2, relu2_2, relu3_3, relu4_3 of torchvision's vgg16.
    assert VGG_LAYERS == (3, 8, 15, 22) and all(isinstance(loaded.features[i], nn.ReLU) for i in VGG_LAYERS)
    x, y = torch.rand(1, 3, 48, 48), torch.rand(1, 3, 48, 48)
    with torch.no_grad():
        assert [t.shape[1] for t in loaded(x)] == [64, 128, 256, 512]
        assert loaded.distance(x, x) == 0 and loaded.distance(x, y) > 0


# ---------------------------------------------------------------------------------------------
# The loss object


def test_g_phase_terms_total_and_gradients(tiny_identity, tiny_clip, vgg_tiny) -> None:
    loss = make_loss(tiny_identity, tiny_clip, vgg_tiny, adv_start_step=10)
    batch = make_batch().both_directions()
    out = loss("G", batch, step=10)
    names = ["id", "rec", "perceptual", "cycle", "mask", "clip_id", "clip_text", "adv"]
    assert set(out.terms) == {f"Loss/G/{n}" for n in names} | {"Loss/G/total"}
    cfg = loss.config
    weights = [getattr(cfg, f"{n}_weight") for n in names]
    expected = sum(w * out.terms[f"Loss/G/{n}"] for w, n in zip(weights, names, strict=True))
    torch.testing.assert_close(out.total.detach(), expected)
    assert out.swap.shape == batch.target.shape and not out.swap.requires_grad

    # Gradients reach every generator parameter and never the frozen encoders.
    out.total.backward()
    for name, p in loss.G.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    for net in (loss.identity, loss.clip, loss.vgg):
        assert all(p.grad is None and not p.requires_grad for p in net.parameters())
    nn.ModuleList([loss.G, loss.identity, loss.clip, loss.vgg]).train()  # what a trainer might do
    assert loss.G.training and not any(m.training for m in (loss.identity, loss.clip, loss.vgg))

    # Before the switch-on step there is no adversarial term and D is not touched.
    early = loss("G", batch, step=9)
    assert "Loss/G/adv" not in early.terms
    # No mask in the batch: no mask term.
    assert "Loss/G/mask" not in loss("G", make_batch(mask=False), step=0).terms


def test_d_phase(tiny_identity, tiny_clip, vgg_tiny) -> None:
    loss = make_loss(tiny_identity, tiny_clip, vgg_tiny)
    batch = make_batch()
    out = loss("D", batch, step=0)
    assert set(out.terms) == {"Loss/D/real", "Loss/D/fake", "Loss/D/total"}
    out.total.backward()
    assert all(p.grad is not None for p in loss.D.parameters())
    assert all(p.grad is None for p in loss.G.parameters())  # fakes are detached
    with pytest.raises(ValueError, match="phase"):
        loss("E", batch, step=0)


def test_both_directions_swaps_roles() -> None:
    batch = make_batch(b=2)
    both = batch.both_directions()
    assert both.source.shape[0] == 4
    assert torch.equal(both.source[2:], batch.target) and torch.equal(both.target[2:], batch.source)
    assert torch.equal(both.text_emb[2:], batch.source_text_emb)
    assert torch.equal(both.source_image_emb[2:], batch.target_image_emb)
    assert torch.equal(both.target_image_emb[2:], batch.source_image_emb)
    # Only the target side has masks: the reversed rows are marked invalid.
    assert both.mask_valid is not None and both.mask_valid.tolist() == [True, True, False, False]
    with pytest.raises(ValueError, match="source_text_emb"):
        SwapBatch(**{**batch.__dict__, "source_text_emb": None}).both_directions()


def test_factorised_clip_text_and_self_pair_reconstruction(tiny_identity, tiny_clip, vgg_tiny) -> None:
    batch = make_batch()
    pose = F.normalize(torch.randn(2, D_CLIP), dim=1)
    missing = torch.zeros(2, D_CLIP)  # an attribute the captioner did not give
    fact = SwapBatch(**{**batch.__dict__, "attr_embs": {"pose": pose, "glasses": missing}})
    off = dict(rec_weight=0.0, perceptual_weight=0.0, cycle_weight=0.0, mask_weight=0.0, adv_weight=0.0)
    off |= dict(reduction="mean", clip_x255=False)  # ours; the official reductions are pinned in test_official.py
    loss = make_loss(tiny_identity, tiny_clip, vgg_tiny, clip_text_factorised=True, **off)
    terms = loss("G", fact, step=0).terms
    assert terms["Loss/G/clip_text/glasses"] == 0
    torch.testing.assert_close(terms["Loss/G/clip_text"], terms["Loss/G/clip_text/pose"] / 2)
    with torch.no_grad():
        swap_emb = tiny_clip(loss.G(batch.target, tiny_identity(batch.source)))
    expected_pose = F.relu((batch.target_image_emb * pose).sum(1) - (swap_emb * pose).sum(1)).mean()
    torch.testing.assert_close(terms["Loss/G/clip_text/pose"], expected_pose)

    # rec_mode="self_pairs": reconstruction only from rows flagged is_self, no extra forward.
    self_loss = make_loss(tiny_identity, tiny_clip, vgg_tiny, **{**off, "rec_mode": "self_pairs", "rec_weight": 0.5})
    flagged = SwapBatch(**{**batch.__dict__, "is_self": torch.tensor([False, True])})
    out = self_loss("G", flagged, step=0)
    torch.testing.assert_close(out.terms["Loss/G/rec"], F.l1_loss(out.swap[1], batch.target[1]))
    assert "Loss/G/rec" not in self_loss("G", batch, step=0).terms


def test_config_checks(tiny_identity) -> None:
    with pytest.raises(ValueError, match="weights"):
        LossConfig(id_weight=-1)
    with pytest.raises(ValueError, match="adv_loss"):
        LossConfig(adv_loss="wgan")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="CLIP"):
        AlphaFaceLoss(LossConfig(), build_generator("tiny"), tiny_identity)


@pytest.fixture()
def one_thread():
    """Tiny ops run faster on one thread, and much faster when other jobs share the CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_tiny_overfit_lowers_identity_loss(tiny_identity, tiny_clip, vgg_tiny, one_thread) -> None:
    """25 CPU steps with every loss on (adversarial included) fit one pair's identity."""
    loss = make_loss(tiny_identity, tiny_clip, vgg_tiny, adv_start_step=0)
    batch = make_batch(b=1).both_directions()
    opt_g = torch.optim.Adam(loss.G.parameters(), lr=2e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(loss.D.parameters(), lr=2e-3, betas=(0.0, 0.99))
    history = []
    for step in range(25):
        out = loss("G", batch, step)
        opt_g.zero_grad(set_to_none=True)
        out.total.backward()
        opt_g.step()
        history.append(float(out.terms["Loss/G/id"]))
        d_out = loss("D", batch, step, fake=out.swap)
        opt_d.zero_grad(set_to_none=True)
        d_out.total.backward()
        opt_d.step()
    first, last = sum(history[:3]) / 3, sum(history[-3:]) / 3
    assert first > 0.9  # unrelated identities to begin with (cosine near 0)
    assert last < 0.8 * first, history
