"""bench/gpu.sh's dry run: every GPU bench's code path at toy size on the CPU, one JSON line each."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHON": sys.executable, **(env or {})}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], capture_output=True, text=True, env=env)


@pytest.mark.slow  # 77 s on the 2-core VM: every bench at toy size (make test-all, and before a GPU session)
def test_the_dry_run_writes_one_json_line_per_bench(tmp_path):
    proc = _run("--dry-run", "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(x) for x in (tmp_path / "out" / "all.jsonl").read_text().splitlines()]
    names = {"generator", "embed", "embed_device_decode", "train_step", "swap"}
    assert {p.stem for p in (tmp_path / "out").glob("*.json")} == names
    assert len(lines) == len(names) and not [x for x in lines if "error" in x]
    scripts = {"embed_device_decode": "embed"}
    for name in names:  # each file holds its own bench's line
        assert json.loads((tmp_path / "out" / f"{name}.json").read_text())["bench"] == scripts.get(name, name)
    steady = json.loads((tmp_path / "out" / "train_step.json").read_text())["steady"][0]
    assert steady["fits"] and steady["seconds_per_step"] > 0 and steady["tflop_per_step"] > 0
    gen = json.loads((tmp_path / "out" / "generator.json").read_text())
    assert gen["device_dry_run"]["sweep"] and gen["checks"]["official_gmac_within_3pct"]
    device = json.loads((tmp_path / "out" / "embed_device_decode.json").read_text())
    assert device["image_decode"] == "device"


def test_a_failing_bench_is_a_line_with_its_error_and_the_rest_still_run(tmp_path):
    # a python that cannot run the benches: every bench fails, each leaves its error line, exit non-zero
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/sh\ncase "$1" in -c) exec {sys.executable} "$@";; esac\nexit 3\n')
    fake.chmod(0o755)
    proc = _run("--dry-run", "--out", str(tmp_path / "out"), env={"PYTHON": str(fake)})
    assert proc.returncode != 0
    lines = [json.loads(x) for x in (tmp_path / "out" / "all.jsonl").read_text().splitlines()]
    assert len(lines) == 5 and all(x["error"].startswith("exit status 3") for x in lines)


def test_missing_packages_without_wheels_is_one_line_and_exit_2(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nexit 1\n")  # every import check fails
    fake.chmod(0o755)
    proc = _run("--out", str(tmp_path / "out"), "--wheels", str(tmp_path / "none"), env={"PYTHON": str(fake)})
    assert proc.returncode == 2
    assert "no wheels in" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
