"""The web page: swap a face into a photo or a video from a browser, on this machine.

    python -m swapper.app --checkpoint RUN_DIR|hf://USER/NAME [--host 127.0.0.1] [--port 7860] \
        [--device cpu|cuda] [--dtype fp32|bf16] [--compile eager|cuda-graph|...] [--detector mtcnn] [--sessions 2]

    start-up:  --checkpoint -> Session (generator, identity encoder, detector), loaded once
    a request: source photo -> identity ───────────────┐
               target photo | video -> Session.face_swapper -> swap_photo | swap_video -> PNG | H.264 MP4

The page (Gradio) is served on 127.0.0.1: only this machine reaches it (`--host 0.0.0.0` serves the
network); there is never a share link, and nothing on the page reaches the internet (Gradio's
analytics are off; its scripts and fonts come from the app). A checkpoint or detector typed in the
page that is not the loaded one loads another Session once; the `--sessions` most recently used stay
loaded. Bad requests (no source, no face found, an unreadable file, a checkpoint that does not load)
are messages on the page; anything else is logged here with its traceback and shown as one line.
Uploads and results live in a temporary folder the app owns and removes when it stops. Gradio is
imported by this module only, when the page is built (`pip install -e '.[app]'`).
"""

from __future__ import annotations

import atexit
import functools
import html
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from pipeline import cli
from swapper.faces import video
from swapper.faces.blend import BLENDS
from swapper.faces.colour import COLOURS
from swapper.faces.detect import check_faces
from swapper.faces.swapper import FaceOptions, FaceSwapper, Reference
from swapper.images import UNREADABLE, load_face, load_rgb, official_source, official_target, save_image, save_photo
from swapper.swap import DTYPES, Session, swap_photo, swap_video
from training.models.generator import INFERENCE_MODES

if TYPE_CHECKING:
    import gradio as gr
    from PIL import Image

log = logging.getLogger("swapper.app")

DETECTOR_CHOICES = ("mtcnn", "aligned")  # the page's list; scrfd:PATH.onnx and landmarks:FILE.json are typed in
FACE_CHOICES = ("all", "largest", "left:1", "left:2", "left:3")  # and any N or left:N, typed in
RESULTS_KEPT_S = 3600  # results (ours, and Gradio's copies of uploads and results) are removed after an hour


@dataclass(frozen=True)
class AppConfig:
    # --- model
    checkpoint: str  # RUN_DIR, its final/, a generator .safetensors, or a Hub model hf://USER/NAME
    detector: str = "mtcnn"  # mtcnn (no download) | aligned (crops) | scrfd:PATH.onnx | landmarks:FILE.json
    device: str | None = None  # cpu | cuda | auto (default)
    dtype: str = field(default="fp32", metadata={"choices": tuple(sorted(DTYPES))})  # autocast around the generator
    compile: str = field(default="eager", metadata={"choices": INFERENCE_MODES})  # swapper.swap's --compile
    sessions: int = 2  # checkpoints (with their detector) kept loaded; the page can load others
    # --- server
    host: str = "127.0.0.1"  # the address served: 127.0.0.1 is this machine only, 0.0.0.0 the network
    port: int = 7860  # the port served

    def __post_init__(self) -> None:
        if not 1 <= self.port <= 65535:
            raise ValueError(f"--port must be in 1..65535, got {self.port}")
        if self.sessions < 1:
            raise ValueError("--sessions must be >= 1")
        if not self.checkpoint.strip():
            raise ValueError("--checkpoint must name a run, a generator file or a Hub model")


def gradio() -> Any:
    """The gradio module, imported with its analytics off (they would call api.gradio.app)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    try:
        import gradio as gr
    except ImportError:
        raise ImportError("the web page needs gradio: pip install -e '.[app]'") from None
    return gr


# ---------------------------------------------------------------------------------------------
# Loaded models


SessionFactory = Callable[[str, str], Session]  # (checkpoint, detector) -> a loaded Session


def checkpoint_key(checkpoint: str) -> str:
    """One name per checkpoint: a local path resolved (`run` and `./run/` are one), a Hub id as typed."""
    text = checkpoint.strip()
    return os.path.realpath(text) if os.path.exists(text) else text


class Sessions:
    """Loaded Sessions by (checkpoint, detector), the most recently used last; at most `keep` of them."""

    def __init__(self, factory: SessionFactory, keep: int = 2) -> None:
        self.factory, self.keep = factory, keep
        self.loaded: OrderedDict[tuple[str, str], Session] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, checkpoint: str, detector: str) -> Session:
        key = (checkpoint_key(checkpoint), detector.strip())
        with self.lock:
            if key in self.loaded:
                self.loaded.move_to_end(key)
                return self.loaded[key]
            session = load_session(self.factory, checkpoint.strip(), key[1])
            self.add(key, session)
            return session

    def add(self, key: tuple[str, str], session: Session) -> None:
        self.loaded[key] = session
        self.loaded.move_to_end(key)
        while len(self.loaded) > self.keep:
            self.loaded.popitem(last=False)


def load_session(factory: SessionFactory, checkpoint: str, detector: str) -> Session:
    """A Session with everything loaded now (a missing identity encoder is the checkpoint's error, not a swap's)."""
    start = time.perf_counter()
    session = factory(checkpoint, detector)
    session.identity  # noqa: B018  (a cached property: loads the encoder)
    log.info("loaded %s (detector %s) in %.1f s", checkpoint, detector, time.perf_counter() - start)
    return session


def session_factory(cfg: AppConfig) -> SessionFactory:
    def load(checkpoint: str, detector: str) -> Session:
        return Session(checkpoint, detector, cfg.device, cfg.dtype, compile=cfg.compile)

    return load


# ---------------------------------------------------------------------------------------------
# What the Swap button does


class PageError(Exception):
    """A request the page refuses, with the message shown to the user."""


def _photo(path: str, what: str) -> Image.Image:
    try:
        return load_rgb(Path(path))
    except UNREADABLE as e:
        raise PageError(f"Cannot read the {what} ({Path(path).name}): {e}") from None


def _nothing_swapped(swapper: FaceSwapper, what: str) -> str:
    counts, options = swapper.counts, swapper.options
    if counts["faces_not_the_reference"] and swapper.reference is not None:
        why = f"no face within distance {swapper.reference.max_distance:g} of the reference photo's face"
    elif counts["faces_too_small"]:
        why = f"the faces found are smaller than {options.min_face:g} pixels"
    elif options.faces not in ("all", "largest"):
        why = f"no face found, or none that the face selection {options.faces!r} picks"
    else:
        why = "no face found"
    return f"No face was swapped in the {what}: {why}."


class Page:
    """The page's handler over the loaded Sessions: files in, a result file and a status line out."""

    def __init__(self, sessions: Sessions, workdir: Path) -> None:
        self.sessions = sessions
        self.results = Path(workdir) / "results"
        self.results.mkdir(parents=True, exist_ok=True)

    def load(self, checkpoint: str, detector: str) -> Session:
        if not (checkpoint or "").strip():
            raise PageError("Give a checkpoint: a run folder, a generator file or a Hub model hf://USER/NAME.")
        try:
            return self.sessions.get(checkpoint, detector or "mtcnn")
        except (FileNotFoundError, ValueError, ImportError) as e:
            raise PageError(f"Cannot load {checkpoint.strip()} with the detector {detector!r}: {e}") from None

    def result_dir(self) -> Path:
        """A fresh folder for one request's result; results older than RESULTS_KEPT_S go."""
        now = time.time()
        for old in self.results.iterdir():
            if now - old.stat().st_mtime > RESULTS_KEPT_S:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(dir=self.results))

    @torch.no_grad()
    def swap(
        self,
        source: str | None,
        target_photo: str | None,
        target_video: str | None,
        checkpoint: str,
        detector: str,
        faces: str = "all",
        reference: str | None = None,
        distance: float = 0.6,
        blend: str = "feather",
        colour: str = "none",
        smooth: bool = True,
        progress: Callable[..., Any] | None = None,
    ) -> tuple[str | None, str | None, str]:
        """(result photo, result video, status): one of the two is a file under `results`."""
        start = time.perf_counter()
        if not source:
            raise PageError("Upload a source photo: the face to put in.")
        if not target_photo and not target_video:
            raise PageError("Upload a target photo or a target video: where the face goes.")
        if target_photo and target_video:
            raise PageError("Give a target photo or a target video, not both: clear one of them.")
        faces = (faces or "all").strip()
        try:
            check_faces(faces)
        except ValueError:
            raise PageError(f"Face selection {faces!r}: give all, largest, N (the N largest) or left:N.") from None
        session = self.load(checkpoint, detector)
        z = self.identity(session, source)
        if session.detector is None:
            if target_video or reference:
                raise PageError(
                    "The aligned detector takes aligned face crops, one photo at a time: "
                    "pick a detector (mtcnn) for a video or a reference photo."
                )
            out = self.swap_aligned(session, z, target_photo)
            return str(out), None, f"Swapped the aligned crop at {session.size}x{session.size} px in {_since(start)}."
        ref = None
        if reference:  # as Session.reference, with the page's words
            try:
                embedding = session.embed_photo(
                    _photo(reference, "reference photo"), Path(reference).name, "The reference photo"
                )
            except ValueError as e:  # no face in it
                raise PageError(f"{e}: upload a photo with a clear face as the reference.") from None
            ref = Reference(embedding, session.identity, float(distance))
        options = FaceOptions(session.size, faces=faces, blend=blend, colour=colour)
        swapper = session.face_swapper(z, options, ref)
        if target_photo:
            return self.swap_photo(swapper, target_photo, start)
        return self.swap_video(swapper, target_video, bool(smooth), progress, start)

    def identity(self, session: Session, source: str) -> torch.Tensor:
        """(1, D): the source photo's identity embedding (converted official weights: eval.py's source)."""
        official = session.spec.get("preprocess") if session.detector is None else None
        if official:
            try:
                return session.identity.encode(official_source(Path(source), official).to(session.device))
            except UNREADABLE as e:
                raise PageError(f"Cannot read the source photo ({Path(source).name}): {e}") from None
        try:
            return session.embed_photo(_photo(source, "source photo"), Path(source).name, "The source photo")
        except ValueError as e:  # no face in it
            raise PageError(f"{e}: upload a photo with a clear face as the source.") from None

    def swap_aligned(self, session: Session, z: torch.Tensor, target: str) -> Path:
        """An aligned crop in, the swapped crop at the generator's size out (as `swapper.swap --detector aligned`)."""
        official = session.spec.get("preprocess")
        try:
            face = official_target(Path(target), official) if official else load_face(Path(target), session.size)
        except UNREADABLE as e:
            raise PageError(f"Cannot read the target photo ({Path(target).name}): {e}") from None
        swap = session.swap_fn(z)(face[None].to(session.device))[0]  # (3, S, S)
        out = self.result_dir() / f"{Path(target).stem}_swapped.png"
        save_image(swap, out, truncate=official is not None)
        return out

    def swap_photo(self, swapper: FaceSwapper, target: str, start: float) -> tuple[str, None, str]:
        image = _photo(target, "target photo")
        item = swap_photo(swapper, image, Path(target).name)
        if not item.faces:
            raise PageError(_nothing_swapped(swapper, "target photo"))
        out = self.result_dir() / f"{Path(target).stem}_swapped.png"  # PNG: lossless
        save_photo(item.image.image, out)
        status = (
            f"Swapped {_count(len(item.faces), 'face')} in the {image.width}x{image.height} photo in {_since(start)}."
        )
        return str(out), None, status

    def swap_video(
        self,
        swapper: FaceSwapper,
        target: str,
        smooth: bool,
        progress: Callable[..., Any] | None,
        start: float,
    ) -> tuple[None, str, str]:
        src = Path(target)
        try:
            total = video.probe(src).frames or None  # None: the header does not say
        except video.VideoError as e:
            raise PageError(f"Cannot read the target video ({src.name}): {e.detail}") from None
        done = 0
        problems: dict[str, int] = {}

        def on_frame() -> None:
            nonlocal done
            done += 1
            if progress is not None:
                progress((done, total), desc="Swapping frames", unit="frames")

        def on_error(reason: str, detail: str) -> None:
            problems[reason] = problems.get(reason, 0) + 1
            log.warning("%s: %s: %s", src.name, reason, detail)

        out = self.result_dir() / f"{src.stem}_swapped.mp4"  # H.264 in MP4, which browsers play
        try:
            report = swap_video(swapper, src, out, src.name, video.EncodeOptions(), smooth, on_frame, on_error)
        except video.VideoError as e:
            raise PageError(f"Cannot read the target video ({src.name}): {e.detail}") from None
        counts = swapper.counts
        if not counts["faces_swapped"]:
            raise PageError(_nothing_swapped(swapper, "target video"))
        status = (
            f"Swapped {_count(counts['faces_swapped'], 'face')} in {_count(report['frames_written'], 'frame')} "
            f"({counts['no_face']} without a face) in {_since(start)}."
        )
        if problems:
            status += " Problems: " + ", ".join(f"{k} ({v})" for k, v in sorted(problems.items())) + "."
        return None, str(out), status


def _count(n: int, what: str) -> str:
    return f"{n} {what}{'s' * (n != 1)}"


def _since(start: float) -> str:
    return f"{time.perf_counter() - start:.1f} s"


# ---------------------------------------------------------------------------------------------
# The page


def shown_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """PageError -> its message on the page (gr.Error), one line in the log; anything else -> logged here with
    its traceback, and one line on the page. (Gradio shows a bare exception as a red badge, no message.)"""
    gr = gradio()

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except PageError as e:
            log.info("refused: %s", e)
            raise gr.Error(html.escape(str(e), quote=False), print_exception=False) from None  # (shown as HTML)
        except gr.Error:
            raise
        except Exception as e:
            log.exception("the swap failed")
            message = f"The swap failed ({type(e).__name__}); the server's log has the details."
            raise gr.Error(message, print_exception=False) from None

    return wrapper


def build_app(
    session: Session | SessionFactory,
    cfg: AppConfig,
    workdir: str | Path | None = None,
) -> gr.Blocks:
    """The page's Blocks around a loaded `session` (for `cfg.checkpoint` and `cfg.detector`), or a factory
    that loads one now. Other checkpoints typed in the page load through the factory (default: Session).
    Results go under `workdir` (default: a temporary folder removed at exit)."""
    gr = gradio()
    factory = session if not isinstance(session, Session) else session_factory(cfg)
    sessions = Sessions(factory, cfg.sessions)
    if isinstance(session, Session):
        sessions.add((checkpoint_key(cfg.checkpoint), cfg.detector), session)
    first = sessions.get(cfg.checkpoint, cfg.detector)
    if workdir is None:
        workdir = tempfile.mkdtemp(prefix="swapper-app-")
        atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    page = Page(sessions, Path(workdir))

    @shown_errors
    def run(
        source,
        target_photo,
        target_video,
        checkpoint,
        detector,
        faces,
        reference,
        distance,
        blend,
        colour,
        smooth,
        progress=gr.Progress(),  # noqa: B008  (Gradio's marker for a progress argument)
    ):
        return page.swap(source, target_photo, target_video, checkpoint, detector, faces, reference,
                         distance, blend, colour, smooth, progress)  # fmt: skip

    spec = first.spec
    about = (
        f"generator `{spec.get('preset')}`, step {spec.get('step')}, {first.size} px, on `{first.device}`"
        if spec.get("step") is not None
        else f"generator `{spec.get('preset')}`, {first.size} px, on `{first.device}`"
    )
    detectors = list(dict.fromkeys([*DETECTOR_CHOICES, cfg.detector]))
    with gr.Blocks(
        title="AlphaFace swap", analytics_enabled=False, delete_cache=(RESULTS_KEPT_S, RESULTS_KEPT_S)
    ) as demo:
        gr.Markdown(
            f"## AlphaFace face swap\nThe face of the **source photo** goes into the **target** photo or video. "
            f"Loaded: `{cfg.checkpoint}` ({about}). Only swap faces of people who agreed to it."
        )
        with gr.Row(equal_height=False):
            with gr.Column(scale=1, min_width=260):
                source = gr.Image(
                    label="Source photo (the face to put in)",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=260,
                    elem_id="source-photo",
                )
                checkpoint = gr.Textbox(
                    value=cfg.checkpoint, label="Checkpoint (run folder or hf://USER/NAME)", elem_id="checkpoint"
                )
                with gr.Row():
                    detector = gr.Dropdown(
                        detectors,
                        value=cfg.detector,
                        label="Detector",
                        allow_custom_value=True,
                        info="or scrfd:PATH.onnx, landmarks:FILE.json",
                        elem_id="detector",
                    )
                    faces = gr.Dropdown(
                        list(FACE_CHOICES),
                        value="all",
                        label="Faces",
                        allow_custom_value=True,
                        info="all, largest, N largest, left:N",
                        elem_id="faces",
                    )
                with gr.Row():
                    blend = gr.Dropdown(
                        list(BLENDS), value="feather", label="Blend", info="mask: the inner face only", elem_id="blend"
                    )
                    colour = gr.Dropdown(
                        list(COLOURS), value="none", label="Colour", info="lab: match the target's", elem_id="colour"
                    )
                with gr.Accordion("Only one person: a reference photo", open=False):
                    reference = gr.Image(
                        label="Reference photo (swap only faces like this one)",
                        type="filepath",
                        image_mode=None,
                        sources=["upload"],
                        height=160,
                        elem_id="reference-photo",
                    )
                    distance = gr.Slider(
                        0.0,
                        2.0,
                        value=0.6,
                        step=0.05,
                        label="Largest identity distance kept (1 - cosine)",
                        elem_id="reference-distance",
                    )
            with gr.Column(scale=1, min_width=260):
                target_photo = gr.Image(
                    label="Target photo",
                    type="filepath",
                    image_mode=None,
                    sources=["upload", "clipboard"],
                    height=260,
                    elem_id="target-photo",
                )
                target_video = gr.Video(
                    label="... or target video", sources=["upload"], height=220, elem_id="target-video"
                )
                smooth = gr.Checkbox(value=True, label="Smooth the landmarks over frames (video)", elem_id="smooth")
                button = gr.Button("Swap", variant="primary", elem_id="swap-button")
            with gr.Column(scale=1, min_width=260):
                out_photo = gr.Image(
                    label="Swapped photo (PNG)",
                    type="filepath",
                    format="png",
                    interactive=False,
                    height=260,
                    elem_id="output-photo",
                )
                out_video = gr.Video(
                    label="Swapped video (H.264 MP4)",
                    format="mp4",
                    interactive=False,
                    height=220,
                    elem_id="output-video",
                )
                status = gr.Markdown(elem_id="status")
        button.click(
            run,
            [
                source,
                target_photo,
                target_video,
                checkpoint,
                detector,
                faces,
                reference,
                distance,
                blend,
                colour,
                smooth,
            ],
            [out_photo, out_video, status],
            api_name="swap",
        )
    demo.queue(default_concurrency_limit=1)  # one swap at a time: the Sessions and the device are shared
    return demo


# ---------------------------------------------------------------------------------------------
# The stage


def _stop(*_: Any) -> None:
    raise KeyboardInterrupt  # SIGTERM as Ctrl-C: Gradio closes its server, main returns, atexit cleans up


def main(argv: list[str] | None = None) -> None:
    cfg = cli.parse_config("python -m swapper.app", __doc__, AppConfig, argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    try:
        gradio()
        session = load_session(session_factory(cfg), cfg.checkpoint, cfg.detector)  # once, before serving
    except (FileNotFoundError, ValueError, ImportError) as e:
        cli.fail("swapper.app", str(e))
    workdir = Path(tempfile.mkdtemp(prefix="swapper-app-"))
    atexit.register(shutil.rmtree, workdir, ignore_errors=True)
    os.environ.setdefault("GRADIO_TEMP_DIR", str(workdir / "gradio"))  # uploads too: nothing left in /tmp/gradio
    demo = build_app(session, cfg, workdir)
    signal.signal(signal.SIGTERM, _stop)
    log.info("serving http://%s:%d (Ctrl-C stops)", cfg.host, cfg.port)
    demo.launch(
        server_name=cfg.host,
        server_port=cfg.port,
        share=False,  # never a public link (it would also fetch a tunnel binary from the internet)
        show_error=False,  # tracebacks stay in this log; the page shows shown_errors' messages
        inbrowser=False,
        ssr_mode=False,  # plain client-side rendering: no Node server
        run_history=False,  # users' photos are not kept in the browser's storage
        mcp_server=False,
        pwa=False,
        quiet=True,
    )


if __name__ == "__main__":
    sys.exit(main())
