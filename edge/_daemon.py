"""The street-pole daemon: one application object with ``run(stop)``.

Threads: the capture loop (camera -> pre-screen -> snapshot + GNSS fix -> outbox) runs
in a worker thread, because camera reads and inference block; the protocol client, the
status file and systemd notifications run on the asyncio loop. They share one stop event.
The daemon owns the outbox and the status board: it stores each capture itself, then
wakes the protocol client, which delivers and reports into the same board.
Supervision is systemd's: ``READY=1`` once the camera gives frames, the key store is
open and the broker is connected; ``WATCHDOG=1`` only while frames are flowing, so a dead
camera gets the service restarted; ``STATUS=`` lines a person can read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from hardware import KeyStoreError, Pkcs11KeyStore
from hardware._gnss import (
    FixedPosition,
    GnssReceiver,
    coords,
    open_gnss,
    parse_gnss_config,
)
from hardware._service import ServiceNotifier, WatchdogKeeper
from hardware.camera import Camera, CameraError, open_camera, parse_camera_config

from ._client import ProtocolClient
from ._config import EdgeConfig, EdgeConfigError, config_errors
from ._errors import EdgeError
from ._outbox import OUTBOX_FILE, Outbox, OutboxError
from ._prescreen import PreScreen, PreScreenConfig
from ._privacy import MaskedCamera, PrivacyConfig, PrivacyMask
from ._state import DetectionStatus, PipelineStatus, wall_ms
from ._status import PoleStatus, store_incident

__all__ = ["EdgeDaemon", "PipelineSettings"]

log = logging.getLogger("citywatch.edge")


_NO_MASKS = PrivacyConfig()


@dataclass(frozen=True)
class PipelineSettings:
    """The hardware and pre-screen sections of the device config, validated."""

    camera: Any
    gnss: Any
    prescreen: PreScreenConfig
    position: FixedPosition
    privacy: PrivacyConfig = _NO_MASKS

    @classmethod
    def from_config(cls, cfg: EdgeConfig, *, name: str, base_dir: Path | None) -> PipelineSettings:
        """Validate ``[camera]``, ``[gnss]``, ``[prescreen]``; errors name file and key."""
        sections: dict[str, Any] = {}
        for key, parse in (
            ("camera", lambda d: parse_camera_config(d, base_dir=base_dir)),
            ("gnss", parse_gnss_config),
            ("prescreen", PreScreenConfig.model_validate),
            ("privacy", PrivacyConfig.model_validate),
        ):
            data = getattr(cfg, key)
            if key == "gnss" and not data:
                data = {"driver": "none"}
            if key == "camera" and not data:
                raise EdgeConfigError(
                    f"{name}: camera: missing: say which camera to use "
                    '(driver = "picamera2", "opencv" or "scene")'
                )
            try:
                sections[key] = parse(data)
            except ValidationError as exc:
                raise EdgeConfigError(
                    config_errors(name, exc).replace(f"{name}: ", f"{name}: {key}.")
                ) from None
        pos = cfg.position
        return cls(
            camera=sections["camera"],
            gnss=sections["gnss"],
            prescreen=sections["prescreen"],
            privacy=sections["privacy"],
            position=FixedPosition(lat=pos.lat, lon=pos.lon, alt=pos.alt, acc=None),
        )


class EdgeDaemon:
    """Camera, pre-screen, GNSS, key store, outbox and protocol client of one pole."""

    #: With no frame for this long the camera counts as stalled: no more WATCHDOG=1.
    STALL_SECONDS = 10.0

    def __init__(
        self,
        cfg: EdgeConfig,
        settings: PipelineSettings,
        *,
        notifier: ServiceNotifier | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = settings
        self.notifier = notifier or ServiceNotifier()
        self.camera: Camera | None = None
        self.gnss: GnssReceiver | None = None
        self.prescreen: PreScreen | None = None
        self.client: ProtocolClient | None = None
        self.status = PoleStatus.in_state_dir(
            cfg.state_dir, uid=cfg.uid, kid_hex=cfg.kid.hex(), zone=cfg.zone
        )
        self._last_frame_mono: float | None = None
        self._frame_times: deque[float] = deque(maxlen=50)
        self._camera_problem: str | None = None
        self._detections = 0
        self._outbox: Outbox | None = None
        self._next_expiry = 0.0

    # -- the application ----------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> int:
        self.notifier.status("starting: loading the pre-screen model")
        try:
            self.prescreen = PreScreen.from_config(self.settings.prescreen)
        except EdgeError as exc:
            self.notifier.status(f"cannot start: {exc}")
            raise
        try:
            ks = self.cfg.key_store
            store = Pkcs11KeyStore(
                ks.module, ks.token_label, self.cfg.read_pin(), max_key_bits=ks.max_key_bits
            )
        except KeyStoreError as exc:
            self.notifier.status(f"cannot start: key store: {exc}")
            raise EdgeError(f"cannot open the key store: {exc}") from None
        try:
            cipher = store.cipher(self.cfg.key_label)
            self.cfg.state_dir.mkdir(parents=True, exist_ok=True)
            with Outbox(
                self.cfg.state_dir / OUTBOX_FILE,
                cipher=cipher,
                max_incidents=self.cfg.outbox.max_incidents,
                max_bytes=self.cfg.outbox.max_bytes,
                max_photo=self.cfg.protocol.max_photo_bytes,
            ) as outbox:
                self._outbox = outbox
                self.client = ProtocolClient.from_config(
                    self.cfg, cipher=cipher, outbox=outbox, status=self.status
                )
                self.gnss = open_gnss(self.settings.gnss)
                self.gnss.start()
                # Masks where frames leave the camera: nothing after it sees a masked pixel.
                self.camera = MaskedCamera(
                    open_camera(self.settings.camera),
                    PrivacyMask.from_config(self.settings.privacy),
                    jpeg_quality=getattr(self.settings.camera, "jpeg_quality", 90),
                )
                try:
                    self.camera.start()
                except CameraError as exc:
                    self.notifier.status(f"cannot start: camera: {exc}")
                    raise EdgeError(f"camera: {exc}") from None
                capture = threading.Thread(
                    target=self._capture_loop, args=(stop,), name="edge-capture", daemon=True
                )
                capture.start()
                try:
                    await asyncio.gather(
                        self.client.run(stop),
                        self._supervise(stop),
                        self.status.keep_written(stop, interval_s=self.cfg.status.interval_s),
                    )
                finally:
                    stop.set()
                    self.notifier.stopping("stopping")
                    await asyncio.to_thread(capture.join, 10)
                    self.camera.stop()
                    self.gnss.stop()
        except (KeyStoreError, OutboxError, OSError) as exc:
            raise EdgeError(str(exc)) from None
        finally:
            store.close()
        return 0

    # -- capture (worker thread) ----------------------------------------------------------

    def _capture_loop(self, stop: asyncio.Event) -> None:
        assert self.camera is not None and self.prescreen is not None
        assert self.client is not None
        while not stop.is_set():
            try:
                frame = self.camera.read(timeout=1.0)
            except CameraError as exc:
                self._camera_problem = f"camera: {exc}"
                time.sleep(0.5)
                continue
            if frame is None:
                continue
            now = time.monotonic()
            self._last_frame_mono = now
            self._frame_times.append(now)
            self._camera_problem = None
            if not self.client.monitoring():
                continue  # outside the window: frames keep flowing, nothing is inferred
            result = self.prescreen.process(frame.image, frame.timestamp)
            for detection in result.detections:
                self._report(detection.label, detection.score)

    def _report(self, label: str, score: float) -> None:
        assert self.camera is not None and self.gnss is not None
        assert self.client is not None and self._outbox is not None
        captured_at = wall_ms()
        try:
            photo = self.camera.snapshot()
        except CameraError as exc:
            log.error("a %s was detected but no snapshot could be taken: %s", label, exc)
            return
        where = coords(self.gnss.fix(), self.settings.position)
        self._detections += 1
        self.status.update(
            pipeline=self._pipeline_status(
                DetectionStatus(label=label, score=round(score, 3), at=captured_at)
            )
        )
        try:
            cid = store_incident(
                self._outbox,
                self.status,
                photo=photo,
                coords=where,
                score=score,
                label=label,
                captured_at=captured_at,
            )
        except OutboxError as exc:  # already on the status
            log.error("incident not stored: %s", exc)
            return
        finally:
            self.client.wake()
        log.warning(
            "%s detected (score %.2f): incident %s stored, %s position",
            label,
            score,
            cid.hex(),
            where.src,
        )

    # -- supervision (asyncio) -------------------------------------------------------------

    def _fps(self) -> float | None:
        times = list(self._frame_times)
        if len(times) < 2 or times[-1] == times[0]:
            return None
        return round((len(times) - 1) / (times[-1] - times[0]), 2)

    def _pipeline_status(self, detection: DetectionStatus | None = None) -> PipelineStatus:
        last = self.status.snapshot().pipeline
        last_frame_at = None
        if self._last_frame_mono is not None:
            age = time.monotonic() - self._last_frame_mono
            last_frame_at = wall_ms() - int(age * 1000)
        return PipelineStatus(
            last_frame_at=last_frame_at,
            fps=self._fps(),
            last_detection=detection or last.last_detection,
        )

    def _frame_age(self) -> float | None:
        return None if self._last_frame_mono is None else time.monotonic() - self._last_frame_mono

    def _camera_stalled(self, stall: float) -> str | None:
        """Why frames are not flowing, or None: the watchdog keeper's check."""
        age = self._frame_age()
        if age is not None and age < stall:
            return None
        return self._camera_problem or (
            "camera: no frame yet" if age is None else f"camera: no frame for {age:.0f} s"
        )

    async def _supervise(self, stop: asyncio.Event) -> None:
        assert self.client is not None
        stall = self.STALL_SECONDS
        keeper = WatchdogKeeper(self.notifier, lambda: self._camera_stalled(stall), status=False)
        if keeper.period:  # stop feeding well before systemd's deadline once frames stop
            stall = min(self.STALL_SECONDS, keeper.period / 2)
        ready = False
        last_status = ""
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=keeper.tick)
            self.status.update(pipeline=self._pipeline_status())
            # The keeper runs here, on the loop, so a stuck loop stops the feed as well.
            flowing = keeper.beat()
            age = self._frame_age()
            if not ready and flowing and self.client.connected:
                ready = True
                self.notifier.ready(self._status_text(flowing, age))
            self._expire_old_incidents()
            text = self._status_text(flowing, age)
            if text != last_status:
                self.notifier.status(text)
                last_status = text

    #: Seconds between two retention passes over the outbox.
    EXPIRY_EVERY_S = 60.0

    def _expire_old_incidents(self) -> None:
        """Retention (``[outbox] max_age_hours``): incidents never delivered are not kept
        for ever on the pole."""
        max_age_h = self.cfg.outbox.max_age_hours
        now = time.monotonic()
        if self._outbox is None or max_age_h <= 0 or now < self._next_expiry:
            return
        self._next_expiry = now + self.EXPIRY_EVERY_S
        try:
            gone = self._outbox.expire(int(max_age_h * 3600_000))
        except OutboxError as exc:
            log.error("retention: old incidents not expired: %s", exc)
            return
        if gone:
            log.warning(
                "retention: %d incident(s) older than %g h deleted undelivered: %s",
                len(gone),
                max_age_h,
                ", ".join(c.hex() for c in gone),
            )

    def _status_text(self, flowing: bool, age: float | None) -> str:
        assert self.client is not None
        if not flowing:
            why = self._camera_stalled(stall=0.0)  # the reason, whatever the age
            return f"{why}; watchdog not fed; {self.status.line}"
        fps = self._fps()
        window = "monitoring" if self.client.monitoring() else "idle (no monitoring window)"
        return f"{window}; {fps or 0:.1f} fps; {self._detections} detections; {self.status.line}"
