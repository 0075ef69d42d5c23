"""The download links of a selection, for other download tools (``ecephys-dl links``).

One :class:`Link` per NWB file: its place in the cache, the size the run's first source gave, the
SHA-256 the published table gives (DANDI's), and every URL the file can be read from: the URL of
each source of the run that has it, in the run's order, then those of the other sources built
offline, never asked for:

- the S3 mirror's object, whose key is the file's cache path under :data:`ecephys_dl.s3.PREFIX`
  (the mirror is a copy of the cache tree, so ids alone name it);
- the DANDI API's download endpoint of the file's published asset (it redirects to the blob).

The warehouse's download link takes RMA queries, so it is there only when the warehouse is one
of the run's sources. :func:`render` writes the links in each :class:`LinkFormat`.
"""

from __future__ import annotations

import csv
import enum
import io
import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ecephys_dl.config import Source
from ecephys_dl.layout import CacheLayout
from ecephys_dl.published import PublishedTable
from ecephys_dl.s3 import PREFIX, object_url
from ecephys_dl.targets import Mirror, SkippedSource, Target, TargetKind

__all__ = ["CSV_HEADER", "Link", "LinkFormat", "LinkSet", "dandi_download_url", "links_of", "render", "s3_object_url"]

CSV_HEADER = ("path", "url", "kind", "session_id", "probe_id", "size", "sha256", "urls")


class LinkFormat(enum.StrEnum):
    """The forms ``links`` prints."""

    URLS = "urls"  # the run's URL of each file, one a line
    ARIA2 = "aria2"  # an aria2c input file: every URL of a file on one line, its place and digest below
    CSV = "csv"
    JSON = "json"


@dataclass(frozen=True)
class Link:
    """One file of a selection and where it can be downloaded from."""

    path: str  # relative to the cache root, forward slashes
    kind: TargetKind
    session_id: int
    probe_id: int | None
    size: int | None  # as the run's first source that has the file gave it (the warehouse gives none)
    sha256: str | None  # the published SHA-256; None where the published table has no such file
    urls: tuple[str, ...]  # the run's sources' in the run's order, then the other sources' in a fixed order

    @property
    def url(self) -> str:
        """The URL of the run's first source that has the file."""
        return self.urls[0]


@dataclass(frozen=True)
class LinkSet:
    """What ``links`` found for a selection: the links, the (session, probe) pairs without an LFP
    file, and the sources left out because they could not resolve it."""

    links: tuple[Link, ...]
    unavailable: tuple[tuple[int, int], ...] = ()
    skipped: tuple[SkippedSource, ...] = ()


def s3_object_url(s3_url: str, relative: str) -> str:
    """The S3 mirror's URL of the cache file at ``relative``: its key is the cache path under the mirror's prefix."""
    return object_url(s3_url, PREFIX + relative)


def dandi_download_url(dandi_url: str, asset_id: str) -> str:
    """The DANDI API's download endpoint of an asset (it answers 302 to the blob)."""
    return f"{dandi_url.rstrip('/')}/assets/{quote(asset_id, safe='')}/download/"


def links_of(targets: Sequence[Target], cache: CacheLayout, published: PublishedTable, *, sources: Sequence[Source], s3_url: str, dandi_url: str,
             left_out: Collection[str] = ()) -> tuple[Link, ...]:  # fmt: skip
    """The links of ``targets``, resolved through ``sources``, with the URLs of the other sources that need no query.

    A source of the run that lists no copy of a file has none: no URL is built for it, unless it
    was ``left_out`` of the run (it could not be asked). A target that names no mirror is taken
    as the first source's.
    """
    links = []
    for target in targets:
        relative = cache.relative(target.final(cache))
        row = published.by_path(relative)
        mirrors = target.mirrors or (Mirror(sources[0].value, target.url),)
        urls = [m.url for m in mirrors]
        listed = {m.source for m in mirrors} | {s.value for s in sources if s.value not in left_out}
        for other in Source:
            if other.value in listed:
                continue
            if other is Source.S3:
                urls.append(s3_object_url(s3_url, relative))
            elif other is Source.DANDI and row is not None:
                urls.append(dandi_download_url(dandi_url, row.dandi_asset_id))
            # The warehouse's link needs its RMA queries: it is given only when it is one of the run's sources.
        unique = tuple(dict.fromkeys(urls))
        links.append(Link(relative, target.kind, target.session_id, target.probe_id, target.size, None if row is None else row.sha256, unique))
    return tuple(links)


def render(links: Sequence[Link], fmt: LinkFormat, *, root: Path) -> str:
    """The links in form ``fmt``; the aria2 form names each file's directory under ``root`` in full."""
    if fmt is LinkFormat.URLS:
        return "".join(f"{link.url}\n" for link in links)
    if fmt is LinkFormat.ARIA2:
        return "".join(_aria2_entry(link, root) for link in links)
    if fmt is LinkFormat.CSV:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(CSV_HEADER)
        for link in links:
            writer.writerow([link.path, link.url, str(link.kind), link.session_id, _blank(link.probe_id), _blank(link.size), _blank(link.sha256), " ".join(link.urls)])
        return buffer.getvalue()
    return json.dumps([_json_row(link) for link in links], indent=1) + "\n"


def _aria2_entry(link: Link, root: Path) -> str:
    # One URI line with several tab-separated URIs is aria2's form for one file from several
    # sources. Its per-file dir overrides -d, so it names the cache's directory in full.
    final = root / link.path
    lines = ["\t".join(link.urls), f"  dir={final.parent.resolve()}", f"  out={final.name}"]
    if link.sha256:
        lines.append(f"  checksum=sha-256={link.sha256}")
    return "".join(f"{line}\n" for line in lines)


def _json_row(link: Link) -> dict[str, object]:
    return {"path": link.path, "url": link.url, "kind": str(link.kind), "session_id": link.session_id, "probe_id": link.probe_id, "size": link.size,
            "sha256": link.sha256, "urls": list(link.urls)}  # fmt: skip


def _blank(value: object) -> str:
    return "" if value is None else str(value)
