"""Errors a user can fix: one line saying what is wrong, one saying what to do."""

from __future__ import annotations

import sys
from collections.abc import Callable


class UserError(Exception):
    """A problem with the user's input or machine, reported without a traceback."""

    def __init__(self, cause: str, fix: str = ""):
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause}\n  fix: {self.fix}" if self.fix else self.cause


def exit_code(command: Callable[[], int | None]) -> int:
    """Run a command's body as a program's main: a UserError is printed without a traceback (exit 2)."""
    try:
        return command() or 0
    except UserError as err:
        print(f"llmcloud: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmcloud: interrupted", file=sys.stderr)
        return 130
