"""The Allen warehouse as a source: RMA queries for the metadata tables and for download links.

Resolution asks as few queries as it can: one lists every session NWB file, and LFP files are
asked for in batches of probe ids with ``attachable_id$in``. A download link must lead to the
warehouse's own download path or to a host the user allowed (``allowed_hosts``); local paths are
built from integer ids only, never from a name the server sent. The warehouse lists no sizes:
:meth:`WarehouseResolver.sized` asks for them with HEAD requests, several at a time.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin, urlsplit

from ecephys_dl import queries
from ecephys_dl.config import Source
from ecephys_dl.errors import EcephysDlError, SourceError
from ecephys_dl.targets import Mirror, Resolution, Target, TargetKind

if TYPE_CHECKING:
    import httpx
    import pandas as pd

    from ecephys_dl.retry import RetryPolicy
    from ecephys_dl.rma import RmaClient, RmaProgress

__all__ = ["DOWNLOAD_PATH", "PROBE_BATCH", "WarehouseResolver", "probe_sizes", "resolve_warehouse"]

# Used with fullmatch: ``$`` would also match before a trailing newline. ASCII digits only
# (``\d`` takes other scripts' digits, which int() accepts), no leading zero (two keys, one id).
DOWNLOAD_PATH = re.compile(r"/api/v2/well_known_file_download/([1-9][0-9]{0,18})")
# Keeps each LFP query's URL well under common limits (8 KiB) while needing few queries.
PROBE_BATCH = 200


@dataclass
class WarehouseResolver:
    """The warehouse's RMA queries: AllenSDK's CSVs built from its records, and its download links.

    ``client``, ``policy`` and ``timeout`` serve the HEAD requests of :meth:`sized`; without
    them, sizes stay unknown and each transfer learns its file's size from its first answer.
    """

    rma: RmaClient
    progress: RmaProgress | None = None
    allowed_hosts: frozenset[str] = frozenset()
    client: httpx.Client | None = None
    policy: RetryPolicy | None = None
    timeout: float = 60.0
    name: str = "warehouse"

    def targets(self, sessions: Sequence[int], probes: Mapping[int, Sequence[int]], *, session_files: bool = True) -> Resolution:
        found, unavailable = resolve_warehouse(self.rma, self.rma.base_url, sessions, probes, session_files=session_files, allowed_hosts=self.allowed_hosts)
        return Resolution(tuple(found), tuple(unavailable))

    def sized(self, targets: Sequence[Target]) -> list[Target]:
        if self.client is None or self.policy is None or all(t.size is not None for t in targets):
            return list(targets)
        return probe_sizes(self.client, targets, policy=self.policy, timeout=self.timeout, allowed_hosts=self.allowed_hosts)

    def table_csv(self, table: str) -> bytes:
        from ecephys_dl import tables

        records = self.rma.fetch_all(queries.TABLE_QUERIES[table], name=table, progress=self.progress)
        if not records:
            raise SourceError(f"the warehouse returned no {table}", hint="try again later, or use --source s3")
        frame_of: dict[str, Callable[[Sequence[Any]], pd.DataFrame]] = {
            "sessions": tables.sessions_frame,
            "probes": tables.probes_frame,
            "channels": tables.channels_frame,
            "units": tables.units_frame,
        }
        try:
            frame = frame_of[table](records)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SourceError(f"the warehouse's {table} records are not in the expected form: {error!r}") from error
        return tables.csv_bytes(frame)

    def metrics_csv(self, session_type: str) -> bytes:
        return self._metrics(queries.metrics_by_type_query(session_type), f"{session_type} metrics")

    def session_metrics_csv(self, session_id: int) -> bytes:
        return self._metrics(queries.metrics_by_session_query([session_id]), f"session {session_id} metrics")

    def _metrics(self, query: str, name: str) -> bytes:
        from ecephys_dl import tables

        bundles = self.rma.fetch_all(query, name=name, progress=self.progress)
        if not bundles:
            raise SourceError(f"the warehouse has no {name}")
        try:
            frame = tables.metrics_frame(bundles)
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise SourceError(f"the warehouse's {name} are not in the expected form: {error!r}") from error
        return tables.csv_bytes(frame)



def _download_url(base_url: str, link: object, query_name: str, allowed_hosts: Collection[str] = ()) -> str:
    """The absolute URL of a download link.

    Accepted: the warehouse's own download path (``/api/v2/well_known_file_download/<id>``, as
    a path or a URL on the warehouse), and an HTTP(S) URL on one of ``allowed_hosts`` (a
    mirror the user named). Anything else, such as an absolute URL to another host, is refused.
    """
    from ecephys_dl.redirects import host_allowed

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
    targets: list[Target] = []
    wanted = set(sessions)
    if session_files and wanted:
        name = "session NWB files"
        found: dict[int, str] = {}
        for record in rma.fetch_all(queries.session_nwb_query(None), name=name):
            session_id = _int_field(record, "attachable_id", name)
            if session_id in wanted:
                if session_id in found:
                    raise SourceError(f"the warehouse lists two session NWB files for session {session_id}")
                found[session_id] = _download_url(base_url, record.get("download_link"), name, allowed_hosts)
        missing = sorted(wanted - set(found))
        if missing:
            raise SourceError(f"the warehouse lists no NWB file for session(s) {', '.join(map(str, missing))}")
        targets += [Target.at(TargetKind.SESSION_NWB, s, None, Mirror(Source.WAREHOUSE.value, found[s])) for s in sessions]

    probe_session = {p: s for s, ps in probes.items() for p in ps}
    links: dict[int, str] = {}
    all_probes = list(probe_session)
    for start in range(0, len(all_probes), PROBE_BATCH):
        batch = all_probes[start : start + PROBE_BATCH]
        name = "LFP NWB files"
        for record in rma.fetch_all(queries.lfp_nwb_query(batch), name=name):
            probe_id = _int_field(record, "attachable_id", name)
            if probe_id in probe_session:
                if probe_id in links:
                    raise SourceError(f"the warehouse lists two LFP NWB files for probe {probe_id}")
                links[probe_id] = _download_url(base_url, record.get("download_link"), name, allowed_hosts)
    unavailable = [(probe_session[p], p) for p in all_probes if p not in links]
    targets += [Target.at(TargetKind.LFP_NWB, probe_session[p], p, Mirror(Source.WAREHOUSE.value, links[p])) for p in all_probes if p in links]
    return targets, unavailable


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
    from ecephys_dl.bodies import content_length
    from ecephys_dl.errors import TransientError
    from ecephys_dl.redirects import send_following
    from ecephys_dl.retry import call_with_retries, raise_for_status

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
        return target.with_size(length, response.headers.get("etag"))

    items = list(targets)
    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        return list(pool.map(head, items))


