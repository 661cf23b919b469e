"""The root of every error the project raises on purpose.

An operator can act on a ``PrimerError`` (its message says what and where); the
``primer`` CLI prints it as one ``error: ...`` line and exits with ``exit_code``.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class PrimerError(Exception):
    """An error the user can act on; the message names the file, variable or server involved."""

    exit_code: int = 1


class SettingsError(PrimerError, ValueError):
    """An environment variable or configuration file holds an unusable value; the message names it."""


def one_line(exc: BaseException, limit: int = 500) -> str:
    """``Type: first line of the message``, for a status field or a log line (tracebacks stay in logs)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:limit]
