"""Privacy masks on the scene player: every frame the pole reads and every snapshot it
takes through ``MaskedCamera`` (what the edge daemon wraps its camera in) is black inside
the masks, at the detection size and the full size alike, while the rest of the view is
untouched; masks out of the frame are refused naming the key; ``edge mask-preview``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from edge._privacy import MaskedCamera, MaskPolygon, PrivacyConfig, PrivacyMask
from hardware.camera import SceneCamera, parse_camera_config

ROOT = Path(__file__).resolve().parents[2]
WINDOW = [[0.55, 0.1], [0.95, 0.1], [0.95, 0.45], [0.55, 0.45]]
TRIANGLE = [[0.05, 0.9], [0.3, 0.55], [0.4, 0.95]]


def _view(path: Path, size: tuple[int, int] = (640, 480)) -> np.ndarray:
    """A busy picture: seeded noise everywhere, so a leaked pixel is never black by luck."""
    rng = np.random.default_rng(7)
    img = rng.integers(40, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    cv2.imwrite(str(path), img)
    return img


def _camera(tmp_path: Path) -> SceneCamera:
    still = tmp_path / "view.png"
    _view(still)
    cfg = parse_camera_config(
        {
            "driver": "scene",
            "fps": 20.0,
            "size": [640, 480],
            "lores_size": [320, 240],
            "timeline": [{"at": 0.0, "play": str(still)}],
        }
    )
    cam = SceneCamera.from_config(cfg)
    assert isinstance(cam, SceneCamera)
    return cam


def _mask() -> PrivacyMask:
    return PrivacyMask.from_config(
        PrivacyConfig.model_validate(
            {"masks": [{"name": "windows", "points": WINDOW}, {"points": TRIANGLE}]}
        )
    )


def _interior(stencil: np.ndarray, margin: int) -> np.ndarray:
    """The stencil shrunk by ``margin`` pixels (away from JPEG's ringing at the edges)."""
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(stencil.astype(np.uint8), kernel).astype(bool)


def test_no_masked_pixel_leaves_the_camera(tmp_path: Path) -> None:
    mask = _mask()
    camera = MaskedCamera(_camera(tmp_path), mask)
    camera.start()
    try:
        frames = [f for f in (camera.read(timeout=2.0) for _ in range(15)) if f is not None]
        jpeg = camera.snapshot()
    finally:
        camera.stop()
    assert len(frames) >= 10
    for frame in frames:
        h, w = frame.image.shape[:2]
        assert (w, h) == (320, 240)
        inside = mask.stencil(h, w)
        assert inside.any() and not inside.all()
        assert int(frame.image[inside].max()) == 0  # every masked pixel, every frame
        assert int(frame.image[~inside].min()) > 0  # the rest is the view, untouched
        assert not frame.image.flags.writeable  # still a shared, read-only frame
    snap = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert snap.shape[:2] == (480, 640)
    inside = mask.stencil(480, 640)
    # JPEG blurs across the edge by one 16-pixel block (chroma) at most; inside that,
    # nothing of the view: black, but for the encoder's rounding.
    assert int(snap[_interior(inside, 16)].max()) <= 4
    outside = ~_interior(~inside, 16)
    assert float(snap[~outside].mean()) > 100


def test_the_stencil_covers_the_polygon_generously() -> None:
    mask = PrivacyMask(
        [MaskPolygon(points=[(0.25, 0.25), (0.75, 0.25), (0.75, 0.75), (0.25, 0.75)])]
    )
    stencil = mask.stencil(100, 100)
    # Every pixel whose centre lies inside the square is masked, its edge ones too.
    assert stencil[25:75, 25:75].all()
    assert not stencil[:23].any() and not stencil[77:].any()
    whole = PrivacyMask([MaskPolygon(points=[(0, 0), (1, 0), (1, 1), (0, 1)])])
    assert whole.stencil(37, 53).all()


@pytest.mark.parametrize(
    ("points", "words"),
    [
        ([[0.1, 0.1], [1.2, 0.1], [0.5, 0.5]], "outside the frame"),
        ([[0.1, 0.1], [0.2, 0.2]], "at least 3"),
        ([[0.1, 0.1], [0.9, 0.9], [0.9, 0.1], [0.1, 0.9]], "crosses itself"),
        ([[0.1, 0.1], [0.2, 0.2], [0.3, 0.3]], "no area"),
    ],
)
def test_bad_masks_are_refused_saying_why(points: list[list[float]], words: str) -> None:
    with pytest.raises(ValidationError, match=words):
        PrivacyConfig.model_validate({"masks": [{"name": "w", "points": points}]})


def _device_config(tmp_path: Path, masks: str) -> Path:
    still = tmp_path / "view.png"
    _view(still)
    conf = tmp_path / "edge.toml"
    conf.write_text(
        'uid = "pole-1"\nkid_hex = "0011223344556677"\nzone = "z1"\n'
        "[position]\nlat = 52.2\nlon = 21.0\n"
        '[key_store]\nmodule = "/nonexistent.so"\npin = "1234"\n'
        '[broker]\nhost = "127.0.0.1"\nport = 1883\n'
        f'[camera]\ndriver = "scene"\nfps = 5.0\n[[camera.timeline]]\nat = 0.0\n'
        f'play = "{still}"\n' + masks
    )
    return conf


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "citywatch.cli", "edge", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_mask_preview_from_the_camera(tmp_path: Path) -> None:
    conf = _device_config(tmp_path, f'[[privacy.masks]]\nname = "windows"\npoints = {WINDOW}\n')
    out = tmp_path / "preview.png"
    done = _cli("mask-preview", "--config", str(conf), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert "1 privacy mask(s)" in done.stdout and "hidden" in done.stdout
    img = cv2.imread(str(out))
    assert img.shape[:2] == (480, 640)
    # Red outline around a black window.
    assert (img[100:190, 390:590] == 0).all()
    assert img[:, :, 2].max() == 255


def test_a_mask_out_of_the_frame_in_the_device_config(tmp_path: Path) -> None:
    conf = _device_config(
        tmp_path, "[[privacy.masks]]\npoints = [[0.5, 0.5], [1.5, 0.5], [0.5, 0.9]]\n"
    )
    done = _cli("mask-preview", "--config", str(conf), "--out", str(tmp_path / "p.png"))
    assert done.returncode != 0
    assert "privacy.masks[0].points" in done.stderr and "outside the frame" in done.stderr
    assert not (tmp_path / "p.png").exists()
