"""The miniature world at a reduced size: the trained swapper moves the identity and keeps the pose, on
held-out identities, and the broken control (identity weight 0) fails. Slow: `make test-all`.

The margins come from measured runs of exactly this test's sizes with seeds 0 and 1 (13-14 minutes on the
2-core VM). Judged by swapper.evaluate (8-bit swaps): source ID top-1 15.1% / 17.7% against copy-target's 1.6%;
yaw error 17.0 / 16.7 degrees against copy-source's 39.1; the identity-weight-0 control 2.1% / 2.6% (the
judge before it, on float swaps, gave the same ID figures and yaw 15.7 / 15.4 against 38.6). Each margin
keeps about half the measured gap.
"""

from __future__ import annotations

import json

import pytest

from demo.world.run import main

ID_MARGIN = 0.07  # source top-1 above copy-target's (measured: +13.5 and +16.1 points)
YAW_MARGIN = 12.0  # degrees below copy-source's yaw error (measured: 22.1 and 22.4 below)
BROKEN_ID_MAX = 0.07  # the control's source top-1 stays near copy-target's (measured: 2.1% and 2.6%)

SMALL = [
    "--train-ids", "80", "--train-per-id", "12", "--heldout-ids", "24", "--heldout-per-id", "8",
    "--id-steps", "150", "--judge-steps", "150", "--attr-steps", "150", "--clip-steps", "60",
    "--warm-steps", "200", "--steps", "100", "--pairs", "192", "--variants", "full", "id_weight_0",
    "--seeds", "0", "1", "--no-progress",
]  # fmt: skip


@pytest.mark.slow
def test_the_world_learns_a_swap_and_the_broken_control_fails(tmp_path):
    report = main(["--out", str(tmp_path), *SMALL])
    source, target = report["baseline:source"], report["baseline:target"]
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert set(on_disk) >= {"baseline:source", "baseline:target", "full", "id_weight_0", "seconds"}
    for seed, full in report["full"]["seeds"].items():
        broken = report["id_weight_0"]["seeds"][seed]
        assert full["id_top1"] > target["id_top1"] + ID_MARGIN, (seed, full, target)  # the identity moved
        assert full["yaw_err"] < source["yaw_err"] - YAW_MARGIN, (seed, full, source)  # the pose stayed
        assert broken["id_top1"] < BROKEN_ID_MAX, (seed, broken)  # without the identity term it does not move
    assert (tmp_path / "report.md").read_text().count("|") > 50 and (tmp_path / "grid_full_s0.png").is_file()
