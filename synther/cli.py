"""Shared plumbing for the thin scripts in MuJoCo/: config parsing and the user-error contract.

User errors (bad files, fields, options) print one line to stderr and exit with code 2, without a traceback;
pyrallis/argparse already exit with code 2 on malformed command lines.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, TypeVar

from pyrallis.argparsing import ArgumentParser
from pyrallis.help_formatter import SimpleHelpFormatter
from pyrallis.utils import ParsingError

from synther.errors import UserError

T = TypeVar("T")


class _HelpFormatter(SimpleHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """pyrallis' field help (from the comments beside each dataclass field) + the script docstring kept as written."""


def parse(config_class: type[T], description: str, args: list[str] | None = None) -> T:
    """Parse `--field value` options (and an optional `--config_path file.yaml`) into `config_class`."""
    parser = ArgumentParser(config_class=config_class, formatter_class=_HelpFormatter, description=description)
    try:
        return parser.parse_args(args)
    except (ParsingError, ValueError, TypeError, KeyError) as e:  # pyrallis' errors for a bad value or YAML field
        raise UserError(f"invalid option: {str(e).splitlines()[0]}") from None


def comma_list(value: str | None) -> list[str]:
    """A comma-separated option as a list. An empty option (`--algorithms ""`) or `none` is the empty list:
    pyrallis hands an empty string on as None or 'None'."""
    if value is None or value.strip().lower() in ("", "none"):
        return []
    return [x.strip() for x in value.split(",") if x.strip()]


def run(main: Callable[[], object]) -> None:
    """Run a script's main(), turning UserError into `error: ...` on stderr and exit code 2."""
    try:
        main()
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; finished outputs are complete, unfinished ones were not written", file=sys.stderr)
        sys.exit(130)
