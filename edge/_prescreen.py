"""The pre-screen: motion gate -> pose model -> decision over time.

``PreScreen.process(frame, t)`` takes one camera frame (numpy ``uint8`` (H, W, 3), **BGR**
unless ``model.color_order = "rgb"``) and its time in seconds (monotonic; the camera's
timestamp or ``time.monotonic()``), and returns a ``FrameResult`` whose ``detections``
are the incidents to report now (``person_down`` / ``fight``, each once per incident).

``PreScreen.assess_image(frame)`` is the single-image check that ``citywatch edge eval``
measures: is a person-down posture (lying, on the ground region, outside exclusion
zones) present in this one image, with no time involved.

The configuration is ``PreScreenConfig`` (pydantic, unknown keys refused); the daemon's
config embeds it as its ``prescreen`` table. All coordinates in it are fractions of the
frame: x from the left, y from the top, 0..1.
"""

from __future__ import annotations

import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from ._decision import (
    DangerTracker,
    Detection,
    FightRule,
    PersonDownRule,
    PostureReading,
    PostureRule,
    close_group,
    read_posture,
)
from ._detector import Pose, PoseDetector
from ._errors import PreScreenConfigError
from ._models import MOVENET, default_models_dir, load_verified_model
from ._motion import GateDecision, MotionChaos, MotionGate

__all__ = [
    "FightConfig",
    "FrameResult",
    "ImageAssessment",
    "ModelConfig",
    "MotionGateConfig",
    "NamedZone",
    "PersonDownConfig",
    "PreScreen",
    "PreScreenConfig",
    "load_prescreen_config",
]


def _check_polygon(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    if len(points) < 3:
        raise ValueError("a polygon needs at least 3 points")
    for x, y in points:
        if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
            raise ValueError(f"point ({x}, {y}) is outside the frame: use fractions 0..1")
    return points


Polygon = Annotated[list[tuple[float, float]], AfterValidator(_check_polygon)]
"""[[x, y], ...], at least 3 points, fractions of the frame."""


def _false_is_off(value: object) -> object:
    if value is False:
        return None
    if value is True:
        raise ValueError("give a number, or false to turn this off")
    return value


OrOff = BeforeValidator(_false_is_off)
"""A threshold that ``false`` in TOML (None in Python) turns off."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """The pose model and how it runs."""

    models_dir: Path | None = Field(
        default=None,
        description="Folder of the installed models; default: $CITYWATCH_MODELS_DIR, "
        "<project>/var/models in a source checkout, /var/lib/citywatch/models on a pole.",
    )
    input_size: int = Field(
        default=320,
        ge=128,
        le=640,
        multiple_of=32,
        description="Long side of the model input in pixels (a multiple of 32). Larger "
        "finds smaller people and costs time roughly with the pixel count: 320 finds "
        "twice as many distant people lying down as 256 did, for 1.5x the time.",
    )
    threads: int = Field(default=2, ge=1, le=16, description="CPU threads for inference.")
    min_pose_score: float = Field(
        default=0.15,
        ge=0.0,
        le=1.0,
        description="People the model scores below this are ignored. Lying people score "
        "low (0.2-0.4 measured), so keep this low.",
    )
    min_keypoint_score: float = Field(
        default=0.2, ge=0.0, le=1.0, description="Keypoints below this score are not used."
    )
    tiles: tuple[int, int] = Field(
        default=(1, 1),
        description="[columns, rows]: also run the model on this grid of overlapping tiles "
        "(for small distant people); [1, 1] = whole frame only. Costs 1 + columns*rows "
        "inferences per frame.",
    )
    tile_overlap: float = Field(
        default=0.2, ge=0.0, le=0.5, description="Overlap of adjacent tiles."
    )
    roi: tuple[float, float, float, float] | None = Field(
        default=None,
        description="[x0, y0, x1, y1]: run the model on this part of the frame only (a crop "
        "of the region of interest: more pixels per person).",
    )
    color_order: Literal["bgr", "rgb"] = Field(
        default="bgr", description="Channel order of the frames the camera delivers."
    )
    rotations: tuple[Literal[0, 45, 90, 270, 315], ...] = Field(
        default=(0, 90, 270),
        description="Also run the model on the frame turned by these angles (degrees "
        "clockwise) and map the people found back: MoveNet, trained mostly on upright "
        "people, finds people lying down far more often in a turned frame. Must include "
        "0; each rotation costs one more inference per inferred frame. [0] = upright only.",
    )
    low_light: float = Field(
        default=60.0,
        ge=0.0,
        le=255.0,
        description="A frame whose mean grey level (0-255) is below this has its contrast "
        "equalised (CLAHE on the lightness) before the model sees it; 0 = never.",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if 0 not in self.rotations or len(set(self.rotations)) != len(self.rotations):
            raise ValueError("rotations must include 0 and name each angle once")
        if self.tiles[0] < 1 or self.tiles[1] < 1 or self.tiles[0] * self.tiles[1] > 16:
            raise ValueError("tiles must be [columns, rows], each at least 1, at most 16 tiles")
        if self.roi is not None:
            x0, y0, x1, y1 = self.roi
            if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
                raise ValueError(
                    "roi must be [x0, y0, x1, y1] with 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1"
                )
        return self


class MotionGateConfig(_Strict):
    """Skipping the model on still frames."""

    enabled: bool = Field(default=True, description="false: run the model on every frame.")
    width: int = Field(default=160, ge=16, le=1920, description="Width of the grey image compared.")
    pixel_threshold: int = Field(
        default=18,
        ge=1,
        le=255,
        description="Grey-level change that makes a pixel count as changed.",
    )
    min_changed_fraction: float = Field(
        default=0.003,
        ge=0.0,
        le=1.0,
        description="Fraction of changed pixels that counts as motion.",
    )
    recheck_seconds: float = Field(
        default=2.0,
        gt=0.0,
        le=60.0,
        description="Run the model at least this often even without motion, so a person "
        "lying still is not lost.",
    )


class PersonDownConfig(_Strict):
    """The person-down rule."""

    enabled: bool = Field(default=True, description="false: never report person_down.")
    min_axis_angle: float = Field(
        default=55.0,
        ge=0.0,
        le=90.0,
        description="Degrees from vertical of the body's main axis from which a person "
        "counts as lying (90 = horizontal), together with min_aspect.",
    )
    min_aspect: float = Field(
        default=0.8,
        ge=0.0,
        description="Box width/height (pixels) from which a person can be lying (with "
        "min_axis_angle).",
    )
    min_torso_angle: Annotated[float | None, OrOff] = Field(
        default=55.0,
        ge=0.0,
        le=180.0,
        description="Degrees from upright of the hips-to-shoulders line from which a "
        "person counts as down (falling or lying) whatever the box and legs do (90 = "
        "horizontal, 180 = head down). false: only the axis and aspect rule.",
    )
    min_keypoints: int = Field(
        default=5, ge=2, le=17, description="Confident keypoints needed to judge a posture."
    )
    still_seconds: float = Field(
        default=5.0,
        ge=0.0,
        description="How long a person must lie, without moving along the ground, before "
        "it is reported.",
    )
    still_tolerance: float = Field(
        default=0.3,
        gt=0.0,
        description="How far (in body lengths) the centre may drift while lying still.",
    )
    ground_region: Polygon | None = Field(
        default=None,
        description="Where the ground is in the picture; a lying person's centre must be "
        "inside. None: anywhere. Draw it per camera to ignore beds, tables, walls.",
    )
    exclusion_zones: list[Polygon] = Field(
        default_factory=list,
        description="Polygons where lying is normal (a bench): a person whose centre is "
        "inside is never reported as down.",
    )


class FightConfig(_Strict):
    """The fight rule over a short window: the learned cue (min_probability; people in
    view, how close, limb speed and the scene's motion in one logistic model), or with
    min_probability = false the two hand-set cues: fast limbs of people close together,
    or violent disorderly motion with at least min_people people in view."""

    enabled: bool = Field(default=True, description="false: never report fight.")
    min_people: int = Field(default=2, ge=2, le=6, description="People involved, at least.")
    max_distance: float = Field(
        default=1.0, gt=0.0, description="Limbs cue: centres at most this many body lengths apart."
    )
    min_limb_speed: float = Field(
        default=1.2,
        gt=0.0,
        description="Limbs cue: 75th percentile of the group's elbow and wrist speeds "
        "relative to the shoulders over the window, in body lengths per second. Measured "
        "on surveillance clips (input 256, every person of the clip): fights 0.74 (median "
        "clip), no fights 0.38; keypoint jitter alone gives 0.3-0.4.",
    )
    window_seconds: float = Field(
        default=2.0, gt=0.0, description="Time the speeds and the motion are taken over."
    )
    min_frames: int = Field(
        default=4,
        ge=2,
        description="Limb speeds (limbs cue) or motion samples (chaos cue) in the window, "
        "at least.",
    )
    min_motion_change: Annotated[float | None, OrOff] = Field(
        default=0.08,
        gt=0.0,
        le=1.0,
        description="Chaos cue: median fraction of the small image's pixels whose motion "
        "speed changes sharply from one 0.1 s step to the next. Measured: fights 0.09 "
        "(median clip), no fights 0.02. false: the chaos cue is not used.",
    )
    min_motion_spread: float = Field(
        default=0.3,
        ge=0.0,
        le=1.0,
        description="Chaos cue: median spread of the moving pixels' directions (0 = all one "
        "way, as a walker or a passing car; 1 = every way).",
    )
    min_probability: Annotated[float | None, OrOff] = Field(
        default=0.544,
        ge=0.0,
        le=1.0,
        description="The learned cue: report a fight when the logistic model over the "
        "window's people and motion (edge._decision.fight_probability, fitted by "
        "bench/fit_fight.py) reaches this, with at least min_people people in view; it "
        "replaces the limbs and chaos cues (their thresholds above are then unused). "
        "0.544 (the mean over smooth_frames) flags 3 of the 38 no-fight tuning clips. "
        "The report's score is 0.5 at this threshold, 1 at certainty. false: the limbs "
        "and chaos cues.",
    )
    smooth_frames: int = Field(
        default=5,
        ge=1,
        le=20,
        description="The learned cue decides on the mean of its probability over this many "
        "inferred frames in a row with min_people people in view (within window_seconds), "
        "once there are that many: 5 at 10 fps is half a second. 1: each frame alone.",
    )
    motion_width: int = Field(
        default=160,
        ge=32,
        le=640,
        description="Width in pixels of the grey image the chaos cue's optical flow runs "
        "on (cost grows with its area).",
    )
    image_group_distance: Annotated[float | None, OrOff] = Field(
        default=2.0,
        gt=0.0,
        description="Single-image check (assess_image): at least min_people people whose "
        "centres are at most this many body lengths apart make a close group that could "
        "be a fight, which the image's `flagged` escalates (one picture shows no motion, "
        "so this is a wide net for the server to judge). false: groups are not flagged.",
    )


class NamedZone(_Strict):
    """A part of the picture with its own cool-down (a crossing, a park entrance)."""

    name: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.-]+$")
    polygon: Polygon


class PreScreenConfig(_Strict):
    """Everything the pre-screen needs; the daemon config's ``prescreen`` table."""

    model: ModelConfig = Field(default_factory=lambda: ModelConfig())
    motion: MotionGateConfig = Field(default_factory=lambda: MotionGateConfig())
    person_down: PersonDownConfig = Field(default_factory=lambda: PersonDownConfig())
    fight: FightConfig = Field(default_factory=lambda: FightConfig())
    cooldown_seconds: float = Field(
        default=120.0,
        ge=0.0,
        description="A zone reports the same label again only this long after its last "
        "incident was last seen.",
    )
    zones: list[NamedZone] = Field(
        default_factory=list,
        description="Named zones, first match wins; a detection outside all of them is in "
        "zone 'frame'.",
    )

    @model_validator(mode="after")
    def _unique_zones(self) -> PreScreenConfig:
        names = [z.name for z in self.zones]
        if len(names) != len(set(names)) or "frame" in names:
            raise ValueError("zone names must be unique and not 'frame'")
        return self


def _describe(error: ValidationError) -> str:
    parts = []
    for item in error.errors():
        key = ".".join(str(p) for p in item["loc"]) or "(top level)"
        parts.append(f"{key}: {item['msg']}")
    return "; ".join(parts)


def load_prescreen_config(path: Path, table: str | None = None) -> PreScreenConfig:
    """Read a ``PreScreenConfig`` from a TOML file (from ``[table]`` if given); errors name
    the file and the key."""
    try:
        data: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PreScreenConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PreScreenConfigError(f"{path}: cannot be read ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise PreScreenConfigError(f"{path}: not valid TOML ({exc})") from None
    if table is not None:
        section = data.get(table, {})
        if not isinstance(section, dict):
            raise PreScreenConfigError(f"{path}: {table} must be a table")
        data = section
    try:
        return PreScreenConfig.model_validate(data)
    except ValidationError as exc:
        prefix = f"{table}." if table else ""
        raise PreScreenConfigError(f"{path}: {prefix}{_describe(exc)}") from None


@dataclass(frozen=True)
class FrameResult:
    """What the pre-screen made of one frame."""

    frame_time: float
    """As passed in."""
    inferred: bool
    """The pose model ran on this frame (the motion gate let it through)."""
    gate: GateDecision
    """The motion gate's decision."""
    poses: tuple[Pose, ...]
    """People found (empty when not inferred)."""
    detections: tuple[Detection, ...]
    """Incidents to report now."""
    inference_seconds: float
    """Time spent in the model for this frame."""


@dataclass(frozen=True)
class ImageAssessment:
    """The single-image check: what the pre-screen would escalate for this one frame."""

    person_down: bool
    """A person-down posture (lying or falling, on the ground region, outside exclusion
    zones) is present."""
    score: float
    """Best lying score among the people, 0..1."""
    poses: tuple[Pose, ...]
    """People found."""
    readings: tuple[PostureReading | None, ...]
    """Posture of each pose (None: too few keypoints)."""
    close_group: bool = False
    """At least ``fight.min_people`` people within ``fight.image_group_distance`` body
    lengths of each other: a group that could be a fight (always False when the fight
    rule is disabled or image_group_distance is None)."""

    @property
    def flagged(self) -> bool:
        """The pre-screen would escalate this frame: a person down, or a close group that
        could be a fight."""
        return self.person_down or self.close_group


class PreScreen:
    """Motion gate + pose model + decision, for one camera."""

    def __init__(self, config: PreScreenConfig, detector: PoseDetector) -> None:
        self.config = config
        self.detector = detector
        mc, pd = config.model, config.person_down
        self.gate = MotionGate(
            enabled=config.motion.enabled,
            width=config.motion.width,
            pixel_threshold=config.motion.pixel_threshold,
            min_changed_fraction=config.motion.min_changed_fraction,
            recheck_seconds=config.motion.recheck_seconds,
            color_order=mc.color_order,
        )
        self.posture_rule = PostureRule(
            min_axis_angle=pd.min_axis_angle,
            min_aspect=pd.min_aspect,
            min_torso_angle=pd.min_torso_angle,
            min_keypoints=pd.min_keypoints,
            min_keypoint_score=mc.min_keypoint_score,
            ground_region=tuple(pd.ground_region) if pd.ground_region else None,
            exclusion_zones=tuple(tuple(z) for z in pd.exclusion_zones),
        )
        fc = config.fight
        self.tracker = DangerTracker(
            self.posture_rule,
            PersonDownRule(still_seconds=pd.still_seconds, still_tolerance=pd.still_tolerance),
            FightRule(
                enabled=fc.enabled,
                min_people=fc.min_people,
                max_distance=fc.max_distance,
                min_limb_speed=fc.min_limb_speed,
                window_seconds=fc.window_seconds,
                min_frames=fc.min_frames,
                min_motion_change=fc.min_motion_change,
                min_motion_spread=fc.min_motion_spread,
                min_probability=fc.min_probability,
                min_people_learned=fc.min_people,
                smooth_frames=fc.smooth_frames,
            ),
            zones=[(z.name, z.polygon) for z in config.zones],
            cooldown_seconds=config.cooldown_seconds,
            person_down_enabled=pd.enabled,
        )
        self.chaos = (
            MotionChaos(width=fc.motion_width, color_order=mc.color_order)
            if fc.enabled and (fc.min_motion_change is not None or fc.min_probability is not None)
            else None
        )
        self.frames = 0
        self.inferences = 0

    @classmethod
    def from_config(cls, config: PreScreenConfig | None = None) -> PreScreen:
        """Load the verified model named by the config (raises ``ModelError`` when it is
        missing or wrong, ``InferenceRuntimeError`` when no runtime is installed)."""
        config = config or PreScreenConfig()
        mc = config.model
        models_dir = mc.models_dir if mc.models_dir is not None else default_models_dir()
        detector = PoseDetector(
            load_verified_model(models_dir / MOVENET.name, MOVENET),
            input_size=mc.input_size,
            threads=mc.threads,
            min_pose_score=mc.min_pose_score,
            tiles=mc.tiles,
            tile_overlap=mc.tile_overlap,
            roi=mc.roi,
            color_order=mc.color_order,
            rotations=mc.rotations,
            low_light=mc.low_light,
        )
        return cls(config, detector)

    @property
    def model_name(self) -> str:
        return self.detector.model_name

    def process(self, frame: npt.NDArray[np.uint8], t: float) -> FrameResult:
        """Run one frame through gate, model (if the gate says so) and decision."""
        self.frames += 1
        chaos = self.chaos.update(frame, t) if self.chaos is not None else None
        gate = self.gate.check(frame, t)
        poses: tuple[Pose, ...] = ()
        spent = 0.0
        if gate.infer:
            start = time.perf_counter()
            poses = self.detector.detect(frame)
            spent = time.perf_counter() - start
            self.inferences += 1
            detections = self.tracker.update(poses, t, chaos)
        else:
            detections = self.tracker.update(None, t, chaos)
        return FrameResult(t, gate.infer, gate, poses, tuple(detections), spent)

    def assess_image(self, frame: npt.NDArray[np.uint8]) -> ImageAssessment:
        """What would the pre-screen escalate for this one image: a person-down posture,
        a close group? (No time, no tracking: ``flagged`` is either.)"""
        poses = self.detector.detect(frame)
        readings = tuple(read_posture(p, self.posture_rule) for p in poses)
        down = [r for r in readings if r is not None and r.down]
        fc = self.config.fight
        group = (
            fc.enabled
            and fc.image_group_distance is not None
            and close_group(poses, readings, fc.min_people, fc.image_group_distance)
        )
        return ImageAssessment(
            bool(down) and self.config.person_down.enabled,
            max((r.score for r in down), default=0.0),
            poses,
            readings,
            group,
        )
