"""Swap inference and ONNX export of a trained (demo) generator."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file

from swapper import export, swap
from swapper.images import load_face
from swapper.swap import SwapConfig
from tests.training.run_builders import IMAGE_SIZE
from training.artifact import load_generator, load_identity, resolve_generator, save_generator


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Aligned crops as a user has them: larger JPEG/PNG files, resized by swap to the run's size."""
    from demo.synthetic import generate

    root = tmp_path_factory.mktemp("faces")
    generate(root / "raw", "vggface2-hq", identities=2, per_identity=3, seed=5, size=160)
    targets = root / "targets"
    targets.mkdir()
    for i, p in enumerate(sorted((root / "raw" / "n000002").glob("*.jpg"))):
        if i == 1:  # one PNG among the JPEGs
            Image.open(p).save(targets / f"{p.stem}.png")
        else:
            shutil.copy(p, targets / p.name)
    return root / "raw" / "n000001" / "0001_01.jpg", targets


def test_swap_a_folder_in_batches_and_a_single_image(tmp_path, demo_run, faces):
    source, targets = faces
    out = tmp_path / "swaps"
    summary = swap.main(["--checkpoint", str(demo_run), "--source", str(source), "--target", str(targets),
                         "--output", str(out), "--batch-size", "2", "--detector", "aligned",
                         "--device", "cpu"])  # fmt: skip
    assert summary["swaps"] == 3 and summary["step"] == 5
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted(f"{p.stem}.png" for p in targets.iterdir())
    # the same numbers as the generator and identity encoder called directly, up to 8-bit rounding
    generator, spec = load_generator(demo_run, "cpu")
    identity = load_identity(spec, SwapConfig(checkpoint=demo_run, source=source, target=targets))
    with torch.no_grad():
        z = identity(load_face(source, IMAGE_SIZE)[None])
        for p in sorted(targets.iterdir()):
            expected = generator(load_face(p, IMAGE_SIZE)[None], z)[0].permute(1, 2, 0).numpy() * 255
            got = np.asarray(Image.open(out / f"{p.stem}.png"), dtype=np.float32)
            assert got.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
            assert np.abs(got - expected).max() <= 0.5 + 1e-3
    # one target -> one file, format by suffix; a checkpoint folder works as well as the run dir
    one = tmp_path / "one.jpg"
    swap.main(["--checkpoint", str(demo_run / "checkpoints" / "step_0000005"), "--source", str(source),
               "--target", str(next(targets.glob("*.png"))), "--output", str(one), "--detector", "aligned",
               "--device", "cpu"])  # fmt: skip
    assert Image.open(one).format == "JPEG" and Image.open(one).size == (IMAGE_SIZE, IMAGE_SIZE)


def test_swap_refuses_a_missing_identity_encoder_with_the_fix(tmp_path, demo_run, faces):
    source, targets = faces
    final = tmp_path / "final"
    shutil.copytree(demo_run / "final", final)
    weights, spec = resolve_generator(final)
    spec["identity"] = {**spec["identity"], "random": False, "weights": "/elsewhere/w600k_r50.pth"}
    save_generator(final, load_file(str(weights)), spec)
    with pytest.raises(SystemExit, match="pass --id-weights"):
        swap.main(["--checkpoint", str(final / "generator.safetensors"), "--source", str(source),
                   "--target", str(targets), "--output", str(tmp_path / "o"), "--detector", "aligned"])  # fmt: skip


def test_onnx_export_matches_torch_with_a_dynamic_batch(tmp_path, demo_run):
    path = tmp_path / "generator.onnx"
    summary = export.main(["--checkpoint", str(demo_run), "--onnx", str(path)])
    assert summary["image_size"] == IMAGE_SIZE and path.is_file()
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["alphaface_spec"])["step"] == 5
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["target", "id_embedding"]
    assert session.get_inputs()[1].shape[1] == 512
    generator, _ = load_generator(demo_run, "cpu")
    g = torch.Generator().manual_seed(1)
    for batch in (1, 5):  # neither is the batch of 2 the export traced with
        target = torch.rand(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)
        z = F.normalize(torch.randn(batch, 512, generator=g), dim=1)
        (ours,) = session.run(["swap"], {"target": target.numpy(), "id_embedding": z.numpy()})
        with torch.no_grad():
            ref = generator(target, z).numpy()
        assert ours.shape == (batch, 3, IMAGE_SIZE, IMAGE_SIZE)
        np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=1e-4)


def test_swap_rebuilds_the_identity_encoder_the_run_trained_with(demo_run, faces):
    from training.config import load_config
    from training.models.identity import build_identity

    source, targets = faces
    cfg = load_config(demo_run / "config.yaml")
    trained = build_identity(cfg.id_arch, cfg.id_weights, cfg.emap, cfg.use_emap, cfg.allow_random_weights, cfg.seed)
    _, spec = load_generator(demo_run, "cpu")
    rebuilt = load_identity(spec, SwapConfig(checkpoint=demo_run, source=source, target=targets))
    faces_batch = torch.stack([load_face(source, IMAGE_SIZE), load_face(next(targets.glob("*.jpg")), IMAGE_SIZE)])
    with torch.no_grad():
        assert torch.equal(rebuilt(faces_batch), trained(faces_batch))


@pytest.mark.slow
def test_swap_with_given_identity_weights_and_emap(tmp_path, demo_run, faces):
    """--id-weights/--emap replace the recorded encoder: an insightface-layout r50 checkpoint and an emap."""
    from safetensors.torch import save_file

    from training.models import IdentityEncoder, build_iresnet

    source, targets = faces
    torch.manual_seed(0)
    weights, emap = tmp_path / "r50.safetensors", tmp_path / "emap.npy"
    save_file(build_iresnet("r50").state_dict(), str(weights))
    np.save(emap, np.linalg.qr(np.random.default_rng(0).normal(size=(512, 512)))[0].astype(np.float32))
    _, spec = load_generator(demo_run, "cpu")
    given = SwapConfig(checkpoint=demo_run, source=source, target=targets, id_weights=weights, emap=emap)
    reference = IdentityEncoder.from_files("r50", weights, emap)
    recorded = load_identity(spec, SwapConfig(checkpoint=demo_run, source=source, target=targets))
    x = load_face(source, IMAGE_SIZE)[None]
    with torch.no_grad():
        z = load_identity(spec, given)(x)
        assert torch.equal(z, reference(x))
        assert F.cosine_similarity(z, recorded(x)).item() < 0.9  # not the run's own (random tiny) encoder
    out = tmp_path / "swap.png"
    swap.main(["--checkpoint", str(demo_run), "--source", str(source), "--target", str(next(targets.glob("*.jpg"))),
               "--output", str(out), "--id-weights", str(weights), "--emap", str(emap), "--detector", "aligned",
               "--device", "cpu"])  # fmt: skip
    assert Image.open(out).size == (IMAGE_SIZE, IMAGE_SIZE)
