"""``citywatch edge config example`` and ``edge config check FILE``, and ``edge run``
refusing a config it cannot run before it touches anything: through the real console
entry point (exit status 2 and one line on stderr, never a traceback)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from citywatch.cli import main
from edge._cli_config import example_config
from edge._config import load_config, prescreen_config_from_file

HAS_PICAMERA2 = importlib.util.find_spec("picamera2") is not None


def _opencv(text: str) -> str:
    """The example with a USB camera in place of the Pi camera."""
    camera = re.search(r"^\[camera\]\n.*?(?=^\[gnss\])", text, flags=re.S | re.M)
    assert camera is not None
    return text.replace(camera.group(0), '[camera]\ndriver = "opencv"\nsource = 0\n\n')


def _write(tmp_path: Path, text: str, name: str = "edge.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    (tmp_path / "token.pin").write_text("1234\n")
    return path


def _check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = main(["edge", "config", "check", str(path)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_the_example_is_printed_and_is_a_complete_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["edge", "config", "example"]) == 0
    printed = capsys.readouterr().out
    assert printed == example_config()
    cfg = load_config(_write(tmp_path, printed))
    assert cfg.camera["driver"] == "picamera2"
    assert cfg.gnss == {"driver": "gpsd", "host": "127.0.0.1", "port": 2947, "max_age_s": 5.0}
    assert len(cfg.privacy["masks"]) == 1
    assert cfg.prescreen["cooldown_seconds"] == 120.0


def test_a_valid_config_gets_a_one_line_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _check(_write(tmp_path, _opencv(example_config())), capsys)
    assert (rc, err) == (0, "")
    assert out.count("\n") == 1
    assert "valid: pole-0042 (kid 0123456789abcdef, zone old-town)" in out
    assert "camera opencv" in out and "gpsd at 127.0.0.1:2947" in out
    assert "1 privacy mask(s)" in out and "broker.example:8883 (TLS)" in out


@pytest.mark.skipif(HAS_PICAMERA2, reason="picamera2 is installed here")
def test_picamera2_without_picamera2_says_how_to_install_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, err = _check(_write(tmp_path, example_config()), capsys)
    assert rc == 2 and out == ""
    assert 'camera.driver: "picamera2" is set, but picamera2 is not installed' in err
    assert "apt install python3-picamera2" in err and "--system-site-packages" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda t: t.replace("[[0.62, 0.05], [0.98", "[[1.62, 0.05], [0.98"),
            "privacy.masks[0].points: point [1.62, 0.05] is outside the frame",
        ),
        (
            lambda t: re.sub(r'^\[camera\]\ndriver = "opencv"\nsource = 0\n', "", t, flags=re.M),
            "camera: missing: say which camera to use",
        ),
        (
            lambda t: t.replace('driver = "opencv"', 'driver = "usb"'),
            "camera.driver: 'usb' is not a camera driver: set driver to one of \"picamera2\"",
        ),
        (lambda t: t.replace('driver = "opencv"\n', ""), "camera.driver: is missing"),
        (
            lambda t: t.replace("port = 2947", "port = 70000"),
            "gnss.gpsd.port: Input should be less than or equal to 65535",
        ),
        (
            lambda t: t.replace(
                "[prescreen.fight]\nenabled = true", "[prescreen.fight]\nenabeld = true"
            ),
            "prescreen.fight.enabeld: unknown key",
        ),
        (
            lambda t: t.replace('host = "broker.example"', 'hots = "broker.example"'),
            "broker.hots: unknown key",
        ),
    ],
)
def test_bad_input_names_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: object, expected: str
) -> None:
    assert callable(change)
    text = change(_opencv(example_config()))
    assert text != _opencv(example_config())
    path = _write(tmp_path, text)
    rc, out, err = _check(path, capsys)
    assert rc == 2 and out == ""
    assert err.startswith(f"citywatch: {path}: ")
    assert expected in err
    assert "Traceback" not in err


def test_a_missing_file_says_how_to_write_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, _, err = _check(tmp_path / "absent.toml", capsys)
    assert rc == 2 and "cannot read the device config" in err


@pytest.mark.skipif(HAS_PICAMERA2, reason="picamera2 is installed here")
def test_run_refuses_picamera2_without_it_before_touching_anything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = example_config().replace('state_dir = "/var/lib/citywatch/edge"', 'state_dir = "state"')
    path = _write(tmp_path, text)
    assert main(["edge", "run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "picamera2 is not installed" in err and "Traceback" not in err
    assert not (tmp_path / "state").exists()


def test_the_prescreen_loader_reads_a_device_config_or_a_bare_file(tmp_path: Path) -> None:
    device = _write(tmp_path, _opencv(example_config()))
    assert prescreen_config_from_file(device).cooldown_seconds == 120.0
    bare = tmp_path / "prescreen.toml"
    bare.write_text("cooldown_seconds = 7.5\n")
    assert prescreen_config_from_file(bare).cooldown_seconds == 7.5
    assert prescreen_config_from_file(None).cooldown_seconds == 120.0


def test_show_prints_the_file_s_settings_as_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import tomllib

    path = _write(tmp_path, _opencv(example_config()))
    assert main(["edge", "config", "show", str(path)]) == 0
    assert json.loads(capsys.readouterr().out) == tomllib.loads(path.read_text())
    bad = _write(tmp_path, "uid = 1\n", name="bad.toml")
    assert main(["edge", "config", "show", str(bad)]) == 2
    assert f"{bad}: uid: Input should be a valid string" in capsys.readouterr().err
