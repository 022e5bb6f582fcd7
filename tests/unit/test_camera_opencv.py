"""The OpenCV camera driver against real sources: video files written by the test, and
a real HTTP MJPEG stream (the format of many IP cameras) served on loopback, which the
test drops and brings back to see the driver reconnect."""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

from hardware.camera import (
    CameraNotRunning,
    CameraUnavailable,
    Frame,
    OpenCvCamera,
    OpenCvConfig,
    open_camera,
    parse_camera_config,
)
from tests.support.services import free_port


def _gray(n: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    return np.full((size[1], size[0], 3), 8 * n, np.uint8)


def _level(image: np.ndarray) -> int:
    return round(float(image.mean()) / 8)


def _write_video(
    path: Path, levels: list[int], fps: float, size: tuple[int, int] = (64, 48)
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write MJPEG video here"
    for n in levels:
        writer.write(_gray(n, size))
    writer.release()
    return path


def _config(source: int | str, **extra: object) -> OpenCvConfig:
    config = parse_camera_config({"driver": "opencv", "source": source, **extra})
    assert isinstance(config, OpenCvConfig)
    return config


def _frames_until_none(cam: OpenCvCamera, limit: int, timeout: float = 2.0) -> list[Frame]:
    frames = []
    while (frame := cam.read(timeout=timeout)) is not None:
        frames.append(frame)
        assert len(frames) <= limit, "the camera kept delivering frames"
    return frames


# -- video files -----------------------------------------------------------------------


def test_a_video_file_plays_once_then_the_camera_ends(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", list(range(1, 21)), fps=10)
    with open_camera(_config(str(video), fps=100, lores_size=[32, 24])) as cam:
        assert isinstance(cam, OpenCvCamera)
        frames = _frames_until_none(cam, limit=20)
        jpeg = cam.snapshot()
    assert frames, "no frame from the file"
    levels = [_level(f.image) for f in frames]
    indices = [f.index for f in frames]
    # The reader keeps only the newest frame: a slow test may skip some, never reorder.
    assert levels == sorted(levels) and indices == sorted(set(indices))
    assert [lv - 1 for lv in levels] == indices and levels[-1] == 20
    assert all(f.size == (32, 24) for f in frames)
    photo = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert photo.shape == (48, 64, 3) and _level(photo) == 20  # full size, the last frame


def test_a_looping_video_file_starts_again(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", [1, 2, 3, 4, 5], fps=10)
    with open_camera(_config(str(video), fps=100, loop=True)) as cam:
        levels = []
        for _ in range(40):
            frame = cam.read(timeout=2.0)
            assert frame is not None
            levels.append(_level(frame.image))
            if len(levels) > 1 and levels[-1] < levels[-2]:
                break
    assert any(b < a for a, b in itertools.pairwise(levels)), levels


def test_a_file_plays_at_its_frame_rate(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", list(range(1, 11)), fps=20)
    cam = OpenCvCamera(_config(str(video)))
    before = time.monotonic()
    with cam:
        frames = _frames_until_none(cam, limit=10)
    # Frame k of the file is never published before k / 20 s after start: a camera
    # filming the file could not have seen it earlier.
    assert frames and all(f.timestamp >= before + f.index / 20 for f in frames)
    assert frames[-1].index == 9


@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("absent.avi", "no such video file"),
        ("not-a-video.avi", "not a video file OpenCV can decode"),
        (9, "is the camera plugged in"),
        ("/dev/video9", "is the camera plugged in"),
    ],
)
def test_a_source_that_cannot_open_fails_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: int | str, message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-video.avi").write_bytes(b"plain text, not a video")
    cam = OpenCvCamera(_config(source))
    with pytest.raises(CameraUnavailable, match=message):
        cam.start()


def test_read_and_snapshot_need_a_started_camera(tmp_path: Path) -> None:
    cam = OpenCvCamera(_config(str(tmp_path / "clip.avi")))
    with pytest.raises(CameraNotRunning):
        cam.read()
    with pytest.raises(CameraNotRunning):
        cam.snapshot()


# -- a network stream that drops -------------------------------------------------------


class MjpegServer:
    """An HTTP MJPEG camera on loopback: every client gets frames of one grey level."""

    def __init__(self, port: int, level: int, fps: float = 25) -> None:
        self.port, self.level, self.fps = port, level, fps
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._listener.listen(4)
        self._listener.settimeout(0.1)
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._clients.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        _ok, jpg = cv2.imencode(".jpg", _gray(self.level, (160, 120)))
        part = (
            b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n" % len(jpg)
            + jpg.tobytes()
            + b"\r\n"
        )
        try:
            conn.settimeout(2)
            conn.recv(4096)  # the request; its contents do not matter
            conn.sendall(
                b"HTTP/1.0 200 OK\r\n"
                b"Content-Type: multipart/x-mixed-replace; boundary=frame\r\n\r\n"
            )
            while not self._stop.is_set():
                conn.sendall(part)
                time.sleep(1 / self.fps)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._listener.close()
        for conn in self._clients:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        self._thread.join(2)


@pytest.fixture
def mjpeg_port() -> Iterator[int]:
    yield free_port()


def _wait_for_level(cam: OpenCvCamera, level: int, within: float) -> Frame:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        frame = cam.read(timeout=0.5)
        if frame is not None and _level(frame.image) == level:
            return frame
    raise AssertionError(f"no frame of level {level} within {within} s")


def test_a_dropped_stream_is_reconnected_with_back_off(mjpeg_port: int) -> None:
    url = f"http://127.0.0.1:{mjpeg_port}/video.mjpg"
    server = MjpegServer(mjpeg_port, level=5)
    config = _config(
        url,
        open_timeout_s=2,
        read_timeout_s=1,
        reconnect_initial_s=0.1,
        reconnect_max_s=0.4,
        lores_size=[80, 60],
    )
    cam = OpenCvCamera(config)
    try:
        cam.start()
        first = _wait_for_level(cam, 5, within=10)
        assert first.size == (80, 60) and cam.connected
        photo = cv2.imdecode(np.frombuffer(cam.snapshot(), np.uint8), cv2.IMREAD_COLOR)
        assert photo.shape == (120, 160, 3)

        server.stop()  # the camera goes away
        deadline = time.monotonic() + 10
        while cam.connected and time.monotonic() < deadline:
            cam.read(timeout=0.2)
        assert not cam.connected, "the driver did not notice the dropped stream"
        cam.read(timeout=0)  # a frame published just before the drop may still be unread
        assert cam.read(timeout=0.5) is None

        server = MjpegServer(mjpeg_port, level=20)  # the camera is back, showing a new scene
        back = _wait_for_level(cam, 20, within=10)
        assert back.index > first.index and cam.connected
    finally:
        cam.stop()
        server.stop()


def test_an_unreachable_stream_fails_at_start(mjpeg_port: int) -> None:
    cam = OpenCvCamera(_config(f"http://127.0.0.1:{mjpeg_port}/video.mjpg", open_timeout_s=2))
    with pytest.raises(CameraUnavailable, match="check the URL"):
        cam.start()
