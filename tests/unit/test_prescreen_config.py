"""The pre-screen configuration: strict, documented, errors naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from edge import PreScreenConfig, PreScreenConfigError, load_prescreen_config


def test_defaults_are_valid_and_documented() -> None:
    config = PreScreenConfig()
    assert config.model.input_size % 32 == 0
    assert config.motion.enabled and config.person_down.enabled and config.fight.enabled
    for section in (config.model, config.motion, config.person_down, config.fight):
        for name, field in type(section).model_fields.items():
            assert field.description, f"{type(section).__name__}.{name} has no description"


def test_unknown_keys_are_refused_with_file_and_key(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("[prescreen.person_down]\nstill_secs = 3\n")
    with pytest.raises(PreScreenConfigError) as info:
        load_prescreen_config(path, "prescreen")
    assert str(path) in str(info.value)
    assert "prescreen.person_down.still_secs" in str(info.value)


@pytest.mark.parametrize(
    ("toml", "key"),
    [
        ("[model]\ninput_size = 250\n", "model.input_size"),
        ("[model]\ntiles = [0, 2]\n", "model"),
        ("[model]\nroi = [0.5, 0.0, 0.4, 1.0]\n", "model"),
        (
            "[person_down]\nexclusion_zones = [[[0.1, 0.1], [0.2, 0.2]]]\n",
            "person_down.exclusion_zones.0",
        ),
        (
            "[person_down]\nground_region = [[0, 0.5], [1.5, 0.5], [1, 1]]\n",
            "person_down.ground_region",
        ),
        ('[[zones]]\nname = "frame"\npolygon = [[0, 0], [1, 0], [1, 1]]\n', "(top level)"),
        ("cooldown_seconds = -1\n", "cooldown_seconds"),
        ("[model]\nrotations = [90, 270]\n", "model"),
        ("[model]\nrotations = [0, 60]\n", "model.rotations.1"),
        ("[model]\nrotations = [0, 90, 90]\n", "model"),
        ("[model]\nlow_light = 300\n", "model.low_light"),
        ("[person_down]\nmin_torso_angle = true\n", "person_down.min_torso_angle"),
        ("[fight]\nmin_motion_change = 1.5\n", "fight.min_motion_change"),
        ("[fight]\nimage_group_distance = 0\n", "fight.image_group_distance"),
        ("[fight]\nmin_probability = 1.5\n", "fight.min_probability"),
        ("[fight]\nmin_probability = true\n", "fight.min_probability"),
    ],
)
def test_invalid_values_name_the_key(tmp_path: Path, toml: str, key: str) -> None:
    path = tmp_path / "prescreen.toml"
    path.write_text(toml)
    with pytest.raises(PreScreenConfigError, match=str(path)) as info:
        load_prescreen_config(path)
    assert key in str(info.value)


def test_a_full_configuration_loads(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("""
[prescreen]
cooldown_seconds = 300

[prescreen.model]
input_size = 320
threads = 4
tiles = [2, 1]
roi = [0.0, 0.2, 1.0, 1.0]

[prescreen.motion]
recheck_seconds = 1.5

[prescreen.person_down]
still_seconds = 8
ground_region = [[0, 0.4], [1, 0.4], [1, 1], [0, 1]]
exclusion_zones = [[[0.1, 0.6], [0.3, 0.6], [0.3, 0.8], [0.1, 0.8]]]

[[prescreen.zones]]
name = "crossing"
polygon = [[0.5, 0.5], [1, 0.5], [1, 1], [0.5, 1]]
""")
    config = load_prescreen_config(path, "prescreen")
    assert config.model.input_size == 320 and config.model.tiles == (2, 1)
    assert config.person_down.ground_region is not None
    assert config.zones[0].name == "crossing"
    assert config.cooldown_seconds == 300


def test_false_turns_the_new_cues_off_and_old_configs_still_load(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text("""
[prescreen.model]
input_size = 256
rotations = [0]
low_light = 0

[prescreen.person_down]
min_axis_angle = 60
min_aspect = 1.0
min_torso_angle = false

[prescreen.fight]
max_distance = 1.2
min_limb_speed = 2.0
min_motion_change = false
image_group_distance = false
""")
    config = load_prescreen_config(path, "prescreen")
    assert config.model.rotations == (0,) and config.model.low_light == 0.0
    assert config.person_down.min_torso_angle is None
    assert config.fight.min_motion_change is None and config.fight.image_group_distance is None
    assert config.fight.min_probability == 0.544, "the learned cue stays on by default"
    path.write_text("[prescreen.fight]\nmin_probability = false\n")
    assert load_prescreen_config(path, "prescreen").fight.min_probability is None
    # A configuration written before these settings existed keeps loading, with the new
    # cues at their defaults.
    path.write_text(
        "[prescreen.person_down]\nstill_seconds = 5\n"
        "ground_region = [[0.0, 0.45], [1.0, 0.45], [1.0, 1.0], [0.0, 1.0]]\n"
        "[prescreen.model]\ninput_size = 256\nthreads = 2\n"
    )
    old = load_prescreen_config(path, "prescreen")
    assert old.model.rotations == (0, 90, 270) and old.person_down.min_torso_angle == 55.0


def test_broken_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(PreScreenConfigError, match="no such file"):
        load_prescreen_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\n")
    with pytest.raises(PreScreenConfigError, match="not valid TOML"):
        load_prescreen_config(bad)


def test_config_is_frozen() -> None:
    config = PreScreenConfig()
    with pytest.raises(ValidationError):
        config.cooldown_seconds = 5  # type: ignore[misc]
