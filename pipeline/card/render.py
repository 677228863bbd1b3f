"""Dataset cards (docs/design.md §8): README.md rendered from a dataset's own stats, with plots in assets/.
The card command is `pipeline.card`; `pipeline.publish` renders the same card with `render_card`.

    stats/ + embeddings/ (facts) -> plots (assets/*.png) -> template (data_cards/*.md) -> README.md

The template is chosen by the plan's source (`data_cards/<source>.md`, else `generic.md`). Its YAML
front matter holds the source's licence terms; the code adds `size_categories`, `configs` (the Hub
layout that `pipeline.publish` stages, so `datasets.load_dataset` works) and, for releases with
images, the gating prompt. `$name` placeholders are filled with `string.Template` (no code runs
from a template); data_cards/README.md lists them. `pipeline.publish` renders the card with the
same `render_card`.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import yaml

import data_cards
from pipeline.card.facts import dataset_facts, size_category
from pipeline.card.plots import write_plots
from pipeline.card.sections import (
    captioning_section,
    data_format_section,
    pct,
    release_notice,
    release_terms,
    statistics_section,
)
from pipeline.dataset import DatasetDir
from pipeline.hub import (
    SourceInfo,
    dataset_features,
    hub_configs,
    published_schema,
    source_info,
)
from pipeline.prompts import SOURCE_PROMPT

TEMPLATES_DIR = Path(data_cards.__file__).resolve().parent  # package data: a wheel install has them too


def template_path(plan: dict[str, Any]) -> Path:
    return TEMPLATES_DIR / source_info(plan).template


def split_front_matter(text: str, where: str) -> tuple[str, str]:
    """A template is `---\\n<yaml>\\n---\\n<markdown>`."""
    if not text.startswith("---\n"):
        raise ValueError(f"{where}: a card template starts with a YAML front matter block (---)")
    end = text.find("\n---\n", 4)
    if end < 0:
        raise ValueError(f"{where}: the YAML front matter is not closed with ---")
    return text[4:end], text[end + 5 :]


def _substitute(text: str, values: dict[str, str], where: str) -> str:
    try:
        return string.Template(text).substitute(values)
    except KeyError as e:
        known = ", ".join(sorted(values))
        raise ValueError(f"{where}: unknown placeholder ${e.args[0]} (known: {known})") from None
    except ValueError as e:  # a lone `$`: write `$$` for a literal dollar sign
        raise ValueError(f"{where}: {e} (write $$ for a literal $)") from None


def card_values(
    facts: dict[str, Any], info: SourceInfo, plots: dict[str, str], include_images: bool, repo_id: str
) -> dict[str, str]:
    """The placeholders a template may use (data_cards/README.md documents them)."""
    model = facts["engines"][0]["model"] if facts["engines"] else "unknown"
    model_short = str(model).split(" (")[0].rstrip("/").split("/")[-1]  # "x (a local checkpoint)" -> "x"
    flagged = facts["flags"].get("identity_words", 0)
    first_clip = next(iter(facts["clip"].values()), None)
    return {
        "pretty_name": f"{info.pretty} face captions ({model_short}, {facts['prompt_id']})",
        "repo_id": repo_id,
        "licence_url": f"https://huggingface.co/datasets/{repo_id}#licences-and-terms",
        "dataset_name": str(facts["name"]),
        "source": facts["source"],
        "source_pretty": info.pretty,
        "split": facts["split"],
        "num_samples": f"{facts['samples']:,}",
        "num_inputs": f"{facts['inputs']:,}",
        "num_shards": f"{facts['num_shards']:,}",
        "num_identities": f"{facts['identities']:,}",
        "caption_model": f"`{model}`",
        "prompt_id": f"`{facts['prompt_id']}`",
        "caption_mode": "structured (one JSON field per attribute)"
        if facts["json_schema"]
        else "the source's own captions"
        if facts["prompt_id"] == SOURCE_PROMPT.prompt_id
        else "holistic free text",
        "clip_models": ", ".join(f"`{c['model']}` (`{c['pretrained']}`)" for c in facts["clip"].values()) or "none",
        "identity_word_share": pct(flagged, facts["samples"]),
        "truncation_share": pct(facts["flags"].get("truncated", 0), facts["samples"]),
        "clip_truncation_share": pct(first_clip["truncated"], first_clip["rows"]) if first_clip else "n/a",
        "release_notice": release_notice(info, include_images),
        "release_terms": release_terms(info, include_images),
        "captioning": captioning_section(facts),
        "statistics": statistics_section(facts, plots),
        "data_format": data_format_section(facts, include_images, repo_id),
    }


def front_matter(
    template_yaml: str,
    values: dict[str, str],
    facts: dict[str, Any],
    include_images: bool,
    features: list[dict[str, Any]],
    where: str,
    local: bool = False,
) -> dict[str, Any]:
    # Values go into the YAML as JSON strings (valid YAML), so no value can change its structure.
    quoted = {k: json.dumps(v, ensure_ascii=False) for k, v in values.items()}
    meta = yaml.safe_load(_substitute(template_yaml, quoted, where)) or {}
    if not isinstance(meta, dict):
        raise ValueError(f"{where}: the front matter must be a YAML mapping")
    meta["size_categories"] = [size_category(facts["samples"])]
    meta["configs"] = hub_configs(include_images, facts["split"], local)
    meta["dataset_info"] = {"config_name": "default", "features": features}
    if include_images:
        meta["extra_gated_prompt"] = (
            f"This repository contains face images from {facts['source_pretty']}, whose terms do not allow public "
            "redistribution. Access is granted for non-commercial research only, under the source dataset's terms "
            "(see the card's Licences and terms section)."
        )
        meta["extra_gated_fields"] = {
            "Name": "text",
            "Affiliation": "text",
            "I will use this data for non-commercial research only and accept the source dataset's terms": "checkbox",
        }
    return meta


def render_card(
    dataset_dir: str | Path,
    *,
    include_images: bool = False,
    clip_tags: list[str] | None = None,
    repo_id: str | None = None,
    assets_dir: Path | None = None,
    template: Path | None = None,
    facts: dict[str, Any] | None = None,
    local: bool = False,
) -> str:
    """The README.md text for a dataset. Plots go to `assets_dir` (shown in the card) when it is given.

    `local`: the card that lives in the dataset directory itself; its `configs` point at `shards/*.tar`,
    so `datasets.load_dataset(DATASET)` reads the directory as it stands (the staged copy publish
    makes points at its own layout)."""
    ds = DatasetDir(Path(dataset_dir))
    plan = ds.load_plan()
    facts = facts if facts is not None else dataset_facts(ds.root, clip_tags)
    plots = write_plots(facts, assets_dir) if assets_dir is not None else {}
    path = template or template_path(plan)
    head, body = split_front_matter(path.read_text(encoding="utf-8"), str(path))
    values = card_values(facts, source_info(plan), plots, include_images, repo_id or f"USER/{facts['name']}")
    structured = list(facts["json_schema"]["required"]) if facts["json_schema"] else None
    schema = published_schema(ds, list(facts["clip"]), 0, structured, facts)
    features = dataset_features(
        schema, include_images or local, structured, str(facts["image_format"]), bool(plan.get("has_masks"))
    )
    meta = front_matter(head, values, facts, include_images, features, str(path), local)
    dumped = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{dumped}---\n{_substitute(body, values, str(path))}"


def section(card: str, heading: str) -> str:
    """The text of one `## heading` section of a rendered card (publish prints the terms from it)."""
    lines = card.splitlines()
    try:
        start = lines.index(f"## {heading}") + 1
    except ValueError:
        return ""
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()
