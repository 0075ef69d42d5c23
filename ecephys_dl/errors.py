"""Errors and exit codes.

Every error the core raises is an :class:`EcephysDlError`; the command line turns it into a
message and the exit code it carries, in one place. The tree::

    EcephysDlError
    ├── UsageError              bad arguments or option values            (exit 2)
    ├── SourceError             the server said something we cannot use    (exit 1)
    │   ├── RmaError            a failed or malformed RMA answer
    │   ├── SourceUnreachable   no answer at all, try later                (exit 5)
    │   └── TransferError       one file failed for good; its partial kept
    ├── CacheError              local state we will not touch              (exit 1)
    │   └── ManifestError       a manifest.json that is not ours to rewrite
    └── TransferCancelled       the run is stopping, partials consistent   (exit 130)
"""

from __future__ import annotations

import enum

__all__ = [
    "CacheError",
    "EcephysDlError",
    "ExitCode",
    "ManifestError",
    "RmaError",
    "SourceError",
    "SourceUnreachable",
    "TransferCancelled",
    "TransferError",
    "UsageError",
]


class ExitCode(enum.IntEnum):
    """Process exit codes, documented in the README and in ``--help``."""

    OK = 0
    FAILED = 1
    USAGE = 2
    LOCKED = 3
    NO_SPACE = 4
    UNREACHABLE = 5
    INTERRUPTED = 130
    TERMINATED = 143


class EcephysDlError(Exception):
    """Base of every error ecephys-dl raises on purpose.

    ``hint`` says what the user can do next; ``exit_code`` is what the process exits with.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class UsageError(EcephysDlError):
    """The arguments cannot be acted on (unknown id, bad value)."""

    exit_code = ExitCode.USAGE


class SourceError(EcephysDlError):
    """The warehouse or the S3 mirror answered with something unusable."""


class RmaError(SourceError):
    """An RMA query failed (``success: false``) or its answer is malformed."""

    def __init__(self, message: str, *, query: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.query = query


class SourceUnreachable(SourceError):
    """No usable answer after retries: a temporary condition, try again later."""

    exit_code = ExitCode.UNREACHABLE


class CacheError(EcephysDlError):
    """The cache directory holds something we will not overwrite or cannot use."""


class ManifestError(CacheError):
    """``manifest.json`` is corrupt or of another AllenSDK manifest version."""


class TransferError(SourceError):
    """This file failed for good; the message names it and why. A usable partial is kept."""


class TransferCancelled(EcephysDlError):
    """The run is stopping (``Shared.cancel``); the part and its record are consistent."""

    exit_code = ExitCode.INTERRUPTED
