"""Video in, video out, with PyAV: the same frames at the same times, H.264, audio copied.

    decode thread:   demux --video--> decode -> canvases ──────────────┐ (audio packets: to the encoder)
    caller's thread: canvases --process (detect, crop, swap, paste)--> canvases
    encode thread:   canvases -> encode (H.264) -> mux; audio packets -> mux (copied)

Every decoded frame is written with its own timestamp, so the output has the input's frame count
and frame rate (variable rates included). 8-bit 4:2:0 video (nearly all of it) stays in YUV: a
`Yuv420Canvas` touches only the faces' boxes, so the rest of each frame goes to the encoder as the
decoder's bytes. Other pixel formats go through RGB (swscale, accurate rounding, the input's colour
space and range both ways). The encoder is tagged with the input's colour space and range. The
output is written to a temporary name and moved into place at the end. FFmpeg releases the GIL
while it decodes, converts, encodes and muxes, so the three threads overlap.

Bad input never raises past `transcode` except as a `VideoError` (which the caller counts): a file
that cannot be opened, yields no frame, or that the encoder refuses. A packet or frame that does not
decode is counted and skipped, and a file that ends early (truncated) is written as far as it goes
and counted. An error in `process` stops both threads and is raised as it is.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
from av.video.reformatter import Interpolation

from swapper.faces.canvas import Canvas, RgbCanvas, Yuv420Canvas

VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".avi", ".webm", ".mpg", ".mpeg", ".ts", ".flv", ".wmv")
H264_SUFFIXES = (".mp4", ".mov", ".mkv", ".m4v", ".ts", ".flv")  # containers that hold H.264 (and copy audio)

Frames = Iterator[tuple[int, Canvas]]  # (0-based frame index, frame), in order
YUV420 = ("yuv420p", "yuvj420p")  # kept in YUV (yuvj: full range)
# swscale's defaults round loosely (about 1 level of luma per RGB round trip); these make it exact
ACCURATE = (
    Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.FULL_CHR_H_INT | Interpolation.FULL_CHR_H_INP
)
OnError = Callable[[str, str], None]  # (reason, detail)


class VideoError(Exception):
    """A video that cannot be read at all; `reason` is the count it goes under. `detail` never repeats
    the path: whoever reports the error names the file once."""

    def __init__(self, reason: str, detail: str, path: str | Path | None = None) -> None:
        super().__init__(f"{reason}: {path}: {detail}" if path is not None else f"{reason}: {detail}")
        self.reason, self.detail, self.path = reason, detail, path


def why(error: Exception) -> str:
    """An FFmpeg or OS error's message without the file name it carries (the report names the file)."""
    return getattr(error, "strerror", None) or str(error)


@dataclass(frozen=True)
class EncodeOptions:
    codec: str = "libx264"  # any FFmpeg H.264 encoder PyAV has: libx264, h264_nvenc
    preset: str = "veryfast"  # x264 speed/size trade-off (FaceFusion's default)
    crf: int = 18  # x264 constant quality (0 lossless, 18 visually lossless, 23 default)

    def stream_options(self) -> dict[str, str]:
        if self.codec.startswith("libx26"):
            return {"preset": self.preset, "crf": str(self.crf)}
        if self.codec.endswith("_nvenc"):  # constant quality on NVENC: p4 is its balanced preset
            return {"preset": "p4", "rc": "vbr", "cq": str(max(self.crf, 1))}
        return {}


@functools.cache
def encoder_works(codec: str) -> bool:
    """Whether FFmpeg can open `codec` here: PyAV's wheels list h264_nvenc, which opens only where an
    NVIDIA driver with NVENC is installed."""
    if codec not in av.codecs_available:
        return False
    try:
        ctx = av.CodecContext.create(codec, "w")
        ctx.width, ctx.height, ctx.pix_fmt, ctx.time_base = 256, 256, "yuv420p", Fraction(1, 25)
        ctx.open()
    except (av.FFmpegError, ValueError, OSError):
        return False
    return True


def pick_codec(requested: str, device: str) -> str:
    """`auto`: NVENC's H.264 on a CUDA device where it opens (the x264 encode is the floor of a GPU
    swap), else libx264; any other name is taken as given."""
    if requested != "auto":
        return requested
    return "h264_nvenc" if device.startswith("cuda") and encoder_works("h264_nvenc") else "libx264"


@dataclass(frozen=True)
class VideoInfo:
    fps: Fraction  # the stream's average frame rate
    frames: int  # frame count from the container header; 0 where it does not say
    width: int
    height: int
    audio: str | None  # codec of the first audio stream, if any


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def output_path(path: Path) -> Path:
    """Where a video's swap goes: the same name, or `.mp4` for containers that cannot hold H.264."""
    return path if path.suffix.lower() in H264_SUFFIXES else path.with_suffix(".mp4")


def _open(path: Path) -> Any:
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise VideoError("unreadable_video", why(e), path) from e
    if not container.streams.video:
        container.close()
        raise VideoError("unreadable_video", "no video stream", path)
    return container


def _rate(stream: Any) -> Fraction:
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    if not rate:
        raise VideoError("unreadable_video", "the video stream has no frame rate")
    return Fraction(rate)


def probe(path: str | Path) -> VideoInfo:
    with _open(Path(path)) as c:
        v = c.streams.video[0]
        audio = c.streams.audio[0].codec_context.name if c.streams.audio else None
        return VideoInfo(_rate(v), int(v.frames or 0), v.codec_context.width, v.codec_context.height, audio)


def to_canvas(frame: av.VideoFrame) -> Canvas:
    """A decoded frame as a canvas: 8-bit 4:2:0 stays YUV, anything else becomes RGB."""
    fmt = frame.format.name
    if fmt in YUV420 and frame.width % 2 == 0 and frame.height % 2 == 0:
        full = frame.color_range if fmt == "yuv420p" else 2  # yuvj: full range whatever the tag
        return Yuv420Canvas(frame.to_ndarray(format=fmt), frame.width, frame.height, frame.colorspace, full)
    image = frame.to_image(src_colorspace=frame.colorspace, src_color_range=frame.color_range, interpolation=ACCURATE)
    return RgbCanvas(image)


def from_canvas(canvas: Canvas, pix_fmt: str, colorspace: int, color_range: int) -> av.VideoFrame:
    """The encoder's frame: a YUV canvas's own planes, or an RGB one converted with the input's colours."""
    if isinstance(canvas, Yuv420Canvas):
        fmt = "yuvj420p" if pix_fmt == "yuvj420p" else "yuv420p"
        return av.VideoFrame.from_ndarray(canvas.array, format=fmt)
    frame = av.VideoFrame.from_image(canvas.to_image())
    return frame.reformat(
        format=pix_fmt, dst_colorspace=colorspace, dst_color_range=color_range, interpolation=ACCURATE
    )


def _open_output(path: Path, vin: Any, ain: Any, options: EncodeOptions) -> tuple[Any, Any, Any]:
    """(container, video stream, audio stream or None): H.264 at the input's rate, size and colours."""
    out = av.open(str(path), "w")
    vout = out.add_stream(options.codec, rate=_rate(vin))
    vout.width, vout.height = vin.codec_context.width, vin.codec_context.height
    even = vout.width % 2 == 0 and vout.height % 2 == 0
    if vin.codec_context.pix_fmt in YUV420 and even:
        vout.pix_fmt = vin.codec_context.pix_fmt
    else:
        vout.pix_fmt = "yuv420p" if even else "yuv444p"  # 4:2:0 needs even sides
    vout.options = options.stream_options()
    for attr in ("colorspace", "color_range", "color_primaries", "color_trc"):
        with contextlib.suppress(AttributeError, ValueError, TypeError):
            setattr(vout.codec_context, attr, getattr(vin.codec_context, attr))
    aout = out.add_stream_from_template(ain) if ain is not None else None
    return out, vout, aout


class _Decoded:
    """The input's video frames as canvases, in order; audio packets go to `on_audio` on the way past.

    Keeps each frame's timestamp (`timing`) and counts; a packet or frame that fails is reported
    and skipped, a read error ends the file (reported as truncated).
    """

    def __init__(self, inp: Any, vin: Any, ain: Any, on_audio: Callable[[Any], None], report: OnError):
        self.inp, self.vin, self.ain, self.on_audio, self.report = inp, vin, ain, on_audio, report
        self.timing: dict[int, tuple[int | None, Any]] = {}  # frame index -> (pts, time_base)
        self.colour: dict[str, int] = {}  # the first frame's colorspace and color_range
        self.decoded = 0
        self.truncated = False

    def __iter__(self) -> Frames:
        packets = self.inp.demux(*(s for s in (self.vin, self.ain) if s is not None))
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.FFmpegError as e:  # a read error mid-file: the file ends here
                self.truncated = True
                self.report("truncated_video", f"read error after {self.decoded} frames: {why(e)}")
                return
            if packet.stream is self.ain:
                if packet.dts is not None:  # the demuxer's final flush packet has none
                    self.on_audio(packet)
                continue
            try:
                frames = packet.decode()
            except av.FFmpegError as e:
                self.report("corrupt_packet", f"packet at pts {packet.pts}: {why(e)}")
                continue
            for f in frames:
                try:
                    canvas = to_canvas(f)
                except (ValueError, av.FFmpegError) as e:
                    self.report("corrupt_frame", f"frame at pts {f.pts}: {why(e)}")
                    continue
                self.colour = self.colour or {"colorspace": f.colorspace, "color_range": f.color_range}
                self.timing[self.decoded] = (f.pts, f.time_base)
                self.decoded += 1
                yield self.decoded - 1, canvas


# ---------------------------------------------------------------------------------------------
# Three threads: decode, the caller's processing, encode. FFmpeg releases the GIL while it decodes
# and encodes, so the face work overlaps both instead of waiting for them.

_END = object()


class _Failed:
    def __init__(self, error: BaseException) -> None:
        self.error = error


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Put unless `stop` is set (the other side has failed); False if it was."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


class _Prefetch:
    """Iterate `items` on a thread of its own, up to `depth` ahead; its exception is raised here.

    `close` stops and joins the thread, which must happen before the input container closes.
    """

    def __init__(self, items: Iterator[Any], depth: int) -> None:
        self.items, self.queue, self.stop = items, queue.Queue(depth), threading.Event()
        self.thread = threading.Thread(target=self._produce, name="video-decode", daemon=True)
        self.thread.start()

    def _produce(self) -> None:
        try:
            for item in self.items:
                if not _put(self.queue, item, self.stop):
                    return
        except BaseException as e:  # noqa: BLE001  (handed to the consumer, raised there)
            _put(self.queue, _Failed(e), self.stop)
        _put(self.queue, _END, self.stop)

    def __iter__(self) -> Iterator[Any]:
        while (item := self.queue.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item

    def close(self) -> None:
        self.stop.set()
        self.thread.join()


class _Encoder:
    """The output side, on its own thread: frames are encoded and muxed, audio packets muxed."""

    def __init__(self, out: Any, vout: Any, aout: Any, decoded: _Decoded, rate: Fraction, depth: int) -> None:
        self.out, self.vout, self.aout, self.decoded, self.rate = out, vout, aout, decoded, rate
        self.queue: queue.Queue = queue.Queue(depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.written = 0
        self.thread = threading.Thread(target=self._run, name="video-encode", daemon=True)
        self.thread.start()

    def frame(self, index: int, canvas: Canvas) -> None:
        self._send(("frame", index, canvas))

    def audio(self, packet: Any) -> None:
        self._send(("audio", packet, None))

    def close(self) -> int:
        """Flush the encoder and wait for the thread; returns the frames written."""
        self._send(_END)
        self.thread.join()
        if self.error is not None:
            raise self.error
        return self.written

    def abort(self) -> None:
        """Stop the thread (dropping what is queued) and wait for it; a no-op once closed."""
        self.stop.set()
        self.thread.join()

    def _send(self, item: Any) -> None:
        if not _put(self.queue, item, self.stop) and self.error is not None:
            raise self.error

    def _next(self) -> Any:
        while not self.stop.is_set():
            try:
                return self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
        return _END

    def _run(self) -> None:
        try:
            while (item := self._next()) is not _END:
                kind, a, b = item
                if kind == "audio":
                    a.stream = self.aout
                    self.out.mux(a)
                    continue
                frame = from_canvas(b, self.vout.pix_fmt, **self.decoded.colour)
                pts, time_base = self.decoded.timing.pop(a)
                if pts is None:  # containers without timestamps: the frame's place at the stream rate
                    pts, time_base = a, 1 / self.rate
                frame.pts, frame.time_base = pts, time_base
                self.out.mux(self.vout.encode(frame))
                self.written += 1
            if self.written and not self.stop.is_set():
                self.out.mux(self.vout.encode())  # flush the encoder's delayed frames
        except BaseException as e:  # noqa: BLE001  (raised in the caller's thread by close)
            self.error = e
            self.stop.set()


def transcode(
    src: str | Path,
    dst: str | Path,
    process: Callable[[Frames], Frames],
    options: EncodeOptions = EncodeOptions(),  # noqa: B008  (frozen, so a shared default is safe)
    on_error: OnError | None = None,
    depth: int = 32,
) -> dict[str, Any]:
    """Decode `src`, run its frames through `process` (in order, one out per one in), encode `dst`.

    Decoding and encoding run on threads of their own, up to `depth` frames ahead and behind.
    Returns what was done: frames decoded and written, the header's count, rate, audio.
    """
    src, dst = Path(src), Path(dst)
    report = on_error or (lambda reason, detail: None)
    tmp = dst.with_name(f".{dst.stem}.tmp{dst.suffix}")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with _open(src) as inp:
        vin = inp.streams.video[0]
        vin.thread_type = "AUTO"  # frame + slice threads in the decoder
        ain = inp.streams.audio[0] if inp.streams.audio else None
        rate, header_frames = _rate(vin), int(vin.frames or 0)
        try:
            out, vout, aout = _open_output(tmp, vin, ain, options)
            with out:
                decoded = _Decoded(inp, vin, ain, lambda packet: encoder.audio(packet), report)
                encoder = _Encoder(out, vout, aout, decoded, rate, depth)
                frames = _Prefetch(iter(decoded), depth)
                try:
                    for index, canvas in process(iter(frames)):
                        encoder.frame(index, canvas)
                    frames.close()
                    written = encoder.close()
                finally:  # both threads end before the containers close, at once if processing failed
                    frames.close()
                    encoder.abort()
                if not written:
                    raise VideoError("unreadable_video", "no frame could be decoded", src)
            os.replace(tmp, dst)
        except av.FFmpegError as e:  # the encoder or muxer refused: this video fails, the run goes on
            raise VideoError("encode_error", why(e), src) from e
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    if header_frames > decoded.decoded and not decoded.truncated:
        report("truncated_video", f"decoded {decoded.decoded} of the {header_frames} frames its header lists")
    return {
        "frames_decoded": decoded.decoded,
        "frames_written": written,
        "header_frames": header_frames,
        "fps": str(rate),
        "audio": aout.codec_context.name if aout is not None else None,
    }
