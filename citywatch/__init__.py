"""CityWatch: the ``citywatch`` command line and the demo district."""

from .cli import CliError, main

__all__ = ["CliError", "main"]
