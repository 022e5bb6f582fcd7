"""``citywatch edge provision``, ``status`` and ``run``: the daemon's own subcommands.

``register_daemon_commands(subparsers)`` adds them to the ``edge`` command's subparsers.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import tomllib
from pathlib import Path
from typing import Any

import tomli_w

from ._config import (
    DEFAULT_CONFIG_PATH,
    DEFAULT_STATE_DIR,
    EdgeConfigError,
    load_config,
    parse_config,
)
from ._errors import UsageError
from ._state import STATUS_FILE, StateError, StatusSnapshot, assess_health, read_status, wall_ms
from ._state import write_atomic as _write_atomic

__all__ = ["provision", "register_daemon_commands", "show_status"]

_BUNDLE_KEY_FIELDS = ("uid", "kid_hex", "alg", "key_hex")
_SERVER_FIELDS = {
    "host",
    "port",
    "tls",
    "ca_pem",
    "topic_prefix",
    "keepalive_s",
    "username",
    "password",
    "alternates",
}
_TLS_FIELDS = {"ca_file", "ca_pem", "cert_file", "key_file", "insecure", "enabled"}
_DEFAULT_MAX_AGE_S = 30.0


def register_daemon_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``provision``, ``status`` and ``run`` to the ``edge`` subcommands."""
    p = subparsers.add_parser(
        "provision",
        help="import the device key from a provisioning bundle; write the config",
        description="Import the device key from a provisioning bundle into the PKCS#11 token "
        "(non-extractable) and write the device config. The bundle holds the key "
        "in clear: delete it afterwards (or pass --delete-bundle).",
    )
    p.add_argument("--bundle", type=Path, required=True, help="the bundle (JSON) from the server")
    p.add_argument(
        "--config-out",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"device config to write (default {DEFAULT_CONFIG_PATH}); an existing "
        "one keeps its other sections (camera, gnss, outbox ...)",
    )
    p.add_argument(
        "--module",
        help="PKCS#11 module of the token (default: the existing config's, else SoftHSM2's)",
    )
    p.add_argument(
        "--token-label",
        help="label of the token (default: the existing config's, else 'citywatch')",
    )
    p.add_argument(
        "--pin-file",
        type=Path,
        help="file holding the token's user PIN (default: the existing config's)",
    )
    p.add_argument(
        "--max-key-bits",
        type=int,
        choices=(128, 256),
        help="128 for a token that holds AES-128 only (ATECC608)",
    )
    p.add_argument("--zone", help="zone of the pole, if the bundle does not say")
    p.add_argument("--lat", type=float, help="registered latitude, if the bundle does not say")
    p.add_argument("--lon", type=float, help="registered longitude, if the bundle does not say")
    p.add_argument("--alt", type=float, help="registered altitude in metres")
    p.add_argument(
        "--state-dir",
        type=Path,
        help=f"state directory (default: the existing config's, else {DEFAULT_STATE_DIR})",
    )
    p.add_argument(
        "--tls-cert",
        type=Path,
        metavar="FILE",
        help="the pole's TLS client certificate (PEM) for the broker; with --tls-key",
    )
    p.add_argument(
        "--tls-key", type=Path, metavar="FILE", help="the private key of --tls-cert (PEM)"
    )
    p.add_argument(
        "--delete-bundle",
        action="store_true",
        help="overwrite and delete the bundle once the key is in the token",
    )
    p.set_defaults(func=provision)

    s = subparsers.add_parser(
        "status",
        help="how the daemon is doing; exit 0 when it looks healthy",
        description="Read the daemon's status file and print it. Exit status 0 when the daemon "
        "looks healthy (the file was rewritten recently), 1 otherwise, with why.",
    )
    where = s.add_mutually_exclusive_group()
    where.add_argument(
        "--config",
        type=Path,
        help=f"device config (default {DEFAULT_CONFIG_PATH}); its state_dir is read",
    )
    where.add_argument("--state-dir", type=Path, help="read <DIR>/status.json directly")
    s.add_argument(
        "--json", action="store_true", help="print JSON (with 'healthy' and 'unhealthy_reasons')"
    )
    s.add_argument(
        "--max-age",
        type=float,
        default=None,
        metavar="SECONDS",
        help=f"older status counts as unhealthy (default {_DEFAULT_MAX_AGE_S:g} s, "
        "or 3 status intervals if longer)",
    )
    s.add_argument(
        "--require-broker",
        action="store_true",
        help="also unhealthy while not connected to the broker",
    )
    s.set_defaults(func=show_status)

    r = subparsers.add_parser(
        "run",
        help="run the street-pole daemon",
        description="Run the daemon (under systemd: Type=notify).",
    )
    r.add_argument(
        "--config",
        type=Path,
        default=DEFAULT_CONFIG_PATH,
        help=f"device config (default {DEFAULT_CONFIG_PATH})",
    )
    r.add_argument(
        "--log-level",
        type=str.lower,
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="how much to log: debug, info (the default), warning or error",
    )
    r.set_defaults(func=run)


# -- provision ----------------------------------------------------------------------------


def _read_bundle(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read the bundle {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise UsageError(f"{path} is not a JSON provisioning bundle: {exc}") from None
    if not isinstance(data, dict):
        raise UsageError(f"{path}: a provisioning bundle is a JSON object")
    return data


def _broker_from_bundle(
    bundle: dict[str, Any], name: Path, config_dir: Path, notes: list[str], files: dict[Path, bytes]
) -> dict[str, Any] | None:
    """The ``[broker]`` table from the bundle's ``server`` part; files to write go into
    ``files`` (written only once the key is in the token)."""
    server = bundle.get("server")
    if server is None:
        return None
    if not isinstance(server, dict):
        raise UsageError(f"{name}: 'server' must be an object with host, port, tls ...")
    for k in sorted(set(server) - _SERVER_FIELDS):
        notes.append(f"ignored server.{k} of the bundle")
    if not isinstance(server.get("host"), str) or not server["host"]:
        raise UsageError(f"{name}: server.host must be the broker's host name")
    broker: dict[str, Any] = {"host": server["host"]}
    for k in ("port", "topic_prefix", "keepalive_s", "username", "password"):
        if k in server:
            broker[k] = server[k]
    alternates = server.get("alternates", [])
    if not isinstance(alternates, list) or not all(
        isinstance(a, dict) and isinstance(a.get("host"), str) and isinstance(a.get("port"), int)
        for a in alternates
    ):
        raise UsageError(f"{name}: server.alternates must be a list of {{host, port}}")
    if alternates:
        broker["alternates"] = [f"{a['host']}:{a['port']}" for a in alternates]
    tls = server.get("tls")
    if tls is True and isinstance(server.get("ca_pem"), str):
        tls = {"ca_pem": server["ca_pem"]}  # the server's own shape: tls flag + CA beside it
    if isinstance(tls, dict):
        for k in sorted(set(tls) - _TLS_FIELDS):
            notes.append(f"ignored server.tls.{k} of the bundle")
        if tls.get("enabled", True):
            section: dict[str, Any] = {
                k: tls[k] for k in ("ca_file", "cert_file", "key_file", "insecure") if k in tls
            }
            if isinstance(tls.get("ca_pem"), str):
                ca = config_dir / "broker-ca.pem"
                files[ca] = tls["ca_pem"].encode()
                section["ca_file"] = str(ca)
                notes.append(f"wrote the broker's CA certificate to {ca}")
            broker["tls"] = section
    elif tls is True:
        broker["tls"] = {}
    elif tls not in (None, False):
        raise UsageError(f"{name}: server.tls must be true, false or an object")
    return broker


def _position(
    bundle: dict[str, Any], args: argparse.Namespace, existing: dict[str, Any]
) -> dict[str, Any] | None:
    given = bundle.get("position")
    from_bundle: dict[str, Any] = (
        given
        if isinstance(given, dict)
        else {k: bundle[k] for k in ("lat", "lon", "alt") if k in bundle}
    )
    pos: dict[str, Any] = {**existing.get("position", {}), **from_bundle}
    for k in ("lat", "lon", "alt"):
        v = getattr(args, k)
        if v is not None:
            pos[k] = v
    pos = {k: float(v) if isinstance(v, int) else v for k, v in pos.items() if v is not None}
    return pos or None


def provision(args: argparse.Namespace) -> int:
    """``citywatch edge provision``: key into the token, config onto the disk."""
    from hardware import (
        InvalidBundle,
        KeyExists,
        KeyStoreError,
        Pkcs11KeyStore,
        ProvisioningBundle,
        find_softhsm_module,
    )

    bundle = _read_bundle(args.bundle)
    missing = [k for k in _BUNDLE_KEY_FIELDS if k not in bundle]
    if missing:
        raise UsageError(f"{args.bundle}: the bundle lacks {', '.join(missing)}")
    key_part = {k: bundle[k] for k in _BUNDLE_KEY_FIELDS}
    try:
        parsed = ProvisioningBundle.parse(key_part)
    except InvalidBundle as exc:
        raise UsageError(f"{args.bundle}: {exc}") from None

    out: Path = args.config_out
    existing: dict[str, Any] = {}
    if out.exists():
        try:
            existing = tomllib.loads(out.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise UsageError(
                f"{out} exists but cannot be read as TOML ({exc}): move it aside "
                "or fix it, then provision again"
            ) from None
    notes: list[str] = []
    known = {*_BUNDLE_KEY_FIELDS, "server", "zone", "position", "lat", "lon", "alt"}
    notes += [f"ignored '{k}' of the bundle" for k in sorted(set(bundle) - known)]

    ks: dict[str, Any] = dict(existing.get("key_store", {}))
    ks.pop("key_label", None)  # the key's label follows the kid of this bundle
    module = args.module or ks.get("module") or find_softhsm_module()
    if not module:
        raise UsageError("no PKCS#11 module: pass --module PATH (the token's PKCS#11 library)")
    ks["module"] = str(module)
    ks["token_label"] = args.token_label or ks.get("token_label", "citywatch")
    if args.pin_file is not None:
        ks.pop("pin", None)
        ks["pin_file"] = str(args.pin_file.resolve())
    elif "pin" not in ks and "pin_file" not in ks:
        raise UsageError("no token PIN: pass --pin-file FILE (a file holding the user PIN)")
    if args.max_key_bits is not None:
        ks["max_key_bits"] = args.max_key_bits

    config_dir = out.resolve().parent
    files: dict[Path, bytes] = {}
    broker = _broker_from_bundle(bundle, args.bundle, config_dir, notes, files) or existing.get(
        "broker"
    )
    if broker is None:
        raise UsageError(
            f"{args.bundle} has no 'server' part and {out} names no broker: ask the "
            "server for a bundle with the broker's address"
        )
    if (args.tls_cert is None) != (args.tls_key is None):
        raise UsageError("--tls-cert and --tls-key go together: the certificate and its key")
    if args.tls_cert is not None:
        if not isinstance(broker.get("tls"), dict):
            raise UsageError(
                f"--tls-cert given, but the broker of {args.bundle} is not reached "
                "over TLS: a client certificate needs a TLS broker"
            )
        broker = {
            **broker,
            "tls": {
                **broker["tls"],
                "cert_file": str(args.tls_cert.resolve()),
                "key_file": str(args.tls_key.resolve()),
            },
        }
    zone = args.zone or bundle.get("zone") or existing.get("zone")
    if not zone:
        raise UsageError("no zone: the bundle does not say; pass --zone NAME")
    position = _position(bundle, args, existing)
    if position is None or "lat" not in position or "lon" not in position:
        raise UsageError("no registered position: the bundle does not say; pass --lat and --lon")

    data: dict[str, Any] = {
        **existing,
        "uid": parsed.uid,
        "kid_hex": parsed.kid.hex(),
        "alg": str(bundle["alg"]),
        "zone": zone,
        "position": position,
        "key_store": ks,
        "broker": broker,
    }
    if args.state_dir is not None:
        data["state_dir"] = str(args.state_dir.resolve())
    data.setdefault("state_dir", str(DEFAULT_STATE_DIR))
    try:
        # Validate before touching the token, so that a bad config costs nothing.
        cfg = parse_config(data, name=str(out), base=config_dir)
        pin = cfg.read_pin()
    except EdgeConfigError as exc:
        raise UsageError(str(exc)) from None

    try:
        with Pkcs11KeyStore(
            cfg.key_store.module,
            cfg.key_store.token_label,
            pin,
            max_key_bits=cfg.key_store.max_key_bits,
        ) as store:
            store.import_key(cfg.key_label, parsed.key)
    except KeyExists:
        raise UsageError(
            f"token {cfg.key_store.token_label!r} already holds a DIFFERENT key "
            f"labelled {cfg.key_label!r}: this kid was provisioned with another "
            "key. Ask the server for the right bundle, or delete that key from the "
            "token first if the device is being re-keyed"
        ) from None
    except KeyStoreError as exc:
        raise UsageError(f"could not import the key: {exc}") from None

    text = (
        "# CityWatch street-pole daemon. Written by `citywatch edge provision`; edit the\n"
        "# camera, gnss and prescreen sections by hand. Keys: docs/edge.md.\n\n"
        + tomli_w.dumps(_toml_ready(data))
    )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        for path, content in files.items():
            _write_atomic(path, content, durable=True, mode=0o644)
        _write_atomic(out, text.encode(), durable=True, mode=0o640)
        os.chmod(out, 0o640)  # exactly: the umask may have taken the group's read bit
    except OSError as exc:
        raise UsageError(
            f"the key is in the token, but {out} cannot be written: "
            f"{exc.strerror}; run provision again with a writable --config-out"
        ) from None
    print(
        f"imported the key of {parsed.uid} (kid {parsed.kid.hex()}, {bundle['alg']}) into "
        f"token {cfg.key_store.token_label!r} as {cfg.key_label!r}, non-extractable"
    )
    print(f"wrote {out}")
    for n in notes:
        print(f"note: {n}")
    if args.delete_bundle:
        _destroy(args.bundle)
        print(f"overwrote and deleted {args.bundle}")
    else:
        print(
            f"DELETE {args.bundle} NOW: it holds the device key in clear "
            f"(shred -u {args.bundle}, or run again with --delete-bundle)"
        )
    return 0


def _toml_ready(data: dict[str, Any]) -> dict[str, Any]:
    """TOML has no null: leave out keys whose value is None."""
    return {
        k: _toml_ready(v) if isinstance(v, dict) else v for k, v in data.items() if v is not None
    }


def _destroy(path: Path) -> None:
    """Overwrite a file with zeros (and fsync) before unlinking it. On flash with wear
    levelling this is best effort; the bundle should live on tmpfs in the first place."""
    try:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.write(b"\0" * size)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()
    except OSError as exc:
        raise UsageError(
            f"the key is imported, but {path} could not be deleted: {exc.strerror}; "
            "delete it by hand"
        ) from None


# -- status -------------------------------------------------------------------------------


def _when(ms: int | None, now: int) -> str:
    if ms is None:
        return "never"
    t = dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago = (now - ms) / 1000
    rel = f"in {-ago:.0f} s" if ago < 0 else f"{ago:.0f} s ago"
    return f"{t} ({rel})"


def _rows(s: StatusSnapshot, now: int) -> list[tuple[str, str]]:
    m, b, o, d, pl = s.monitoring, s.broker, s.outbox, s.delivery, s.pipeline
    window = (
        f"OPEN until {_when(m.until, now)}"
        if m.active
        else "closed"
        + (f" (last ended {_when(m.until, now)})" if m.until else " (none announced yet)")
    )
    broker = ("connected" if b.connected else "NOT connected") + f" to {b.host}:{b.port}"
    if b.since is not None:
        broker += f" since {_when(b.since, now)}"
    if not b.connected and b.last_error:
        broker += f" - {b.last_error}"
    outbox = f"{o.depth} waiting, {o.bytes} bytes (caps {o.max_incidents} / {o.max_bytes})"
    if o.oldest_captured_at is not None:
        outbox += f", oldest captured {_when(o.oldest_captured_at, now)}"
    if o.full:
        outbox += f" - FULL, {o.refused} capture(s) refused"
    delivery = d.state + (f" ({d.stopped_reason})" if d.stopped_reason else "")
    if d.cid:
        delivery += f", incident {d.cid}, attempt {d.attempts}"
    if d.next_attempt_at:
        delivery += f", next attempt {_when(d.next_attempt_at, now)}"
    last = (
        f"{s.last_delivered.incident_id} (cid {s.last_delivered.cid}) "
        f"{_when(s.last_delivered.at, now)}"
        if s.last_delivered
        else "none yet"
    )
    detection = (
        f"{pl.last_detection.label} {pl.last_detection.score:.2f} "
        f"{_when(pl.last_detection.at, now)}"
        if pl.last_detection
        else "none"
    )
    rows = [
        ("status written", _when(s.updated_at, now) + f" by pid {s.pid}"),
        ("device", f"{s.uid} (kid {s.kid_hex}, zone {s.zone})"),
        ("monitoring window", window),
        ("broker", broker),
        ("outbox", outbox),
        ("delivery", delivery),
        ("last delivered", last),
        ("clock offset", f"{s.clock_offset_ms} ms"),
        ("last frame", _when(pl.last_frame_at, now) if pl.last_frame_at else "none"),
        ("frames per second", f"{pl.fps:.1f}" if pl.fps is not None else "-"),
        ("last detection", detection),
    ]
    if s.last_error:
        rows.append(("last error", f"{s.last_error.message} ({_when(s.last_error.at, now)})"))
    rows += [("PROBLEM", p) for p in s.problems]
    return rows


def show_status(args: argparse.Namespace) -> int:
    """``citywatch edge status``: exit 0 when healthy, 1 with the reason otherwise."""
    max_age = args.max_age
    if args.state_dir is not None:
        path = args.state_dir / STATUS_FILE
    else:
        try:
            cfg = load_config(args.config or DEFAULT_CONFIG_PATH)
        except EdgeConfigError as exc:
            raise UsageError(str(exc)) from None
        path = cfg.state_dir / STATUS_FILE
        if max_age is None:
            max_age = max(_DEFAULT_MAX_AGE_S, 3 * cfg.status.interval_s)
    max_age = _DEFAULT_MAX_AGE_S if max_age is None else max_age
    now = wall_ms()
    try:
        snapshot = read_status(path)
    except StateError as exc:
        if args.json:
            print(json.dumps({"healthy": False, "unhealthy_reasons": [str(exc)]}))
        else:
            print(f"UNHEALTHY: {exc}")
        return 1
    reasons = assess_health(
        snapshot, now=now, max_age_s=max_age, require_broker=args.require_broker
    )
    if args.json:
        out = {
            "healthy": not reasons,
            "unhealthy_reasons": reasons,
            **snapshot.model_dump(mode="json"),
        }
        print(json.dumps(out, indent=2))
        return 1 if reasons else 0
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"citywatch edge status ({path})", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    for k, v in _rows(snapshot, now):
        # Text(): values are shown as they are, never read as rich markup.
        table.add_row(k, Text(v), style="red" if k == "PROBLEM" else None)
    console = Console()
    console.print(table)
    if reasons:
        for r in reasons:
            console.print(f"UNHEALTHY: {r}", style="bold red", markup=False)
        return 1
    console.print("healthy", style="green")
    return 0


# -- run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """``citywatch edge run``: the street-pole daemon, until SIGTERM or SIGINT."""
    from hardware._service import configure_logging
    from hardware.camera import CameraError

    from ._cli_config import check_config
    from ._daemon import EdgeDaemon, PipelineSettings

    try:
        # Everything `edge config check` checks, the camera driver's library included,
        # before the key store, the outbox or the broker are touched.
        check_config(args.config)
        cfg = load_config(args.config)
        settings = PipelineSettings.from_config(
            cfg, name=str(args.config), base_dir=Path(args.config).resolve().parent
        )
    except EdgeConfigError as exc:
        raise UsageError(str(exc)) from None
    configure_logging(args.log_level.upper(), identifier="citywatch-edge")
    try:
        return asyncio.run(_run(EdgeDaemon(cfg, settings)))
    except CameraError as exc:  # opening the camera (a scene file, a driver gone since)
        raise UsageError(f"{args.config}: camera: {exc}") from None


async def _run(daemon: Any) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    return int(await daemon.run(stop))
