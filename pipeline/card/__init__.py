"""Dataset cards (docs/design.md §8): README.md rendered from a dataset's own stats, with plots in assets/.

    python -m pipeline.card --dataset DATASET [--out FILE] [--repo-id USER/NAME] [--include-images]

    stats/ + embeddings/ (facts.py) -> plots (plots.py) -> sections (sections.py)
        -> template (data_cards/*.md, render.py) -> README.md (command.py)

`pipeline.publish` renders the same card with `render_card`.
"""

from pipeline.card.command import CardConfig, main, run
from pipeline.card.facts import IncompleteDataset, dataset_facts, embedding_tags
from pipeline.card.render import TEMPLATES_DIR, render_card, section

__all__ = [
    "TEMPLATES_DIR",
    "CardConfig",
    "IncompleteDataset",
    "dataset_facts",
    "embedding_tags",
    "main",
    "render_card",
    "run",
    "section",
]
