"""User-facing errors.

Anything a user can cause (a bad config, a missing bundle, an unwritable path) raises
`EgosynthError` with ONE line that names the file, the field and the value. The CLI prints
that line without a traceback and exits non-zero; bugs still raise ordinary exceptions.
"""

from __future__ import annotations


class EgosynthError(Exception):
    """An error the user can fix; its message is a single line."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class ConfigError(EgosynthError):
    """A config file is malformed: names the file, the field and the offending value."""

    def __init__(self, path: object, field: str | None, value: object, reason: str) -> None:
        shown = repr(value)
        if len(shown) > 80:  # cut the middle: a path's file name is at its end
            shown = shown[:30] + "..." + shown[-47:]
        if field is None:  # a problem of the whole file (or of several fields together)
            super().__init__(f"{path}: {reason}")
        else:
            super().__init__(f"{path}: {field or '<root>'} = {shown}: {reason}")
        self.path, self.field, self.value, self.reason = path, field, value, reason


class NotBuiltError(EgosynthError):
    """A subcommand that exists in the plan but is not implemented yet."""
