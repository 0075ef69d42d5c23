"""The DANDI archive's API: the versions of a dandiset, and its assets with their digests.

The release is published in dandisets 000021 (``brain_observatory_1.1``) and 000022
(``functional_connectivity``). :class:`DandiClient` lists a dandiset's versions, picks the one to
read (the newest published version, else ``draft``, as dandi-cli does), and lists its assets with
``metadata=true&page_size=1000&order=path``, following ``next`` only on the API's own host. Each
asset is checked strictly into a :class:`DandiAsset` (:func:`parse_asset`): a malformed answer is
a :class:`~ecephys_dl.errors.DandiError` naming the asset. :func:`place_of` maps an asset's DANDI
path to its place in the AllenSDK cache, from the integer ids of the path only.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit

import httpx

from ecephys_dl.bodies import content_length, read_body
from ecephys_dl.errors import DandiError
from ecephys_dl.layout import nwb_relative
from ecephys_dl.published import read_dandi_path
from ecephys_dl.retry import TRANSIENT_STATUSES, RetryPolicy, call_with_retries, raise_for_status
from ecephys_dl.targets import TargetKind

__all__ = [
    "BUCKET_HOSTS",
    "DANDISETS",
    "DRAFT",
    "MAX_PAGES",
    "PAGE_SIZE",
    "DandiAsset",
    "DandiClient",
    "DandiPlace",
    "choose_version",
    "duplicate",
    "parse_asset",
    "place_of",
]

# Each dandiset of the release, and the session type its sessions have.
DANDISETS = {"000021": "brain_observatory_1.1", "000022": "functional_connectivity"}
DRAFT = "draft"
PAGE_SIZE = 1000  # the API's largest page
# 383 assets fit in one page each; a listing a thousand pages long is not this release.
MAX_PAGES = 1000
MAX_PAGE_BYTES = 64 * 1024**2  # a 1000-asset page with metadata is about 2 MB
# The archive's bucket: where the listing's blob URLs lead, allowed with no --allow-host.
BUCKET_HOSTS = frozenset({"dandiarchive.s3.amazonaws.com"})
_HINT = "the DANDI listing is not trusted; nothing was fetched from it. --source s3 reads the same files"
_UNREACHABLE_HINT = "the DANDI archive may be down or overloaded: try again later, or use --source s3"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_ETAG = re.compile(r"[0-9a-f]{32}-[1-9][0-9]{0,5}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_PUBLISHED = re.compile(r"0\.([0-9]{6})\.([0-9]{4})")


@dataclass(frozen=True)
class DandiPlace:
    """Where an asset of the release lives in the AllenSDK cache, read from its DANDI path."""

    kind: TargetKind
    specimen_id: int
    session_id: int
    probe_id: int | None

    @property
    def cache_path(self) -> str:
        """``session_<S>/session_<S>.nwb`` or ``session_<S>/probe_<P>_lfp.nwb``."""
        return nwb_relative(self.session_id, self.probe_id)


def place_of(dandi_path: str, *, where: str = "the DANDI listing") -> DandiPlace:
    """The cache place of an asset at ``dandi_path``; :class:`DandiError` naming it for any other path.

    Accepted: exactly ``sub-<specimen>/sub-<specimen>_ses-<session>.nwb`` (a session file) and
    ``sub-<specimen>/sub-<specimen>_ses-<session>_probe-<probe>_ecephys.nwb`` (an LFP file), the
    same specimen in the directory and the name, ids in ASCII digits without a leading zero.
    ``where`` names the listing in the error.
    """
    name = read_dandi_path(dandi_path)
    if name is None or name.specimen != name.named_specimen:
        shown = repr(dandi_path[:300]) if isinstance(dandi_path, str) else f"{dandi_path!r:.100}"
        why = "its directory and file name name different specimens" if name else "it is not sub-<specimen>/sub-<specimen>_ses-<session>[_probe-<probe>_ecephys].nwb"
        raise DandiError(f"{where} has an asset {shown} outside the release's layout ({why})", hint=_HINT)
    kind = TargetKind.SESSION_NWB if name.probe_id is None else TargetKind.LFP_NWB
    return DandiPlace(kind, name.specimen, name.session_id, name.probe_id)


@dataclass(frozen=True)
class DandiAsset:
    """One NWB file of a dandiset as its listing gives it, checked."""

    dandiset: str
    asset_id: str
    path: str
    place: DandiPlace
    size: int
    sha256: str
    dandi_etag: str
    download_url: str | None  # the API's /assets/<id>/download/ (302 to a presigned URL), if listed
    blob_url: str  # the unsigned bucket URL: read anonymously, supports Range


def parse_asset(result: object, dandiset: str, api_url: str, blob_hosts: Collection[str] = BUCKET_HOSTS) -> DandiAsset:
    """One result of an asset listing, checked; :class:`DandiError` naming the asset otherwise.

    Refused: a result that is not an object, an ``asset_id`` that is not a UUID, a path outside
    the release's layout (:func:`place_of`), a size that is not a positive integer (or differs
    from ``contentSize``), a digest that is not 64 lowercase hex characters, a DANDI etag not in
    its ``<md5>-<parts>`` form, and a ``contentUrl`` that is neither this asset's download URL on
    the API nor an HTTP(S) bucket URL on the API's host or one of ``blob_hosts`` (HTTPS when the
    API is).
    """
    if not isinstance(result, dict):
        raise DandiError(f"the DANDI listing of {dandiset} has a result that is not an object: {result!r:.100}", hint=_HINT)
    raw_path, raw_id = result.get("path"), result.get("asset_id")
    name = repr(raw_path[:300]) if isinstance(raw_path, str) else f"with asset_id {raw_id!r:.60}"

    def bad(problem: str) -> DandiError:
        return DandiError(f"the DANDI listing of {dandiset} has an asset {name} {problem}", hint=_HINT)

    if not isinstance(raw_id, str) or not _UUID.fullmatch(raw_id):
        raise bad(f"whose asset_id is not a lowercase UUID: {raw_id!r:.60}")
    if not isinstance(raw_path, str):
        raise bad(f"whose path is not text: {raw_path!r:.60}")
    place = place_of(raw_path, where=f"the DANDI listing of {dandiset}")
    size = result.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
        raise bad(f"whose size is not a positive integer: {size!r:.60}")
    metadata = result.get("metadata")
    if not isinstance(metadata, dict):
        raise bad("without metadata (asked for with metadata=true)")
    if "contentSize" in metadata and metadata["contentSize"] != size:
        raise bad(f"whose contentSize {metadata['contentSize']!r:.60} is not its size {size}")
    digest = metadata.get("digest")
    digests = digest if isinstance(digest, dict) else {}
    sha256, etag = digests.get("dandi:sha2-256"), digests.get("dandi:dandi-etag")
    if not isinstance(sha256, str) or not _SHA256.fullmatch(sha256):
        raise bad(f"whose dandi:sha2-256 digest is not 64 lowercase hex characters: {sha256!r:.100}")
    if not isinstance(etag, str) or not _ETAG.fullmatch(etag):
        raise bad(f"whose dandi:dandi-etag is not <32 lowercase hex>-<parts>: {etag!r:.100}")
    download, blob = _content_urls(metadata.get("contentUrl"), raw_id, api_url, blob_hosts, bad)
    return DandiAsset(dandiset, raw_id, raw_path, place, size, sha256, etag, download, blob)


def _content_urls(
    urls: object, asset_id: str, api_url: str, blob_hosts: Collection[str], bad: Callable[[str], DandiError]
) -> tuple[str | None, str]:
    from ecephys_dl.redirects import host_allowed

    if not isinstance(urls, list) or not urls:
        raise bad("without a list of contentUrl")
    api = urlsplit(api_url)
    download: str | None = None
    blobs: list[str] = []
    for url in urls:
        shown = f"{url!r:.200}"
        if not isinstance(url, str) or any(ord(c) < 33 or ord(c) == 127 or c == "\\" for c in url):
            raise bad(f"with a contentUrl that is not a plain URL: {shown}")
        try:
            parts = urlsplit(url)
            _ = parts.port  # a port that is not a number raises ValueError
        except ValueError:
            raise bad(f"with a contentUrl that is not a URL: {shown}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad(f"with a contentUrl that is not an HTTP(S) URL: {shown}")
        if api.scheme == "https" and parts.scheme != "https":
            raise bad(f"with a contentUrl in plain HTTP where the API is HTTPS: {shown}")
        own = parts.netloc.lower() == api.netloc.lower()
        if own and parts.path == f"{api.path.rstrip('/')}/assets/{asset_id}/download/" and not parts.query and not parts.fragment:
            download = url
        elif (own or host_allowed(url, blob_hosts)) and "/blobs/" in parts.path and not parts.query and not parts.fragment:
            blobs.append(url)
        else:
            raise bad(f"with a contentUrl that is neither its download URL on the API nor a blob of the archive's bucket: {shown}")
    if len(blobs) != 1:
        raise bad(f"with {len(blobs)} blob URLs in its contentUrl, not one")
    return download, blobs[0]


def duplicate(first: DandiAsset, second: DandiAsset) -> DandiError:
    """The error for ``second``, an asset at the same place of the cache as ``first``, listed before it."""
    same = "the same asset" if first.asset_id == second.asset_id else f"assets {first.asset_id} and {second.asset_id}"
    before = "" if first.dandiset == second.dandiset else f" of {first.dandiset}"
    return DandiError(
        f"the DANDI listing of {second.dandiset} has an asset {second.path!r} for {second.place.cache_path},"
        f" as does the asset {first.path!r}{before} ({same} listed twice)",
        hint=_HINT,
    )


def choose_version(dandiset: str, versions: list[object]) -> str:
    """The version to read: the newest published one (``0.YYMMDD.HHMM``, status Published), else ``draft``."""
    published: list[tuple[str, str, str]] = []
    draft = False
    for entry in versions:
        name = entry.get("version") if isinstance(entry, dict) else None
        if not isinstance(name, str):
            raise DandiError(f"the DANDI versions of {dandiset} hold an entry without a version name: {entry!r:.100}")
        if name == DRAFT:
            draft = True
        elif (match := _PUBLISHED.fullmatch(name)) and isinstance(entry, dict) and entry.get("status") == "Published":
            published.append((match.group(1), match.group(2), name))
    if published:
        return max(published)[2]
    if draft:
        return DRAFT
    raise DandiError(f"dandiset {dandiset} has neither a published version nor a draft", hint=_UNREACHABLE_HINT)


@dataclass
class DandiClient:
    """The API at ``api_url`` (``.../api``), through ``client`` under the run's retry ``policy``.

    ``blob_hosts`` are the hosts besides the API's own whose blob URLs a listing may give: the
    archive's bucket, and the hosts the user allowed.
    """

    api_url: str
    client: httpx.Client
    policy: RetryPolicy
    blob_hosts: frozenset[str] = BUCKET_HOSTS
    page_size: int = PAGE_SIZE
    page_timeout: float | None = None  # seconds one page may take to arrive in full (a trickle is retried)

    def version(self, dandiset: str) -> str:
        """The version of ``dandiset`` to read (:func:`choose_version`)."""
        url = f"{self.api_url}/dandisets/{dandiset}/versions/"
        entries = [entry for page in self._pages(url, f"the DANDI versions of {dandiset}") for entry in page]
        return choose_version(dandiset, entries)

    def assets(self, dandiset: str, version: str) -> list[DandiAsset]:
        """Every asset of ``dandiset`` at ``version``, each checked, in the listing's order."""
        query = urlencode({"metadata": "true", "page_size": str(self.page_size), "order": "path"})
        url = f"{self.api_url}/dandisets/{dandiset}/versions/{version}/assets/?{query}"
        found: dict[str, DandiAsset] = {}
        for page in self._pages(url, f"the DANDI listing of {dandiset}"):
            for result in page:
                asset = parse_asset(result, dandiset, self.api_url, self.blob_hosts)
                if (other := found.get(asset.place.cache_path)) is not None:
                    raise duplicate(other, asset)
                found[asset.place.cache_path] = asset
        return list(found.values())

    def _pages(self, url: str, what: str) -> Iterator[list[object]]:
        """The results of each page of a paginated answer, following ``next`` on the API's own host."""
        origin = urlsplit(self.api_url)
        seen: set[str] = set()
        count: int | None = None
        total = 0
        next_url: str | None = url
        while next_url is not None:
            if next_url in seen or len(seen) >= MAX_PAGES:
                raise DandiError(f"{what} pages without end: {next_url[:200]!r} comes again or past {MAX_PAGES} pages", hint=_HINT)
            seen.add(next_url)
            envelope = self._get_envelope(next_url, what)
            if count is None:
                count = envelope.count
            elif envelope.count != count:
                raise DandiError(f"{what} changed while it was read: count {count}, then {envelope.count}", hint=_HINT)
            total += len(envelope.results)
            yield envelope.results
            next_url = envelope.next
            if next_url is not None:
                parts = urlsplit(next_url)
                if (parts.scheme, parts.netloc.lower()) != (origin.scheme, origin.netloc.lower()) or not parts.path.startswith(origin.path):
                    raise DandiError(f"{what} continues on another site: {next_url[:200]!r}, not under {self.api_url}", hint=_HINT)
        if total != count:
            raise DandiError(f"{what} announces {count} results but its pages hold {total}", hint=_HINT)

    def _get_envelope(self, url: str, what: str) -> _Envelope:
        def attempt() -> bytes:
            deadline = None if self.page_timeout is None else time.monotonic() + self.page_timeout
            with self.client.stream("GET", url, headers={"Accept": "application/json"}) as response:
                if response.status_code in TRANSIENT_STATUSES:
                    raise_for_status(response, what=what)
                body = read_body(response, max_bytes=MAX_PAGE_BYTES, deadline=deadline)
            raise_for_status(response, what=what, hint="check --dandi-url")
            announced = content_length(response)
            if announced is not None and len(body) != announced:
                raise DandiError(f"{what} ({url}) sent {len(body)} bytes, but announced {announced}")
            return body

        body = call_with_retries(attempt, policy=self.policy, url=url, what=what, hint=_UNREACHABLE_HINT)
        return _envelope(body, what, url)


@dataclass(frozen=True)
class _Envelope:
    count: int
    next: str | None
    results: list[object]


def _envelope(body: bytes, what: str, url: str) -> _Envelope:
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise DandiError(f"{what} ({url}) is not JSON ({error})", hint=_HINT) from None
    if not isinstance(document, Mapping) or not {"count", "next", "results"} <= document.keys():
        raise DandiError(f"{what} ({url}) is not a page of results (count, next, results)", hint=_HINT)
    count, next_url, results = document["count"], document["next"], document["results"]
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise DandiError(f"{what} ({url}) has a count that is not a whole number: {count!r:.60}", hint=_HINT)
    if next_url is not None and not isinstance(next_url, str):
        raise DandiError(f"{what} ({url}) has a next that is not a URL: {next_url!r:.100}", hint=_HINT)
    if not isinstance(results, list):
        raise DandiError(f"{what} ({url}) has results that are not a list", hint=_HINT)
    return _Envelope(count, next_url, results)
