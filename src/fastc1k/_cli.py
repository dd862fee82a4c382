"""What every command line of the package shares: bad input is one line and exit 2."""
from __future__ import annotations

import argparse

__all__ = ["ArgumentParser", "UsageError"]


class UsageError(Exception):
    """Bad input from the user: printed as one line (`PROG: error: ...`), exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors raise UsageError instead of printing the usage block and
    exiting, so each CLI prints them its way and can test them."""

    def error(self, message: str) -> None:
        raise UsageError(f"{message} (see --help)")
