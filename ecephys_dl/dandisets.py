"""The DANDI archive as a source: the release's two dandisets listed, checked, and put to use.

:func:`list_release` lists dandisets 000021 and 000022 (:class:`~ecephys_dl.dandi.DandiClient`)
and checks the listing against the release: every asset must be of a session of the metadata's
sessions table (``sessions.csv``, from the S3 mirror), in the dandiset of that session's type,
and no place of the cache may be listed twice. From that listing :class:`DandiResolver` gives
the targets of a fetch (the unsigned blob URL, size and SHA-256 of each file) and
:func:`published_from_dandi` the table of published files. The metadata CSVs come from the S3
mirror: DANDI does not publish AllenSDK's tables.
"""

from __future__ import annotations

import csv
import io
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ecephys_dl.config import Source
from ecephys_dl.dandi import BUCKET_HOSTS, DANDISETS, DandiAsset, DandiClient, duplicate
from ecephys_dl.errors import DandiError, SourceError
from ecephys_dl.targets import Mirror, Resolution, Target, TargetKind

if TYPE_CHECKING:
    import httpx

    from ecephys_dl.config import Settings
    from ecephys_dl.mirror import S3Resolver
    from ecephys_dl.published import PublishedTable

__all__ = ["DandiListing", "DandiResolver", "dandi_resolver", "list_release", "published_from_dandi", "release_sessions"]

_HINT = "the DANDI listing is not trusted; nothing was fetched from it. --source s3 reads the same files"


@dataclass(frozen=True)
class DandiListing:
    """The assets of the release's dandisets, checked, and the version read of each dandiset."""

    assets: tuple[DandiAsset, ...]
    versions: tuple[tuple[str, str], ...]  # (dandiset, version)

    def by_ids(self) -> dict[tuple[int, int | None], DandiAsset]:
        """The assets by (session id, probe id or None)."""
        return {(a.place.session_id, a.place.probe_id): a for a in self.assets}


def release_sessions(sessions_csv: bytes) -> dict[int, str]:
    """The session ids of a ``sessions.csv`` (AllenSDK's form) and each one's session type."""
    try:
        reader = csv.DictReader(io.StringIO(sessions_csv.decode("utf-8"), newline=""), strict=True)
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise SourceError(f"the metadata's sessions.csv cannot be read ({error})") from None
    if not {"id", "session_type"} <= set(reader.fieldnames or ()):
        raise SourceError("the metadata's sessions.csv has no id and session_type columns")
    sessions: dict[int, str] = {}
    for row in rows:
        text = row["id"] or ""
        if not (text.isascii() and text.isdigit()):
            raise SourceError(f"the metadata's sessions.csv has a session id that is not a number: {text[:40]!r}")
        sessions[int(text)] = row["session_type"] or ""
    return sessions


def list_release(dandi: DandiClient, sessions: Mapping[int, str]) -> DandiListing:
    """Every asset of the release's dandisets (each at :meth:`DandiClient.version`), checked against ``sessions``.

    ``sessions`` are the release's session ids and their session types (:func:`release_sessions`).
    Refused, naming the asset: one of a session not in ``sessions``, one in the other session
    type's dandiset, and a place of the cache listed twice (in one dandiset or across both).
    """
    assets: dict[str, DandiAsset] = {}
    versions: list[tuple[str, str]] = []
    for dandiset, session_type in DANDISETS.items():
        version = dandi.version(dandiset)
        versions.append((dandiset, version))
        for asset in dandi.assets(dandiset, version):
            session = asset.place.session_id
            where = f"the DANDI listing of {dandiset} has an asset {asset.path!r} of session {session}"
            if session not in sessions:
                raise DandiError(f"{where}, which is not a session of the release (not in the metadata's sessions.csv)", hint=_HINT)
            if sessions[session] != session_type:
                raise DandiError(f"{where}, a {sessions[session]} session, in the dandiset of {session_type}", hint=_HINT)
            if (other := assets.get(asset.place.cache_path)) is not None:
                raise duplicate(other, asset)
            assets[asset.place.cache_path] = asset
    return DandiListing(tuple(assets.values()), tuple(versions))


@dataclass
class DandiResolver:
    """The DANDI archive's files, with the S3 mirror's copies of AllenSDK's CSVs (``metadata``).

    The listing is read once, on first use, and checked against the metadata's sessions table.
    A target's URL is the asset's unsigned blob URL: it supports ``Range`` and never expires.
    """

    dandi: DandiClient
    metadata: S3Resolver
    name: str = "dandi"
    _listing: DandiListing | None = field(default=None, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def listing(self) -> DandiListing:
        """The release's listing, read on first use."""
        with self._lock:
            if self._listing is None:
                self._listing = list_release(self.dandi, release_sessions(self.metadata.table_csv("sessions")))
            return self._listing

    def targets(self, sessions: Sequence[int], probes: Mapping[int, Sequence[int]], *, session_files: bool = True) -> Resolution:
        by_ids = self.listing().by_ids()
        found: list[Target] = []
        if session_files:
            missing = [s for s in sessions if (s, None) not in by_ids]
            if missing:
                raise SourceError(f"the DANDI archive has no NWB file for session(s) {', '.join(map(str, missing))}")
            found += [_target(by_ids[(s, None)]) for s in sessions]
        unavailable: list[tuple[int, int]] = []
        for s in sessions:
            for p in probes.get(s, ()):
                if (s, p) in by_ids:
                    found.append(_target(by_ids[(s, p)]))
                else:
                    unavailable.append((s, p))
        return Resolution(tuple(found), tuple(unavailable))

    def sized(self, targets: Sequence[Target]) -> list[Target]:
        return list(targets)  # the listing gave every size

    def table_csv(self, table: str) -> bytes:
        return self.metadata.table_csv(table)

    def metrics_csv(self, session_type: str) -> bytes:
        return self.metadata.metrics_csv(session_type)

    def session_metrics_csv(self, session_id: int) -> bytes:
        return self.metadata.session_metrics_csv(session_id)


def _target(asset: DandiAsset) -> Target:
    # No ETag: the transfer learns the bucket's validator from its first answer; the SHA-256 is the truth.
    return Target.at(asset.place.kind, asset.place.session_id, asset.place.probe_id, Mirror(Source.DANDI.value, asset.blob_url, asset.size, sha256=asset.sha256))


def dandi_resolver(settings: Settings, client: httpx.Client) -> DandiResolver:
    """The resolver of ``--source dandi``: the API at ``settings.dandi_url``, the CSVs of ``settings.s3_url``.

    Blob URLs may lead to the API's own host, the archive's bucket and the hosts the user allowed.
    """
    from ecephys_dl.mirror import S3Resolver
    from ecephys_dl.s3 import S3Client

    policy = settings.retry_policy()
    dandi = DandiClient(settings.dandi_url, client=client, policy=policy, blob_hosts=BUCKET_HOSTS | settings.allowed_hosts, page_timeout=settings.timeout)
    return DandiResolver(dandi, S3Resolver(S3Client(settings.s3_url, client=client, policy=policy)))


def published_from_dandi(settings: Settings, client: httpx.Client) -> PublishedTable:
    """The table of published files as the DANDI archive lists them now, for :func:`~ecephys_dl.published.write_published`.

    The listing is checked as for a fetch (:func:`list_release`, against the S3 mirror's
    sessions table); rows come in the shipped table's order: by session, its session file first,
    then its LFP files by probe id.
    """
    from ecephys_dl.published import PublishedFile, PublishedKind, PublishedTable

    listing = dandi_resolver(settings, client).listing()
    files: list[PublishedFile] = []
    for asset in sorted(listing.assets, key=lambda a: (a.place.session_id, a.place.probe_id is not None, a.place.probe_id or 0)):
        kind = PublishedKind.SESSION if asset.place.kind is TargetKind.SESSION_NWB else PublishedKind.LFP
        try:
            files.append(PublishedFile(kind, asset.place.session_id, asset.place.probe_id, asset.place.cache_path, asset.size,
                                       asset.sha256, asset.dandi_etag, asset.dandiset, asset.asset_id, asset.path))  # fmt: skip
        except ValueError as error:
            raise DandiError(f"the DANDI listing of {asset.dandiset} has an asset {asset.path!r} that is no published file: {error}", hint=_HINT) from None
    if not files:
        raise DandiError("the DANDI archive lists no file of the release", hint="check --dandi-url")
    source = ", ".join(f"{d}@{v}" for d, v in listing.versions)
    return PublishedTable(tuple(files), source=f"DANDI {source}")
