"""The camera interface, its configuration and the scene player (the fake CI uses).

Frames are synthetic: each is one flat grey level ``8 * n``, so a test reads back which
image or video frame the camera delivered with ``_level(frame)``. JPEG and MJPEG move a
flat level by one or two, far less than the step of 8.
"""

from __future__ import annotations

import csv
import itertools
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from hardware.camera import (
    CameraDriverMissing,
    CameraNotRunning,
    Frame,
    NoFrame,
    Picamera2Config,
    SceneCamera,
    SceneConfig,
    SceneError,
    SceneSegment,
    import_picamera2,
    load_timeline,
    open_camera,
    parse_camera_config,
    redact_url,
)


class ManualClock:
    """Seconds that move only when the test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _gray(n: int, size: tuple[int, int] = (64, 48)) -> np.ndarray:
    return np.full((size[1], size[0], 3), 8 * n, np.uint8)


def _level(image: np.ndarray) -> int:
    return round(float(image.mean()) / 8)


def _write_images(folder: Path, levels: list[int], size: tuple[int, int] = (64, 48)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(levels):
        assert cv2.imwrite(str(folder / f"{i:03d}.png"), _gray(n, size))
    (folder / "notes.txt").write_text("not an image: the scene player skips it\n")
    return folder


def _write_video(
    path: Path, levels: list[int], fps: float, size: tuple[int, int] = (64, 48)
) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened(), "OpenCV cannot write MJPEG video here"
    for n in levels:
        writer.write(_gray(n, size))
    writer.release()
    return path


def _scene(*segments: dict[str, object], fps: float = 10, **extra: object) -> SceneConfig:
    return SceneConfig.model_validate(
        {"driver": "scene", "fps": fps, "timeline": list(segments), **extra}
    )


# -- the timeline ------------------------------------------------------------------------


def test_from_second_5_the_scene_shows_the_second_segment(tmp_path: Path) -> None:
    walking = _write_images(tmp_path / "walking", [1, 2, 3])
    lying = tmp_path / "lying.png"
    cv2.imwrite(str(lying), _gray(20))
    clock = ManualClock()
    cam = SceneCamera(
        _scene({"at": 0, "play": str(walking)}, {"at": 5, "play": str(lying)}), clock=clock
    )
    with cam:
        seen = []
        for _ in range(60):
            frame = cam.read()
            assert frame is not None
            seen.append((frame.index, _level(frame.image), frame.timestamp - 1000.0))
            clock.advance(0.1)
    # One frame per slot, the folder looping 1, 2, 3 for five seconds, then the still.
    assert [s[0] for s in seen] == list(range(60))
    assert [s[1] for s in seen[:50]] == [1, 2, 3] * 16 + [1, 2]
    assert {s[1] for s in seen[50:]} == {20}
    assert [s[2] for s in seen] == pytest.approx([k / 10 for k in range(60)])


def test_a_driven_clock_gives_nothing_until_the_next_slot(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), _gray(4))
    clock = ManualClock()
    with SceneCamera(_scene({"at": 0, "play": str(still)}), clock=clock) as cam:
        first = cam.read()
        assert first is not None and first.index == 0
        assert cam.read() is None  # same slot: already returned
        clock.advance(0.05)
        assert cam.read() is None
        clock.advance(0.30)  # slots 1..3 are due: a late reader gets the newest
        late = cam.read()
        assert late is not None and late.index == 3


def test_a_folder_without_loop_holds_its_last_image(tmp_path: Path) -> None:
    folder = _write_images(tmp_path / "once", [5, 6, 7])
    clock = ManualClock()
    with SceneCamera(_scene({"at": 0, "play": str(folder), "loop": False}), clock=clock) as cam:
        levels = []
        for _ in range(6):
            frame = cam.read()
            assert frame is not None
            levels.append(_level(frame.image))
            clock.advance(0.1)
    assert levels == [5, 6, 7, 7, 7, 7]


def test_media_fps_sets_how_long_each_image_of_a_folder_shows(tmp_path: Path) -> None:
    folder = _write_images(tmp_path / "slides", [1, 2])
    clock = ManualClock()
    config = _scene({"at": 0, "play": str(folder), "media_fps": 1.0})
    with SceneCamera(config, clock=clock) as cam:
        levels = []
        for _ in range(25):
            frame = cam.read()
            assert frame is not None
            levels.append(_level(frame.image))
            clock.advance(0.1)
    assert levels == [1] * 10 + [2] * 10 + [1] * 5


def test_a_video_plays_in_real_time_whatever_the_scene_rate(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", list(range(30)), fps=30)  # one second
    clock = ManualClock()
    with SceneCamera(_scene({"at": 0, "play": str(video)}, fps=10), clock=clock) as cam:
        levels = []
        for _ in range(25):
            frame = cam.read()
            assert frame is not None
            levels.append(_level(frame.image))
            clock.advance(0.1)
    # Slot k shows video time k / 10 s = video frame 3k, looping after one second.
    assert levels == [(3 * k) % 30 for k in range(25)]


def test_a_video_without_loop_holds_its_last_frame(tmp_path: Path) -> None:
    video = _write_video(tmp_path / "clip.avi", [1, 2, 3, 4], fps=10)
    clock = ManualClock()
    with SceneCamera(_scene({"at": 0, "play": str(video), "loop": False}), clock=clock) as cam:
        levels = []
        for _ in range(8):
            frame = cam.read()
            assert frame is not None
            levels.append(_level(frame.image))
            clock.advance(0.1)
    assert levels == [1, 2, 3, 4, 4, 4, 4, 4]


def test_a_stall_segment_delivers_no_frames_until_the_next_segment(tmp_path: Path) -> None:
    before = tmp_path / "before.png"
    after = tmp_path / "after.png"
    cv2.imwrite(str(before), _gray(3))
    cv2.imwrite(str(after), _gray(9))
    clock = ManualClock()
    config = _scene(
        {"at": 0, "play": str(before)}, {"at": 2, "stall": True}, {"at": 4, "play": str(after)}
    )
    with SceneCamera(config, clock=clock) as cam:
        delivered: list[tuple[int, int]] = []
        nothing: list[float] = []
        for step in range(60):
            frame = cam.read()
            if frame is None:
                nothing.append(round(step * 0.1, 1))
            else:
                delivered.append((frame.index, _level(frame.image)))
            clock.advance(0.1)
    assert nothing == [round(2 + i * 0.1, 1) for i in range(20)]
    assert delivered == [(k, 3) for k in range(20)] + [(k, 9) for k in range(40, 60)]


def test_a_stalled_camera_makes_read_return_none_with_the_real_clock(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), _gray(2))
    config = _scene({"at": 0, "play": str(still)}, {"at": 0.2, "stall": True}, fps=10)
    with SceneCamera(config) as cam:
        indices = []
        while (frame := cam.read(timeout=0.5)) is not None:
            indices.append(frame.index)
            assert len(indices) <= 2, "a stalled scene kept delivering frames"
        assert indices and set(indices) <= {0, 1}
        assert cam.read(timeout=0.1) is None


def test_the_real_clock_never_delivers_a_frame_before_it_is_due(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), _gray(2))
    with SceneCamera(_scene({"at": 0, "play": str(still)}, fps=20)) as cam:
        frames = [cam.read(timeout=2.0) for _ in range(5)]
        for frame in frames:
            assert frame is not None
            assert time.monotonic() >= frame.timestamp
    indices = [f.index for f in frames if f is not None]
    assert indices == sorted(set(indices))
    t0 = frames[0].timestamp if frames[0] else 0.0
    assert [f.timestamp - t0 for f in frames if f] == pytest.approx(
        [(i - indices[0]) / 20 for i in indices]
    )


# -- frames and snapshots ------------------------------------------------------------------


def test_read_gives_lores_frames_and_snapshot_a_full_resolution_jpeg(tmp_path: Path) -> None:
    still = tmp_path / "big.png"
    cv2.imwrite(str(still), _gray(12, (800, 600)))
    clock = ManualClock()
    config = _scene({"at": 0, "play": str(still)}, size=[640, 480], lores_size=[160, 120])
    with SceneCamera(config, clock=clock) as cam:
        with pytest.raises(NoFrame):
            cam.snapshot()
        frame = cam.read()
        assert frame is not None
        assert frame.size == (160, 120) and frame.image.shape == (120, 160, 3)
        jpeg = cam.snapshot()
    assert jpeg[:3] == b"\xff\xd8\xff"
    photo = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert photo.shape == (480, 640, 3)
    assert _level(photo) == 12


def test_frames_are_read_only(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), _gray(1))
    with SceneCamera(_scene({"at": 0, "play": str(still)}), clock=ManualClock()) as cam:
        frame = cam.read()
    assert frame is not None
    with pytest.raises(ValueError, match="read-only"):
        frame.image[0, 0, 0] = 255


def test_frame_refuses_what_is_not_a_bgr_image() -> None:
    with pytest.raises(ValueError, match="uint8"):
        Frame(np.zeros((4, 4), np.uint8), 0.0, 0)
    with pytest.raises(ValueError, match="uint8"):
        Frame(np.zeros((4, 4, 3), np.float32), 0.0, 0)
    with pytest.raises(ValueError, match="negative"):
        Frame(np.zeros((4, 4, 3), np.uint8), 0.0, -1)


def test_a_camera_used_before_start_or_after_stop_says_so(tmp_path: Path) -> None:
    still = tmp_path / "still.png"
    cv2.imwrite(str(still), _gray(1))
    cam = SceneCamera(_scene({"at": 0, "play": str(still)}), clock=ManualClock())
    with pytest.raises(CameraNotRunning):
        cam.read()
    cam.start()
    assert cam.read() is not None
    cam.stop()
    cam.stop()  # twice is fine
    with pytest.raises(CameraNotRunning):
        cam.snapshot()


# -- media errors --------------------------------------------------------------------------


def test_missing_or_unreadable_media_fail_at_start(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.avi").write_bytes(b"not a video")
    for play, message in [
        ("absent.png", "does not exist"),
        ("empty", "holds no image"),
        ("broken.png", "cannot be read"),
        ("broken.avi", "cannot be opened"),
    ]:
        cam = SceneCamera(_scene({"at": 0, "play": str(tmp_path / play)}), clock=ManualClock())
        with pytest.raises(SceneError, match=message):
            cam.start()


# -- configuration -------------------------------------------------------------------------


def test_the_driver_key_picks_the_model_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    config = parse_camera_config({"driver": "opencv", "source": 0})
    assert config.driver == "opencv"
    with pytest.raises(ValidationError, match="sourc") as err:
        parse_camera_config({"driver": "opencv", "source": 0, "sourc": 1})
    assert "Extra inputs are not permitted" in str(err.value)
    with pytest.raises(ValidationError, match="does not match any of the expected tags"):
        parse_camera_config({"driver": "webcam"})
    with pytest.raises(ValidationError, match="lores_size"):
        parse_camera_config({"driver": "picamera2", "lores_size": [640]})


@pytest.mark.parametrize(
    ("timeline", "message"),
    [
        ([], "either timeline"),
        ([{"at": 1, "play": "a.png"}], "first segment must start at 0"),
        ([{"at": 0, "play": "a.png"}, {"at": 0, "play": "b.png"}], "segment 1 starts at 0"),
        ([{"at": 0, "play": "a.png", "stall": True}], "either play = PATH or stall = true"),
        ([{"at": 0}], "either play = PATH or stall = true"),
        ([{"at": -1, "play": "a.png"}], "greater than or equal to 0"),
        ([{"at": 0, "play": "a.png", "speed": 2}], "Extra inputs are not permitted"),
    ],
)
def test_timeline_mistakes_are_reported(timeline: list[dict[str, object]], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SceneConfig.model_validate({"driver": "scene", "timeline": timeline})


def test_relative_paths_resolve_against_the_config_folder(tmp_path: Path) -> None:
    config = parse_camera_config(
        {"driver": "scene", "timeline": [{"at": 0, "play": "media/a.png"}]}, base_dir=tmp_path
    )
    assert isinstance(config, SceneConfig)
    assert config.timeline[0].play == tmp_path / "media" / "a.png"


def test_a_timeline_file_is_read_relative_to_itself(tmp_path: Path) -> None:
    scenes = tmp_path / "scenes"
    _write_images(scenes / "street", [1, 2])
    cv2.imwrite(str(scenes / "down.png"), _gray(15))
    (scenes / "person-down.toml").write_text(
        '[[segment]]\nat = 0\nplay = "street"\n\n'
        '[[segment]]\nat = 1.5\nplay = "down.png"\n\n'
        "[[segment]]\nat = 3\nstall = true\n"
    )
    config = parse_camera_config(
        {"driver": "scene", "timeline_file": "scenes/person-down.toml"}, base_dir=tmp_path
    )
    assert isinstance(config, SceneConfig)
    segments = config.segments()
    assert segments == load_timeline(scenes / "person-down.toml")
    assert [s.play for s in segments] == [scenes / "street", scenes / "down.png", None]
    clock = ManualClock()
    with open_camera(config, clock=clock) as cam:
        levels = []
        for _ in range(35):
            frame = cam.read()
            levels.append(None if frame is None else _level(frame.image))
            clock.advance(0.1)
    assert levels == [1, 2] * 7 + [1] + [15] * 15 + [None] * 5


def test_a_wrong_timeline_file_is_named_with_its_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        '[[segment]]\nat = 0\nplay = "a.png"\n\n[[segment]]\nat = "soon"\nstall = true\n'
    )
    with pytest.raises(ValidationError) as err:
        parse_camera_config({"driver": "scene", "timeline_file": str(bad)})
    assert f"timeline file {bad}: segment.1.at:" in str(err.value)
    with pytest.raises(ValidationError, match="not valid TOML"):
        (tmp_path / "broken.toml").write_text("[[segment]\n")
        parse_camera_config({"driver": "scene", "timeline_file": str(tmp_path / "broken.toml")})
    with pytest.raises(ValidationError, match="cannot read it"):
        parse_camera_config({"driver": "scene", "timeline_file": str(tmp_path / "absent.toml")})


def test_segments_are_frozen_models() -> None:
    segment = SceneSegment(at=0, stall=True)
    with pytest.raises(ValidationError):
        segment.at = 3  # type: ignore[misc]


def test_only_the_scene_player_takes_an_injected_clock() -> None:
    config = parse_camera_config({"driver": "opencv", "source": "clip.avi"})
    with pytest.raises(ValueError, match="real time"):
        open_camera(config, clock=ManualClock())


def test_urls_lose_their_password_in_descriptions() -> None:
    assert (
        redact_url("rtsp://admin:s3cret@10.0.0.5:554/stream1")
        == "rtsp://admin:***@10.0.0.5:554/stream1"
    )
    assert redact_url("rtsp://10.0.0.5/stream1") == "rtsp://10.0.0.5/stream1"
    assert redact_url("/var/lib/citywatch/clip.mp4") == "/var/lib/citywatch/clip.mp4"


# -- picamera2 -----------------------------------------------------------------------------


def _picamera2_present() -> bool:
    try:
        import_picamera2()
    except CameraDriverMissing:
        return False
    return True


@pytest.mark.skipif(_picamera2_present(), reason="picamera2 is installed on this machine")
def test_a_missing_picamera2_is_reported_at_start_up_with_the_fix() -> None:
    config = Picamera2Config(driver="picamera2")
    with pytest.raises(CameraDriverMissing) as err:
        open_camera(config)
    assert "apt install python3-picamera2" in str(err.value)
    assert "--system-site-packages" in str(err.value)


@pytest.mark.hil
def test_picamera2_delivers_lores_frames_and_full_resolution_snapshots() -> None:
    if not _picamera2_present():
        pytest.skip("needs a Raspberry Pi with python3-picamera2 and a camera")
    config = Picamera2Config(driver="picamera2", lores_size=(640, 480), fps=10)
    with open_camera(config) as cam:
        frames = [cam.read(timeout=5.0) for _ in range(5)]
        jpeg = cam.snapshot()
    assert all(f is not None for f in frames)
    indices = [f.index for f in frames if f]
    assert indices == sorted(indices) and frames[0] and frames[0].image.shape[2] == 3
    photo = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert photo.shape[1] > frames[0].image.shape[1]  # main is larger than lores


# -- real footage (../shared/data) ----------------------------------------------------------


def _smoke(shared_data: Path, label: str) -> Path:
    with open(shared_data / "smoke" / "labels.csv", newline="") as f:
        return next(
            shared_data / "smoke" / row["file"]
            for row in csv.DictReader(f)
            if row["label"] == label
        )


def test_a_person_lies_on_the_ground_from_second_5(shared_data: Path) -> None:
    upright, lying = _smoke(shared_data, "upright"), _smoke(shared_data, "lying_ground")
    clock = ManualClock()
    config = _scene(
        {"at": 0, "play": str(upright)},
        {"at": 5, "play": str(lying)},
        size=[640, 480],
        lores_size=[320, 240],
    )
    expected = {
        p: cv2.resize(cv2.imread(str(p)), (640, 480), interpolation=cv2.INTER_AREA)
        for p in (upright, lying)
    }
    with SceneCamera(config, clock=clock) as cam:
        clock.advance(4.9)
        before = cam.read()
        photo_before = cam.snapshot()
        clock.advance(0.1)
        after = cam.read()
        photo_after = cam.snapshot()
    assert before is not None and after is not None
    assert (before.index, after.index) == (49, 50)
    for photo, source in ((photo_before, upright), (photo_after, lying)):
        decoded = cv2.imdecode(np.frombuffer(photo, np.uint8), cv2.IMREAD_COLOR).astype(int)
        assert np.abs(decoded - expected[source]).mean() < 4  # JPEG noise only
        other = expected[lying if source == upright else upright]
        assert np.abs(decoded - other).mean() > 10


def test_a_recorded_fall_plays_as_a_camera(shared_data: Path) -> None:
    video = shared_data / "gmdcsa24" / "Subject 1" / "Fall" / "13.mp4"
    if not video.is_file():
        pytest.skip(f"{video} is absent")
    clock = ManualClock()
    config = _scene({"at": 0, "play": str(video), "loop": False}, lores_size=[256, 192])
    with SceneCamera(config, clock=clock) as cam:
        frames = []
        for _ in range(30):
            frame = cam.read()
            assert frame is not None
            frames.append(frame)
            clock.advance(0.1)
        jpeg = cam.snapshot()
    assert all(f.size == (256, 192) for f in frames)
    # A fall is motion: consecutive frames differ somewhere in the three seconds.
    diffs = [
        np.abs(a.image.astype(int) - b.image.astype(int)).mean()
        for a, b in itertools.pairwise(frames)
    ]
    assert max(diffs) > 1.0
    native = cv2.VideoCapture(str(video))
    width = int(native.get(cv2.CAP_PROP_FRAME_WIDTH))
    native.release()
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape[1] == width
