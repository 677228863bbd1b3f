"""The miniature AlphaFace world: synthetic faces with exact truth, where the whole system trains and is
measured on a CPU (`python -m demo.world --out DIR`).

- `draw`:  the faces (demo.synthetic, head-framed, bold expressions), their truth and captions; the
           training split written in the official AlphaFace layout
- `nets`:  the recognisers (the project's IResNet + an ArcFace margin) and the attribute net
- `clip`:  a tiny open_clip model trained on the world's captions
- `judge`: the held-out identities as `swapper.evaluate --protocol pairs` inputs (gallery, truth, masks),
           each row's figures from it, sample grids
- `report`: report.md and report.json
- `run`:   the command: every stage in order, resumable
"""

from typing import Any


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """`python -m demo.world` (demo/world/run.py)."""
    from demo.world.run import main as run

    return run(argv)
