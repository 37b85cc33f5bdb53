"""Errors a user can fix: one line saying what is wrong, one saying what to do."""


class UserError(Exception):
    """A problem with the user's input or machine, reported without a traceback."""

    def __init__(self, cause: str, fix: str = ""):
        super().__init__(cause)
        self.cause = cause
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.cause}\n  fix: {self.fix}" if self.fix else self.cause
