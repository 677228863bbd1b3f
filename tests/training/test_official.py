"""The alphaface preset against the official code (issue 12, part 1): one test per checkable difference.

    1 discriminator      test_official_discriminator_*
    2 when D trains      test_d_untouched_before_the_adversarial_phase
    3 reductions         test_official_reductions_*
    4 mask region        test_mask_region_*
    5 batch/fp32/EMA     test_presets_against_the_official_code
    6 input range, eps   test_generator_target_range_and_eps
    7 CLIP x255          test_clip_x255_*

The official arithmetic is written out here with torch.nn.functional, from the official
`Models/Swapper_Units_AdIN.py` and `train_clip.py`, independently of our modules.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from pipeline.sources import CELEBA_LABELS
from tests.training.conftest import smooth_images
from tests.training.run_builders import REPO, demo_args
from training.batch import MASK_REGIONS, SwapBatch, region_mask
from training.config import LossConfig, load_config
from training.losses import AlphaFaceLoss
from training.models import GENERATOR_PRESETS, adain, build_discriminator, build_generator, spatial_stats
from training.perceptual import VGGPerceptual

CONFIGS = REPO / "training" / "configs"
SIZE = 64
D_CLIP = 32


# ---------------------------------------------------------------------------------------------
# 1. The discriminator


def official_resblk(p: dict[str, torch.Tensor], x: torch.Tensor, downsample: bool) -> torch.Tensor:
    """StarGAN v2's ResBlk as the official Swapper_Units_AdIN.ResBlk computes it (no normalisation)."""
    skip = F.conv2d(x, p["conv1x1"]) if "conv1x1" in p else x
    if downsample:
        skip = F.avg_pool2d(skip, 2)
    r = F.conv2d(F.leaky_relu(x, 0.2), p["conv1.w"], p["conv1.b"], padding=1)
    if downsample:
        r = F.avg_pool2d(r, 2)
    r = F.conv2d(F.leaky_relu(r, 0.2), p["conv2.w"], p["conv2.b"], padding=1)
    return (skip + r) / math.sqrt(2)


def official_discriminator(d: nn.Module, x: torch.Tensor, img_size: int = 256) -> torch.Tensor:
    """The official Discriminator(img_size=256, max_conv_dim=512) forward on d's weights: raw [0, 1]
    input, log2(256) - 1 blocks halving at odd indices, 1x1 head with a final LeakyReLU."""
    sd = d.state_dict()
    x = F.conv2d(x, sd["net.0.weight"], sd["net.0.bias"], padding=1)  # no 2x - 1: [0, 1] as it is
    blocks = int(math.log2(img_size)) - 1
    for i in range(blocks):
        q = f"net.{i + 1}."
        p = {"conv1.w": sd[q + "conv1.weight"], "conv1.b": sd[q + "conv1.bias"]}
        p |= {"conv2.w": sd[q + "conv2.weight"], "conv2.b": sd[q + "conv2.bias"]}
        if q + "shortcut.weight" in sd:
            p["conv1x1"] = sd[q + "shortcut.weight"]
        x = official_resblk(p, x, downsample=i % 2 == 1)
    h = blocks + 1
    x = F.leaky_relu(x, 0.2)
    x = F.leaky_relu(F.conv2d(x, sd[f"net.{h + 1}.weight"], sd[f"net.{h + 1}.bias"]), 0.2)  # 1x1
    x = F.conv2d(x, sd[f"net.{h + 3}.weight"], sd[f"net.{h + 3}.bias"])  # 1x1 to one logit
    return F.leaky_relu(x, 0.2)  # the official final activation


def test_official_discriminator_size_and_logits() -> None:
    with torch.device("meta"):
        d = build_discriminator()  # the default is the official one, built for 256 with at most 512 channels
        logits = d(torch.empty(2, 3, 256, 256))
    assert sum(p.numel() for p in d.parameters()) == 21_639_233  # 21.64M
    assert logits.shape == (2, 1, 32, 32)
    assert d.config.downsample == (False, True, False, True, False, True, False)  # 7 ResBlks, odd ones halve
    widths = [m.conv2.out_channels for m in d.net if hasattr(m, "conv2")]
    assert widths == [128, 256, 512, 512, 512, 512, 512]  # 2**14 // 256 = 64 doubling up to 512
    head = list(d.net)[-5:]
    assert [type(m) for m in head] == [nn.LeakyReLU, nn.Conv2d, nn.LeakyReLU, nn.Conv2d, nn.LeakyReLU]
    assert all(m.kernel_size == (1, 1) for m in head if isinstance(m, nn.Conv2d))
    # ours, kept as an option: 9.58M, 16x16 logits
    with torch.device("meta"):
        patch = build_discriminator(kind="patch")
        assert patch(torch.empty(1, 3, 256, 256)).shape == (1, 1, 16, 16)
    assert round(sum(p.numel() for p in patch.parameters()) / 1e6, 2) == 9.58


def test_official_discriminator_arithmetic_and_input_range() -> None:
    torch.manual_seed(0)
    d = build_discriminator().eval()  # image_size 256; fully convolutional, so a 64 px input keeps it cheap
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours, ref = d(x), official_discriminator(d, x)
        assert ours.shape == (2, 1, 8, 8)
        torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6)
        assert (ours - official_discriminator(d, x * 2 - 1)).abs().max() > 1e-3  # a centred input is not it
        # the final LeakyReLU: shift the last conv so some logits are negative, which it scales by 0.2
        last = d.net[-2]
        last.bias -= d.net[:-1](x).median()
        pre, ours = d.net[:-1](x), d(x)
        assert (pre < 0).any() and (pre > 0).any()
        torch.testing.assert_close(ours, torch.where(pre < 0, 0.2 * pre, pre))
        torch.testing.assert_close(ours, official_discriminator(d, x), rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# 2. D is untouched before the adversarial phase (the real trainer)


def _ckpt(run: Path, step: int) -> dict[str, object]:
    folder = run / "checkpoints" / f"step_{step:07d}"
    # accelerator.prepare(G, D, opt_g, opt_d, sched_g, sched_d): the second of each is D's
    return {
        "D": load_file(str(folder / "model_1.safetensors")),
        "opt_d": torch.load(folder / "optimizer_1.bin", weights_only=True),
        "sched_d": torch.load(folder / "scheduler_1.bin", weights_only=True),
        "sched_g": torch.load(folder / "scheduler.bin", weights_only=True),
    }


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("before", [False, True], ids=["official", "train_d_before_adv"])
def test_d_untouched_before_the_adversarial_phase(tmp_path, train_data, train_clip, before) -> None:
    from training.train import main

    out = tmp_path / "run"
    sets = ["loss.adv_start_step=2", f"loss.train_d_before_adv={str(before).lower()}", "checkpoint_every=1",
            "keep_checkpoints=3", "sample_every=100", "lr_step=1", "lr_gamma=0.5"]  # fmt: skip
    main(demo_args([train_data], out, train_clip, *sets, max_steps=3))
    c1, c2, c3 = (_ckpt(out, s) for s in (1, 2, 3))
    assert c3["sched_g"]["last_epoch"] == 3  # G's StepLR counts every step
    assert not _same(c2["D"], c3["D"]) and c3["opt_d"]["state"]  # step index 2 >= adv_start_step: D trains
    if before:  # the switch: D trains and its StepLR counts from step 0
        assert c1["opt_d"]["state"] and not _same(c1["D"], c2["D"]) and c3["sched_d"]["last_epoch"] == 3
        return
    # official: steps 0 and 1 leave D's weights, its AdamW state and its StepLR exactly as built
    assert _same(c1["D"], c2["D"])
    assert not c1["opt_d"]["state"] and not c2["opt_d"]["state"]
    assert c1["sched_d"]["last_epoch"] == c2["sched_d"]["last_epoch"] == 0
    assert c3["sched_d"]["last_epoch"] == 1  # its first step: the decay schedule starts at the adversarial start
    assert c2["opt_d"]["param_groups"][0]["lr"] == load_config(CONFIGS / "demo.yaml").lr_d  # undecayed


def test_adversarial_start_is_the_official_step() -> None:
    cfg = load_config(CONFIGS / "alphaface.yaml").loss
    loss = AlphaFaceLoss(dataclasses.replace(cfg, clip_id_weight=0, clip_text_weight=0, perceptual_weight=0),
                         nn.Identity(), None, discriminator=nn.Identity())  # type: ignore[arg-type]  # fmt: skip
    # official train_clip.py: the adversarial branch runs when global_step > adv_sess (200000), 0-based
    assert [loss.d_active(s) for s in (0, 200_000, 200_001)] == [False, False, True]
    assert [loss.adv_active(s) for s in (200_000, 200_001)] == [False, True]


# ---------------------------------------------------------------------------------------------
# 3. Reductions


class FixedOutput(nn.Module):
    """A stand-in generator returning fixed images (independent of its inputs), with a parameter."""

    def __init__(self, image: torch.Tensor) -> None:
        super().__init__()
        self.image = image
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, target: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if target.shape[0] != self.image.shape[0]:
            raise ValueError("batch size")
        return self.image + 0 * self.dummy


def _batch(b: int, g: torch.Generator, labels: bool = False) -> SwapBatch:
    src, tgt = smooth_images(b, SIZE, g), smooth_images(b, SIZE, g)

    def emb() -> torch.Tensor:
        return F.normalize(torch.randn(b, D_CLIP, generator=g), dim=1)

    mask: torch.Tensor = torch.zeros(b, 1, SIZE, SIZE)
    mask[..., 16:48, 16:48] = 1.0
    if labels:
        mask = label_map(b)
    return SwapBatch(
        source=src,
        target=tgt,
        text_emb=emb(),
        target_image_emb=emb(),
        source_image_emb=emb(),
        text_image_sim=torch.ones(b),  # the target "matches its caption perfectly": every gate fires
        mask=mask,
        source_text_emb=emb(),
        source_text_image_sim=torch.ones(b),
        source_mask=mask.clone(),
    )


def _loss(tiny_identity, tiny_clip, vgg, swap: torch.Tensor, **cfg: object) -> AlphaFaceLoss:
    torch.manual_seed(0)
    disc = build_discriminator(image_size=SIZE, base_channels=8, max_channels=16)
    config = LossConfig(adv_start_step=0, clip_x255=False, **cfg)  # type: ignore[arg-type]
    return AlphaFaceLoss(config, FixedOutput(swap), tiny_identity, discriminator=disc, clip=tiny_clip, vgg=vgg)


@pytest.fixture()
def vgg_tiny() -> VGGPerceptual:
    torch.manual_seed(0)
    return VGGPerceptual(allow_random=True, input_size=32)


G_TERMS = ("id", "rec", "perceptual", "cycle", "mask", "clip_id", "adv")


def test_official_reductions_add_directions_and_sum_the_clip_text_hinge(tiny_identity, tiny_clip, vgg_tiny) -> None:
    g = torch.Generator().manual_seed(0)
    pairs = _batch(2, g)
    both = pairs.both_directions()  # 2 pairs -> 4 swaps, directions=2
    swap = torch.rand(4, 3, SIZE, SIZE, generator=g)
    ours = _loss(tiny_identity, tiny_clip, vgg_tiny, swap, reduction="mean")
    official = _loss(tiny_identity, tiny_clip, vgg_tiny, swap, reduction="official")
    t_ours, t_off = ours("G", both, step=0).terms, official("G", both, step=0).terms
    for name in G_TERMS:  # each direction's batch mean, the two directions added: twice one mean over 4 rows
        a, b = t_ours[f"Loss/G/{name}"], t_off[f"Loss/G/{name}"]
        assert a > 0, name
        torch.testing.assert_close(b / a, torch.tensor(2.0), msg=name)
    # the CLIP-text hinge is summed over the batch in each direction: 2B = 4 times our mean
    torch.testing.assert_close(t_off["Loss/G/clip_text"] / t_ours["Loss/G/clip_text"], torch.tensor(4.0))
    # and independently: the sum of relu(cos(t, T) - cos(s, T)) with cos(t, T) = 1 here
    with torch.no_grad():
        swap_emb = tiny_clip(swap)
    expected = F.relu(1.0 - (swap_emb * both.text_emb).sum(1)).sum()
    torch.testing.assert_close(t_off["Loss/G/clip_text"], expected)
    # D: (real + fake) / 2 of the added direction means, the same value as our real + fake of means
    d_ours = ours("D", both, step=0, fake=swap).terms
    d_off = official("D", both, step=0, fake=swap).terms
    torch.testing.assert_close(d_off["Loss/D/total"], d_ours["Loss/D/total"])
    torch.testing.assert_close(d_off["Loss/D/real"], 2 * d_ours["Loss/D/real"])
    # one direction (both_directions off): the batch mean, and the hinge's sum is B times the mean
    swap2 = swap[:2]
    ours1 = _loss(tiny_identity, tiny_clip, vgg_tiny, swap2, reduction="mean")("G", pairs, step=0).terms
    off1 = _loss(tiny_identity, tiny_clip, vgg_tiny, swap2, reduction="official")("G", pairs, step=0).terms
    for name in G_TERMS:
        torch.testing.assert_close(off1[f"Loss/G/{name}"], ours1[f"Loss/G/{name}"], msg=name)
    torch.testing.assert_close(off1["Loss/G/clip_text"] / ours1["Loss/G/clip_text"], torch.tensor(2.0))


def test_official_reductions_per_direction_with_missing_masks(tiny_identity, tiny_clip, vgg_tiny) -> None:
    """A direction block whose rows lack masks adds nothing; the other block's mean is not diluted."""
    g = torch.Generator().manual_seed(1)
    both = dataclasses.replace(_batch(2, g), source_mask=None).both_directions()  # reversed rows: no masks
    assert both.mask_valid is not None and both.mask_valid.tolist() == [True, True, False, False]
    swap = torch.rand(4, 3, SIZE, SIZE, generator=g)
    off = _loss(tiny_identity, tiny_clip, vgg_tiny, swap, reduction="official")("G", both, step=0).terms
    mask = both.mask[:2]
    first = ((1 - mask) * (swap[:2] - both.target[:2])).abs().mean()  # the official F.l1_loss of one direction
    torch.testing.assert_close(off["Loss/G/mask"], first)


# ---------------------------------------------------------------------------------------------
# 4. Mask region


def label_map(b: int) -> torch.Tensor:
    """(B, 1, 64, 64) uint8 CelebAMask-HQ labels: background, hair on top, skin, nose, glasses, neck."""
    lab = torch.zeros(b, 1, SIZE, SIZE, dtype=torch.uint8)
    parts = [("hair", (0, 16), (8, 56)), ("skin", (16, 48), (16, 48)), ("nose", (28, 36), (28, 36)),
             ("eye_g", (20, 24), (18, 46)), ("neck", (48, 64), (24, 40)), ("l_ear", (24, 36), (10, 16))]  # fmt: skip
    for name, rows, cols in parts:
        lab[..., rows[0] : rows[1], cols[0] : cols[1]] = CELEBA_LABELS.index(name)
    return lab


def test_mask_region_from_a_label_map() -> None:
    lab = label_map(1)
    inner = region_mask(lab, "inner_face")
    assert inner.dtype == torch.float32 and inner.shape == lab.shape
    names = {CELEBA_LABELS[int(v)] for v in lab.unique()}
    for name in names:  # official: white on the inner face only
        where = lab == CELEBA_LABELS.index(name)
        assert bool((inner[where] == 1).all()) == (name in ("skin", "nose")), name
        assert bool((inner[where] == 0).all()) == (name not in ("skin", "nose")), name
    assert set(MASK_REGIONS["inner_face"]) == {"skin", "nose", "l_eye", "r_eye", "l_brow", "r_brow", "mouth",
                                               "u_lip", "l_lip"}  # fmt: skip
    hair = region_mask(lab, "face_hair")
    assert bool((hair[lab == CELEBA_LABELS.index("hair")] == 1).all())
    assert bool((hair[lab == CELEBA_LABELS.index("eye_g")] == 0).all())  # glasses frames stay constrained
    soft = torch.rand(1, 1, 8, 8)
    assert region_mask(soft, "inner_face") is soft  # a float mask is a region already


def test_mask_region_decides_what_the_masked_loss_constrains(tiny_identity, tiny_clip, vgg_tiny) -> None:
    g = torch.Generator().manual_seed(2)
    batch = _batch(2, g, labels=True)
    lab = batch.mask
    assert lab is not None and not lab.is_floating_point()
    hair = (lab == CELEBA_LABELS.index("hair")).float()
    skin = (lab == CELEBA_LABELS.index("skin")).float()
    base = batch.target.clone()
    only = dict(id_weight=0, rec_weight=0, perceptual_weight=0, cycle_weight=0, clip_id_weight=0, clip_text_weight=0,
                adv_weight=0)  # fmt: skip

    def mask_term(swap: torch.Tensor, region: str) -> float:
        loss = _loss(tiny_identity, tiny_clip, vgg_tiny, swap, mask_region=region, **only)
        return float(loss("G", batch, step=0).terms["Loss/G/mask"])

    for region in ("inner_face", "face_hair"):
        assert mask_term(base, region) == 0
        assert mask_term(base + 0.5 * skin, region) == 0  # the face itself may be repainted either way
    assert mask_term(base + 0.5 * hair, "inner_face") > 0  # official: hair must match the target
    assert mask_term(base + 0.5 * hair, "face_hair") == 0  # ours before: hair never constrained
    assert load_config(CONFIGS / "alphaface.yaml").loss.mask_region == "inner_face"


# ---------------------------------------------------------------------------------------------
# 5. Batch, precision, EMA: the presets


def test_presets_against_the_official_code() -> None:
    official = load_config(CONFIGS / "alphaface.yaml")
    # configs/alphaface_train_demo.py + train_clip.py
    assert (official.batch_size, official.mixed_precision, official.ema_decay) == (2, "no", 0.0)
    assert official.both_directions and official.pair_rates["random"] == 1.0
    assert (official.lr_g, official.lr_d, official.betas, official.weight_decay) == (1e-4, 1e-4, (0.0, 0.99), 5e-4)
    assert (official.lr_step, official.lr_gamma, official.grad_clip) == (20_000, 0.97, 1.0)
    loss = official.loss
    assert (loss.reduction, loss.clip_x255, loss.train_d_before_adv) == ("official", True, False)
    assert loss.adv_loss == "lsgan" and loss.mask_region == "inner_face"
    assert official.discriminator == {} and build_discriminator().config.kind == "official"
    gen = build_generator(official.generator, **official.generator_overrides).config
    assert (gen.target_range, gen.eps, gen.caii_mode) == ("unit", 1e-8, "official")
    improved = load_config(CONFIGS / "alphaface-improved.yaml")
    assert (improved.batch_size, improved.mixed_precision, improved.ema_decay) == (16, "bf16", 0.999)
    assert (improved.loss.reduction, improved.loss.clip_x255) == ("mean", False)
    # the switch only the official preset turns on
    for path in CONFIGS.glob("*.yaml"):
        assert load_config(path).loss.clip_x255 == (path.name == "alphaface.yaml"), path.name


# ---------------------------------------------------------------------------------------------
# 6. The generator's input range and instance-norm epsilon


def test_generator_target_range_and_eps() -> None:
    official = GENERATOR_PRESETS["alphaface"]
    assert (official.target_range, official.eps) == ("unit", 1e-8)
    narrow = dict(encoder_channels=(8, 16, 16, 32), decoder_up_channels=(16, 8), decoder_channels=(8, 8, 8))
    torch.manual_seed(0)
    unit = build_generator("alphaface", **narrow).eval()
    seen: list[torch.Tensor] = []
    unit.encoder[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    target, z = torch.rand(1, 3, 32, 32), F.normalize(torch.randn(1, 512), dim=1)
    with torch.no_grad():
        out_unit = unit(target, z)
        torch.testing.assert_close(seen[-1], F.pad(target, (3, 3, 3, 3), mode="reflect"))  # [0, 1] as it is
        signed = build_generator("alphaface", **narrow, target_range="signed").eval()
        signed.load_state_dict(unit.state_dict())
        signed.encoder[1].register_forward_pre_hook(lambda m, args: seen.append(args[0]))
        signed(target, z)
        torch.testing.assert_close(seen[-1], F.pad(target * 2 - 1, (3, 3, 3, 3), mode="reflect"))
        # the same function class: conv(2x - 1) with W/2 and b + sum(W)/2 is conv(x) with W and b
        conv = signed.encoder[1]
        w, b = unit.encoder[1].weight, unit.encoder[1].bias
        conv.weight.copy_(w / 2)
        conv.bias.copy_(b + w.sum(dim=(1, 2, 3)) / 2)
        torch.testing.assert_close(signed(target, z), out_unit, rtol=1e-4, atol=1e-5)
    # the official AdaIN of the 1x1 code, written as its collapse (g + mean_hw(x)) / 2: bit for bit the same
    op1 = unit.blocks[0].op1
    h = torch.randn(2, 32, 8, 8) * 2 + 0.5
    with torch.no_grad():
        code_g, code_b = op1.style(z.expand(2, -1))[:, :, None, None].chunk(2, dim=1)
        x_mean, x_std = spatial_stats(h, 1e-8)
        g_mod, b_mod = op1.modulation(h, z.expand(2, -1))
        assert torch.equal(g_mod, (code_g + adain(code_g, x_mean, x_std, 1e-8)) / 2)
        assert torch.equal(b_mod, (code_b + adain(code_b, x_mean, x_std, 1e-8)) / 2)
    # eps reaches every CAII instance norm: features of variance ~1e-6 tell 1e-8 from 1e-5
    assert all(op.eps == 1e-8 for blk in unit.blocks for op in (blk.op1, blk.op2))
    op = unit.blocks[0].op2
    x = 3e-3 * torch.randn(1, 32, 8, 8)
    with torch.no_grad():
        g, b_ = op.modulation(x, z)
        y = op.conv(F.pad(x, (1, 1, 1, 1), mode="reflect"))
        y = y - y.mean((2, 3), keepdim=True)
        # the official Operation_Unit: x0 * 1/sqrt(mean(x0^2) + 9.99999993922529e-9)
        official_in = y * (1.0 / torch.sqrt((y * y).mean((2, 3), keepdim=True) + 9.99999993922529e-9))
        torch.testing.assert_close(op(x, z), g * official_in + b_, rtol=1e-4, atol=1e-5)
        op.eps = 1e-5
        assert (op(x, z) - (g * official_in + b_)).abs().max() > 1e-2


# ---------------------------------------------------------------------------------------------
# 7. CLIP x255


def test_clip_x255_feeds_clip_the_official_input(tiny_identity, tiny_clip, vgg_tiny, tiny_clip_model) -> None:
    g = torch.Generator().manual_seed(3)
    batch = _batch(2, g)
    swap = torch.rand(2, 3, SIZE, SIZE, generator=g)
    only = dict(id_weight=0, rec_weight=0, perceptual_weight=0, cycle_weight=0, mask_weight=0, adv_weight=0)
    x255 = _loss(tiny_identity, tiny_clip, vgg_tiny, swap, **only)
    x255.config = dataclasses.replace(x255.config, clip_x255=True)

    def official_clip(images: torch.Tensor) -> torch.Tensor:  # train_clip.py: interpolate, *255, Normalize
        x = F.interpolate(images, size=tiny_clip.size, mode="bilinear", align_corners=False) * 255.0
        return F.normalize(tiny_clip_model.encode_image((x - tiny_clip.mean) / tiny_clip.std), dim=1)

    with torch.no_grad():
        s, src, tgt = official_clip(swap), official_clip(batch.source), official_clip(batch.target)
        terms = x255("G", batch, step=0).terms
        # every CLIP image embedding is the defective one, the cache is not used (it holds correct ones)
        torch.testing.assert_close(terms["Loss/G/clip_id"], (1 - (s * src).sum(1)).sum() / 2 * 1.0)
        target_sim = (tgt * batch.text_emb).sum(1)
        torch.testing.assert_close(terms["Loss/G/clip_text"], F.relu(target_sim - (s * batch.text_emb).sum(1)).sum())
        correct = _loss(tiny_identity, tiny_clip, vgg_tiny, swap, **only)("G", batch, step=0).terms
        assert (correct["Loss/G/clip_id"] - terms["Loss/G/clip_id"]).abs() > 1e-4
        assert (tiny_clip(swap) - s).abs().max() > 1e-2  # the tower itself stays correct
