"""Metric models and helpers for `swapper.evaluate`, one module per model.

    recogniser.py  identity embeddings: CosFace/ArcFace IResNet r50/r100 (arcface_torch layout)
    pose.py        head pose (yaw, pitch, roll) in degrees: HopeNet (ResNet-50, three 66-bin heads)
    expression.py  the 64 expression coefficients of Deep3DFaceRecon's ResNet-50 regressor
    fid.py         Inception-v3 pool features and the Frechet distance
    world.py       `world:PATH`: the synthetic world's recogniser and attribute net (make world)
    retrieval.py   top-k identity retrieval against a gallery, by hand-checkable rules
    report.py      the paper's table, report.md, plots

Every model is `spec -> MetricModel`: `KIND:PATH` loads real weights strictly, `tiny` builds a
seeded random network of the same kind for tests. A model takes face crops in the generator's
framing, `(B, 3, S, S)` in [0, 1], and does its own re-framing and normalisation, so every metric
sees the same pixels whatever the swapper.
"""

from swapper.metrics.common import MetricModel, parse_spec

__all__ = ["MetricModel", "parse_spec"]
