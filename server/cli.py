"""``citywatch server ...``: run the server, manage the device registry, monitoring
windows, and look at incidents and the audit log."""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import faulthandler
import getpass
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from protocol import ALG_A128GCM, ALG_A256GCM

from ._cli_detect import register_detection
from ._cli_keys import register_keys
from ._cli_purge import register_purge
from ._config import ServerConfig, example_config, load_config
from ._errors import ServerError, UsageError

__all__ = ["register"]

DEFAULT_CONFIG = "server.toml"


def _default_actor() -> str:
    try:
        return os.environ.get("USER") or getpass.getuser()
    except Exception:  # no user name at all (containers)
        return f"uid:{os.getuid()}"


def register(parser: argparse.ArgumentParser) -> None:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        type=Path,
        default=Path(os.environ.get("CITYWATCH_SERVER_CONFIG", DEFAULT_CONFIG)),
        help=f"server config file (TOML; default: $CITYWATCH_SERVER_CONFIG or ./{DEFAULT_CONFIG})",
    )
    common.add_argument(
        "--actor",
        default=_default_actor(),
        help="who makes the change, for the audit log (default: $USER)",
    )
    sub = parser.add_subparsers(dest="server_command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run",
        parents=[common],
        help="run the server (MQTT, ENC notifier, admin API) until SIGTERM/Ctrl-C",
    )
    run.add_argument(
        "--log-level",
        type=str.lower,
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="how much to log: debug, info (the default), warning or error",
    )
    run.set_defaults(func=_run)

    cfg = sub.add_parser("config", help="example config, check a config")
    cfg_sub = cfg.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    ex = cfg_sub.add_parser(
        "example", help="print a complete commented config that works as it is on one machine"
    )
    ex.add_argument(
        "--data-dir",
        default="./var/server",
        help="data directory written into the example (default ./var/server)",
    )
    ex.set_defaults(func=_config_example)
    chk = cfg_sub.add_parser("check", parents=[common], help="validate a config file")
    chk.set_defaults(func=_config_check)

    dev = sub.add_parser("device", help="the device registry")
    dev_sub = dev.add_subparsers(dest="device_command", metavar="COMMAND", required=True)
    add = dev_sub.add_parser(
        "add", parents=[common], help="register a device and write its provisioning bundle"
    )
    add.add_argument("--uid", required=True, help="the device's UID")
    add.add_argument("--zone", required=True, help="its monitoring zone")
    add.add_argument("--lat", type=float, required=True, help="registered latitude")
    add.add_argument("--lon", type=float, required=True, help="registered longitude")
    add.add_argument(
        "--alg",
        choices=["A128GCM", "A256GCM"],
        default="A256GCM",
        help="key algorithm (A128GCM for an ATECC608; default A256GCM)",
    )
    add.add_argument(
        "--bundle-out",
        type=Path,
        required=True,
        help="where to write the provisioning bundle (JSON, mode 0600)",
    )
    add.add_argument("--force", action="store_true", help="overwrite an existing bundle file")
    add.add_argument("--address", help="the pole's street address, shown at the ENC (optional)")
    add.set_defaults(func=_device_add)
    adr = dev_sub.add_parser(
        "set-address", parents=[common], help="set or remove a device's street address"
    )
    adr.add_argument("uid", metavar="UID", help="the device's UID")
    adr.add_argument("address", metavar="ADDRESS", help='the street address ("" removes it)')
    adr.set_defaults(func=_device_set_address)
    ls = dev_sub.add_parser("list", parents=[common], help="list devices")
    ls.add_argument("--json", action="store_true", help="JSON instead of a table")
    ls.add_argument("--zone", help="only this zone")
    ls.set_defaults(func=_device_list)
    for action, help_ in [
        ("activate", "let the device report again"),
        ("deactivate", "stop accepting the device's reports (error 2)"),
        ("block", "block the device (error 3), e.g. for fake reports"),
        ("unblock", "lift a block"),
        ("delete", "remove the device and its key"),
    ]:
        p = dev_sub.add_parser(action, parents=[common], help=help_)
        p.add_argument("uid", metavar="UID", help="the device's UID")
        p.add_argument("--reason", default="", help="why (kept in the audit log)")
        p.set_defaults(func=_device_action, action=action)

    win = sub.add_parser("window", help="monitoring windows")
    win_sub = win.add_subparsers(dest="window_command", metavar="COMMAND", required=True)
    wo = win_sub.add_parser("open", parents=[common], help="open a window for a zone now")
    wo.add_argument("--zone", required=True, help="the zone to monitor")
    wo.add_argument(
        "--until",
        required=True,
        help="end, ISO 8601 (e.g. 2026-05-01T06:00+02:00; no offset: local time)",
    )
    wo.set_defaults(func=_window_open)
    wc = win_sub.add_parser("close", parents=[common], help="end a zone's operator windows now")
    wc.add_argument("--zone", required=True, help="the zone whose windows end")
    wc.set_defaults(func=_window_close)
    wl = win_sub.add_parser("list", parents=[common], help="zones monitored now, recent windows")
    wl.add_argument("--json", action="store_true", help="JSON instead of a table")
    wl.set_defaults(func=_window_list)

    register_detection(sub)
    register_keys(sub, common)
    register_purge(sub, common)

    inc = sub.add_parser("incidents", parents=[common], help="list incidents")
    inc.add_argument("--json", action="store_true", help="JSON instead of a table")
    inc.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    inc.add_argument(
        "--decision", choices=["dangerous", "dismissed"], help="only incidents with this decision"
    )
    inc.set_defaults(func=_incidents)

    aud = sub.add_parser("audit", parents=[common], help="the audit log, newest first")
    aud.add_argument("--json", action="store_true", help="JSON instead of a table")
    aud.add_argument("--limit", type=int, default=50, help="at most this many (50)")
    aud.add_argument("--subject", help="only entries about this UID or zone")
    aud.set_defaults(func=_audit)


# -- helpers ---------------------------------------------------------------------------


def _config(args: argparse.Namespace) -> ServerConfig:
    return load_config(args.config)


def _store(cfg: ServerConfig) -> Any:
    from ._setup import open_store

    store, _master = open_store(cfg)
    return store


def _iso(ms: int | None) -> str:
    if ms is None:
        return "-"
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(header, widths, strict=True))]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(line.rstrip() for line in lines)


def _admin_call(
    cfg: ServerConfig, method: str, path: str, actor: str, body: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Call the running server's admin API; None when no server listens."""
    if not cfg.admin.enabled:
        return None
    import httpx

    from ._keys import read_token_file

    host = cfg.admin.host
    host = "127.0.0.1" if host in ("0.0.0.0", "") else ("[::1]" if host == "::" else host)
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    try:
        token = read_token_file(cfg.path(cfg.admin.token_file))
    except ServerError:
        return None
    try:
        r = httpx.request(
            method,
            f"http://{host}:{cfg.admin.port}{path}",
            json=body,
            headers={"Authorization": f"Bearer {token}", "X-Actor": actor},
            timeout=10,
        )
    except httpx.TransportError:
        return None
    if r.status_code >= 400:
        try:
            detail = r.json().get("detail", r.text)
        except ValueError:
            detail = r.text
        raise UsageError(f"the server refused: {detail}")
    out: dict[str, Any] = r.json()
    return out


# -- commands ---------------------------------------------------------------------------


def _config_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config(data_dir=args.data_dir))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    cfg = _config(args)
    print(
        f"{args.config}: valid (data directory {cfg.data_dir}, database "
        f"{'PostgreSQL' if cfg.database.url.startswith('postgres') else 'SQLite'}, "
        f"{len(cfg.schedules)} schedule(s))"
    )
    return 0


def _device_add(args: argparse.Namespace) -> int:
    from ._bundle import provisioning_bundle, write_bundle

    cfg = _config(args)
    out: Path = args.bundle_out
    if out.exists() and not args.force:
        raise UsageError(f"{out} exists; choose another --bundle-out (or --force)")
    if not out.parent.is_dir():
        raise UsageError(f"folder {out.parent} does not exist")
    store = _store(cfg)
    try:
        device, key = store.add_device(
            uid=args.uid,
            zone=args.zone,
            lat=args.lat,
            lon=args.lon,
            alg=ALG_A128GCM if args.alg == "A128GCM" else ALG_A256GCM,
            actor=args.actor,
            address=args.address,
        )
        write_bundle(out, provisioning_bundle(cfg, device, key), overwrite=args.force)
    except ServerError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    print(
        f"device {device.uid} registered in zone {device.zone} (kid {device.kid.hex()}); "
        f"provisioning bundle written to {out} (mode 0600): it holds the device key, "
        "destroy it once the device has imported it"
    )
    return 0


def _device_set_address(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        info = store.set_device_address(args.uid, args.address, actor=args.actor)
    except ServerError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    # The running server's ENC outbox sends it to the ENC (an N4) at its next poll.
    print(f"device {info.uid}: " + (f"address {info.address}" if info.address else "no address"))
    return 0


def _device_list(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        devices = store.list_devices(zone=args.zone)
    finally:
        store.close()
    if args.json:
        print(json.dumps([d.to_json() for d in devices], indent=2))
        return 0
    if not devices:
        print("no devices registered")
        return 0
    rows = [
        [
            d.uid,
            d.kid.hex(),
            d.zone,
            f"{d.lat:.6f}",
            f"{d.lon:.6f}",
            "A128GCM" if d.alg == ALG_A128GCM else "A256GCM",
            d.status,
            str(d.epoch),
            str(d.confirmed_epoch if d.confirmed_epoch is not None else "-"),
            d.address or "-",
        ]
        for d in devices
    ]
    head = ["UID", "KID", "ZONE", "LAT", "LON", "ALG", "STATUS", "EPOCH", "CONFIRMED", "ADDRESS"]
    print(_table(rows, head))
    return 0


def _device_action(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        if args.action == "delete":
            store.delete_device(args.uid, actor=args.actor)
            print(f"device {args.uid} deleted")
        else:
            info = store.set_device_state(
                args.uid, args.action, actor=args.actor, reason=args.reason
            )
            print(f"device {info.uid}: {info.status}")
    except ServerError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    return 0


def _parse_until(text: str) -> int:
    try:
        t = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--until {text!r} is not an ISO 8601 date-time (e.g. 2026-05-01T06:00+02:00)"
        ) from None
    if t.tzinfo is None:
        t = t.astimezone()  # local time
    return int(t.timestamp() * 1000)


def _window_open(args: argparse.Namespace) -> int:
    cfg = _config(args)
    until = _parse_until(args.until)
    iso = dt.datetime.fromtimestamp(until / 1000, dt.UTC).isoformat()
    answer = _admin_call(cfg, "POST", f"/v1/windows/{args.zone}/open", args.actor, {"until": iso})
    if answer is not None:
        print(
            f"zone {args.zone}: window open until {_iso(until)}; the server sent B1 to "
            "the zone's devices"
        )
        return 0
    store = _store(cfg)
    try:
        store.open_window(args.zone, until=until, actor=args.actor)
    finally:
        store.close()
    print(
        f"zone {args.zone}: window open until {_iso(until)} (no server answered on the "
        f"admin API: a running server picks it up within {cfg.timing.poll_s:g} s)"
    )
    return 0


def _window_close(args: argparse.Namespace) -> int:
    cfg = _config(args)
    answer = _admin_call(cfg, "POST", f"/v1/windows/{args.zone}/close", args.actor)
    if answer is not None:
        n, still = int(answer["closed"]), answer.get("monitored_until")
    else:
        from ._store import now_ms
        from ._windows import MonitoringPlan

        store = _store(cfg)
        try:
            n = store.close_window(args.zone, actor=args.actor)
            now = now_ms()
            still = MonitoringPlan.of(store.open_windows(now), cfg.schedules).until(args.zone, now)
        finally:
            store.close()
    print(f"zone {args.zone}: {n} operator window(s) closed")
    if still is not None:
        print(f"zone {args.zone} stays monitored by a schedule until {_iso(still)}")
    return 0


def _window_list(args: argparse.Namespace) -> int:
    from ._store import now_ms
    from ._windows import MonitoringPlan

    cfg = _config(args)
    store = _store(cfg)
    try:
        now = now_ms()
        plan = MonitoringPlan.of(store.open_windows(now), cfg.schedules)
        recent = store.list_windows(limit=20)
    finally:
        store.close()
    zones = {z: plan.until(z, now) for z in sorted(plan.zones())}
    if args.json:
        print(json.dumps({"zones": zones, "recent": [w.to_json() for w in recent]}, indent=2))
        return 0
    for z, until in zones.items():
        print(f"{z}: " + (f"monitored until {_iso(until)}" if until else "not monitored"))
    if recent:
        print()
        print(
            _table(
                [
                    [
                        str(w.id),
                        w.zone,
                        _iso(w.opens_at),
                        _iso(w.closes_at),
                        w.opened_by,
                        w.closed_by or "-",
                    ]
                    for w in recent
                ],
                ["ID", "ZONE", "OPENS", "CLOSES", "OPENED BY", "CLOSED BY"],
            )
        )
    return 0


def _incidents(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        items = store.list_incidents(limit=args.limit, decision=args.decision)
    finally:
        store.close()
    if args.json:
        print(json.dumps([i.to_json() for i in items], indent=2))
        return 0
    if not items:
        print("no incidents")
        return 0
    rows = [
        [
            i.id,
            _iso(i.received_at),
            i.device_uid,
            i.label,
            f"{i.device_score:.2f}",
            "-" if i.server_score is None else f"{i.server_score:.2f}",
            i.decision or "pending",
            f"fused into {i.fused_into}" if i.fused_into else i.enc_state or "-",
        ]
        for i in items
    ]
    print(
        _table(
            rows,
            [
                "INCIDENT",
                "RECEIVED",
                "DEVICE",
                "LABEL",
                "DEV SCORE",
                "SRV SCORE",
                "DECISION",
                "ENC",
            ],
        )
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        entries = store.audit_log(limit=args.limit, subject=args.subject)
    finally:
        store.close()
    if args.json:
        print(json.dumps([e.to_json() for e in entries], indent=2))
        return 0
    for e in entries:
        detail = " ".join(f"{k}={v}" for k, v in sorted(e.detail.items()))
        print(f"{_iso(e.at)}  {e.actor:<20} {e.action:<18} {e.subject}  {detail}".rstrip())
    return 0


def _run(args: argparse.Namespace) -> int:
    from ._app import TrustedServer

    cfg = _config(args)
    # `kill -USR1 <pid>` prints every thread's stack: where a stuck server is stuck.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    from hardware._service import configure_logging

    # journald with priorities under systemd, stderr with timestamps elsewhere.
    configure_logging(args.log_level.upper(), identifier="citywatch-server")
    for noisy in ("httpx", "httpcore", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        server = TrustedServer(cfg)
        await server.run(stop)

    asyncio.run(main())
    return 0
