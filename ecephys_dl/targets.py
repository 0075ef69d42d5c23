"""The files a selection resolves to, and the protocol every source resolves them through.

A :class:`Target` is one NWB file the cache should hold and where its bytes come from: each
:class:`Mirror` is one source that has it, in the run's order of preference, and the target's own
URL, size and validators are those of its first mirror. Each source (the warehouse's RMA
queries, the S3 mirror's listing, the DANDI archive's) is one :class:`Resolver`; a run uses the
one :func:`ecephys_dl.sources.resolver_for` returns (several sources pooled into one when the run
has several), so no other module asks which source is in use.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from ecephys_dl.layout import CacheLayout

__all__ = ["MetadataSource", "Mirror", "Resolution", "Resolver", "SkippedSource", "Target", "TargetKind"]

_PLAIN_MD5 = re.compile(r'"?[0-9a-f]{32}"?')


class TargetKind(enum.StrEnum):
    """The two kinds of data file of the release."""

    SESSION_NWB = "session"
    LFP_NWB = "lfp"


@dataclass(frozen=True)
class Mirror:
    """One source's copy of a file: where it is and what the source announces of it."""

    source: str  # the source's name (a :class:`~ecephys_dl.config.Source` value)
    url: str
    size: int | None = None
    etag: str | None = None
    sha256: str | None = None  # the SHA-256 the source announces (DANDI's listing), if it does


@dataclass(frozen=True)
class Target:
    """One file to have in the cache, and where its bytes come from.

    ``mirrors`` are the sources that have the file, the preferred first; a resolver always gives
    at least one, and the first is the target's own ``url``, ``size``, ``etag`` and ``sha256``
    (build targets with :meth:`at` and :meth:`with_mirrors` to keep it so).
    """

    kind: TargetKind
    session_id: int
    probe_id: int | None
    url: str
    size: int | None = None
    etag: str | None = None
    sha256: str | None = None  # the SHA-256 the source announces (DANDI's listing), if it does
    mirrors: tuple[Mirror, ...] = ()

    @classmethod
    def at(cls, kind: TargetKind, session_id: int, probe_id: int | None, mirror: Mirror) -> Target:
        """The target of one source's copy of a file."""
        return cls(kind, session_id, probe_id, mirror.url, mirror.size, mirror.etag, mirror.sha256, (mirror,))

    def with_mirrors(self, mirrors: Sequence[Mirror]) -> Target:
        """The same file from ``mirrors`` (at least one): its own fields become those of the first."""
        first = mirrors[0]
        return replace(self, url=first.url, size=first.size, etag=first.etag, sha256=first.sha256, mirrors=tuple(mirrors))

    def with_size(self, size: int | None, etag: str | None) -> Target:
        """The same target with its first mirror's size and ETag learnt (a HEAD answer, the published size)."""
        if not self.mirrors:
            return replace(self, size=size, etag=etag)
        return self.with_mirrors((replace(self.mirrors[0], size=size, etag=etag), *self.mirrors[1:]))

    @property
    def offers(self) -> tuple[Mirror, ...]:
        """The mirrors, or the target itself as its one mirror (of no named source) when it lists none."""
        return self.mirrors or (Mirror("", self.url, self.size, self.etag, self.sha256),)

    @property
    def source(self) -> str:
        """The name of the source of the target's own URL (its first mirror's); empty when it lists none."""
        return self.mirrors[0].source if self.mirrors else ""

    @property
    def key(self) -> tuple[TargetKind, int, int | None]:
        """The file, whatever the source: its kind and ids (its place in the cache)."""
        return (self.kind, self.session_id, self.probe_id)

    @property
    def expected_id(self) -> int:
        """The id the file's NWB identifier must carry."""
        return self.probe_id if self.probe_id is not None else self.session_id

    def final(self, cache: CacheLayout) -> Path:
        """The file's path in the cache (built from the ids only)."""
        assert (self.probe_id is None) is (self.kind is TargetKind.SESSION_NWB)
        return cache.nwb(self.session_id, self.probe_id)

    @property
    def md5(self) -> str | None:
        """The MD5 the S3 ETag states, when it is a plain (not multipart) ETag."""
        if self.etag and _PLAIN_MD5.fullmatch(self.etag):
            return self.etag.strip('"')
        return None


@dataclass(frozen=True)
class SkippedSource:
    """A source left out of a run, and why (it could not resolve the selection)."""

    source: str
    reason: str


@dataclass(frozen=True)
class Resolution:
    """What a source found for a selection: the targets, the (session, probe) pairs without an LFP
    file, and the sources left out because they could not resolve it."""

    targets: tuple[Target, ...]
    unavailable: tuple[tuple[int, int], ...] = ()
    skipped: tuple[SkippedSource, ...] = ()


class MetadataSource(Protocol):
    """Where the raw metadata tables come from, each in AllenSDK's CSV form."""

    name: str

    def table_csv(self, table: str) -> bytes:
        """The raw CSV of one of the four tables (sessions, probes, channels, units)."""
        ...

    def metrics_csv(self, session_type: str) -> bytes:
        """The analysis-metrics CSV of one session type."""
        ...

    def session_metrics_csv(self, session_id: int) -> bytes:
        """The analysis-metrics CSV of one session."""
        ...


class Resolver(MetadataSource, Protocol):
    """A source of the release: the metadata tables, and download links for its NWB files."""

    def targets(self, sessions: Sequence[int], probes: Mapping[int, Sequence[int]], *, session_files: bool = True) -> Resolution:
        """The session files (unless ``session_files`` is false) and the probes' LFP files."""
        ...

    def sized(self, targets: Sequence[Target]) -> list[Target]:
        """The same targets with the sizes (and validators) the source did not list, where it can tell."""
        ...
