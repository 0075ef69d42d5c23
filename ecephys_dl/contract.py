"""The terms of one download: the file asked for, how to fetch it, what it gives back, who hears how it goes.

:class:`RemoteFile` and :class:`TransferSettings` go into :func:`ecephys_dl.transfer.download`,
a :class:`TransferResult` comes out, and a :class:`TransferListener` hears the transfer from its
worker threads (:class:`Quiet` hears nothing). :class:`FileTransfer` is what the engine's
parts see of one file's download. Plain facts: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ecephys_dl.errors import TransferError, UsageError
from ecephys_dl.facts import FileFacts
from ecephys_dl.retry import RetryNotice, RetryPolicy
from ecephys_dl.shared import Shared

if TYPE_CHECKING:
    from ecephys_dl.partial import Ranges
    from ecephys_dl.routing import Router

__all__ = ["FileTransfer", "Quiet", "RemoteFile", "SourceLink", "SourceShare", "TransferListener", "TransferResult", "TransferSettings"]


@dataclass(frozen=True)
class SourceLink:
    """One source's link to the file: its name ("s3"), its URL and the ETag its listing gave, if any."""

    source: str
    url: str
    etag: str | None = None


@dataclass(frozen=True)
class SourceShare:
    """What one source gave a file: its bytes, and why it was dropped for the file, if it was."""

    source: str
    bytes: int
    dropped: str | None = None


@dataclass(frozen=True)
class RemoteFile:
    """The file to fetch: its URL and what is known of it in advance (from an S3 listing).

    ``sources`` are every source's link to the same file, in the run's order (empty: ``url`` is
    the only one). With ``mix`` (the file's published SHA-256 will judge the whole), one file's
    pieces may come from several of them at once; without it, one source serves the whole file
    and the next one takes over, from byte 0, only when it fails for good.
    """

    url: str
    size: int | None = None  # None: learnt from the server
    etag: str | None = None  # a validator known in advance, else learnt from the server
    name: str = ""  # for messages and events, e.g. "session_715093703.nwb"
    # Compute the file's MD5 too (costs about twice SHA-256's CPU): only when there is an MD5 to
    # compare it with, such as a plain (not multipart) S3 ETag.
    md5: bool = False
    sources: tuple[SourceLink, ...] = ()
    mix: bool = False

    @property
    def links(self) -> tuple[SourceLink, ...]:
        """Every link to the file, in order (``url`` alone when no source was named)."""
        return self.sources or (SourceLink("", self.url, self.etag),)

    @property
    def label(self) -> str:
        """The name used in messages: ``name``, else the last part of the URL."""
        return self.name or self.url.rstrip("/").rsplit("/", 1)[-1] or self.url


@dataclass(frozen=True)
class TransferSettings:
    """How one file is fetched: connections, segment and chunk sizes, stall rules, checkpoints."""

    connections: int = 4  # ranged connections per file
    # The missing bytes are handed to the connections in order, in pieces of at most this size:
    # the file fills from the front, so its hash follows close behind the downloads, and only
    # ``connections`` pieces are ever in flight.
    segment_size: int = 8 * 1024 * 1024
    min_segment: int = 256 * 1024  # an idle connection takes half of a slow piece down to this
    chunk_size: int = 256 * 1024  # bytes gathered before one write
    stall_timeout: float = 60.0  # no byte for this long on a connection: drop it, resume its range
    min_speed: int = 0  # bytes/s; slower than this over stall_window: drop, resume (0 = off)
    stall_window: float = 60.0
    # The record says which bytes were written this often (a rename, no sync), so a process that
    # is killed loses at most this long's worth; the bytes written are synced to the disk (what
    # survives a power loss) every sync_seconds or sync_bytes, whichever comes first.
    record_seconds: float = 0.05
    sync_seconds: float = 2.0
    sync_bytes: int = 64 * 1024 * 1024
    max_restarts: int = 3  # discarding the partial during a transfer at most this often
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    # No file is larger (the dataset's largest is about 3 GiB): the bound on an answer whose
    # length is unknown, such as an endless body.
    max_size: int = 64 * 1024**3

    def __post_init__(self) -> None:
        for name in ("connections", "segment_size", "min_segment", "chunk_size", "sync_bytes", "max_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"transfer {name.replace('_', ' ')} must be a whole number >= 1, not {value!r}")
        for name in ("min_speed", "max_restarts"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"transfer {name.replace('_', ' ')} must be a whole number >= 0, not {value!r}")
        for name in ("stall_timeout", "stall_window", "record_seconds", "sync_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UsageError(f"transfer {name.replace('_', ' ')} must be a number of seconds > 0, not {value!r}")


@dataclass(frozen=True)
class TransferResult:
    """A complete part file and what is known of it; the caller verifies and moves it into place."""

    part: Path
    size: int
    sha256: str
    md5: str | None  # only when RemoteFile.md5 asked for it
    etag: str | None  # the validators of the version downloaded (may differ from RemoteFile.etag)
    last_modified: str | None
    resumed_from: int  # bytes of an earlier run's partial that the file kept
    fetched: int  # body bytes written in this call (restarted attempts included)
    restarts: int  # how often a partial was discarded in this call
    seconds: float
    shares: tuple[SourceShare, ...] = ()  # per source: the bytes written in this call, and drops


class TransferListener(Protocol):
    """Hears how transfers go; called from worker threads, so it must be thread-safe and cheap."""

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        """The first answer was accepted: the size is known (if the server says it)."""

    def advanced(self, name: str, nbytes: int) -> None:
        """``nbytes`` more bytes were written."""

    def retried(self, name: str, notice: RetryNotice) -> None:
        """An attempt failed and is retried (resuming from the bytes written)."""

    def restarted(self, name: str, reason: str) -> None:
        """The partial was discarded: progress starts again from 0."""

    def note(self, name: str, message: str) -> None:
        """Something worth telling (e.g. "the server ignores byte ranges: one stream")."""


class Quiet:
    """The listener used when none is given."""

    def started(self, name: str, size: int | None, resumed_from: int) -> None:
        pass

    def advanced(self, name: str, nbytes: int) -> None:
        pass

    def retried(self, name: str, notice: RetryNotice) -> None:
        pass

    def restarted(self, name: str, reason: str) -> None:
        pass

    def note(self, name: str, message: str) -> None:
        pass


class FileTransfer(Protocol):
    """The file-level side of a download that a session works for (``transfer._Transfer``)."""

    remote: RemoteFile
    part: Path
    side: Path
    shared: Shared
    settings: TransferSettings
    listener: TransferListener
    name: str
    facts: FileFacts
    router: Router  # the sources of the file
    kept_origins: dict[str, Ranges]  # which source gave the ranges kept from an earlier run, when several did

    def announce(self) -> None:
        """Tell the listener the transfer started, once."""

    def fail(self, why: str, *, cause: BaseException | None = None, hint: str | None = None) -> TransferError:
        """The error for this file failing for good."""

    def too_large(self, size: int, url: str) -> TransferError:
        """The error for a size stated far beyond what the file can be."""
