"""video.transcode on its own: a failure while processing stops both threads and leaves no file."""

from __future__ import annotations

import threading

import pytest

from swapper.faces import video
from tests.swapper.faces.builders import background, decode_video, write_video


def test_passthrough_keeps_every_frame_exactly(tmp_path):
    frames = [background(64, 48, seed=i) for i in range(9)]
    write_video(tmp_path / "in.mp4", frames, audio_seconds=0.3)
    report = video.transcode(tmp_path / "in.mp4", tmp_path / "out.mp4", lambda fr: fr,
                             video.EncodeOptions(preset="ultrafast", crf=0))  # fmt: skip
    assert report["frames_written"] == report["header_frames"] == 9 and report["audio"] == "aac"
    before, after = decode_video(tmp_path / "in.mp4", "yuv420p"), decode_video(tmp_path / "out.mp4", "yuv420p")
    assert all((a == b).all() for a, b in zip(before, after, strict=True))


def test_a_failure_while_processing_stops_the_threads_and_writes_nothing(tmp_path):
    write_video(tmp_path / "in.mp4", [background(64, 48, seed=i) for i in range(40)], audio_seconds=1.0)
    threads = threading.active_count()

    def broken(frames: video.Frames) -> video.Frames:
        for index, canvas in frames:
            if index == 3:
                raise RuntimeError("the generator fell over")
            yield index, canvas

    with pytest.raises(RuntimeError, match="fell over"):
        video.transcode(tmp_path / "in.mp4", tmp_path / "out.mp4", broken, depth=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.mp4"]  # no output, no temporary
    assert threading.active_count() == threads


def test_auto_codec_takes_nvenc_only_where_it_opens():
    assert video.pick_codec("libx264", "cuda:0") == "libx264"  # a name is taken as given
    assert video.pick_codec("auto", "cpu") == "libx264"
    assert video.encoder_works("libx264") and not video.encoder_works("no_such_encoder")
    gpu_encoder = video.encoder_works("h264_nvenc")  # PyAV's wheels list it; it opens only with an NVIDIA driver
    assert video.pick_codec("auto", "cuda:0") == ("h264_nvenc" if gpu_encoder else "libx264")
