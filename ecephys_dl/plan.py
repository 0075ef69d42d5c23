"""From a selection of sessions to a plan: which files, from where, and what to do with each.

Resolution turns session and probe ids into download links with as few requests as possible:
one RMA query lists every session NWB, and LFP files are asked for in batches of probe ids with
``attachable_id$in``; or one S3 listing gives every key with its size and ETag. Local paths are
built from the integer ids only, never from a name the server sent.

Planning then decides, per file, ``skip`` (already in place and sound), ``resume`` (a partial
with a usable state sidecar exists) or ``download``, and :func:`check_free_space` compares what
is still to fetch with the free disk space.

What a server sends is checked before it is used: a download link must lead to the warehouse's
own download path or to a host the user allowed (``allowed_hosts``), and an S3 key that looks
like a data file but is not exactly ``session_<S>/session_<S>.nwb`` or
``session_<S>/probe_<P>_lfp.nwb`` (a ``..``, a backslash, a control character, an odd directory)
is refused with its name, never silently skipped and never turned into a path. A file whose
place in the cache is a symbolic link is planned for download, so the transfer reports it.
"""

from __future__ import annotations

import enum
import os
import re
import shutil
import stat
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urljoin, urlsplit

from ecephys_dl.errors import EcephysDlError, ExitCode, SourceError
from ecephys_dl.integrity import check_size_and_superblock
from ecephys_dl.layout import CacheLayout
from ecephys_dl.records import RecordStore
from ecephys_dl.sizes import format_size

if TYPE_CHECKING:
    import httpx

    from ecephys_dl.http import RetryPolicy
    from ecephys_dl.rma import RmaClient
    from ecephys_dl.s3 import S3Client

__all__ = [
    "Action",
    "FileKind",
    "NoSpace",
    "PlannedFile",
    "Target",
    "check_free_space",
    "check_s3_key",
    "in_shard",
    "parse_shard",
    "plan_files",
    "probe_sizes",
    "resolve_s3",
    "resolve_warehouse",
]

# Used with fullmatch: ``$`` would also match before a trailing newline. ASCII digits only
# (``\d`` takes other scripts' digits, which int() accepts), no leading zero (two keys, one id).
_ID = r"([1-9][0-9]{0,18})"
DOWNLOAD_PATH = re.compile(r"/api/v2/well_known_file_download/" + _ID)
SESSION_KEY = re.compile(rf"session_{_ID}/session_{_ID}\.nwb")
LFP_KEY = re.compile(rf"session_{_ID}/probe_{_ID}_lfp\.nwb")
# Keeps each LFP query's URL well under common limits (8 KiB) while needing few queries.
PROBE_BATCH = 200


class FileKind(enum.StrEnum):
    SESSION_NWB = "session"
    LFP_NWB = "lfp"


class Action(enum.StrEnum):
    SKIP = "skip"
    RESUME = "resume"
    DOWNLOAD = "download"


class NoSpace(EcephysDlError):
    """Not enough free disk space for what is still to fetch."""

    exit_code = ExitCode.NO_SPACE


@dataclass(frozen=True)
class Target:
    """One file to have in the cache, and where its bytes come from."""

    kind: FileKind
    session_id: int
    probe_id: int | None
    url: str
    size: int | None = None
    etag: str | None = None

    @property
    def expected_id(self) -> int:
        """The id the file's NWB identifier must carry."""
        return self.probe_id if self.probe_id is not None else self.session_id

    def final(self, cache: CacheLayout) -> Path:
        if self.kind is FileKind.SESSION_NWB:
            return cache.session_nwb(self.session_id)
        assert self.probe_id is not None
        return cache.probe_lfp_nwb(self.session_id, self.probe_id)

    @property
    def md5(self) -> str | None:
        """The MD5 the S3 ETag states, when it is a plain (not multipart) ETag."""
        if self.etag and re.fullmatch(r'"?[0-9a-f]{32}"?', self.etag):
            return self.etag.strip('"')
        return None


@dataclass(frozen=True)
class PlannedFile:
    target: Target
    final: Path
    action: Action
    have: int  # bytes already in place (the file, or a partial's written ranges)
    reason: str = ""

    @property
    def relative(self) -> str:
        return self.final.parent.name + "/" + self.final.name

    @property
    def remaining(self) -> int | None:
        if self.action is Action.SKIP:
            return 0
        return None if self.target.size is None else max(0, self.target.size - self.have)


def _download_url(base_url: str, link: object, query_name: str, allowed_hosts: Collection[str] = ()) -> str:
    """The absolute URL of a download link.

    Accepted: the warehouse's own download path (``/api/v2/well_known_file_download/<id>``, as
    a path or a URL on the warehouse), and an HTTP(S) URL on one of ``allowed_hosts`` (a
    mirror the user named). Anything else, such as an absolute URL to another host, is refused.
    """
    from ecephys_dl.http import host_allowed

    if not isinstance(link, str):
        raise SourceError(f"the {query_name} answer has a download_link that is not text: {link!r:.200}")
    shown = f"{link[:200]!r}{'...' if len(link) > 200 else ''}"
    if any(ord(c) < 33 or ord(c) == 127 or c == "\\" for c in link):
        raise SourceError(f"the {query_name} answer has a download_link with spaces or control characters: {shown}")
    base = urlsplit(base_url)
    try:
        url = urljoin(base_url + "/", link.lstrip("/")) if link.startswith("/") else link
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError as error:
        raise SourceError(f"the {query_name} answer has a download_link that is not a URL ({error}): {shown}") from None
    own = (parts.scheme, parts.netloc) == (base.scheme, base.netloc)
    if own and DOWNLOAD_PATH.fullmatch(parts.path) and not parts.query and not parts.fragment:
        return url
    if not own and parts.scheme in ("http", "https") and parts.hostname and host_allowed(url, allowed_hosts):
        if base.scheme == "https" and parts.scheme != "https":
            raise SourceError(f"the {query_name} answer links to {shown}, plain HTTP where the warehouse is HTTPS")
        return url
    if not own and parts.hostname:
        raise SourceError(
            f"the {query_name} answer links to {shown}, on another host than the warehouse ({base.hostname})",
            hint=f"if {parts.hostname} is a server you trust, allow it with --allow-host {parts.hostname}; nothing was downloaded from that link",
        )
    raise SourceError(
        f"the {query_name} answer links to {shown}, outside the warehouse's download path",
        hint="the warehouse answered something unexpected; nothing was downloaded from that link",
    )


def _int_field(record: Mapping[str, object], key: str, query_name: str) -> int:
    value = record.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SourceError(f"the {query_name} answer has a record whose {key} is not a positive integer: {value!r}")
    return value


def resolve_warehouse(
    rma: RmaClient,
    base_url: str,
    sessions: Sequence[int],
    probes: Mapping[int, Sequence[int]],
    *,
    session_files: bool = True,
    allowed_hosts: Collection[str] = (),
) -> tuple[list[Target], list[tuple[int, int]]]:
    """Targets for the sessions (and the given probes' LFP files) from the warehouse.

    Returns the targets and the (session, probe) pairs whose probe has no LFP file. A download
    link may point to another host only when that host is in ``allowed_hosts``.
    """
    from ecephys_dl import rma as rma_mod

    targets: list[Target] = []
    wanted = set(sessions)
    if session_files and wanted:
        name = "session NWB files"
        found: dict[int, str] = {}
        for record in rma.fetch_all(rma_mod.session_nwb_query(None), name=name):
            session_id = _int_field(record, "attachable_id", name)
            if session_id in wanted:
                if session_id in found:
                    raise SourceError(f"the warehouse lists two session NWB files for session {session_id}")
                found[session_id] = _download_url(base_url, record.get("download_link"), name, allowed_hosts)
        missing = sorted(wanted - set(found))
        if missing:
            raise SourceError(f"the warehouse lists no NWB file for session(s) {', '.join(map(str, missing))}")
        targets += [Target(FileKind.SESSION_NWB, s, None, found[s]) for s in sessions]

    probe_session = {p: s for s, ps in probes.items() for p in ps}
    links: dict[int, str] = {}
    all_probes = list(probe_session)
    for start in range(0, len(all_probes), PROBE_BATCH):
        batch = all_probes[start : start + PROBE_BATCH]
        name = "LFP NWB files"
        for record in rma.fetch_all(rma_mod.lfp_nwb_query(batch), name=name):
            probe_id = _int_field(record, "attachable_id", name)
            if probe_id in probe_session:
                if probe_id in links:
                    raise SourceError(f"the warehouse lists two LFP NWB files for probe {probe_id}")
                links[probe_id] = _download_url(base_url, record.get("download_link"), name, allowed_hosts)
    unavailable = [(probe_session[p], p) for p in all_probes if p not in links]
    targets += [Target(FileKind.LFP_NWB, probe_session[p], p, links[p]) for p in all_probes if p in links]
    return targets, unavailable


def resolve_s3(
    s3: S3Client,
    sessions: Sequence[int],
    probes: Mapping[int, Sequence[int]],
    *,
    session_files: bool = True,
) -> tuple[list[Target], list[tuple[int, int]]]:
    """The same targets from one listing of the S3 mirror's cache directory.

    A key that looks like a data file but is not exactly one of the two forms is refused
    (:func:`check_s3_key`): a listing holding one is not trusted for anything.
    """
    from ecephys_dl.s3 import PREFIX

    objects: dict[tuple[int, int | None], tuple[str, int, str]] = {}
    for item in s3.list(PREFIX):
        rest = item.key[len(PREFIX) :] if item.key.startswith(PREFIX) else item.key
        ids = check_s3_key(rest, item.key)
        if ids is None:
            continue
        if ids in objects:
            raise SourceError(f"the S3 listing has two data files for the same place: {objects[ids][0]!r} and {item.key!r}")
        objects[ids] = (item.key, item.size, item.etag)
    targets: list[Target] = []
    if session_files:
        missing = [s for s in sessions if (s, None) not in objects]
        if missing:
            raise SourceError(f"the S3 mirror has no NWB file for session(s) {', '.join(map(str, missing))}")
        for s in sessions:
            key, size, etag = objects[(s, None)]
            targets.append(Target(FileKind.SESSION_NWB, s, None, s3.object_url(key), size, etag))
    unavailable: list[tuple[int, int]] = []
    for s in sessions:
        for p in probes.get(s, ()):
            if (s, p) in objects:
                key, size, etag = objects[(s, p)]
                targets.append(Target(FileKind.LFP_NWB, s, p, s3.object_url(key), size, etag))
            else:
                unavailable.append((s, p))
    return targets, unavailable


def check_s3_key(rest: str, key: str) -> tuple[int, int | None] | None:
    """The (session, probe or None) ids of a data file's key (``rest``: the key after the prefix).

    None for a key that is no data file (``manifest.json``, a CSV, a template, a directory
    marker). :class:`SourceError` naming the key for one that is unsafe anywhere (a ``..``, ``.``
    or empty part, a leading ``/``, a backslash, a NUL or other control character) or that
    looks like a data file (it ends in ``.nwb`` or lies under a ``session_`` directory) but is
    not exactly ``session_<S>/session_<S>.nwb`` or ``session_<S>/probe_<P>_lfp.nwb``.
    """
    if match := SESSION_KEY.fullmatch(rest):
        if match.group(1) == match.group(2):
            return int(match.group(1)), None
    elif match := LFP_KEY.fullmatch(rest):
        return int(match.group(1)), int(match.group(2))
    parts = rest.split("/")
    in_session_dir = parts[0].lower().startswith("session_")
    is_nwb = rest.lower().endswith(".nwb")
    # A key ending in "/" is a directory marker: its last, empty part is allowed.
    if (
        any(ord(c) < 32 or ord(c) == 127 for c in rest)
        or "\\" in rest
        or rest.startswith("/")
        or any(p in ("", ".", "..") for p in parts[:-1])
        or parts[-1] in (".", "..")
    ):
        problem = "it has a '..', '.', empty or absolute part, a backslash or a control character"
    elif not in_session_dir and not is_nwb:
        return None
    elif in_session_dir and not is_nwb:
        # Other files of a session's directory (its analysis metrics CSV) are not data files
        # here; their directory must still be a plain session_<id>.
        if len(parts) == 2 and re.fullmatch(rf"session_{_ID}", parts[0]):
            return None
        problem = "its session directory has an odd name or depth"
    elif match is not None:
        problem = "its directory and file name carry different session ids"
    else:
        problem = "it is not session_<id>/session_<id>.nwb or session_<id>/probe_<id>_lfp.nwb"
    raise SourceError(
        f"the S3 listing has a malformed key that could be taken for a data file: {key[:300]!r} ({problem})",
        hint="the mirror's listing is not trusted; nothing was fetched. --source warehouse reads the same files",
    )


def probe_sizes(
    client: httpx.Client,
    targets: Iterable[Target],
    *,
    policy: RetryPolicy,
    threads: int = 8,
    timeout: float = 60.0,
    allowed_hosts: Collection[str] = (),
) -> list[Target]:
    """Fill in unknown sizes (and validators) with HEAD requests, several at a time, with retries.

    Redirects are followed as the transfer follows them (same host, or ``allowed_hosts``). A
    file whose size cannot be learnt this way keeps an unknown size (its transfer learns it).
    """
    from ecephys_dl.http import TransientError, call_with_retries, content_length, raise_for_status, send_following

    def head(target: Target) -> Target:
        if target.size is not None:
            return target

        def attempt() -> httpx.Response:
            request = client.build_request("HEAD", target.url, timeout=timeout)
            response = send_following(client, request, allowed_hosts=allowed_hosts)
            response.close()
            raise_for_status(response, what="the size of a file")
            if response.headers.get("content-encoding", "identity").strip().lower() not in ("", "identity"):
                # The length of an encoded body is not the file's length.
                raise SourceError(f"{target.url} answered HEAD with an encoded body: its length says nothing")
            if response.headers.get("content-type", "").lower().startswith("text/html"):
                # An error page from a proxy or the server, not the file: its length says nothing.
                raise TransientError("answered an HTML page instead of the file", url=target.url, status=response.status_code)
            return response

        try:
            response = call_with_retries(attempt, policy=policy, url=target.url, what="the size of a file")
        except EcephysDlError:
            # The transfer learns the size from its first answer, and fails that file alone if it cannot.
            return target
        length = content_length(response)
        if length is None:
            return target
        return replace(target, size=length, etag=response.headers.get("etag"))

    items = list(targets)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(head, items))


def _linked(final: Path) -> str | None:
    """What in the place of ``final`` is a symbolic link (its session directory, the file, its partial), or None."""
    part = final.with_name(final.name + ".part")
    for place in (final.parent, final, part, part.with_name(part.name + ".json")):
        try:
            if stat.S_ISLNK(os.lstat(place).st_mode):
                return str(place)
        except OSError:
            continue
    return None


def plan_files(
    targets: Iterable[Target],
    cache: CacheLayout,
    records: RecordStore,
    partial_bytes: Callable[[Path], int],
) -> list[PlannedFile]:
    """Decide skip / resume / download for each target.

    A file whose place holds a symbolic link (the session directory, the file, its partial or
    the partial's record) is never skipped on the strength of what the link points to: it is
    planned for download, and the transfer refuses to write through the link and reports it.
    """
    planned: list[PlannedFile] = []
    for target in targets:
        final = target.final(cache)
        relative = cache.relative(final)
        link = _linked(final)
        if link is not None:
            planned.append(PlannedFile(target, final, Action.DOWNLOAD, 0, f"{link} is a symbolic link"))
            continue
        record = records.get(relative)
        if final.is_file():
            size = final.stat().st_size
            expected = target.size if target.size is not None else (record.size if record else None)
            if record is not None and record.size == size and (target.size is None or target.size == size):
                planned.append(PlannedFile(target, final, Action.SKIP, size, "verified earlier, same size"))
                continue
            verdict = check_size_and_superblock(final, expected)
            if verdict.ok and expected is not None:
                planned.append(PlannedFile(target, final, Action.SKIP, size, "present, same size, whole"))
                continue
            reason = f"present but {verdict.detail}" if not verdict.ok else "present, size unknown to compare"
            if expected is None and verdict.ok:
                # No size to compare against yet: the caller probes sizes and plans again.
                planned.append(PlannedFile(target, final, Action.DOWNLOAD, 0, reason))
                continue
        else:
            reason = ""
        part = final.with_name(final.name + ".part")
        have = partial_bytes(part) if part.exists() else 0
        if have:
            planned.append(PlannedFile(target, final, Action.RESUME, have, f"{format_size(have)} already fetched"))
        else:
            planned.append(PlannedFile(target, final, Action.DOWNLOAD, 0, reason))
    return planned


def check_free_space(planned: Sequence[PlannedFile], root: Path, reserve: int) -> tuple[int, int]:
    """(bytes still to fetch, bytes free); raise :class:`NoSpace` when they do not fit with the reserve."""
    needed = sum(p.remaining or 0 for p in planned)
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + reserve > free:
        raise NoSpace(
            f"not enough disk space in {root}: {format_size(needed)} ({needed} bytes) still to fetch "
            f"plus a reserve of {format_size(reserve)}, but only {format_size(free)} ({free} bytes) free",
            hint="free some space, choose fewer sessions, or lower --reserve",
        )
    return needed, free


def parse_shard(text: str) -> tuple[int, int]:
    """``K/N`` (1 <= K <= N): this run's share of the files, for N runs filling one cache together."""
    from ecephys_dl.errors import UsageError

    match = re.fullmatch(r"\s*(\d{1,6})\s*/\s*(\d{1,6})\s*", text) if isinstance(text, str) else None
    if match is None or not 1 <= int(match.group(1)) <= int(match.group(2)):
        raise UsageError(f"not a shard: {text!r}", hint="write K/N with 1 <= K <= N, e.g. --shard 2/4")
    return int(match.group(1)), int(match.group(2))


def in_shard(relative: str, shard: tuple[int, int]) -> bool:
    """Whether a file belongs to shard K of N: a stable hash of its path, the same on every host."""
    import zlib

    k, n = shard
    return zlib.crc32(relative.encode()) % n == k - 1
