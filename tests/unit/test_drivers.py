"""Camera and GNSS drivers are keyed by type: every driver names the ``driver`` value of
its own configuration model, and the section's union and the registry list the same ones."""

from __future__ import annotations

import typing

import pytest

from hardware._gnss import GNSS_DRIVERS, GnssConfig, open_gnss, parse_gnss_config
from hardware.camera import CAMERA_DRIVERS, CameraConfig, open_camera, parse_camera_config


def _models(annotated: object) -> list[type]:
    union = typing.get_args(annotated)[0]
    return list(typing.get_args(union))


@pytest.mark.parametrize(
    ("section", "registry"), [(CameraConfig, CAMERA_DRIVERS), (GnssConfig, GNSS_DRIVERS)]
)
def test_every_model_has_its_driver(section: object, registry: dict[str, type]) -> None:
    keys = [typing.get_args(m.model_fields["driver"].annotation)[0] for m in _models(section)]
    assert sorted(keys) == sorted(registry)
    for key, driver in registry.items():
        assert driver.driver == key  # type: ignore[attr-defined]


def test_a_config_opens_the_driver_it_names() -> None:
    assert type(open_gnss(parse_gnss_config({"driver": "none"}))).driver == "none"
    gpsd = open_gnss(parse_gnss_config({"driver": "gpsd", "port": 2947}))
    assert type(gpsd).driver == "gpsd" and "2947" in gpsd.description
    camera = open_camera(parse_camera_config({"driver": "opencv", "source": "clip.mp4"}))
    assert type(camera).driver == "opencv"
    with pytest.raises(ValueError, match="real time"):
        open_camera(parse_camera_config({"driver": "opencv", "source": 0}), clock=lambda: 0.0)


def test_an_unknown_driver_is_refused_naming_the_choices() -> None:
    with pytest.raises(ValueError, match=r"gpsd.*none|none.*gpsd"):
        parse_gnss_config({"driver": "ublox"})
    with pytest.raises(ValueError, match="picamera2"):
        parse_camera_config({"driver": "webcam"})
