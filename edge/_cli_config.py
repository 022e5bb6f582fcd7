"""``citywatch edge config example`` and ``citywatch edge config check FILE``: a complete
commented device config to start from, and checking one before the daemon reads it.

``check`` validates every section the daemon validates at start-up (identity, key store,
broker, camera, GNSS, pre-screen, privacy masks) and also whether the camera driver's
library is importable, so that a unit never restarts into a config it cannot run.
``show`` prints a file's settings as JSON (deployment tools read the provisioned
identity from it).
"""

from __future__ import annotations

import argparse
import json
import sys
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from ._config import DEFAULT_CONFIG_PATH, EdgeConfigError, load_config
from ._errors import UsageError

__all__ = ["check_config", "example_config", "register_config_commands"]


def example_config() -> str:
    """The commented example config (``citywatch edge config example``)."""
    return resources.files("edge").joinpath("example.toml").read_text(encoding="utf-8")


def register_config_commands(sub: argparse._SubParsersAction[Any]) -> None:
    """Add ``config example`` and ``config check`` to the ``edge`` subcommands."""
    cfg = sub.add_parser("config", help="example config, check a config")
    csub = cfg.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    ex = csub.add_parser("example", help="print a complete commented device config")
    ex.set_defaults(func=_config_example)
    chk = csub.add_parser(
        "check",
        help="validate a device config; exit 0 with a summary, 2 with what is wrong",
        description="Validate every section the daemon reads (identity, key store, broker, "
        "camera, GNSS, pre-screen, privacy masks) and that the camera driver's "
        "library is installed. Reads nothing but the file (no token, no broker).",
    )
    chk.add_argument(
        "config",
        type=Path,
        nargs="?",
        default=DEFAULT_CONFIG_PATH,
        metavar="FILE",
        help=f"device config (default {DEFAULT_CONFIG_PATH})",
    )
    chk.set_defaults(func=_config_check)
    show = csub.add_parser(
        "show",
        help="print a device config's settings as one JSON object",
        description="Validate the file as `edge run` reads it (without the camera driver's "
        "check) and print its settings as written, as JSON: what deployment "
        "tools read the provisioned identity from.",
    )
    show.add_argument(
        "config",
        type=Path,
        nargs="?",
        default=DEFAULT_CONFIG_PATH,
        metavar="FILE",
        help=f"device config (default {DEFAULT_CONFIG_PATH})",
    )
    show.set_defaults(func=_config_show)


def check_config(path: Path) -> str:
    """The one-line summary of a valid config; ``EdgeConfigError`` naming the file, the
    key and what to do otherwise."""
    from hardware.camera import CAMERA_DRIVERS, CameraDriverMissing, import_picamera2

    from ._daemon import PipelineSettings

    cfg = load_config(path)
    named = cfg.camera.get("driver")
    if cfg.camera and named not in CAMERA_DRIVERS:
        known = ", ".join(f'"{d}"' for d in CAMERA_DRIVERS)
        what = "is missing" if named is None else f"{named!r} is not a camera driver"
        raise EdgeConfigError(
            f"{path}: camera.driver: {what}: set driver to one of {known} (docs/edge.md, [camera])"
        )
    settings = PipelineSettings.from_config(
        cfg, name=str(path), base_dir=Path(path).resolve().parent
    )
    driver = settings.camera.driver
    if driver == "picamera2":
        try:
            import_picamera2()
        except CameraDriverMissing as exc:
            raise EdgeConfigError(f'{path}: camera.driver: "picamera2" is set, but {exc}') from None
    gnss = settings.gnss
    gnss_text = (
        f"gpsd at {gnss.host}:{gnss.port}"
        if gnss.driver == "gpsd"
        else "no receiver (the registered position)"
    )
    masks = len(settings.privacy.masks)
    tls = "TLS" if cfg.broker.tls is not None else "plain TCP"
    return (
        f"{path}: valid: {cfg.uid} (kid {cfg.kid_hex.lower()}, zone {cfg.zone}), camera "
        f"{driver}, GNSS {gnss_text}, {masks} privacy mask(s), broker "
        f"{cfg.broker.host}:{cfg.broker.port} ({tls})"
    )


def _config_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config())
    return 0


def _config_show(args: argparse.Namespace) -> int:
    try:
        load_config(args.config)  # refuses what the daemon would refuse
        data = tomllib.loads(Path(args.config).read_text(encoding="utf-8"))
    except EdgeConfigError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(data, default=str, sort_keys=True))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    try:
        print(check_config(args.config))
    except EdgeConfigError as exc:
        raise UsageError(str(exc)) from None
    return 0
