"""The ``citywatch`` console script: one subcommand per component.

Each component registers its own subcommands through a ``register(subparsers)``
function, imported lazily so that ``citywatch protocol ...`` does not need the
server's or the edge's dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# subcommand -> (module with register(), one-line help)
COMPONENTS: dict[str, tuple[str, str]] = {
    "protocol": ("citywatch._cli_protocol", "inspect messages, write test vectors"),
    "server": ("server.cli", "the trusted server: run, device registry, windows"),
    "enc": ("enc.cli", "the Emergency Notification Center: run, alerts"),
    "edge": ("edge.cli", "the street-pole daemon: run, provision, status, eval"),
    "demo": ("citywatch.demo", "a demo district: broker, server, ENC and devices"),
}


class CliError(Exception):
    """A problem the user can fix; printed as one line, exit status 2."""


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citywatch", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="component", metavar="COMPONENT", required=True)
    wanted = argv[0] if argv else None
    for name, (module, help_) in COMPONENTS.items():
        if wanted == name:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                raise CliError(f"citywatch {name} is not available: {exc}. Run "
                               "scripts/setup.sh to install its dependencies.") from None
            mod.register(sub.add_parser(name, help=help_, description=help_))
        else:
            sub.add_parser(name, help=help_)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser(args_list)
        args = parser.parse_args(args_list)
        func = getattr(args, "func", None)
        if func is None:
            parser.parse_args([*args_list, "--help"])
            return 2
        return int(func(args) or 0)
    except CliError as exc:
        print(f"citywatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
