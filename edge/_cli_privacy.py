"""``citywatch edge mask-preview``: an image of the pole's view with its privacy masks
as the pole applies them (black), outlined and named, to check them on site."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from hardware.camera import CameraError, open_camera

from ._config import DEFAULT_CONFIG_PATH, EdgeConfigError, load_config
from ._errors import UsageError
from ._privacy import PrivacyMask

__all__ = ["register_privacy_commands"]


def register_privacy_commands(sub: argparse._SubParsersAction[Any]) -> None:
    p = sub.add_parser(
        "mask-preview",
        help="write an image of the view with the privacy masks applied",
        description="Take a snapshot from the configured camera (or read --image), black "
        "out the [[privacy.masks]] polygons as the pole does, outline and name "
        "them, and write the result to --out (PNG or JPEG by its suffix).",
    )
    p.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"device config (default {DEFAULT_CONFIG_PATH})",
    )
    p.add_argument("--image", type=Path, help="use this picture of the view, not the camera")
    p.add_argument("--out", type=Path, required=True, help="the image to write")
    p.set_defaults(func=mask_preview)


def mask_preview(args: argparse.Namespace) -> int:
    from ._daemon import PipelineSettings

    try:
        cfg = load_config(args.config)
        settings = PipelineSettings.from_config(
            cfg, name=str(args.config), base_dir=Path(args.config).resolve().parent
        )
    except EdgeConfigError as exc:
        raise UsageError(str(exc)) from None
    mask = PrivacyMask.from_config(settings.privacy)
    if args.image is not None:
        view = cv2.imread(str(args.image), cv2.IMREAD_COLOR)
        if view is None:
            raise UsageError(f"{args.image}: not an image OpenCV can read")
    else:
        camera = open_camera(settings.camera)
        try:
            camera.start()
            try:
                if camera.read(timeout=10.0) is None:  # a snapshot is of the newest frame
                    raise UsageError("camera: no frame within 10 s")
                jpeg = camera.snapshot()
            finally:
                camera.stop()
        except CameraError as exc:
            raise UsageError(f"camera: {exc}") from None
        view = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
        if view is None:
            raise UsageError("the camera's snapshot is not a JPEG")
    if not cv2.imwrite(str(args.out), mask.preview(view.astype(np.uint8, copy=False))):
        raise UsageError(f"cannot write {args.out} (the suffix says the format: .png, .jpg)")
    h, w = view.shape[:2]
    hidden = float(mask.stencil(h, w).mean()) if mask else 0.0
    print(
        f"{len(mask.polygons)} privacy mask(s), {hidden:.1%} of the {w}x{h} view hidden; "
        f"wrote {args.out}"
    )
    return 0
