"""Errors and exit codes: every exception ecephys-dl raises on purpose, in one tree.

Every error the core raises is an :class:`EcephysDlError`. It carries a message (``str(error)``
is the message alone), an optional ``hint`` saying what to do next (rendered by the interface,
never folded into the message) and the exit code the process ends with. The command line turns
them into output in one place. The tree::

    EcephysDlError                  ecephys-dl's own errors                        (exit 1)
    ├── UsageError                  bad arguments or option values                 (exit 2)
    ├── LockHeld                    another run holds the cache's lock             (exit 3)
    ├── NoSpace                     not enough free disk space for the plan        (exit 4)
    ├── TransferCancelled           the run is stopping (Ctrl-C, SIGTERM, budget)  (exit 130)
    ├── SourceError                 a server said something we cannot use          (exit 1)
    │   ├── RmaError                a failed or malformed RMA answer
    │   ├── TransferError           one file failed for good; its partial is kept
    │   └── SourceUnreachable       no usable answer after retries: try later      (exit 5)
    │       └── TransientError      one failed attempt, worth retrying
    └── CacheError                  local state we will not touch or cannot use    (exit 1)
        ├── ManifestError           a manifest.json that is not ours to rewrite
        └── PublishedTableError     a table of published sizes and digests we cannot read

Anything else that escapes is a bug: the command line reports it as an internal error (exit 1)
and shows its traceback only with ``--debug`` (or ``ECEPHYS_DL_DEBUG=1``).
"""

from __future__ import annotations

import enum

__all__ = [
    "CacheError",
    "EcephysDlError",
    "ExitCode",
    "LockHeld",
    "ManifestError",
    "NoSpace",
    "PublishedTableError",
    "RmaError",
    "SourceError",
    "SourceUnreachable",
    "TooSlow",
    "TransferCancelled",
    "TransferError",
    "TransientError",
    "UsageError",
    "exit_codes_text",
]


class ExitCode(enum.IntEnum):
    """Process exit codes; ``--help`` and the README list them from :func:`exit_codes_text`."""

    OK = 0
    FAILED = 1
    USAGE = 2
    LOCKED = 3
    NO_SPACE = 4
    UNREACHABLE = 5
    INTERRUPTED = 130
    TERMINATED = 143

    @property
    def meaning(self) -> str:
        """What the code tells a script, in a few words."""
        return _MEANINGS[self]


_MEANINGS = {
    ExitCode.OK: "everything asked for is done",
    ExitCode.FAILED: "something failed (files, checks, a server answer)",
    ExitCode.USAGE: "usage error (bad option, unknown id)",
    ExitCode.LOCKED: "another run holds the cache lock",
    ExitCode.NO_SPACE: "not enough free disk space",
    ExitCode.UNREACHABLE: "source unreachable (temporary: try again later)",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C)",
    ExitCode.TERMINATED: "terminated (SIGTERM)",
}


def exit_codes_text() -> str:
    """The exit codes, one per line (``  <code>  <meaning>``), as ``--help`` and the README show them."""
    return "\n".join(f"  {int(code):<4} {code.meaning}" for code in ExitCode)


class EcephysDlError(Exception):
    """Base of every error ecephys-dl raises on purpose.

    ``message`` says what happened (``str(error)`` is the message alone); ``hint`` says what the
    user can do next; ``exit_code`` is what the process exits with.
    """

    exit_code: ExitCode = ExitCode.FAILED

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(EcephysDlError):
    """The arguments cannot be acted on (unknown id, bad value)."""

    exit_code = ExitCode.USAGE


class LockHeld(EcephysDlError):
    """Another run holds the cache's lock."""

    exit_code = ExitCode.LOCKED


class NoSpace(EcephysDlError):
    """Not enough free disk space for what is still to fetch."""

    exit_code = ExitCode.NO_SPACE


class TransferCancelled(EcephysDlError):
    """The run is stopping (a signal or ``--max-duration``); partials and their records are consistent."""

    exit_code = ExitCode.INTERRUPTED


class SourceError(EcephysDlError):
    """The warehouse, the S3 mirror or a download answered with something unusable."""


class RmaError(SourceError):
    """An RMA query failed (``success: false``) or its answer is malformed."""

    def __init__(self, message: str, *, query: str | None = None, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.query = query


class DandiError(SourceError):
    """The DANDI API answered with something unusable (bad JSON, a malformed digest, a path outside
    the release's mapping, an asset twice, an asset of an unknown session); the message names the asset."""


class TransferError(SourceError):
    """This file failed for good; the message names it and why. A usable partial is kept."""


class SourceUnreachable(SourceError):
    """No usable answer after retries: a temporary condition, try again later."""

    exit_code = ExitCode.UNREACHABLE


class TransientError(SourceUnreachable):
    """One failed attempt worth retrying: a transient HTTP status, or a request over its deadline.

    It is raised inside a retried request function; if one ever escapes the retry loop it still
    reads as "unreachable, try later" (exit 5).
    """

    def __init__(
        self,
        message: str,
        *,
        url: str,
        status: int | None = None,
        retry_after: float | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint=hint)
        self.url = url
        self.status = status
        self.retry_after = retry_after


class TooSlow(TransientError):
    """A connection slower than ``--min-speed``: a stall, as far as the choice of source goes."""


class CacheError(EcephysDlError):
    """The cache directory holds something we will not overwrite or cannot use."""


class ManifestError(CacheError):
    """``manifest.json`` is corrupt or of another AllenSDK manifest version."""


class PublishedTableError(CacheError):
    """A table of the release's published sizes and digests is missing or malformed; the message
    names the file and the row."""
