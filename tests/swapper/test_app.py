"""`python -m swapper.app`, the web page: its handler on the demo run (photo, video, errors, one model load),
and (marked `browser`, `make test-browser`) the page itself in a real headless Chromium."""

from __future__ import annotations

import ast
import io
import logging
import os
import shutil
import time
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from swapper import app
from swapper.swap import Session
from tests.swapper import browser
from tests.swapper.faces import scenes
from tests.swapper.faces.builders import background, decode_video, write_video

REPO = Path(__file__).resolve().parents[2]
DOCS_SCREENSHOT = REPO / "docs" / "app.png"


def handler(demo):
    """The function the page's Swap button calls (what Gradio runs for a click)."""
    return next(f.fn for f in demo.fns.values() if f.api_name == "swap")


def request(demo, source, target_photo=None, target_video=None, checkpoint="", faces="all", reference=None,
            distance=0.6, blend="feather", colour="none"):  # fmt: skip
    """A click on Swap with these inputs (the mtcnn detector, smoothing on)."""
    return handler(demo)(source, target_photo, target_video, checkpoint, "mtcnn", faces, reference, distance, blend,
                         colour, True)  # fmt: skip


@pytest.fixture(scope="module")
def page(demo_run, tmp_path_factory):
    """The Blocks around one Session of the demo run, and its results folder."""
    workdir = tmp_path_factory.mktemp("app")
    cfg = app.AppConfig(checkpoint=str(demo_run), device="cpu")
    return app.build_app(Session(str(demo_run), "mtcnn", "cpu"), cfg, workdir), workdir


@pytest.fixture(scope="module")
def astronaut(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(scenes.astronaut()).save(path)
    return path


def face_region_checks(before: np.ndarray, after: np.ndarray) -> None:
    """The swap changed the face (around the hand-placed points) and nothing far from it."""
    assert after.shape == before.shape
    changed = np.abs(after.astype(int) - before.astype(int)).sum(axis=2) > 0
    hand = scenes.hand_points()  # (5, 2) x, y
    centre, eyes = hand.mean(0), np.linalg.norm(hand[1] - hand[0])
    yy, xx = np.mgrid[: before.shape[0], : before.shape[1]]
    distance = np.hypot(xx - centre[0], yy - centre[1])
    assert changed[distance < eyes].mean() > 0.9  # the face itself changed ...
    assert not changed[distance > 4 * eyes].any()  # ... and nothing far from it
    ys, xs = np.nonzero(changed)
    assert abs(xs.mean() - centre[0]) < eyes and abs(ys.mean() - centre[1]) < eyes


def test_a_photo_is_swapped_in_the_face_only_and_returned_as_png(page, astronaut, demo_run):
    demo, workdir = page
    photo, video, status = request(demo, str(astronaut), str(astronaut), checkpoint=str(demo_run))
    assert video is None and status.startswith("Swapped 1 face in the 512x512 photo")
    assert Path(photo).is_relative_to(workdir)  # the app's own folder
    with Image.open(photo) as out:
        assert out.format == "PNG" and out.size == (512, 512)
        face_region_checks(scenes.astronaut(), np.asarray(out.convert("RGB")))
    mask, _, _ = request(demo, str(astronaut), str(astronaut), checkpoint=str(demo_run), blend="mask", colour="lab")
    assert np.asarray(Image.open(mask)).tobytes() != np.asarray(Image.open(photo)).tobytes()  # the options arrive


def test_refusals_are_messages_on_the_page(page, astronaut, demo_run, tmp_path, monkeypatch, caplog):
    import gradio as gr

    demo, _ = page
    ckpt = str(demo_run)
    wall = tmp_path / "wall.png"
    Image.fromarray(background(300, 200, seed=1)).save(wall)
    broken = tmp_path / "broken.png"
    broken.write_bytes(astronaut.read_bytes()[:3000])
    someone_else = tmp_path / "grace.png"
    scenes.grace_hopper().save(someone_else)
    both = (str(astronaut), str(astronaut))
    cases = [
        ((None, str(astronaut)), {"checkpoint": ckpt}, "Upload a source photo"),
        ((str(astronaut),), {"checkpoint": ckpt}, "Upload a target photo or a target video"),
        ((str(wall), str(astronaut)), {"checkpoint": ckpt}, "The source photo wall.png: no face found"),
        ((str(astronaut), str(wall)), {"checkpoint": ckpt}, "No face was swapped in the target photo: no face found"),
        ((str(astronaut), str(broken)), {"checkpoint": ckpt}, "Cannot read the target photo (broken.png)"),
        (both, {"checkpoint": str(tmp_path / "nowhere")}, "no generator here"),
        (both, {"checkpoint": ckpt, "faces": "second"}, "Face selection 'second'"),
        (both, {"checkpoint": ckpt, "faces": "left:2"}, "no face found, or none that the face selection 'left:2'"),
        (both, {"checkpoint": ckpt, "reference": str(wall)}, "The reference photo wall.png: no face found"),
        (
            both,
            {"checkpoint": ckpt, "reference": str(someone_else), "distance": 0.0},
            "no face within distance 0 of the reference photo's face",
        ),
    ]
    for args, options, message in cases:
        with pytest.raises(gr.Error) as e:
            request(demo, *args, **options)
        assert message in str(e.value.message), (message, e.value.message)
        assert "\n" not in str(e.value.message)
    assert request(demo, *both, checkpoint=ckpt, reference=str(astronaut))[0]  # the same face: within 0.6

    # anything unexpected: logged here with its traceback, one line on the page that does not repeat it
    def broken_swap(*args):
        raise RuntimeError("internal detail")

    monkeypatch.setattr(app, "swap_photo", broken_swap)
    with caplog.at_level(logging.ERROR, "swapper.app"), pytest.raises(gr.Error) as e:
        request(demo, str(astronaut), str(astronaut), checkpoint=ckpt)
    assert e.value.message == "The swap failed (RuntimeError); the server's log has the details."
    assert "internal detail" in caplog.text and "Traceback" in caplog.text


def test_a_video_comes_back_as_h264_mp4_with_every_frame_and_progress(page, demo_run, tmp_path):
    import av

    demo, workdir = page
    source = tmp_path / "me.png"
    Image.fromarray(scenes.astronaut()).save(source)
    head = scenes.astronaut()[:256, 96:352]  # (256, 256, 3): the head, MTCNN finds it
    frames = [np.roll(head, i, axis=1) for i in range(6)]
    clip = tmp_path / "clip.mp4"
    write_video(clip, frames, fps=12, options={"crf": "0", "preset": "ultrafast"})
    calls = []

    def progress(value, desc=None, unit=None):
        calls.append((value, desc, unit))

    fn = handler(demo)
    photo, out, status = fn(str(source), None, str(clip), str(demo_run), "mtcnn", "all", None, 0.6, "feather",
                            "none", True, progress=progress)  # fmt: skip
    assert photo is None and Path(out).is_relative_to(workdir) and out.endswith(".mp4")
    assert status.startswith("Swapped 6 faces in 6 frames (0 without a face)")
    with av.open(out) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    before, after = decode_video(clip), decode_video(Path(out))
    assert len(after) == len(before) == 6
    assert all(np.abs(a.astype(int) - b).mean() > 0.5 for a, b in zip(after, before, strict=True))  # swapped
    assert [c[0] for c in calls] == [(i, 6) for i in range(1, 7)] and calls[0][1:] == ("Swapping frames", "frames")


def test_the_model_loads_once_and_another_checkpoint_once(demo_run, astronaut, tmp_path):
    loads = []

    def factory(checkpoint: str, detector: str) -> Session:
        loads.append((checkpoint, detector))
        return Session(checkpoint, detector, "cpu")

    cfg = app.AppConfig(checkpoint=str(demo_run), device="cpu")
    demo = app.build_app(factory, cfg, tmp_path)
    assert loads == [(str(demo_run), "mtcnn")]  # at start-up, before any request
    for checkpoint in (str(demo_run), str(demo_run) + "/", str(demo_run)):  # the same run, however typed
        request(demo, str(astronaut), str(astronaut), checkpoint=checkpoint)
    assert len(loads) == 1
    final = str(demo_run / "final")  # another checkpoint typed in the page: loaded once, then kept
    for checkpoint in (final, final, str(demo_run)):
        request(demo, str(astronaut), str(astronaut), checkpoint=checkpoint)
    assert loads == [(str(demo_run), "mtcnn"), (final, "mtcnn")]


def test_the_command_line_refuses_in_one_line(tmp_path, capsys):
    for argv, message in [
        (["--checkpoint", str(tmp_path / "nowhere")], "no generator here"),
        (["--checkpoint", "x", "--port", "0"], "--port must be in 1..65535"),
        (["--checkpoint", "x", "--share"], "unrecognized arguments: --share"),  # there is no share link
    ]:
        with pytest.raises(SystemExit) as e:
            app.main(argv)
        assert e.value.code == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("swapper.app: error: ") and message in lines[-1], lines


def test_gradio_is_imported_by_the_app_only_and_only_lazily():
    """The rest of the project runs without gradio: no other module imports it, and the app module only inside
    its functions (an `import swapper.app` costs nothing until the page is built)."""
    found = []
    for path in sorted(p for pkg in ("pipeline", "training", "swapper", "demo") for p in (REPO / pkg).rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        top_level = {id(n) for n in tree.body}
        for node in ast.walk(tree):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            if any(n.split(".")[0] == "gradio" for n in names):
                found.append((path.relative_to(REPO).as_posix(), id(node) in top_level))
    assert found and all(p == "swapper/app.py" for p, _ in found), found
    assert not any(top for _, top in found)  # under TYPE_CHECKING or in a function, never at import


# ---------------------------------------------------------------------------------------------
# The page in a real browser


@pytest.mark.browser
def test_the_page_swaps_a_photo_and_shows_errors_in_a_real_browser(demo_run, tmp_path):
    why = browser.missing_browser()
    if why:
        pytest.skip(why)
    start = time.monotonic()
    photos = tmp_path / "photos"
    photos.mkdir()
    source, target = photos / "source.png", photos / "target.png"
    for path in (source, target):
        Image.fromarray(scenes.astronaut()).save(path)
    server = tmp_path / "server"
    (server / "demo_out" / "world" / "runs").mkdir(parents=True)
    (server / "demo_out" / "world" / "runs" / "full_s0").symlink_to(demo_run)  # the page names it as `make app` does
    args = ["--checkpoint", "demo_out/world/runs/full_s0"]
    with browser.serve(args, server, cwd=server) as (url, log), browser.chromium() as driver:
        urls = []
        browser.open_page(driver, url, "#swap-button")
        browser.upload(driver, "source-photo", source)
        browser.upload(driver, "target-photo", target)
        browser.css(driver, "#swap-button")[0].click()
        src = browser.src_of(driver, "#output-photo img")
        out = Image.open(io.BytesIO(browser.fetch(src)))
        assert out.format == "PNG" and out.size == Image.open(target).size
        face_region_checks(np.asarray(Image.open(target).convert("RGB")), np.asarray(out.convert("RGB")))
        browser.wait(driver, lambda d: "Swapped 1 face" in d.find_element("css selector", "#status").text)
        time.sleep(0.5)  # the <img> paints
        driver.save_screenshot(str(tmp_path / "swap.png"))
        if os.environ.get("UPDATE_DOCS_SCREENSHOT"):  # refresh the picture in docs/ on purpose only
            shutil.copyfile(tmp_path / "swap.png", DOCS_SCREENSHOT)
        assert not browser.error_toasts(driver)
        urls += browser.requested_urls(driver)  # (a page load can fill chromedriver's buffer)

        browser.open_page(driver, url, "#swap-button")  # a fresh page: a target, no source
        browser.upload(driver, "target-photo", target)
        browser.css(driver, "#swap-button")[0].click()
        browser.wait(driver, lambda d: any("Upload a source photo" in t for t in browser.error_toasts(d)), 30)
        driver.save_screenshot(str(tmp_path / "error.png"))
        page_text = driver.page_source
        assert "Traceback" not in page_text and 'File "' not in page_text
        assert not browser.css(driver, "#output-photo img")
        urls += browser.requested_urls(driver)
    assert len(urls) > 10 and all(urllib.parse.urlparse(u).hostname == "127.0.0.1" for u in urls), urls  # offline
    loads = [line for line in log.read_text().splitlines() if "swapper.app: loaded" in line]
    assert len(loads) == 1, log.read_text()  # at start-up, not per request
    print(f"[browser] the whole test took {time.monotonic() - start:.1f} s")
