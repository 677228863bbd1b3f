"""The official AlphaFace layout (`--source alphaface`) captioned with its own captions (`--engine
existing`), end to end; and the paper's prompt through the stage.

The input (tests/pipeline/alphaface_builders.py) has the odd cases real folders have, in the middle
of the listing, and is spread over several shards. Outputs are read back with webdataset and
`datasets.load_dataset`.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pipeline.caption import CaptionConfig, main, run
from pipeline.card import dataset_facts, render_card
from pipeline.card.sections import captioning_section, statistics_section
from pipeline.dataset import DatasetDir
from pipeline.prompts import PAPER_TEXT
from pipeline.shards import iter_shard
from pipeline.sources import SourceRecord, list_source
from tests.pipeline.caption_builders import HOLISTIC_ANSWERS, CannedEngine

TIMING = ("seconds", "images_per_second")


def _args(inp: Path, out: Path, *extra: str) -> list[str]:
    return ["--source", "alphaface", "--input", str(inp), "--output", str(out), "--engine", "existing",
            "--shard-size", "3", "--batch-size", "2", "--workers", "2", "--no-progress", *extra]  # fmt: skip


def _snapshot(root: Path) -> dict[str, object]:
    """Every output file's bytes, with stats timing fields dropped (they measure the run)."""
    snap: dict[str, object] = {}
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        rel = p.relative_to(root).as_posix()
        if rel.startswith("stats/"):
            snap[rel] = {k: v for k, v in json.loads(p.read_text()).items() if k not in TIMING}
        else:
            snap[rel] = p.read_bytes()
    return snap


@pytest.fixture(scope="module")
def captioned(tmp_path_factory, alphaface_folder) -> Path:
    out = tmp_path_factory.mktemp("alphaface_ds") / "ds"
    summary = main(_args(alphaface_folder.root, out))
    assert summary["done_now"] == summary["num_shards"] == 4  # 10 listed: 9 images and one orphan caption
    return out


def test_alphaface_listing_keeps_orphan_captions_and_skips_hidden_files(alphaface_folder):
    recs = list_source("alphaface", alphaface_folder.root)
    stems = [Path(r.source_path).stem for r in recs]
    assert stems == sorted(alphaface_folder.captions.keys() | alphaface_folder.failures.keys())
    assert stems[3] == "000009"  # the orphan caption sits in the middle, at the path its image would have
    orphan = recs[3]
    assert orphan.caption_path == "txt/000009.txt" and not (alphaface_folder.root / orphan.source_path).exists()
    assert all(r.mask_path == f"mask/{Path(r.source_path).stem}.png" for r in recs if r is not orphan)
    assert next(r for r in recs if r.source_path == "img/000011.png").caption_path is None  # no caption
    assert "000016" not in stems  # a mask alone is not an input
    assert not any("checkpoint" in r.source_path for r in recs)  # img/.ipynb_checkpoints/ is not listed
    assert all(r.identity is None and r.key == f"alphaface_unknown_{Path(r.source_path).stem}" for r in recs)
    assert all(SourceRecord.from_row("alphaface", r.to_row()) == r for r in recs)  # through plan.json
    old_row = ["k", "n1", "n1/a.jpg", None]  # a plan written before caption paths
    assert SourceRecord.from_row("vggface2-hq", old_row) == SourceRecord("k", "vggface2-hq", "n1", "n1/a.jpg")


def test_existing_captions_end_to_end(captioned, alphaface_folder):
    import datasets
    import webdataset as wds

    ds = DatasetDir(captioned)
    urls = sorted(str(p) for p in ds.shards_dir.glob("*.tar"))
    assert len(urls) == 4
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False).decode("pil"))
    got = {Path(s["json"]["source_path"]).stem: s for s in samples}
    assert {k: s["json"]["caption"] for k, s in got.items()} == alphaface_folder.captions
    for stem, s in got.items():
        meta = s["json"]
        assert s["txt"] == meta["caption"]
        assert meta["caption_model"] == "existing:alphaface" and meta["prompt_id"] == "source"
        assert meta["finish_reason"] == "stop" and not meta["flags"]["truncated"]
        assert meta["flags"]["identity_words"] == (stem in alphaface_folder.flagged)
        assert s["jpg"].size == (meta["width"], meta["height"]) == (64, 64)
    # the mask member is the official mask file, byte for byte
    raw = {s.key: s.members for u in urls for s in iter_shard(Path(u))}
    for key, members in raw.items():
        assert members["mask.png"] == alphaface_folder.masks[key.rsplit("_", 1)[1]]

    hf = datasets.load_dataset("webdataset", data_files={"train": urls}, split="train")
    assert hf.num_rows == len(alphaface_folder.captions)
    assert {"jpg", "json", "txt", "mask.png"} <= set(hf.column_names)
    assert sorted(r["caption"] for r in hf["json"]) == sorted(alphaface_folder.captions.values())
    assert all(isinstance(m, Image.Image) for m in hf["mask.png"])

    # every failure counted by reason in the stats and recorded in errors/, once
    stats = [ds.load_stats(i) for i in range(4)]
    errors = [json.loads(line) for i in range(4) for line in ds.errors_path(i).read_text().splitlines()]
    assert {Path(e["path"]).stem: e["reason"] for e in errors} == alphaface_folder.failures
    assert len(errors) == len(alphaface_folder.failures)
    failed: dict[str, int] = {}
    for s in stats:
        for reason, n in s["failed"].items():
            failed[reason] = failed.get(reason, 0) + n
    assert failed == {"caption_empty": 2, "caption_missing": 1, "caption_undecodable": 1, "image_missing": 1}
    assert sum(s["inputs"] for s in stats) == len(alphaface_folder.captions) + len(errors)
    assert all(s["mask_format"] == "region" and s["engine"]["engine"] == "existing" for s in stats)
    assert sum(s["with_mask"] for s in stats) == len(alphaface_folder.captions)
    assert sum(s["flags"].get("identity_words", 0) for s in stats) == len(alphaface_folder.flagged) == 1

    # the card says where the captions came from, and what the masks hold
    facts = dataset_facts(captioned)
    section = captioning_section(facts)
    assert "the source's own (`txt/` files), not generated here" in section
    assert "The prompt, verbatim" not in section and "Decoding" not in section
    assert "a binary region" in statistics_section(facts, {})
    assert "the source's own captions" in render_card(captioned)


def test_existing_captions_resume_to_the_same_bytes(tmp_path, captioned, alphaface_folder):
    out = tmp_path / "ds"
    shutil.copytree(captioned, out)
    ds = DatasetDir(out)
    ds.stats_path(1).unlink()  # shard 1 (the orphan and two failures) was not finished
    ds.shard_path("alphaface", 2).write_bytes(b"half a tar")  # shard 2 was being rewritten
    ds.stats_path(2).unlink()
    # engine settings decide nothing here, so other values of them still resume this dataset
    summary = main(_args(alphaface_folder.root, out, "--model", "another/model", "--max-new-tokens", "7"))
    assert summary["skipped_done"] == 2 and summary["done_now"] == 2
    assert _snapshot(out) == _snapshot(captioned)


def test_existing_engine_needs_a_source_with_captions(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["--source", "vggface2-hq", "--input", str(tmp_path), "--output", str(tmp_path / "o"),
              "--engine", "existing"])  # fmt: skip
    assert e.value.code == 2 and "--engine existing" in capsys.readouterr().err


def test_folder_source_takes_the_caption_beside_each_image(tmp_path):
    inp = tmp_path / "in"
    for name, caption in (("a", "First caption."), ("b", None), ("c", "Third\ncaption.")):
        (inp / "p1").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (32, 32), (10, 20, 30)).save(inp / "p1" / f"{name}.jpg")
        if caption is not None:
            (inp / "p1" / f"{name}.txt").write_text(caption, encoding="utf-8")
    out = tmp_path / "ds"
    summary = run(CaptionConfig(source="folder", input=inp, output=out, engine="existing", progress=False))
    assert summary["ok"] == 2 and summary["failed"] == 1
    ds = DatasetDir(out)
    metas = [json.loads(s.members["json"]) for s in iter_shard(ds.shard_path("folder", 0))]
    assert {m["source_path"]: m["caption"] for m in metas} == {
        "p1/a.jpg": "First caption.",
        "p1/c.jpg": "Third caption.",
    }
    assert [json.loads(line)["reason"] for line in ds.errors_path(0).read_text().splitlines()] == ["caption_missing"]


def test_paper_prompt_runs_through_the_stage(tmp_path, alphaface_folder):
    class Recording(CannedEngine):
        def generate(self, images, prompt):
            self.prompts.append(prompt.text)
            return super().generate(images, prompt)

    engine = Recording(HOLISTIC_ANSWERS)
    engine.prompts = []
    cfg = CaptionConfig(source="alphaface", input=alphaface_folder.root, output=tmp_path / "ds", engine="transformers",
                        prompt="paper", shard_size=4, batch_size=4, progress=False)  # fmt: skip
    run(cfg, engine=engine)
    assert engine.prompts and set(engine.prompts) == {PAPER_TEXT}
    ds = DatasetDir(tmp_path / "ds")
    stats = [ds.load_stats(i) for i in range(ds.load_plan()["num_shards"])]
    assert {(s["prompt_id"], s["prompt_text"]) for s in stats} == {("paper-v1", PAPER_TEXT)}
    tars = [ds.shard_path("alphaface", i) for i in range(len(stats))]
    metas = [json.loads(s.members["json"]) for tar in tars for s in iter_shard(tar)]
    assert metas and {m["prompt_id"] for m in metas} == {"paper-v1"}
    # a model captions every image, with or without a caption file; only the orphan caption fails
    assert {r for s in stats for r in s["failed"]} == {"image_missing"}


def test_no_caption_at_all_exits_2_with_a_hint(tmp_path, capsys):
    inp = tmp_path / "256_small"
    (inp / "img").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (32, 32), (i * 40, 90, 120)).save(inp / "img" / f"{i:06d}.png")
    with pytest.raises(SystemExit) as e:
        main(_args(inp, tmp_path / "ds"))
    assert e.value.code == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("pipeline.caption: error: nothing was captioned: all 3 inputs failed (caption_missing: 3")
    assert "txt/" in line and "--overwrite" in line
