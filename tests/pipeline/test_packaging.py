"""What a `pip install .` user gets: the wheel carries the card templates and the presets, and an installed
`pipeline` renders a card with no repository checkout beside it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.pipeline.caption_builders import copy_dataset

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ("pipeline", "training", "swapper", "data_cards", "pyproject.toml", "README.md")


def test_the_wheel_ships_the_card_templates_and_an_installed_card_command_uses_them(tmp_path, vgg):
    source = tmp_path / "src"
    for name in SHIPPED:  # a clean copy: no build/ or egg-info of the checkout leaks in
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    wheels = tmp_path / "wheels"
    build = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w"]
    subprocess.run([*build, str(wheels)], check=True, capture_output=True, timeout=300)
    (wheel,) = wheels.glob("alphaface-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for template in ("generic.md", "vggface2-hq.md", "celeba-hq.md", "synthetic.md"):
        assert f"data_cards/{template}" in names
    assert "training/configs/alphaface.yaml" in names

    site = tmp_path / "site"
    install = [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)]
    subprocess.run(install, check=True, capture_output=True, timeout=300)
    ds = copy_dataset(vgg, tmp_path / "ds")
    out = tmp_path / "card" / "README.md"
    script = (
        "import json, pipeline, data_cards; from pipeline.card import main; "
        f"s = main(['--dataset', {str(ds)!r}, '--out', {str(out)!r}]); "
        "print(json.dumps({'pipeline': pipeline.__file__, 'cards': data_cards.__file__}))"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's files first, ahead of the editable checkout
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    where = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(Path(p).is_relative_to(site) for p in where.values())  # the installed copy ran, not the checkout
    assert "## Licences and terms" in out.read_text() and "VGGFace2" in out.read_text()
