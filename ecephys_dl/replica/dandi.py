"""What the replica's DANDI archive says: the published table, asset listings, presigned URLs.

The release is published on the DANDI archive in two dandisets (000021 for
``brain_observatory_1.1``, 000022 for ``functional_connectivity``), which give the size, SHA-256
and DANDI etag of every NWB file. A replica dataset has such a table of its own,
``published_files.csv``, with the reference's columns, format and row order::

    kind,session_id,probe_id,cache_path,size,sha256,dandi_etag,dandiset,dandi_asset_id,dandi_path

one row per NWB file, ordered by session, the session file first, then its LFP files by probe id
(``probe_id`` empty for session files); lines end with ``\\r\\n``, as Python's csv module writes.

Everything here is pure (values in, values out) so the HTTP layer only routes and streams.
"""

from __future__ import annotations

import csv
import hashlib
import hmac
import io
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from ecephys_dl.replica.digests import part_md5s

__all__ = [
    "BLOB_BUCKET",
    "DANDISETS",
    "DANDI_PART_SIZE",
    "DRAFT",
    "MAX_PAGE_SIZE",
    "PAGE_SIZE",
    "PUBLISHED_COLUMNS",
    "PUBLISHED_TABLE",
    "PUBLISHED_VERSION",
    "ApiError",
    "PublishedFile",
    "asset_id",
    "asset_result",
    "assets_page",
    "blob_id",
    "blob_key",
    "dandi_etag",
    "dandi_path",
    "expired",
    "presign_query",
    "published_csv",
    "read_published",
    "signature_holds",
    "versions_page",
]

PUBLISHED_TABLE = "published_files.csv"
PUBLISHED_COLUMNS = (
    "kind",
    "session_id",
    "probe_id",
    "cache_path",
    "size",
    "sha256",
    "dandi_etag",
    "dandiset",
    "dandi_asset_id",
    "dandi_path",
)
DANDISETS = {"brain_observatory_1.1": "000021", "functional_connectivity": "000022"}
DRAFT = "draft"
PUBLISHED_VERSION = "0.210611.1504"
DANDI_PART_SIZE = 64 * 1024 * 1024
PAGE_SIZE = 100  # the API's default page size
MAX_PAGE_SIZE = 1000
BLOB_BUCKET = "dandiarchive"
# When the blobs were uploaded and the versions made: any fixed times will do.
UPLOADED = datetime(2021, 6, 11, 15, 4, tzinfo=UTC)
_NAMESPACE = uuid.UUID("6f4bb7a8-5a1e-4c59-9d49-3f5e1c0d2a11")
_EPOCH_FORMAT = "%Y%m%dT%H%M%SZ"


class ApiError(Exception):
    """An API error answer: HTTP status and the JSON document the server sends."""

    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.document: dict[str, Any] = {"detail": detail}


@dataclass(frozen=True)
class PublishedFile:
    """One row of ``published_files.csv``."""

    kind: str  # session or lfp
    session_id: int
    probe_id: int | None
    cache_path: str
    size: int
    sha256: str
    dandi_etag: str
    dandiset: str
    dandi_asset_id: str
    dandi_path: str

    @property
    def blob_id(self) -> str:
        """The blob holding the bytes (DANDI stores each content once, so it follows the SHA-256)."""
        return blob_id(self.sha256)

    def row(self) -> tuple[str, ...]:
        """The CSV fields of this row."""
        probe = "" if self.probe_id is None else str(self.probe_id)
        return (self.kind, str(self.session_id), probe, self.cache_path, str(self.size), self.sha256,
                self.dandi_etag, self.dandiset, self.dandi_asset_id, self.dandi_path)  # fmt: skip


def dandi_etag(path: str | Path, part_size: int = DANDI_PART_SIZE) -> str:
    """The DANDI etag of a file: the MD5 of its parts' binary MD5s, ``-`` and the number of parts.

    Unlike a plain S3 ETag it keeps the ``-N`` form for a file of one part (DANDI always
    uploads in parts).
    """
    digests = part_md5s(path, part_size)
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def dandi_path(specimen_id: int, session_id: int, probe_id: int | None = None) -> str:
    """``sub-<specimen>/sub-<specimen>_ses-<session>[_probe-<probe>_ecephys].nwb``."""
    stem = f"sub-{specimen_id}/sub-{specimen_id}_ses-{session_id}"
    return f"{stem}.nwb" if probe_id is None else f"{stem}_probe-{probe_id}_ecephys.nwb"


def asset_id(seed: int, path: str) -> str:
    """A stable asset UUID for the asset at ``path`` of a dataset made with ``seed``."""
    return str(uuid.uuid5(_NAMESPACE, f"asset\x1f{seed}\x1f{path}"))


def blob_id(sha256: str) -> str:
    """A stable blob UUID for the bytes with this SHA-256."""
    return str(uuid.uuid5(_NAMESPACE, f"blob\x1f{sha256}"))


def blob_key(blob: str) -> str:
    """The blob's key in the bucket: ``blobs/<a>/<b>/<uuid>``, as DANDI spreads them."""
    return f"blobs/{blob[:3]}/{blob[3:6]}/{blob}"


def published_csv(files: Iterable[PublishedFile]) -> bytes:
    """The bytes of ``published_files.csv``, rows in the reference's order."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # lines end with \r\n, as in the reference
    writer.writerow(PUBLISHED_COLUMNS)
    order = sorted(files, key=lambda f: (f.session_id, f.kind != "session", f.probe_id or 0))
    writer.writerows(f.row() for f in order)
    return buffer.getvalue().encode("utf-8")


def read_published(path: Path) -> list[PublishedFile]:
    """The rows of a ``published_files.csv``; ``ValueError`` when it is not one."""
    with open(path, encoding="utf-8", newline="") as stream:
        reader = csv.reader(stream)
        header = next(reader, None)
        if header is None or tuple(header) != PUBLISHED_COLUMNS:
            raise ValueError(f"{path} does not start with the header {','.join(PUBLISHED_COLUMNS)}")
        files = []
        for line, row in enumerate(reader, start=2):
            if len(row) != len(PUBLISHED_COLUMNS):
                raise ValueError(f"{path}:{line}: {len(row)} fields, not {len(PUBLISHED_COLUMNS)}")
            kind, session, probe, cache_path, size, sha256, etag, dandiset, asset, dpath = row
            files.append(
                PublishedFile(kind, int(session), int(probe) if probe else None, cache_path, int(size), sha256,
                              etag, dandiset, asset, dpath)  # fmt: skip
            )
    return files


# -- the API's documents ------------------------------------------------------------------------


def _page_url(base: str, params: Mapping[str, str], page: int) -> str:
    """The URL of page ``page`` of a listing: DRF sets ``page``, and drops it for the first page."""
    kept = [(k, v) for k, v in params.items() if k != "page"]
    if page > 1:
        kept.append(("page", str(page)))
    return f"{base}?{urlencode(kept)}" if kept else base


def _paginate(items: Sequence[Any], base: str, params: Mapping[str, str]) -> tuple[dict[str, Any], Sequence[Any]]:
    """The envelope of one page (results still to fill in) and that page's items, as DRF pages."""
    size = PAGE_SIZE
    if "page_size" in params:
        try:
            asked = int(params["page_size"])
        except ValueError:
            asked = 0
        if asked > 0:  # DRF ignores a page size that is not a positive integer
            size = min(asked, MAX_PAGE_SIZE)
    text = params.get("page", "1")
    page = int(text) if text.isascii() and text.isdigit() else 0
    pages = max(1, -(-len(items) // size))
    if not 1 <= page <= pages:
        raise ApiError(404, "Invalid page.")
    chosen = items[(page - 1) * size : page * size]
    envelope: dict[str, Any] = {
        "count": len(items),
        "next": _page_url(base, params, page + 1) if page < pages else None,
        "previous": _page_url(base, params, page - 1) if page > 1 else None,
        "results": [],
    }
    return envelope, chosen


def versions_page(dandiset: str, files: Sequence[PublishedFile], base: str, params: Mapping[str, str]) -> dict[str, Any]:
    """``GET /dandisets/{id}/versions/``: the published version, then the draft."""
    size = sum(f.size for f in files)
    made = UPLOADED.isoformat().replace("+00:00", "Z")
    info = {"identifier": dandiset, "created": made, "modified": made, "contact_person": "Allen Institute",
            "embargo_status": "OPEN"}  # fmt: skip
    versions = [
        {"version": name, "name": f"Allen Institute - Visual Coding - Neuropixels ({dandiset})",
         "asset_count": len(files), "size": size, "status": "Valid" if name == DRAFT else "Published",
         "created": made, "modified": made, "dandiset": info}
        for name in (PUBLISHED_VERSION, DRAFT)
    ]  # fmt: skip
    envelope, chosen = _paginate(versions, base, params)
    envelope["results"] = list(chosen)
    return envelope


def asset_result(file: PublishedFile, api: str, blob_base: str, *, metadata: bool) -> dict[str, Any]:
    """One asset of a listing: ``asset_id``, ``path``, ``size`` and, asked for, its metadata."""
    made = UPLOADED.isoformat().replace("+00:00", "Z")
    result: dict[str, Any] = {
        "asset_id": file.dandi_asset_id,
        "blob": file.blob_id,
        "zarr": None,
        "path": file.dandi_path,
        "size": file.size,
        "created": made,
        "modified": made,
    }
    if metadata:
        result["metadata"] = {
            "id": f"dandiasset:{file.dandi_asset_id}",
            "schemaKey": "Asset",
            "identifier": file.dandi_asset_id,
            "path": file.dandi_path,
            "contentSize": file.size,
            "encodingFormat": "application/x-nwb",
            "digest": {"dandi:dandi-etag": file.dandi_etag, "dandi:sha2-256": file.sha256},
            "contentUrl": [f"{api}/assets/{file.dandi_asset_id}/download/", f"{blob_base}/{blob_key(file.blob_id)}"],
            "dateModified": made,
        }
    return result


def assets_page(
    files: Sequence[PublishedFile], base: str, params: Mapping[str, str], api: str, blob_base: str
) -> dict[str, Any]:
    """``GET /dandisets/{id}/versions/{v}/assets/``: one page, ordered and filtered as asked.

    ``order`` may be ``path``, ``-path``, ``size`` or ``-size`` (anything else keeps the upload
    order, as DRF ignores an unknown ordering); ``path`` keeps the assets whose path starts with it.
    """
    chosen = list(files)
    prefix = params.get("path")
    if prefix:
        chosen = [f for f in chosen if f.dandi_path.startswith(prefix)]
    order = params.get("order", "")
    field = order.lstrip("-")
    if field in ("path", "size"):
        chosen.sort(key=lambda f: (f.dandi_path if field == "path" else f.size, f.dandi_path), reverse=order.startswith("-"))
    metadata = params.get("metadata", "").lower() in ("true", "1", "yes")
    envelope, page = _paginate(chosen, base, params)
    envelope["results"] = [asset_result(f, api, blob_base, metadata=metadata) for f in page]
    return envelope


# -- presigned URLs ---------------------------------------------------------------------------


def _signature(secret: bytes, path: str, fields: Sequence[tuple[str, str]]) -> str:
    canonical = path + "\n" + "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields)
    return hmac.new(secret, canonical.encode("utf-8"), hashlib.sha256).hexdigest()


def presign_query(secret: bytes, path: str, filename: str, now: datetime, expires: int) -> str:
    """The query of a presigned GET of ``path`` (the URL path), valid ``expires`` seconds from ``now``.

    It looks like AWS's (``X-Amz-Algorithm`` … ``X-Amz-Signature``); the signature is an HMAC of
    the path and the other parameters under ``secret``, which only the replica knows.
    """
    stamp = now.astimezone(UTC).strftime(_EPOCH_FORMAT)
    fields = [
        ("response-content-disposition", f'attachment; filename="{filename}"'),
        ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
        ("X-Amz-Credential", f"REPLICAKEY/{stamp[:8]}/us-east-1/s3/aws4_request"),
        ("X-Amz-Date", stamp),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", "host"),
    ]
    fields.append(("X-Amz-Signature", _signature(secret, path, fields)))
    return "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in fields)


def signature_holds(secret: bytes, path: str, fields: Sequence[tuple[str, str]]) -> bool:
    """Whether the query ``fields`` (in their order) carry a valid signature for ``path``."""
    given = [value for key, value in fields if key == "X-Amz-Signature"]
    rest = [(key, value) for key, value in fields if key != "X-Amz-Signature"]
    return len(given) == 1 and hmac.compare_digest(given[0], _signature(secret, path, rest))


def expired(fields: Mapping[str, str], now: datetime) -> tuple[datetime, int] | None:
    """(signing time, seconds) of a presigned URL that has expired at ``now``; None while valid.

    A URL is valid for ``X-Amz-Expires`` seconds after ``X-Amz-Date`` (whole seconds), so one
    signed with 0 seconds is expired from the start.
    """
    try:
        signed = datetime.strptime(fields["X-Amz-Date"], _EPOCH_FORMAT).replace(tzinfo=UTC)
        seconds = int(fields["X-Amz-Expires"])
    except (KeyError, ValueError):
        return (datetime.fromtimestamp(0, UTC), 0)
    if now.timestamp() >= signed.timestamp() + seconds:
        return signed, seconds
    return None
