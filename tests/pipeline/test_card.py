"""Dataset cards rendered from real runs: the card parses with huggingface_hub and states the run's numbers.

Expected figures are recomputed here from the shards themselves (captions, flags, attributes) and
from the embeddings Parquet, not taken from the code under test.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from huggingface_hub import DatasetCard
from PIL import Image

from pipeline.card import main, render_card
from pipeline.dataset import DatasetDir
from pipeline.prompts import ATTRIBUTES, PROMPTS
from tests.pipeline.caption_builders import (
    CLIP_TAG,
    MODEL,
    copy_dataset,
    make_dataset,
    shard_metadata,
    stats_files,
)

SECTIONS = [
    "## Summary",
    "### Intended use",
    "## How the captions were made",
    "## Statistics",
    "## Data format",
    "## Limitations and risks",
    "## Licences and terms",
    "## Citation",
]


def _row(text: str, *cells: str) -> bool:
    """Whether the card has a table row with exactly these cells."""
    return f"| {' | '.join(cells)} |" in text.splitlines()


def _value(text: str, label: str) -> str:
    m = re.search(rf"^\| {re.escape(label)} \| (.+?) \|$", text, re.M)
    assert m, f"no table row {label!r} in the card"
    return m.group(1)


def _pct(n: int, total: int) -> str:
    return f"{100 * n / total:.1f}%"


def _assets_ok(card_text: str, folder: Path) -> list[str]:
    refs = re.findall(r"!\[[^\]]*\]\((assets/[^)]+\.png)\)", card_text)
    for ref in refs:
        with Image.open(folder / ref) as img:
            assert img.format == "PNG" and img.width > 100
    return sorted(Path(r).name for r in refs)


def test_card_parses_and_its_numbers_match_the_run(vgg, tmp_path):
    out = tmp_path / "card" / "README.md"
    summary = main(["--dataset", str(vgg), "--out", str(out), "--repo-id", "someone/faces"])
    card = DatasetCard.load(out)
    meta = card.data.to_dict()
    assert meta["license"] == "other" and meta["license_name"] == "vggface2-terms"
    assert meta["license_link"].startswith("https://")
    assert meta["annotations_creators"] == ["machine-generated"]
    assert any("VGGFace2" in s for s in meta["source_datasets"])
    assert "image-to-text" in meta["task_categories"] and "face-swapping" in meta["tags"]
    assert meta["size_categories"] == ["n<1K"]
    assert "VGGFace2-HQ" in meta["pretty_name"] and "holistic-v1" in meta["pretty_name"]
    assert meta["configs"] == [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*.parquet"}]}]
    assert "extra_gated_prompt" not in meta  # annotation-only: nothing to gate
    text = card.text
    assert all(s in text.splitlines() for s in SECTIONS)
    assert "${" not in text and "pose-robust face swapping" in text

    # counts: from the stats files, and the shards themselves
    stats, metas = stats_files(vgg), shard_metadata(vgg)
    assert len(metas) == sum(s["ok"] for s in stats) == 8
    assert _value(text, "Samples") == "8" and _value(text, "Inputs") == "9"
    assert _value(text, "Failed") == "1 (11.1%)" and _row(text, "`not_an_image`", "1")
    assert _value(text, "Shards") == "3" and _value(text, "Identities") == "2"
    flags = Counter(f for m in metas for f, raised in m["flags"].items() if raised)
    assert flags == {"truncated": 2, "identity_words": 2}  # the canned answers, cycled over 8 images
    for flag, n in flags.items():
        assert _row(text, f"`{flag}`", str(n), _pct(n, 8))
    words = sorted(len(m["caption"].split()) for m in metas)
    mean = round(sum(words) / len(words), 3)
    assert _row(text, str(mean), str(words[0]), str(words[4]), str(words[7]), str(words[-1]))
    assert summary["samples"] == 8 and summary["failed"] == 1

    # CLIP truncation, from the embeddings Parquet
    ds = DatasetDir(vgg)
    truncated = sum(
        sum(pq.read_table(p).column("text_truncated").to_pylist())
        for p in ds.embeddings_dir(CLIP_TAG).glob("*.parquet")
    )
    assert truncated == 2  # the ~100-word canned caption, twice
    row = next(line for line in text.splitlines() if line.startswith(f"| `{CLIP_TAG}` |"))
    assert f"| {truncated} ({_pct(truncated, 8)}) |" in row and "| 16 | 8 |" in row

    # how the captions were made
    assert PROMPTS["holistic"].text in text and "`holistic-v1`" in text
    assert _value(text, "Model") == f"`{MODEL}`" and _value(text, "Engine") == "canned 1.2.3"
    assert _value(text, "Decoding") == "greedy, at most 96 new tokens"
    assert "448x448" in _value(text, "Image size and tiling")

    # data format and citations
    assert f"`{CLIP_TAG}__text_emb`" in text and 'load_dataset("someone/faces", split="train")' in text
    for cite in ("arXiv:2601.16429", "arXiv:2504.10479", "VGGFace2: A Dataset", "Transferable Visual Models"):
        assert cite in text
    assert _assets_ok(text, out.parent) == ["caption_words.png", "clip_similarity.png", "outcomes.png"]


def test_structured_card_shows_attribute_distributions(celeba, tmp_path):
    out = tmp_path / "README.md"
    main(["--dataset", str(celeba), "--out", str(out)])
    card = DatasetCard.load(out)
    meta, text = card.data.to_dict(), card.text
    assert meta["license_name"] == "celeba-terms" and "CelebAMask-HQ" in meta["source_datasets"]
    assert "non-commercial" in text and "MaskGAN" in text and "Progressive Growing" in text
    assert PROMPTS["structured"].text in text and '"additionalProperties": false' in text
    metas = shard_metadata(celeba)
    assert _value(text, "Samples with a mask") == str(len(metas)) == "4"
    assert _value(text, "Masks").startswith("a CelebAMask-HQ label map") and "13 hair" in _value(text, "Masks")
    for attribute in ATTRIBUTES:
        counts = Counter(m["attributes"][attribute].lower() for m in metas)
        section = text.split(f"**{attribute}**", 1)[1]
        for value, n in counts.items():
            assert _row(section, value, str(n)), (attribute, value)
    assert f"`{CLIP_TAG}__attr_head_pose_emb`" in text
    assert "attributes.png" in _assets_ok(text, out.parent)


def test_template_by_source_and_clear_placeholder_errors(tmp_path):
    ds = make_dataset(tmp_path / "folder", source="folder", layout="vggface2-hq", per_identity=2, broken=0)
    text = render_card(ds)  # no assets_dir: no plots, no files written
    meta = DatasetCard(text).data.to_dict()
    assert meta["license_name"] == "source-terms-unknown" and "Edit this card before publishing" in text
    assert not (ds / "README.md").exists() and not (ds / "assets").exists()

    template = tmp_path / "custom.md"
    template.write_text("---\nlicense: other\npretty_name: ${pretty_name}\n---\nCost: $$0, ${num_samples} samples\n")
    text = render_card(ds, template=template)
    assert text.endswith("Cost: $0, 4 samples\n")
    template.write_text("---\nlicense: other\n---\n${nope}\n")
    with pytest.raises(SystemExit, match=r"unknown placeholder \$nope"):
        main(["--dataset", str(ds), "--template", str(template)])
    assert not (ds / "README.md").exists()


def test_card_refuses_an_unfinished_run_or_missing_embeddings(vgg, tmp_path):
    broken = copy_dataset(vgg, tmp_path / "a")
    DatasetDir(broken).embeddings_path(CLIP_TAG, 1).unlink()
    with pytest.raises(SystemExit, match=rf"embeddings/{CLIP_TAG} lacks 1 of 3 shards \(000001\)"):
        main(["--dataset", str(broken)])
    DatasetDir(broken).stats_path(2).unlink()
    with pytest.raises(SystemExit, match=r"1 of 3 shards are not finished .*000002"):
        main(["--dataset", str(broken)])
    assert not (broken / "README.md").exists()


def test_image_release_card_is_marked_gated(vgg, tmp_path):
    text = render_card(vgg, include_images=True, repo_id="someone/faces", assets_dir=tmp_path / "assets")
    card = DatasetCard(text)
    meta = card.data.to_dict()
    assert meta["configs"][0]["data_files"] == [{"split": "train", "path": "data/*.tar"}]
    assert "non-commercial" in meta["extra_gated_prompt"]
    assert "private or gated" in card.text and "redistributes images" in card.text


def test_a_card_of_the_built_in_synthetic_faces_says_so_and_names_no_local_path(tmp_path, tiny_internvl):
    from tests.pipeline.caption_builders import embed, write_tiny_clip

    ds = make_dataset(tmp_path, synthetic=True)
    embed(ds, write_tiny_clip(tmp_path / "clip"))
    card = render_card(ds)
    head = DatasetCard(card).data.to_dict()
    assert head["license"] == "apache-2.0" and "synthetic" in head["tags"]
    assert "**Synthetic data.**" in card and "No image shows a real" in card
    assert "did not consent" not in card and "VGGFace2 over-represents" not in card
    # a model given as a local path is named by its folder, never by this machine's path
    shutil.copytree(ds, tmp_path / "local", ignore=shutil.ignore_patterns("README.md", "assets"))
    for path in DatasetDir(tmp_path / "local").stats_dir.glob("*.json"):
        stats = json.loads(path.read_text())
        stats["engine"]["model"] = str(tiny_internvl)
        path.write_text(json.dumps(stats))
    card = render_card(tmp_path / "local")
    assert str(tiny_internvl) not in card and str(tmp_path) not in card
    assert "`internvl3-tiny (a local checkpoint)`" in card


def test_the_dataset_folder_loads_with_datasets_as_it_stands(vgg, tmp_path):
    import datasets

    ds = copy_dataset(vgg, tmp_path / "ds")
    main(["--dataset", str(ds)])
    loaded = datasets.load_dataset(str(ds), split="train")
    expected = {m["key"]: m for m in shard_metadata(ds)}
    assert sorted(loaded["__key__"]) == sorted(expected)
    row = loaded[0]
    assert row["json"]["caption"] == expected[row["__key__"]]["caption"] and row["jpg"].size == (48, 48)
