"""The evaluation stage: any swapper on FF++ (or any aligned pairs), measured the same way.

python -m swapper.evaluate --protocol ffpp|pairs ...     (flags: stage.py; method: docs/evaluation.md)

config.py    EvalConfig: what is evaluated, the protocol, the metric models
swappers.py  a generator (as swapper.swap feeds it), baseline:source, baseline:target
ffpp.py      FF++ pairs, evenly spaced frames, faces from a detector or the landmarks cache
pairs.py     aligned pairs from folders (sorted order or a pairs file)
measure.py   a unit's swaps through the metric models, its part on disk, latency
run.py       the stage: units -> parts -> retrieval, FID and the report
"""

from swapper.evaluate.config import EvalConfig
from swapper.evaluate.measure import write_part
from swapper.evaluate.stage import main, run

__all__ = ["EvalConfig", "main", "run", "write_part"]
