"""The ``citywatch`` console script: one subcommand per component.

Each component registers its own subcommands through a ``register(subparsers)``
function, imported lazily so that ``citywatch protocol ...`` does not need the
server's or the edge's dependencies.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
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

# subcommand -> the root errors its commands let through: problems the user can fix, printed
# as one line with exit status 2. Each component raises its own; none imports this module.
ROOT_ERRORS: dict[str, tuple[str, ...]] = {
    "protocol": ("protocol:ProtocolError",),
    "server": ("server._errors:ServerError", "hardware._errors:HardwareError"),
    "enc": ("enc._errors:EncError",),
    "edge": ("edge._errors:EdgeError", "hardware._errors:HardwareError"),
    "demo": (),
}


class CliError(Exception):
    """A problem with the dispatcher's own commands the user can fix; printed as one line,
    exit status 2. The components raise their own root errors (``ROOT_ERRORS``)."""


def _root_errors(component: str | None) -> tuple[type[BaseException], ...]:
    """The root error classes of ``component`` whose modules are loaded already (a component
    that failed to import raised nothing of its own)."""
    found: list[type[BaseException]] = [CliError]
    for ref in ROOT_ERRORS.get(component or "", ()):
        module, _, name = ref.partition(":")
        mod = sys.modules.get(module)
        if mod is not None:
            found.append(getattr(mod, name))
    return tuple(found)


def _version() -> str:
    try:
        return importlib.metadata.version("citywatch")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "unknown (not installed)"


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="citywatch", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--version",
        action="version",
        version=f"%(prog)s {_version()}",
        help="print the version of citywatch and exit",
    )
    sub = parser.add_subparsers(dest="component", metavar="COMPONENT", required=True)
    wanted = argv[0] if argv else None
    for name, (module, help_) in COMPONENTS.items():
        if wanted == name:
            try:
                mod = importlib.import_module(module)
            except ModuleNotFoundError as exc:
                raise CliError(
                    f"citywatch {name} is not available: {exc}. Run "
                    "scripts/setup.sh to install its dependencies."
                ) from None
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
    except Exception as exc:
        if not isinstance(exc, _root_errors(args_list[0] if args_list else None)):
            raise
        print(f"citywatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
