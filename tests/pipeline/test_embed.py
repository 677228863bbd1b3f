"""The embed stage on real shards with a tiny real open_clip model (fixed random weights, offline).

Embeddings are checked against open_clip's own `encode_text`/`encode_image` run here independently;
the Parquet files are read back with pyarrow. Faults are real: a subprocess killed with SIGKILL,
damaged Parquet files, two ranks started at the same moment.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
import open_clip
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.clip_tower import _encode_trimmed, _trimmable, load_clip
from pipeline.dataset import DatasetDir, atomic_write_json, clip_tag
from pipeline.embed import EmbedConfig, default_workers, host_pixels, main, run
from pipeline.prompts import ATTRIBUTES
from pipeline.shards import iter_shard
from tests.pipeline.shard_builders import LONG_CAPTION, TINY_CLIP, jpeg, make_dataset, write_tiny_clip_config

REPO = Path(__file__).resolve().parents[2]
TAG = clip_tag("embed-test-clip.json", "embed-test-clip.pt")
TIMING = ("seconds", "samples_per_second")
F16_ATOL = 2e-3  # float16 has an 11-bit mantissa; unit vectors of dim 32 have entries well under 1

CAPTIONS = [
    ["The person looks left.", "The person looks left.", "", LONG_CAPTION, "Soft light, blue background."],
    ["The person looks left.", "A frontal pose with glasses.", "A frontal pose with glasses."],
]


def _args(ds: DatasetDir, clip: tuple[Path, Path], *extra: str) -> list[str]:
    config, ckpt = clip
    return [
        "--dataset", str(ds.root), "--clip-model", str(config), "--pretrained", str(ckpt),
        "--batch-size", "2", "--workers", "2", "--no-progress", *extra,
    ]  # fmt: skip


def _table(ds: DatasetDir, index: int):
    return pq.read_table(ds.embeddings_path(TAG, index))


def _vectors(table, name: str) -> np.ndarray:
    col = table.column(name).combine_chunks()
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(len(col), -1)


def _snapshot(ds: DatasetDir) -> dict[str, object]:
    """Every embeddings file: Parquet bytes, and stats without the timing fields."""
    snap: dict[str, object] = {}
    for p in sorted(ds.embeddings_dir(TAG).rglob("*")):
        rel = p.relative_to(ds.root).as_posix()
        if p.suffix == ".json":
            snap[rel] = {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING}
        elif p.is_file():
            snap[rel] = p.read_bytes()
    return snap


@pytest.fixture(scope="module")
def reference(tmp_path_factory, embed_clip) -> DatasetDir:
    """Two shards embedded by one uninterrupted in-process run."""
    ds = make_dataset(tmp_path_factory.mktemp("ref") / "ds", CAPTIONS)
    main(_args(ds, embed_clip))
    return ds


def test_equals_open_clip_text_and_image(reference, embed_clip):
    config, ckpt = embed_clip
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms("embed-test-clip", pretrained=str(ckpt))
    model.eval()
    tokenizer = open_clip.get_tokenizer("embed-test-clip")
    for index in range(2):
        samples = list(iter_shard(reference.shard_path("vggface2-hq", index)))
        table = _table(reference, index)
        assert table.column("key").to_pylist() == [s.key for s in samples]
        captions = [json.loads(s.members["json"])["caption"] for s in samples]
        with torch.no_grad():
            text = model.encode_text(tokenizer(captions), normalize=True).numpy()
            pixels = torch.stack([preprocess(Image.open(io.BytesIO(s.members["jpg"]))) for s in samples])
            image = model.encode_image(pixels, normalize=True).numpy()
        np.testing.assert_allclose(_vectors(table, "text_emb"), text, atol=F16_ATOL)
        np.testing.assert_allclose(_vectors(table, "image_emb"), image, atol=F16_ATOL)
        np.testing.assert_allclose(table.column("text_image_sim").to_numpy(), (text * image).sum(-1), atol=F16_ATOL)
        assert table.schema.field("text_emb").type.value_type == "halffloat"
        norms = np.linalg.norm(_vectors(table, "text_emb"), axis=-1)
        np.testing.assert_allclose(norms, 1.0, atol=F16_ATOL)
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["clip_model"] == "embed-test-clip"
    assert meta["clip_pretrained"] == str(ckpt)
    assert meta["clip_tag"] == TAG == "embed-test-clip__embed-test-clip"


@pytest.mark.parametrize(("causal", "precision"), [(True, "fp32"), (True, "bf16"), (False, "fp32")])
def test_texts_run_at_their_own_length_only_where_that_changes_nothing(tmp_path, causal, precision):
    # A causal, end-of-text-pooled text tower (CLIP's) runs each batch at its longest text's length;
    # a bidirectional one pooled at the last position must see the full padded context, and does.
    cfg = json.loads(json.dumps(TINY_CLIP))
    if not causal:
        cfg["text_cfg"].update(no_causal_mask=True, pool_type="last")
    name = f"trim-test-clip-{causal}"
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    clip = load_clip(str(tmp_path / f"{name}.json"), "none", precision=precision)
    # "!?!!" holds token id 0 (which is also the padding id): the batch length must not count ids
    texts = ["", "The person looks left.", LONG_CAPTION, "Soft light from the right, a plain grey wall behind!?!!"]
    tokens = clip.tokenizer(texts)
    with torch.inference_mode():
        raw = clip.model.encode_text(tokens)  # open_clip at the full context, in the model's dtype
        full = torch.nn.functional.normalize(raw.float(), dim=-1)
        # the same batch shape as the call it is compared with: in bf16 the batch size alone moves the last bits
        alone = torch.nn.functional.normalize(clip.model.encode_text(tokens[3:]).float(), dim=-1)
        trimmed = _encode_trimmed(clip.model, tokens[:, :20])[:2]  # the two short texts, at 20 positions
    assert _trimmable(clip.model, clip.tokenizer) is causal
    assert trimmed.dtype == raw.dtype
    # float32: equal up to float rounding; bf16: within a couple of its steps (2**-8), as a change of
    # batch size alone gives there (matrix kernels differ with the row count)
    tol = 1e-5 if precision == "fp32" else 1e-2
    torch.testing.assert_close(clip.encode_text(texts), full, atol=tol, rtol=0)
    torch.testing.assert_close(clip.encode_text(texts[3:]), alone, atol=tol, rtol=0)  # alone: the longest
    if causal:
        torch.testing.assert_close(trimmed.float(), raw[:2].float(), atol=tol, rtol=0)
    else:  # what the guard prevents: dropping padding would change this model's embeddings
        assert (trimmed - raw[:2]).abs().max() > 1e-3


def test_stats_count_dedup_truncation_and_empty(reference):
    stats = json.loads((reference.embeddings_dir(TAG) / "stats" / "000000.json").read_text())
    assert stats["rows"] == 5
    assert stats["unique_captions"] == 4 and stats["texts_encoded"] == 4
    assert stats["truncated"] == 1 and stats["empty_captions"] == 1
    assert stats["caption_tokens"]["max"] > 77
    table = _table(reference, 0)
    assert table.column("text_truncated").to_pylist() == [False, False, False, True, False]
    assert table.column("text_empty").to_pylist() == [False, False, True, False, False]
    t = _vectors(table, "text_emb")
    assert np.array_equal(t[0], t[1])  # one caption, one embedding
    assert np.isfinite(t[2]).all()  # the empty caption has an embedding too


def test_identical_captions_are_encoded_once(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", [["same words"] * 4 + ["other words"] * 2])
    config, ckpt = embed_clip
    cfg = EmbedConfig(dataset=ds.root, clip_model=str(config), pretrained=str(ckpt), batch_size=8, progress=False)
    clip = load_clip(cfg.clip_model, cfg.pretrained)
    encoded: list[int] = []
    clip.model.transformer.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    summary = run(cfg, clip)
    assert summary["done_now"] == 1
    assert sum(encoded) == 2  # the text tower saw 2 captions for 6 samples
    assert json.loads((ds.embeddings_dir(TAG) / "stats" / "000000.json").read_text())["unique_captions"] == 2


def test_truncation_flag_matches_open_clip_tokenizer(tmp_path, embed_clip):
    # "a" is one BPE token: 75 of them plus start and end fill the 77-token context exactly.
    fits, cut = " ".join(["a"] * 75), " ".join(["a"] * 76)
    tok = open_clip.get_tokenizer("ViT-B-32")
    assert not torch.equal(tok([fits]), tok([" ".join(["a"] * 74)]))
    assert torch.equal(tok([cut]), tok([fits]))  # the 76th "a" is lost to truncation
    ds = make_dataset(tmp_path / "ds", [[fits, cut]])
    main(_args(ds, embed_clip))
    assert _table(ds, 0).column("text_truncated").to_pylist() == [False, True]


def test_attributes_are_embedded_per_field(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", [[None] * 4], structured=True)
    main(_args(ds, embed_clip, "--attributes"))
    table = _table(ds, 0)
    clip = load_clip(str(embed_clip[0]), str(embed_clip[1]))
    samples = [json.loads(s.members["json"]) for s in iter_shard(ds.shard_path("vggface2-hq", 0))]
    for name in ATTRIBUTES:
        got = _vectors(table, f"attr_{name}_emb")
        want = clip.encode_text([s["attributes"][name] for s in samples]).numpy()
        np.testing.assert_allclose(got, want, atol=F16_ATOL)
    stats = json.loads((ds.embeddings_dir(TAG) / "stats" / "000000.json").read_text())
    assert stats["attributes"]["head_pose"]["unique"] == 3  # 4 samples cycle through 3 poses
    meta = table.schema.metadata
    assert json.loads(meta[b"attributes"]) == sorted(ATTRIBUTES)


def test_attributes_on_a_holistic_dataset_is_refused(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", [["a caption"]])
    with pytest.raises(SystemExit, match="structured-caption dataset"):
        main(_args(ds, embed_clip, "--attributes"))


def test_uncaptioned_shards_are_skipped_then_done(tmp_path, embed_clip, capsys):
    ds = make_dataset(tmp_path / "ds", [["a"], ["b"], ["c"]], uncaptioned=(1,))
    summary = main(_args(ds, embed_clip))
    assert summary["skipped_not_captioned"] == 1 and summary["done_now"] == 2
    assert "not captioned yet" in capsys.readouterr().err
    assert not ds.embeddings_path(TAG, 1).exists()
    # The caption job finishes shard 1; the same command embeds only that one.
    full = make_dataset(tmp_path / "full", [["a"], ["b"], ["c"]])
    shutil.copy(full.shard_path("vggface2-hq", 1), ds.shard_path("vggface2-hq", 1))
    atomic_write_json(ds.stats_path(1), full.load_stats(1))
    summary = main(_args(ds, embed_clip))
    assert (summary["done_now"], summary["skipped_done"], summary["skipped_not_captioned"]) == (1, 2, 0)


@pytest.mark.parametrize("umask", [0o022, 0o007])
def test_embeddings_and_stats_have_the_mode_the_umask_gives(tmp_path, embed_clip, umask):
    ds = make_dataset(tmp_path / "ds", [["a"], ["b"]])
    old = os.umask(umask)
    try:
        main(_args(ds, embed_clip))
    finally:
        os.umask(old)
    files = [p for p in ds.embeddings_dir(TAG).rglob("*") if p.is_file()]
    assert len(files) >= 5  # two parquet files, their stats, clip.json
    assert {oct(p.stat().st_mode & 0o777) for p in files} == {oct(0o666 & ~umask)}  # not mkstemp's 0600


def test_device_cuda_without_a_gpu_is_one_line(tmp_path, embed_clip, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    ds = make_dataset(tmp_path / "ds", [["a"]])
    with pytest.raises(SystemExit) as e:
        main(_args(ds, embed_clip, "--device", "cuda"))
    lines = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(lines) == 1 and "no CUDA GPU" in lines[0], lines


@pytest.mark.parametrize("damage", ["truncate", "flip", "wrong_tag", "stats_missing"])
def test_damaged_output_is_regenerated(tmp_path, embed_clip, reference, damage):
    ds = DatasetDir(tmp_path / "ds")
    shutil.copytree(reference.root, ds.root)
    path = ds.embeddings_path(TAG, 1)
    data = path.read_bytes()
    if damage == "truncate":  # a partial file, as a non-atomic writer killed mid-write would leave
        path.write_bytes(data[: len(data) // 2])
    elif damage == "flip":  # one flipped byte in text_emb's page data; the file still parses
        chunk = pq.ParquetFile(path).metadata.row_group(0).column(1)
        i = chunk.data_page_offset + chunk.total_compressed_size - 1
        path.write_bytes(data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :])
    elif damage == "wrong_tag":  # another model's file in this folder
        table = pq.read_table(path)
        pq.write_table(table.replace_schema_metadata({**table.schema.metadata, b"clip_tag": b"ViT-B-32__openai"}), path)
    else:
        (ds.embeddings_dir(TAG) / "stats" / "000001.json").unlink()
    summary = main(_args(ds, embed_clip))
    assert (summary["done_now"], summary["skipped_done"]) == (1, 1)
    assert summary["regenerated"] == 1
    assert _snapshot(ds) == _snapshot(reference)


def _launch(ds: DatasetDir, clip: tuple[Path, Path], env: dict[str, str] | None = None) -> subprocess.Popen:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.embed", *_args(ds, clip)],
        cwd=REPO,
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def test_kill_9_then_rerun_is_identical(tmp_path, embed_clip):
    captions = [[f"caption {s} {j % 2}" for j in range(4)] for s in range(16)]
    reference = make_dataset(tmp_path / "ref", captions)
    main(_args(reference, embed_clip))
    ds = make_dataset(tmp_path / "ds", captions)
    proc = _launch(ds, embed_clip)
    first = ds.embeddings_dir(TAG) / "stats" / "000000.json"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert first.exists(), "the first shard should have finished before the kill"
    done = [i for i in range(16) if (ds.embeddings_dir(TAG) / "stats" / f"{i:06d}.json").exists()]
    assert len(done) < 16, "killed too late to test resume"
    summary = main(_args(ds, embed_clip))
    assert summary["skipped_done"] == len(done) and summary["done_now"] == 16 - len(done)
    assert not list(ds.embeddings_dir(TAG).rglob(".*.tmp"))
    assert _snapshot(ds) == _snapshot(reference)


def test_two_ranks_at_once_equal_one(tmp_path, embed_clip, reference):
    ds = DatasetDir(tmp_path / "ds")
    shutil.copytree(reference.root, ds.root, ignore=shutil.ignore_patterns("embeddings"))
    procs = [_launch(ds, embed_clip, {"RANK": str(r), "WORLD_SIZE": "2"}) for r in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()
        summary = json.loads(err.decode().strip().splitlines()[-1])["embed"]
        assert summary["my_shards"] == 1 and summary["done_now"] == 1
    assert _snapshot(ds) == _snapshot(reference)


def test_unsafe_tar_member_is_refused(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", [["a", "b"]])
    shard = ds.shard_path("vggface2-hq", 0)
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("../evil.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"bad"))
    with pytest.raises(SystemExit, match="unsafe or malformed tar member"):
        main(_args(ds, embed_clip))
    assert not ds.embeddings_path(TAG, 0).exists()


def test_hub_tag_not_cached_says_how_to_get_it(tmp_path, monkeypatch):
    import huggingface_hub.constants as hf

    monkeypatch.setattr(hf, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    ds = make_dataset(tmp_path / "ds", [["a"]])
    with pytest.raises(SystemExit, match="not in the local cache") as e:
        main(["--dataset", str(ds.root), "--clip-model", "ViT-B-32", "--pretrained", "openai", "--no-progress"])
    assert "--pretrained" in str(e.value) and "HF_HUB_OFFLINE" in str(e.value)
    with pytest.raises(SystemExit, match="neither an open_clip tag"):
        main(["--dataset", str(ds.root), "--clip-model", "ViT-B-32", "--pretrained", "no-such-tag", "--no-progress"])


def test_config_checks():
    with pytest.raises(ValueError, match="precision"):
        EmbedConfig(dataset=Path("x"), precision="fp8")
    with pytest.raises(ValueError, match="batch-size"):
        EmbedConfig(dataset=Path("x"), batch_size=0)
    with pytest.raises(ValueError, match="no such model-config"):
        EmbedConfig(dataset=Path("x"), clip_model="missing.json")


def test_a_shard_where_every_input_failed_gets_an_empty_file(tmp_path, embed_clip):
    ds = make_dataset(tmp_path / "ds", [[], ["a"]])
    summary = main(_args(ds, embed_clip))
    assert summary["done_now"] == 2
    table = _table(ds, 0)
    assert table.num_rows == 0 and table.schema.field("text_emb").type.list_size == 32
    assert main(_args(ds, embed_clip))["skipped_done"] == 2


# ---------------------------------------------------------------- image decoding (docs: bench/README.md, embed)


def _image_reference(ds: DatasetDir, clip: tuple[Path, Path], index: int, draft: bool) -> np.ndarray:
    """open_clip's own encode_image of the shard's images: PIL's full decode, or libjpeg's DCT-scaled one."""
    config, ckpt = clip
    open_clip.add_model_config(config)
    model, _, preprocess = open_clip.create_model_and_transforms("embed-test-clip", pretrained=str(ckpt))
    model.eval()
    pixels = []
    for s in iter_shard(ds.shard_path("vggface2-hq", index)):
        img = Image.open(io.BytesIO(s.members["jpg"]))
        if draft:
            img.draft("RGB", (64, 64))  # the tiny model's input side
        pixels.append(preprocess(img))
    with torch.no_grad():
        return model.encode_image(torch.stack(pixels), normalize=True).numpy()


def test_host_and_device_split_is_open_clips_transform_bit_for_bit(tmp_path):
    # uint8 on the host, ToTensor + Normalize on the device, batched: the same float32 operations in the same order
    clip = load_clip(str(write_tiny_clip_config(tmp_path / "split-clip.json")), "none")
    prep = clip.image_prep()
    assert prep.geometry is not None and prep.input_size == 64
    rgb = Image.open(io.BytesIO(jpeg(3, 150)))
    gray = rgb.convert("L")  # converted to RGB by the host part, as open_clip does
    wide = rgb.resize((150, 90))  # shortest side, then the centre crop
    for img in (rgb, gray, wide):
        host = prep.host(img)
        assert host.dtype == torch.uint8 and host.shape == (64, 64, 3)
        assert torch.equal(prep.normalise(host[None]), clip.preprocess(img)[None])


def test_draft_decoding_shrinks_large_jpegs_only_and_stays_close(tmp_path):
    clip = load_clip(str(write_tiny_clip_config(tmp_path / "draft-clip.json")), "none")
    prep = clip.image_prep()
    small, large = jpeg(5, 80), jpeg(5, 160)
    # 80 px cannot halve without going below 64: draft changes nothing there
    assert torch.equal(host_pixels(small, prep, draft=True), host_pixels(small, prep, draft=False))
    draft, full = host_pixels(large, prep, draft=True), host_pixels(large, prep, draft=False)
    assert not torch.equal(draft, full)  # decoded at 80 px, not 160: other pixels
    assert (draft.float() - full.float()).abs().mean() < 3  # grey levels: the same picture
    with Image.open(io.BytesIO(large)) as img:
        img.draft("RGB", (64, 64))
        assert img.size == (80, 80)  # the DCT scale stops at the model's side, never below


def test_decoding_is_recorded_and_a_dataset_never_mixes_two(tmp_path, embed_clip):
    captions = [["a", "b", "c"], ["d", "e"]]
    ds = make_dataset(tmp_path / "ds", captions, image_size=160)  # large enough for a DCT scale of 1/2
    summary = main(_args(ds, embed_clip, "--image-decode", "full"))
    assert summary["image_decode"] == "full"
    meta = _table(ds, 0).schema.metadata
    assert meta[b"image_decode"] == b"full"
    np.testing.assert_allclose(_vectors(_table(ds, 0), "image_emb"), _image_reference(ds, embed_clip, 0, False),
                               atol=F16_ATOL)  # fmt: skip
    full = _snapshot(ds)
    # another decoding on a dataset with finished shards is refused, before anything is written
    with pytest.raises(SystemExit, match=r"embedded with --image-decode full .*asks for draft.*never mixes"):
        main(_args(ds, embed_clip, "--image-decode", "draft"))
    # auto (the default) follows the finished shards: a lost shard comes back as it was
    ds.embeddings_path(TAG, 1).unlink()
    summary = main(_args(ds, embed_clip))
    assert summary["image_decode"] == "full" and summary["done_now"] == 1
    assert _snapshot(ds) == full
    # files from before the field was written were decoded in full
    path = ds.embeddings_path(TAG, 0)
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({k: v for k, v in meta.items() if k != b"image_decode"}), path)
    with pytest.raises(SystemExit, match=r"000000.parquet: full"):
        main(_args(ds, embed_clip, "--image-decode", "draft"))

    # a new dataset: auto means draft, recorded, and each image is open_clip's on the DCT-scaled decode
    fresh = make_dataset(tmp_path / "fresh", captions, image_size=160)
    summary = main(_args(fresh, embed_clip))
    assert summary["image_decode"] == "draft"
    assert _table(fresh, 1).schema.metadata[b"image_decode"] == b"draft"
    assert json.loads((fresh.embeddings_dir(TAG) / "stats" / "000001.json").read_text())["image_decode"] == "draft"
    for index in range(2):
        got = _vectors(_table(fresh, index), "image_emb")
        np.testing.assert_allclose(got, _image_reference(fresh, embed_clip, index, True), atol=F16_ATOL)
        assert np.abs(got - _vectors(_table(ds, index), "image_emb")).max() > F16_ATOL  # not the full decode


def test_device_decoding_on_the_cpu_is_close_to_pillows(tmp_path, embed_clip):
    # torchvision's decode_jpeg and tensor resize: the CUDA path's code, run on the CPU
    ds = make_dataset(tmp_path / "ds", [["a", "b", "c"]], image_size=160)
    assert main(_args(ds, embed_clip, "--image-decode", "device"))["image_decode"] == "device"
    table = _table(ds, 0)
    assert table.schema.metadata[b"image_decode"] == b"device"
    got, full = _vectors(table, "image_emb"), _image_reference(ds, embed_clip, 0, False)
    assert ((got * full).sum(-1) > 0.999).all()  # the same pictures, resized by another implementation


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_nvjpeg_decoding_matches_the_cpu_decode(tmp_path):
    from pipeline.embed import device_pixels

    clip = load_clip(str(write_tiny_clip_config(tmp_path / "gpu-clip.json")), "none")
    prep = clip.image_prep()
    data = [torch.frombuffer(bytearray(jpeg(i, 160)), dtype=torch.uint8) for i in range(4)]
    gpu = device_pixels(data, prep, torch.device("cuda")).cpu()
    cpu = device_pixels(data, prep, torch.device("cpu"))
    assert gpu.shape == cpu.shape == (4, 64, 64, 3)
    assert (gpu.float() - cpu.float()).abs().mean() < 2  # nvJPEG's IDCT is not libjpeg-turbo's, bit for bit


def test_decode_workers_default_to_this_process_cores(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(12)))  # e.g. a Slurm allotment
    assert default_workers({}) == 12
    assert default_workers({"LOCAL_WORLD_SIZE": "4"}) == 3  # torchrun: the node's processes share them
    assert default_workers({"LOCAL_WORLD_SIZE": "16"}) == 1
    assert EmbedConfig(dataset=Path("x")).workers is None
    with pytest.raises(ValueError, match="image-decode"):
        EmbedConfig(dataset=Path("x"), image_decode="gpu")
