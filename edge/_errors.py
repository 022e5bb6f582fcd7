"""Exceptions of the edge package.

    EdgeError
    ├── ModelError               a model file is missing, has the wrong size or checksum,
    │                            or cannot be installed: run ``citywatch edge models install``
    ├── InferenceRuntimeError    neither LiteRT (``ai-edge-litert``) nor ``tflite-runtime`` is
    │                            importable, or the runtime rejects the model
    ├── PreScreenConfigError     a pre-screen configuration file is unreadable or invalid
    │                            (the message names the file and the key)
    ├── EvalError                an evaluation input (labels CSV, image, video) is unusable
    └── UsageError               a command-line option, or a file it names, is unusable

All of them are problems the operator can fix; messages say what is wrong and what to do.
A frame of the wrong shape or type is a programming error and raises ``ValueError``.
"""

from __future__ import annotations

__all__ = [
    "EdgeError",
    "EvalError",
    "InferenceRuntimeError",
    "ModelError",
    "PreScreenConfigError",
    "UsageError",
]


class EdgeError(Exception):
    """Base of every error raised by the ``edge`` package."""


class ModelError(EdgeError):
    """A model file is missing, corrupt or cannot be installed."""


class InferenceRuntimeError(EdgeError):
    """No TFLite runtime is installed, or it cannot load the model."""


class PreScreenConfigError(EdgeError):
    """A pre-screen configuration file is unreadable or has a wrong key or value."""


class EvalError(EdgeError):
    """An evaluation input (labels CSV, image folder, video data set) is unusable."""


class UsageError(EdgeError):
    """A ``citywatch edge`` option, or the file it names, cannot be used as given."""
