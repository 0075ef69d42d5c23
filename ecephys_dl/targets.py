"""The files a selection resolves to, and the protocol every source resolves them through.

A :class:`Target` is one NWB file the cache should hold and where its bytes come from. Each
source (the warehouse's RMA queries, the S3 mirror's listing) is one :class:`Resolver`, chosen
once per run by :func:`ecephys_dl.sources.resolver_for`: it turns session and probe ids into
targets and serves the raw metadata CSVs, so no other module asks which source is in use.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from ecephys_dl.layout import CacheLayout

__all__ = ["MetadataSource", "Mirror", "Resolution", "Resolver", "Target", "TargetKind"]

_PLAIN_MD5 = re.compile(r'"?[0-9a-f]{32}"?')


class TargetKind(enum.StrEnum):
    """The two kinds of data file of the release."""

    SESSION_NWB = "session"
    LFP_NWB = "lfp"


@dataclass(frozen=True)
class Mirror:
    """One source's link to a file."""

    source: str
    url: str
    size: int | None = None
    etag: str | None = None
    sha256: str | None = None


@dataclass(frozen=True)
class Target:
    """One file to have in the cache, and where its bytes come from."""

    kind: TargetKind
    session_id: int
    probe_id: int | None
    url: str
    size: int | None = None
    etag: str | None = None
    sha256: str | None = None  # the SHA-256 the source announces (DANDI's listing), if it does
    mirrors: tuple[Mirror, ...] = ()  # every source the file can be had from, in the run's order

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
class Resolution:
    """What a source found for a selection: the targets, and the (session, probe) pairs without an LFP file."""

    targets: tuple[Target, ...]
    unavailable: tuple[tuple[int, int], ...] = ()


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
