"""Stage three: publish a captioned dataset to the Hugging Face Hub with a generated card (docs/design.md §8).

    validate (stats, shards, keys, embeddings) -> stage (Hub layout + card) -> upload

    python -m pipeline.publish --dataset DATASET --repo-id USER/NAME [--include-images] [--private] \
        [--stage-dir DIR] [--dry-run] [--revision BRANCH] [--clip-tag TAG ...]

The staged folder (default `DATASET/hub/`) is the repository as it will be on the Hub:

    README.md                       the card (pipeline.card), whose `configs` make load_dataset work
    assets/*.png                    plots shown in the card
    data/<name>-NNNNNN.parquet      default: annotations + CLIP embeddings, one file per shard
    data/<name>-NNNNNN.tar          --include-images: the WebDataset shards (the `default` config) ...
    annotations/<name>-NNNNNN.parquet   ... with the annotations beside them (parquet builder; `datasets`
                                    infers one builder per repo, so they get no config of their own)

Validation reads every shard back and stages into a temporary folder; any problem stops the run with
all problems listed, and removes that folder, so nothing is staged or uploaded. Images are published
only with --include-images; the source's terms are printed, and the repo is private or gated.
The token comes from HF_TOKEN or the saved login, through huggingface_hub; it is never printed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.card import dataset_facts, embedding_tags, render_card, section
from pipeline.cli import parse_config, stage_main
from pipeline.dataset import DatasetDir, atomic_write_bytes, dumps_json
from pipeline.embeddings import EmbeddingsInvalid, read_embeddings
from pipeline.hub import (
    ANNOTATIONS_DIR,
    ASSETS_DIR,
    DATA_DIR,
    annotation_fields,
    embedding_column,
    published_schema,
    source_info,
)
from pipeline.metadata import META_VERSION, upgrade, version_of
from pipeline.shards import ShardSample, UnsafeTarMember, iter_shard, write_shard

MARKER = ".alphaface-stage"  # marks a folder publish made, so only such a folder is ever replaced
DATASET_ENTRIES = ("plan.json", "shards", "stats", "errors", "embeddings", "README.md", ASSETS_DIR)
MAX_PROBLEMS_SHOWN = 20
FILES_SHOWN = 40  # the dry-run plan lists every file up to this many, then a summary per folder


class StepFailed(RuntimeError):
    """An OSError (disk, network, Hub) in one named step of publishing."""

    def __init__(self, step: str, error: OSError) -> None:
        super().__init__(f"{step} failed: {type(error).__name__}: {error}")
        self.step = step


class ValidationFailed(ValueError):
    """The dataset is not fit to publish; `problems` says why, one line each."""

    def __init__(self, dataset: Path, problems: list[str]) -> None:
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        lines = "\n".join(f"  - {p}" for p in shown) + (f"\n  - ... and {more} more" if more > 0 else "")
        super().__init__(
            f"{dataset} failed validation ({len(problems)} problem(s)); nothing was staged or uploaded:\n{lines}"
        )
        self.problems = problems


@dataclass(frozen=True)
class PublishConfig:
    # --- input
    dataset: Path  # a dataset directory written by pipeline.caption (and pipeline.embed)
    repo_id: str  # USER/NAME or ORG/NAME of the Hub dataset repo
    clip_tags: tuple[str, ...] = ()  # CLIP tags to publish; empty: every embeddings/<tag>
    # --- what is released
    include_images: bool = False  # put the WebDataset tars (images) in the repo, which is then private or gated
    private: bool = False  # create the repo private
    revision: str | None = None  # branch to upload to (created if missing); default: main
    template: Path | None = None  # card template; default data_cards/<source>.md
    # --- local
    stage_dir: Path | None = None  # where the Hub layout is built; default DATASET/hub
    dry_run: bool = False  # validate, stage and print the plan; contact nothing

    def __post_init__(self) -> None:
        parts = self.repo_id.split("/")
        if len(parts) != 2 or not all(parts) or any(c.isspace() for c in self.repo_id):
            raise ValueError(f"--repo-id must look like USER/NAME, not {self.repo_id!r}")
        if self.revision is not None and not self.revision.strip():
            raise ValueError("--revision must not be empty")
        if self.template is not None and not Path(self.template).is_file():
            raise ValueError(f"--template {self.template}: no such file")

    @property
    def stage_path(self) -> Path:
        return Path(self.stage_dir) if self.stage_dir is not None else Path(self.dataset) / "hub"


# ---------------------------------------------------------------- validation, part 1: the files exist


def check_files(ds: DatasetDir, plan: dict[str, Any], tags: list[str]) -> list[str]:
    """Cheap checks before reading anything: every shard finished, its tar there, every promised embedding."""
    problems = []
    for i in range(plan["num_shards"]):
        if not ds.is_done(i):
            problems.append(f"shard {i:06d} is not finished (no stats/{i:06d}.json): rerun pipeline.caption")
            continue
        tar = ds.shard_path(plan["name"], i)
        if not tar.is_file():
            problems.append(f"shard {i:06d}: {tar.relative_to(ds.root)} is missing although its stats exist")
        try:
            stats = ds.load_stats(i)
        except ValueError as e:  # a damaged file; the stage writes it atomically, so this is outside damage
            problems.append(f"stats/{i:06d}.json is unreadable: {e}")
            continue
        failed = sum(stats.get("failed", {}).values())
        if "inputs" in stats and stats["inputs"] != stats["ok"] + failed:
            problems.append(f"stats/{i:06d}.json: {stats['inputs']} inputs != {stats['ok']} ok + {failed} failed")
        for tag in tags:
            if not ds.embeddings_path(tag, i).is_file():
                problems.append(
                    f"embeddings/{tag}/{i:06d}.parquet is missing: run `python -m pipeline.embed` for {tag}, "
                    "or leave the tag out with --clip-tag"
                )
    return problems


# ---------------------------------------------------------------- validation, part 2: read back and stage


def _read_shard(
    path: Path, image_ext: str, problems: list[str], where: str
) -> tuple[list[dict[str, Any]], bool] | None:
    """The `.json` metadata of every sample (upgraded to the current format), checking member names, keys
    and member sets, and whether any record was written in an older format."""
    metas: list[dict[str, Any]] = []
    members: set[str] | None = None
    old = False
    try:
        for sample in iter_shard(path):
            exts = set(sample.members)
            if members is None:
                members = exts
            if exts != members:
                problems.append(f"{where}: sample {sample.key} has members {sorted(exts)}, not {sorted(members)}")
            if image_ext not in exts:
                problems.append(f"{where}: sample {sample.key} has no .{image_ext} image")
            if "json" not in exts:
                problems.append(f"{where}: sample {sample.key} has no .json metadata")
                continue
            meta = json.loads(sample.members["json"])
            if meta.get("key") != sample.key:
                problems.append(f"{where}: {sample.key}.json holds key {meta.get('key')!r}")
            old = old or version_of(meta) != META_VERSION
            metas.append(upgrade(meta))
    except (tarfile.TarError, UnsafeTarMember, OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as e:
        problems.append(f"{where}: cannot be read back: {e}")
        return None
    except ValueError as e:  # a record newer than this code
        problems.append(f"{where}: {e}")
        return None
    return metas, old


def _upgraded_shard(src: Path, dst: Path) -> None:
    """Copy a shard whose `.json` members are in an older format, with those members upgraded, so the
    staged tars have one type per field (the `datasets` builder needs that)."""

    def samples() -> Iterator[ShardSample]:
        for sample in iter_shard(src):
            meta = upgrade(json.loads(sample.members["json"]))
            yield ShardSample(sample.key, {**sample.members, "json": dumps_json(meta).encode("utf-8")})

    write_shard(dst, samples())


def _embeddings(
    ds: DatasetDir, tag: str, index: int, keys: list[str], expected: pa.Schema, problems: list[str]
) -> pa.Table | None:
    """One tag's embeddings of one shard, verified by pipeline.embed's reader, in the shard's key order."""

    path = ds.embeddings_path(tag, index)
    where = f"embeddings/{tag}/{index:06d}.parquet"
    try:
        table = read_embeddings(path, tag, rows=len(keys))
    except (EmbeddingsInvalid, FileNotFoundError) as e:
        problems.append(f"{where}: {e}")
        return None
    got = [c for c in table.column_names if c != "key"]
    want = [f.name.removeprefix(f"{tag}__") for f in expected if f.name.startswith(f"{tag}__")]
    if got != want:
        problems.append(f"{where}: columns {got} differ from shard 0's {want} (embedded with other options?)")
        return None
    row_of = {k: r for r, k in enumerate(table.column("key").to_pylist())}
    if len(row_of) != table.num_rows or set(row_of) != set(keys):
        missing = sorted(set(keys) - set(row_of))[:3]
        problems.append(f"{where}: its keys do not match the shard's (e.g. missing {missing}): rerun pipeline.embed")
        return None
    return table.take(pa.array([row_of[k] for k in keys], pa.int64()))


def _annotation_table(
    metas: list[dict[str, Any]], clips: dict[str, pa.Table], schema: pa.Schema, structured: list[str] | None
) -> pa.Table:
    columns: dict[str, Any] = {f.name: [m.get(f.name) for m in metas] for f in annotation_fields(structured)}
    for tag, table in clips.items():
        for name in table.column_names:
            if name != "key":
                columns[embedding_column(tag, name)] = table.column(name)
    return pa.Table.from_pydict(columns, schema=schema)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Shards are immutable once written (replaced, never edited), so a hard link is a safe, free copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def build(
    ds: DatasetDir,
    plan: dict[str, Any],
    tags: list[str],
    facts: dict[str, Any],
    out: Path,
    include_images: bool,
) -> tuple[list[str], int]:
    """Read every shard back and write the Hub layout into `out`. Returns (problems, samples)."""
    problems: list[str] = []
    image_ext = str(facts["image_format"])
    schema_ = facts["json_schema"]
    structured = list(schema_["required"]) if schema_ else None
    try:
        schema = published_schema(ds, tags, 0, structured, facts)
    except (OSError, pa.ArrowException, ValueError) as e:
        return [f"the embeddings of shard 000000 are unreadable: {e}; rerun pipeline.embed"], 0
    parquet_dir = out / (ANNOTATIONS_DIR if include_images else DATA_DIR)
    parquet_dir.mkdir(parents=True, exist_ok=True)
    (out / DATA_DIR).mkdir(parents=True, exist_ok=True)
    seen: dict[str, int] = {}
    total = 0
    for i in range(plan["num_shards"]):
        tar = ds.shard_path(plan["name"], i)
        read = _read_shard(tar, image_ext, problems, f"shard {i:06d} ({tar.name})")
        if read is None:
            continue
        metas, old_format = read
        ok = ds.load_stats(i)["ok"]
        if len(metas) != ok:
            problems.append(f"shard {i:06d}: {tar.name} holds {len(metas)} samples but stats/{i:06d}.json says {ok}")
        keys = [m["key"] for m in metas]
        for key in keys:
            if key in seen:
                problems.append(f"key {key} is duplicated: in shard {seen[key]:06d} and shard {i:06d}")
            else:
                seen[key] = i
        clips = {}
        for tag in tags:
            table = _embeddings(ds, tag, i, keys, schema, problems)
            if table is not None:
                clips[tag] = table
        if problems:
            continue  # keep checking the other shards, but write nothing more
        if not metas:  # every input failed: no rows to add, and `datasets` fails on an empty Parquet file or tar
            continue
        pq.write_table(
            _annotation_table(metas, clips, schema, structured),
            parquet_dir / f"{plan['name']}-{i:06d}.parquet",
            compression="zstd",
        )
        if include_images and old_format:
            _upgraded_shard(tar, out / DATA_DIR / tar.name)
        elif include_images:
            _link_or_copy(tar, out / DATA_DIR / tar.name)
        total += len(metas)
    if not problems and total == 0:
        problems.append("no shard holds a sample: there is nothing to publish")
    return problems, total


# ---------------------------------------------------------------- the staged folder


def check_stage_dir(stage: Path, dataset: Path) -> None:
    """Refuse a stage folder that would overwrite the dataset, or a folder publish did not make."""
    stage_r, root_r = stage.resolve(), dataset.resolve()
    if stage_r == root_r or stage_r in root_r.parents:
        raise ValueError(f"--stage-dir {stage} would hold the dataset itself; choose another folder")
    if root_r in stage_r.parents and stage_r.relative_to(root_r).parts[0] in DATASET_ENTRIES:
        raise ValueError(f"--stage-dir {stage} is inside the dataset's own {stage_r.relative_to(root_r).parts[0]}")
    if stage.exists() and (not stage.is_dir() or (any(stage.iterdir()) and not (stage / MARKER).is_file())):
        raise ValueError(
            f"--stage-dir {stage} exists and was not made by pipeline.publish (no {MARKER}); "
            "it is replaced on every run, so give an empty or new folder"
        )


def replace_stage(new: Path, stage: Path) -> None:
    """Swap the new layout in, carrying over huggingface_hub's upload cache so an upload can resume."""
    if stage.exists():
        cache = stage / ".cache"
        if cache.is_dir():
            os.replace(cache, new / ".cache")
        shutil.rmtree(stage)
    os.replace(new, stage)


def staged_files(stage: Path) -> list[tuple[str, int]]:
    """(path in repo, bytes) of everything that will be uploaded."""
    files = []
    for p in sorted(stage.rglob("*")):
        rel = p.relative_to(stage).as_posix()
        if p.is_file() and rel != MARKER and not rel.startswith(".cache/"):
            files.append((rel, p.stat().st_size))
    return files


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def token_source() -> str:
    """Where huggingface_hub will find a token; the token itself is never read here."""
    from huggingface_hub import constants

    if os.environ.get("HF_TOKEN"):
        return "HF_TOKEN is set"
    if Path(constants.HF_TOKEN_PATH).is_file():
        return "a saved `hf auth login` token exists"
    return "none found: set HF_TOKEN or run `hf auth login` before a real upload"


def format_plan(cfg: PublishConfig, summary: dict[str, Any]) -> str:
    files = summary["files"]
    access = "private" if cfg.private else ("gated (manual approval)" if summary["gated"] else "public")
    lines = [
        f"pipeline.publish: {'DRY RUN, nothing is uploaded' if cfg.dry_run else 'upload plan'}",
        f"  repo:      {cfg.repo_id} (dataset), {access}, revision {cfg.revision or 'main'}",
        f"  release:   {summary['mode']}, {summary['samples']:,} samples",
        f"  staged in: {summary['stage_dir']}",
        f"  upload:    {len(files)} files, {_size(summary['total_bytes'])}",
        f"  token:     {token_source()}",
    ]
    if len(files) <= FILES_SHOWN:
        width = max((len(p) for p, _ in files), default=0)
        lines += [f"    {p:<{width}}  {_size(n):>9}" for p, n in files]
    else:
        folders: dict[str, list[int]] = {}
        for p, n in files:
            folders.setdefault(p.split("/")[0] if "/" in p else ".", []).append(n)
        lines += [f"    {d + '/':<14} {len(ns):>7} files  {_size(sum(ns)):>9}" for d, ns in sorted(folders.items())]
    return "\n".join(lines)


# ---------------------------------------------------------------- upload


@contextlib.contextmanager
def named_step(name: str) -> Iterator[None]:
    """An OSError inside becomes StepFailed naming the step (the Hub, the network, the local disk)."""
    try:
        yield
    except OSError as e:  # Hub and network errors are OSErrors too (offline mode, 401, 403, ...)
        raise StepFailed(name, e) from e


def upload(cfg: PublishConfig, stage: Path, gate: bool) -> None:
    """Create the repo (private, or gated before any image arrives), then upload the staged folder."""
    from huggingface_hub import HfApi

    api = HfApi()
    with named_step(f"upload: creating the repo {cfg.repo_id}"):
        api.create_repo(cfg.repo_id, repo_type="dataset", private=cfg.private, exist_ok=True)
        info = api.repo_info(cfg.repo_id, repo_type="dataset")
    if cfg.private and not info.private:
        raise ValueError(
            f"{cfg.repo_id} already exists and is public, so --private cannot be honoured; "
            "make it private on the Hub first, or publish elsewhere"
        )
    if gate and not info.private and not info.gated:
        with named_step("upload: gating the repo (manual approval)"):
            api.update_repo_settings(cfg.repo_id, repo_type="dataset", gated="manual")
    if cfg.revision:
        with named_step(f"upload: creating the branch {cfg.revision}"):
            api.create_branch(cfg.repo_id, branch=cfg.revision, repo_type="dataset", exist_ok=True)
    common = {"repo_id": cfg.repo_id, "folder_path": stage, "repo_type": "dataset", "revision": cfg.revision}
    with named_step("upload: sending the staged files"):
        if hasattr(api, "upload_large_folder"):  # huggingface_hub < 2: the resumable multi-commit uploader
            api.upload_large_folder(**common, private=cfg.private, ignore_patterns=[MARKER])
        else:  # huggingface_hub >= 2 folded it into upload_folder (streamed, multi-commit, resumable with hf_xet)
            api.upload_folder(**common, ignore_patterns=[MARKER], commit_message=f"Publish {cfg.dataset.name}")


# ---------------------------------------------------------------- the stage


def run(cfg: PublishConfig) -> dict[str, Any]:
    """Validate, stage and (unless dry_run) upload. Returns the plan that was carried out."""
    ds = DatasetDir(Path(cfg.dataset))
    plan = ds.load_plan()
    stage = cfg.stage_path
    check_stage_dir(stage, ds.root)
    tags = embedding_tags(ds, list(cfg.clip_tags) or None)
    problems = check_files(ds, plan, tags)
    if problems:
        raise ValidationFailed(ds.root, problems)
    facts = dataset_facts(ds.root, tags)

    info = source_info(plan)
    restricted = cfg.include_images and not info.images_redistributable
    with named_step(f"staging into {stage} (local disk)"):
        stage.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{stage.name}.", suffix=".tmp", dir=stage.parent))
        try:
            (tmp / MARKER).write_text(json.dumps({"dataset": str(ds.root.resolve())}) + "\n", encoding="utf-8")
            problems, samples = build(ds, plan, tags, facts, tmp, cfg.include_images)
            if problems:
                raise ValidationFailed(ds.root, problems)
            card = render_card(
                ds.root,
                include_images=cfg.include_images,
                clip_tags=tags,
                repo_id=cfg.repo_id,
                assets_dir=tmp / ASSETS_DIR,
                template=cfg.template,
                facts=facts,
            )
            atomic_write_bytes(tmp / "README.md", card.encode("utf-8"))
            replace_stage(tmp, stage)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                shutil.rmtree(tmp)
            raise

    files = staged_files(stage)
    summary: dict[str, Any] = {
        "repo_id": cfg.repo_id,
        "repo_type": "dataset",
        "mode": "images (WebDataset) + annotations" if cfg.include_images else "annotations only",
        "private": cfg.private,
        "gated": restricted and not cfg.private,
        "revision": cfg.revision,
        "stage_dir": str(stage),
        "samples": samples,
        "clip_tags": tags,
        "files": [{"path": p, "bytes": n} for p, n in files],
        "total_bytes": sum(n for _, n in files),
        "uploaded": False,
    }
    if cfg.include_images:
        terms = section(card, "Licences and terms")
        print(f"pipeline.publish: this release includes images from {info.pretty}. Their terms:\n\n{terms}\n")
        if restricted:
            print(
                "pipeline.publish: these images may not be redistributed publicly: the repo is created "
                + ("private." if cfg.private else "gated (manual approval) before any file is uploaded.")
            )
    plan_text = format_plan(cfg, {**summary, "files": files})
    print(plan_text)
    if cfg.dry_run:
        return summary
    upload(cfg, stage, gate=restricted and not cfg.private)
    summary["uploaded"] = True
    print(f"pipeline.publish: uploaded to https://huggingface.co/datasets/{cfg.repo_id}")
    return summary


def parse_args(argv: list[str] | None = None) -> PublishConfig:
    return parse_config("python -m pipeline.publish", __doc__, PublishConfig, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    # ValidationFailed and IncompleteDataset are ValueErrors; StepFailed names the step and never holds the token
    known = (FileNotFoundError, ValueError, StepFailed)
    summary = stage_main("pipeline.publish", lambda: parse_args(argv), lambda cfg: run(cfg), known, "publish")
    return summary


if __name__ == "__main__":
    main()
