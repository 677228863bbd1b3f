"""The card command: write a dataset's card (README.md) and its plots.

    python -m pipeline.card --dataset DATASET [--out DATASET/README.md] [--repo-id USER/NAME] \
        [--include-images] [--clip-tag TAG ...]
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.card.facts import dataset_facts
from pipeline.card.render import render_card
from pipeline.cli import parse_config, stage_main
from pipeline.dataset import atomic_write_bytes
from pipeline.hub import ASSETS_DIR


@dataclass(frozen=True)
class CardConfig:
    # --- input
    dataset: Path  # a dataset directory written by pipeline.caption (and pipeline.embed)
    clip_tags: tuple[str, ...] = ()  # CLIP tags the card describes; empty: every embeddings/<tag>
    template: Path | None = None  # default: data_cards/<source>.md, else data_cards/generic.md
    # --- what the card describes
    repo_id: str | None = None  # shown in the loading example; default USER/<dataset name>
    include_images: bool = False  # the layout with WebDataset tars (publish --include-images)
    # --- output
    out: Path | None = None  # default: DATASET/README.md; plots go to <out's folder>/assets/

    def __post_init__(self) -> None:
        if self.template is not None and not Path(self.template).is_file():
            raise ValueError(f"--template {self.template}: no such file")
        if self.repo_id is not None and self.repo_id.count("/") != 1:
            raise ValueError(f"--repo-id must look like USER/NAME, not {self.repo_id!r}")

    @property
    def out_path(self) -> Path:
        return Path(self.out) if self.out is not None else Path(self.dataset) / "README.md"


def run(cfg: CardConfig) -> dict[str, Any]:
    """Render the card and its plots. Returns where they went and the headline numbers."""
    out = cfg.out_path
    facts = dataset_facts(cfg.dataset, list(cfg.clip_tags) or None)
    assets = out.parent / ASSETS_DIR
    text = render_card(
        cfg.dataset,
        include_images=cfg.include_images,
        repo_id=cfg.repo_id,
        assets_dir=assets,
        template=cfg.template,
        facts=facts,
        local=out.resolve().parent == Path(cfg.dataset).resolve(),  # the dataset's own card loads it as it is
    )
    atomic_write_bytes(out, text.encode("utf-8"))
    return {
        "card": str(out),
        "assets": sorted(str(p) for p in assets.glob("*.png")),
        "samples": facts["samples"],
        "failed": facts["failed_total"],
        "clip_tags": list(facts["clip"]),
    }


def parse_args(argv: list[str] | None = None) -> CardConfig:
    return parse_config("python -m pipeline.card", __doc__, CardConfig, argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return stage_main("pipeline.card", lambda: parse_args(argv), run, (FileNotFoundError, ValueError), "card")


if __name__ == "__main__":
    main()
