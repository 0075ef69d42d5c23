"""What the S3 mirror says about its objects: ETags, ListObjectsV2 pages, error documents.

Everything here is pure (bytes in, bytes out) so the HTTP layer only routes and streams.
The XML follows what AWS sends: one line after the declaration, ``&quot;`` around ETags,
timestamps with milliseconds, keys in the order of their UTF-8 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote
from xml.sax.saxutils import escape

from ecephys_dl.replica.digests import part_md5s
from ecephys_dl.replica.store import ObjectInfo

__all__ = [
    "MAX_KEYS",
    "S3Error",
    "content_type",
    "error_xml",
    "format_s3_time",
    "list_objects_v2",
    "multipart_etag",
    "s3_etag",
]

MAX_KEYS = 1000
_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>\n'
# A version tag inside the token lets a later format reject old tokens instead of misreading them.
_TOKEN_TAG = b"v1:"
_CONTENT_TYPES = {".nwb": "binary/octet-stream", ".csv": "text/csv", ".json": "application/json"}


class S3Error(Exception):
    """An S3 error answer: HTTP status, S3 error code, message, and extra XML fields."""

    def __init__(self, status: int, code: str, message: str, fields: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def xml(self) -> bytes:
        """This error as the XML document S3 sends."""
        return error_xml(self.code, self.message, self.fields)


def s3_etag(path: str | Path, part_size: int) -> str:
    """The ETag S3 gives ``path`` uploaded in parts of ``part_size`` bytes.

    A file of at most one part gets the quoted MD5 of its bytes; a larger one gets the MD5 of
    the concatenated binary MD5s of its parts, followed by ``-`` and the number of parts.
    """
    if part_size <= 0:
        raise ValueError(f"part size must be positive, not {part_size}")
    digests = part_md5s(path, part_size)
    return multipart_etag(digests)


def multipart_etag(part_digests: Sequence[bytes]) -> str:
    """The S3 ETag for an object made of parts with these binary MD5 digests (one part: plain MD5)."""
    if len(part_digests) == 1:
        return f'"{part_digests[0].hex()}"'
    if not part_digests:
        raise ValueError("an object has at least one part")
    return f'"{hashlib.md5(b"".join(part_digests)).hexdigest()}-{len(part_digests)}"'


def content_type(key: str) -> str:
    """The Content-Type the mirror sends for ``key``."""
    return _CONTENT_TYPES.get(os.path.splitext(key)[1].lower(), "binary/octet-stream")


def format_s3_time(moment: datetime) -> str:
    """``2019-10-03T00:00:00.000Z``: the timestamp form of S3 listings."""
    utc = moment.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def error_xml(code: str, message: str, fields: Iterable[tuple[str, str]] = ()) -> bytes:
    """An S3 ``<Error>`` document."""
    extra = "".join(_element(name, value) for name, value in fields)
    request_id = os.urandom(8).hex().upper()
    body = (
        f"<Error>{_element('Code', code)}{_element('Message', message)}{extra}"
        f"{_element('RequestId', request_id)}{_element('HostId', base64.b64encode(os.urandom(24)).decode())}"
        "</Error>"
    )
    return (_DECLARATION + body).encode("utf-8")


def list_objects_v2(bucket: str, objects: Sequence[ObjectInfo], params: Mapping[str, str]) -> bytes:
    """One ListObjectsV2 page of ``objects`` for the query ``params``; :class:`S3Error` when invalid.

    ``objects`` must be the whole bucket; the order is imposed here. Each common prefix counts
    as one entry towards ``max-keys``, as on AWS.
    """
    if params.get("list-type") != "2":
        raise S3Error(400, "InvalidArgument", "Only ListObjectsV2 (list-type=2) is supported by this mirror")
    prefix = params.get("prefix", "")
    delimiter = params.get("delimiter", "")
    encoding = params.get("encoding-type")
    if encoding is not None and encoding != "url":
        raise S3Error(400, "InvalidArgument", "Invalid Encoding Method specified in Request")
    max_keys = _max_keys(params.get("max-keys"))
    token = params.get("continuation-token")
    start_after = params.get("start-after")
    marker = _decode_token(token) if token is not None else None

    def shown(value: str) -> str:
        return quote(value, safe="/") if encoding == "url" else value

    entries: list[tuple[str, ObjectInfo | None]] = []  # (key, object) or (common prefix, None)
    truncated = False
    prefix_bytes = prefix.encode("utf-8")
    for info in sorted(objects, key=lambda item: item.key.encode("utf-8")):
        key_bytes = info.key.encode("utf-8")
        if not key_bytes.startswith(prefix_bytes):
            continue
        rolled = _common_prefix(info.key, prefix, delimiter)
        if marker is not None:
            # Skip what earlier pages returned: keys up to the marker, and keys rolled into a
            # common prefix that sorts at or before it (that prefix was returned already).
            if key_bytes <= marker or (rolled is not None and rolled.encode("utf-8") <= marker):
                continue
        elif start_after is not None and key_bytes <= start_after.encode("utf-8"):
            continue
        if rolled is not None and entries and entries[-1] == (rolled, None):
            continue
        if len(entries) >= max_keys:
            truncated = max_keys > 0
            break
        entries.append((rolled, None) if rolled is not None else (info.key, info))

    parts = [_element("Name", bucket), _element("Prefix", shown(prefix))]
    if start_after is not None:
        parts.append(_element("StartAfter", shown(start_after)))
    if token is not None:
        parts.append(_element("ContinuationToken", token))
    if truncated:
        parts.append(_element("NextContinuationToken", _encode_token(entries[-1][0])))
    parts.append(_element("KeyCount", str(len(entries))))
    parts.append(_element("MaxKeys", str(max_keys)))
    if delimiter:
        parts.append(_element("Delimiter", shown(delimiter)))
    if encoding is not None:
        parts.append(_element("EncodingType", encoding))
    parts.append(_element("IsTruncated", "true" if truncated else "false"))
    for name, listed in entries:
        if listed is not None:
            parts.append(
                "<Contents>"
                + _element("Key", shown(name))
                + _element("LastModified", format_s3_time(listed.last_modified))
                + _element("ETag", listed.etag)
                + _element("Size", str(listed.size))
                + _element("StorageClass", "STANDARD")
                + "</Contents>"
            )
    for name, listed in entries:
        if listed is None:
            parts.append("<CommonPrefixes>" + _element("Prefix", shown(name)) + "</CommonPrefixes>")
    body = f'<ListBucketResult xmlns="{_XMLNS}">' + "".join(parts) + "</ListBucketResult>"
    return (_DECLARATION + body).encode("utf-8")


def _element(name: str, value: str) -> str:
    return f"<{name}>{escape(value, {chr(34): '&quot;'})}</{name}>"


def _common_prefix(key: str, prefix: str, delimiter: str) -> str | None:
    """The common prefix ``key`` rolls up into, or None when it is listed itself."""
    if not delimiter:
        return None
    cut = key.find(delimiter, len(prefix))
    return None if cut < 0 else key[: cut + len(delimiter)]


def _max_keys(text: str | None) -> int:
    if text is None:
        return MAX_KEYS
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise S3Error(400, "InvalidArgument", "Provided max-keys not an integer or within integer range")
    return min(value, MAX_KEYS)


def _encode_token(last: str) -> str:
    return base64.urlsafe_b64encode(_TOKEN_TAG + last.encode("utf-8")).decode("ascii")


def _decode_token(token: str) -> bytes:
    try:
        raw = base64.urlsafe_b64decode(token.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raw = b""
    if not raw.startswith(_TOKEN_TAG):
        raise S3Error(
            400,
            "InvalidArgument",
            "The continuation token provided is incorrect",
            (("ArgumentName", "continuation-token"), ("ArgumentValue", token)),
        )
    return raw[len(_TOKEN_TAG) :]
