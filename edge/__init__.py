"""The street-pole device: pre-screen (motion gate, pose model, decision), models, eval.

Frames are numpy ``uint8`` arrays (height, width, 3) in BGR order (OpenCV's and
picamera2 ``RGB888``'s), times are seconds; coordinates leaving the package are
fractions of the frame (x from the left, y from the top). Exceptions: see ``_errors``.
"""

from ._decision import DangerTracker, Detection, PostureReading, point_in_polygon, read_posture
from ._detector import KEYPOINT_NAMES, BBox, Pose, PoseDetector, load_interpreter_class
from ._errors import (
    EdgeError,
    EvalError,
    InferenceRuntimeError,
    ModelError,
    PreScreenConfigError,
    UsageError,
)
from ._eval import (
    EvalReport,
    LabelCount,
    LabelledImage,
    SampledFrame,
    VideoOutcome,
    evaluate_images,
    evaluate_videos,
    parse_activity_ranges,
    read_labels,
    sample_gmdcsa24,
)
from ._models import (
    MODEL_PINS,
    MOVENET,
    POLE_MODELS_DIR,
    InstallResult,
    ModelPin,
    default_models_dir,
    install_models,
    load_verified_model,
    model_status,
    verify_model,
)
from ._motion import GateDecision, MotionGate
from ._prescreen import (
    FightConfig,
    FrameResult,
    ImageAssessment,
    ModelConfig,
    MotionGateConfig,
    NamedZone,
    PersonDownConfig,
    PreScreen,
    PreScreenConfig,
    load_prescreen_config,
)

__all__ = [
    "KEYPOINT_NAMES",
    "MODEL_PINS",
    "MOVENET",
    "POLE_MODELS_DIR",
    "BBox",
    "DangerTracker",
    "Detection",
    "EdgeError",
    "EvalError",
    "EvalReport",
    "FightConfig",
    "FrameResult",
    "GateDecision",
    "ImageAssessment",
    "InferenceRuntimeError",
    "InstallResult",
    "LabelCount",
    "LabelledImage",
    "ModelConfig",
    "ModelError",
    "ModelPin",
    "MotionGate",
    "MotionGateConfig",
    "NamedZone",
    "PersonDownConfig",
    "Pose",
    "PoseDetector",
    "PostureReading",
    "PreScreen",
    "PreScreenConfig",
    "PreScreenConfigError",
    "SampledFrame",
    "UsageError",
    "VideoOutcome",
    "default_models_dir",
    "evaluate_images",
    "evaluate_videos",
    "install_models",
    "load_interpreter_class",
    "load_prescreen_config",
    "load_verified_model",
    "model_status",
    "parse_activity_ranges",
    "point_in_polygon",
    "read_labels",
    "read_posture",
    "sample_gmdcsa24",
    "verify_model",
]
