"""``citywatch server purge [--dry-run] [--json]``: apply ``[retention]`` now, or show
what the next purge would remove."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._config import load_config
from ._store import PurgeReport

__all__ = ["register_purge"]


def register_purge(sub: argparse._SubParsersAction[Any], common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "purge",
        parents=[common],
        help="erase photos and delete incidents past their retention period",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="only show what would be removed; change nothing"
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_purge)


def _purge(args: argparse.Namespace) -> int:
    from ._setup import open_store

    cfg = load_config(args.config)
    store, _master = open_store(cfg, announce=False)
    try:
        report = store.purge(
            cfg.retention.periods_ms(), dry_run=args.dry_run, actor=f"cli:{args.actor}"
        )
    finally:
        store.close()
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(_text(report, cfg.retention.model_dump()))
    return 0


def _text(report: PurgeReport, periods: dict[str, float]) -> str:
    verb = "would be" if report.dry_run else "were"
    lines = []
    for ids, what, period in (
        (
            report.photos_dismissed,
            "photo(s) of dismissed incidents",
            f"{periods['dismissed_photo_hours']:g} h after the decision",
        ),
        (
            report.photos_alerted,
            "photo(s) of alerted incidents",
            f"{periods['alerted_photo_days']:g} days after the ENC's receipt",
        ),
        (report.incidents, "incident(s)", f"{periods['incident_days']:g} days after the decision"),
    ):
        erased = "deleted" if what == "incident(s)" else "erased"
        lines.append(f"{len(ids)} {what} {verb} {erased} ({period})")
        lines += [f"  {i}" for i in ids]
    if not report.dry_run and report.total:
        lines.append("recorded in the audit log as retention.purge")
    return "\n".join(lines)
