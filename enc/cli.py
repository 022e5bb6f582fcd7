"""``citywatch enc ...``: run the ENC, list alerts, manage operators, export CAP, print
an example config."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from protocol import wall_clock_ms

from ._cap import cap_message
from ._config import EncConfig, example_config, load_config
from ._errors import EncError, UsageError
from ._handling import Role
from ._operators import OperatorDirectory
from ._store import AlertStore

if TYPE_CHECKING:
    from ._service import EncService

__all__ = ["register"]


def _config(args: argparse.Namespace) -> EncConfig:
    return load_config(args.config)


def _store(config: EncConfig) -> AlertStore:
    from ._keys import open_alert_store

    return open_alert_store(config)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds")


def _run(args: argparse.Namespace) -> int:
    config = _config(args)
    from hardware._service import configure_logging

    # journald with priorities under systemd, stderr with timestamps elsewhere.
    configure_logging(args.log_level.upper(), identifier="citywatch-enc")
    from ._service import EncService

    service = EncService(config)
    return _serve(service)


def _serve(service: EncService) -> int:
    """Serve until SIGTERM (how systemd stops it) or SIGINT: a clean stop, status 0."""

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await service.run(stop)

    asyncio.run(main())
    return 0


def _alerts(args: argparse.Namespace) -> int:
    store = _store(_config(args))
    try:
        alerts = store.alerts(limit=args.limit)
    finally:
        store.close()
    if args.json:
        json.dump([a.to_json() for a in alerts], sys.stdout, indent=2)
        print()
        return 0
    if not alerts:
        print("no alerts")
        return 0
    print(
        f"{'received (UTC)':25} {'status':12} {'label':12} {'score':>5}  {'device':16} "
        f"{'lat,lon':22} incident"
    )
    for a in alerts:
        where = f"{a.coords.lat:.5f},{a.coords.lon:.5f}"
        print(
            f"{_iso(a.received_at):25} {a.status.value:12} {a.label:12} {a.score:5.2f}  "
            f"{a.device_uid:16} {where:22} {a.incident_id}"
        )
    return 0


def _config_example(args: argparse.Namespace) -> int:
    sys.stdout.write(example_config())
    return 0


def _config_check(args: argparse.Namespace) -> int:
    c = _config(args)
    print(
        f"{args.config}: OK; listens on {c.base_url}, store "
        f"{c.database_url.split('@')[-1]}, {len(c.servers)} trusted server(s)"
    )
    return 0


_now = wall_clock_ms


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        import getpass

        if not sys.stdin.isatty():
            raise UsageError("no terminal to ask for the password on: use --password-stdin")
        password = getpass.getpass("New password: ")
        if getpass.getpass("Again: ") != password:
            raise UsageError("the two passwords differ; nothing was changed")
    return password


def _operators(args: argparse.Namespace) -> tuple[AlertStore, OperatorDirectory]:
    config = _config(args)
    store = _store(config)
    return store, OperatorDirectory(store, config.dashboard)


def _operator(args: argparse.Namespace) -> int:
    store, ops = _operators(args)
    try:
        cmd = args.operator_command
        if cmd == "add":
            op = ops.add(args.username, _read_password(args), args.role, now=_now())
            print(f"operator {op.username} added ({op.role.value})")
        elif cmd == "passwd":
            ops.set_password(args.username, _read_password(args), now=_now())
            print(f"password of {args.username} changed; lock-out lifted, sessions ended")
        elif cmd in ("disable", "enable"):
            ops.set_disabled(args.username, cmd == "disable", now=_now())
            print(f"operator {args.username} {cmd}d")
        else:
            for op in ops.list():
                state = (
                    "disabled"
                    if op.disabled
                    else ("locked" if op.locked_until and op.locked_until > _now() else "active")
                )
                print(f"{op.username:24} {op.role.value:11} {state}")
    except EncError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    return 0


def _cap(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config)
    try:
        alert = store.alert(args.incident_id)
        xml = cap_message(
            alert,
            store.audit_trail(args.incident_id),
            config.cap,
            photo=store.photo(args.incident_id),
        )
        store.append_audit(
            at=_now(), actor="cli", action="cap_exported", incident_id=args.incident_id
        )
    except EncError as exc:
        raise UsageError(str(exc)) from None
    finally:
        store.close()
    if args.out:
        with open(args.out, "wb") as f:
            f.write(xml)
    else:
        sys.stdout.buffer.write(xml)
    return 0


def _purge(args: argparse.Namespace) -> int:
    config = _config(args)
    store = _store(config)
    try:
        report = store.purge(
            config.retention.periods_ms(), now=_now(), dry_run=args.dry_run, actor="cli"
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
        return 0
    r = config.retention
    verb = "would be" if report.dry_run else "were"
    print(
        f"{len(report.photos)} photo(s) of dismissed alerts {verb} deleted "
        f"({r.dismissed_photo_hours:g} h after the dismissal)"
    )
    print("".join(f"  {i}\n" for i in report.photos), end="")
    print(
        f"{len(report.alerts)} closed alert(s) {verb} deleted "
        f"({r.closed_alert_days:g} days after dispatch or dismissal)"
    )
    print("".join(f"  {i}\n" for i in report.alerts), end="")
    if report.total and not report.dry_run:
        print("recorded in the audit trail as purged")
    return 0


def _seal_store_key(args: argparse.Namespace) -> int:
    from ._keys import seal_store_key

    config = _config(args)
    clear, wrapped = seal_store_key(config)
    print(
        f"store key wrapped under token key {config.store_key.key_label!r} of token "
        f"{config.store_key.token_label!r} into {wrapped}; {clear} overwritten and removed.\n"
        f'Now set [store_key] source = "pkcs11" in {args.config} and restart the ENC.'
    )
    return 0


def _rotate_kek(args: argparse.Namespace) -> int:
    from ._keys import rotate_store_kek

    config = _config(args)
    old, new = rotate_store_kek(config, keep_old=args.keep_old)
    print(
        f"store key rewrapped under token key {new!r} in {config.store_key.wrapped_file}; "
        f"old token key {old!r} {'kept' if args.keep_old else 'deleted'}"
    )
    return 0


def _add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, metavar="FILE", help="the ENC's TOML config")


def register(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="enc_command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="serve the alert endpoint and the dashboard")
    _add_config_arg(p)
    p.add_argument(
        "--log-level",
        type=str.lower,
        default="info",
        choices=("debug", "info", "warning", "error"),
        help="how much to log: debug, info (the default), warning or error",
    )
    p.set_defaults(func=_run)

    p = sub.add_parser("alerts", help="list stored alerts, newest first")
    _add_config_arg(p)
    p.add_argument("--json", action="store_true", help="print JSON (photos left out)")
    p.add_argument("--limit", type=int, default=500, help="at most this many (500)")
    p.set_defaults(func=_alerts)

    p = sub.add_parser("operator", help="dashboard accounts: add, passwd, disable, enable, list")
    osub = p.add_subparsers(dest="operator_command", metavar="COMMAND", required=True)
    for name, help_ in (
        ("add", "add an operator"),
        ("passwd", "set a new password (also lifts a lock-out)"),
        ("disable", "disable an account and end its sessions"),
        ("enable", "enable a disabled account"),
        ("list", "list the accounts"),
    ):
        q = osub.add_parser(name, help=help_)
        _add_config_arg(q)
        if name != "list":
            q.add_argument("username", help="the operator's login name")
        if name == "add":
            q.add_argument(
                "--role",
                choices=[r.value for r in Role],
                default="operator",
                help="what the operator may do (default operator)",
            )
        if name in ("add", "passwd"):
            q.add_argument(
                "--password-stdin",
                action="store_true",
                help="read the password from the first line of standard input",
            )
        q.set_defaults(func=_operator)

    p = sub.add_parser("cap", help="export an alert as a CAP 1.2 message")
    _add_config_arg(p)
    p.add_argument("incident_id", metavar="ID", help="the alert's incident id")
    p.add_argument("--out", metavar="FILE", help="write it here instead of standard output")
    p.set_defaults(func=_cap)

    p = sub.add_parser(
        "purge",
        help="delete closed alerts and dismissed alerts' photos past their retention period",
    )
    _add_config_arg(p)
    p.add_argument(
        "--dry-run", action="store_true", help="only show what would be deleted; change nothing"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_purge)

    p = sub.add_parser("keys", help="the store key: move it into a token, rotate the token key")
    ksub = p.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    q = ksub.add_parser(
        "seal-store-key", help="wrap the store key file under a token key and remove the file"
    )
    _add_config_arg(q)
    q.set_defaults(func=_seal_store_key)
    q = ksub.add_parser("rotate-kek", help="rewrap the store key under a new token key")
    _add_config_arg(q)
    q.add_argument(
        "--keep-old", action="store_true", help="keep the old token key (default: delete it)"
    )
    q.set_defaults(func=_rotate_kek)

    p = sub.add_parser("config", help="example config, check a config")
    csub = p.add_subparsers(dest="config_command", metavar="COMMAND", required=True)
    q = csub.add_parser("example", help="print a complete commented config")
    q.set_defaults(func=_config_example)
    q = csub.add_parser("check", help="load a config and report what is wrong")
    _add_config_arg(q)
    q.set_defaults(func=_config_check)
