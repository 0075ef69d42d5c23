"""The S3 client: anonymous ListObjectsV2 listings and small object reads from the public mirror.

The bucket is addressed by its base URL (path-style on the replica, virtual-host style on AWS),
so ``{bucket_url}/?list-type=2&...`` lists and ``{bucket_url}/{key}`` reads. Listings are parsed
defensively (no DOCTYPE or entities, every field checked) and paged by continuation token, with
a guard against a token that comes back. Large files are not read here: the downloader streams
them to disk; :meth:`S3Client.get_bytes` is for CSVs and ``manifest.json``.
"""

from __future__ import annotations

import builtins
import re
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote

import httpx

from ecephys_dl.bodies import content_length, read_body
from ecephys_dl.errors import SourceError, UsageError
from ecephys_dl.retry import TRANSIENT_STATUSES, RetryPolicy, call_with_retries, raise_for_status

__all__ = ["MAX_LISTING_BYTES", "MAX_LISTING_PAGES", "PREFIX", "S3Client", "S3Object", "object_url", "parse_listing"]

PREFIX = "visual-coding-neuropixels/ecephys-cache/"
MAX_LISTING_BYTES = 16 * 1024**2  # a 1000-key page is about 350 KB
# 855 GB in about 1,100 objects; a listing a thousand times longer is not this bucket.
MAX_LISTING_PAGES = 10_000
_MD5 = re.compile(r"[0-9a-fA-F]{32}")
_SIZE = re.compile(r"[0-9]{1,19}")  # past 2**63 no size is real, and int() refuses thousands of digits
_HINT = "--source warehouse reads the same data from the Allen warehouse"
_UNREACHABLE_HINT = f"the S3 mirror may be down or out of reach: try again later, or {_HINT}"
_DEFAULT_POLICY = RetryPolicy()  # frozen: one instance serves every client
# Types whose bytes a listing or a small read may legitimately be; anything HTML is an error page.
_HTML_TYPES = ("text/html", "application/xhtml+xml")


@dataclass(frozen=True)
class S3Object:
    """One object of a listing: key, size in bytes, ETag (with its quotes), last-modified time."""

    key: str
    size: int
    etag: str
    last_modified: str

    @property
    def md5(self) -> str | None:
        """The MD5 of the object's bytes when the ETag is one (None for a multipart ``-N`` ETag)."""
        inner = self.etag.strip().strip('"')
        return inner.lower() if _MD5.fullmatch(inner) else None


def _local(tag: str) -> str:
    """An element's name without its namespace."""
    return tag.rsplit("}", 1)[-1]


def _child_text(element: ET.Element, name: str) -> str | None:
    for child in element:
        if _local(child.tag) == name:
            return child.text or ""
    return None


def _refuse(message: str) -> SourceError:
    return SourceError(f"the S3 listing is malformed: {message}", hint=_HINT)


def parse_listing(xml_bytes: bytes) -> tuple[list[S3Object], str | None]:
    """The objects of one ListObjectsV2 page and the continuation token of the next (None: last page).

    :class:`SourceError` for anything but a well-formed listing: an S3 error document, XML with
    a DOCTYPE or entities (never expanded), a missing field, a size that is not a non-negative
    integer, or a truncated page without a token.
    """
    if not isinstance(xml_bytes, (bytes, bytearray)):
        raise _refuse("the answer is not bytes")
    # Entity expansion is how XML bombs work; a listing never needs a DOCTYPE, so none is read.
    upper = bytes(xml_bytes).upper()
    if b"<!DOCTYPE" in upper or b"<!ENTITY" in upper:
        raise _refuse("it carries a DOCTYPE or an entity declaration")
    try:
        root = ET.fromstring(bytes(xml_bytes))
    except (ET.ParseError, ValueError, LookupError, RecursionError) as error:
        raise _refuse(f"not XML ({error})") from None
    name = _local(root.tag)
    if name == "Error":
        code = _child_text(root, "Code") or "unknown"
        said = _child_text(root, "Message") or ""
        raise SourceError(f"the S3 mirror answered the listing with an error: {code} {said}".rstrip(), hint=_HINT)
    if name != "ListBucketResult":
        raise _refuse(f"the document is a <{name}>, not a <ListBucketResult>")
    truncated_text = _child_text(root, "IsTruncated")
    if truncated_text is None or truncated_text.strip().lower() not in ("true", "false"):
        raise _refuse(f"IsTruncated is {truncated_text!r}, not true or false")
    truncated = truncated_text.strip().lower() == "true"
    objects: list[S3Object] = []
    for element in root:
        if _local(element.tag) != "Contents":
            continue
        fields = {key: _child_text(element, key) for key in ("Key", "Size", "ETag", "LastModified")}
        missing = [key for key, value in fields.items() if not value or not value.strip()]
        if missing:
            raise _refuse(f"an entry (key {fields['Key']!r}) has no {', '.join(missing)}")
        key, size_text, etag, modified = (fields[k] or "" for k in ("Key", "Size", "ETag", "LastModified"))
        if _SIZE.fullmatch(size_text.strip()) is None:
            raise _refuse(f"the size of {key[:300]!r} is {size_text[:40]!r}, not a non-negative integer")
        objects.append(S3Object(key=key, size=int(size_text.strip()), etag=etag.strip(), last_modified=modified.strip()))
    token: str | None = None
    if truncated:
        token = _child_text(root, "NextContinuationToken")
        if not token:
            raise _refuse("the page is truncated but gives no NextContinuationToken")
    return objects, token


def _is_html(response: httpx.Response, body: bytes) -> bool:
    kind = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
    if kind in _HTML_TYPES:
        return True
    head = body[:512].lstrip().lower()
    return head.startswith((b"<!doctype html", b"<html"))


def object_url(bucket_url: str, key: str) -> str:
    """The URL of object ``key`` in the bucket at ``bucket_url``, each path segment percent-encoded.

    Keys with empty, ``.`` or ``..`` segments are refused: a URL normaliser would turn them
    into another object's URL.
    """
    segments = key.split("/") if isinstance(key, str) else [""]
    if not key or any(segment in ("", ".", "..") for segment in segments):
        raise SourceError(f"refusing the S3 key {key!r}: it has an empty, '.' or '..' path segment")
    return f"{bucket_url.rstrip('/')}/{quote(key, safe='/')}"


class S3Client:
    """Reads the anonymous, public bucket at ``bucket_url`` through ``client``, with retries."""

    def __init__(
        self,
        bucket_url: str,
        *,
        client: httpx.Client,
        policy: RetryPolicy = _DEFAULT_POLICY,
        sleep: Callable[[float], object] = time.sleep,
        max_keys: int | None = None,
    ) -> None:
        if max_keys is not None and (isinstance(max_keys, bool) or not isinstance(max_keys, int) or max_keys < 1):
            raise UsageError(f"max-keys must be a positive whole number, not {max_keys!r}")
        self.bucket_url = bucket_url.rstrip("/")
        self.client = client
        self.policy = policy
        self.sleep = sleep
        self.max_keys = max_keys  # None: the server's default page (1000 keys on AWS)

    def object_url(self, key: str) -> str:
        """The URL of object ``key`` in this bucket (see :func:`object_url`)."""
        return object_url(self.bucket_url, key)

    def list(self, prefix: str = PREFIX) -> builtins.list[S3Object]:
        """Every object under ``prefix``, page by page, in the bucket's order."""
        objects: builtins.list[S3Object] = []
        seen_keys: set[str] = set()
        seen_tokens: set[str] = set()
        token: str | None = None
        for _ in range(MAX_LISTING_PAGES):
            page, token = self._list_page(prefix, token)
            for item in page:
                if not item.key.startswith(prefix):
                    raise _refuse(f"the key {item.key!r} is outside the prefix {prefix!r}")
                if item.key in seen_keys:
                    raise _refuse(f"the key {item.key!r} is listed twice")
                seen_keys.add(item.key)
                objects.append(item)
            if token is None:
                return objects
            if token in seen_tokens:
                raise _refuse("a continuation token came back a second time (the listing would loop)")
            seen_tokens.add(token)
        raise _refuse(f"more than {MAX_LISTING_PAGES} pages: the listing does not end")

    def _list_page(self, prefix: str, token: str | None) -> tuple[builtins.list[S3Object], str | None]:
        params: dict[str, str] = {"list-type": "2", "prefix": prefix}
        if self.max_keys is not None:
            params["max-keys"] = str(self.max_keys)
        if token is not None:
            params["continuation-token"] = token
        request = self.client.build_request("GET", self.bucket_url + "/", params=params)
        url = str(request.url)
        what = "the S3 listing"

        def attempt() -> tuple[builtins.list[S3Object], str | None]:
            response = self.client.send(request, stream=True)
            try:
                if response.status_code in TRANSIENT_STATUSES:
                    raise_for_status(response, what=what)
                body = read_body(response, max_bytes=MAX_LISTING_BYTES)
            finally:
                response.close()
            if response.status_code != 200:
                self._fail(response, body, what)
            if _is_html(response, body):
                raise SourceError(f"{what} ({url}) answered an HTML page instead of XML", hint=_proxy_hint())
            return parse_listing(body)

        return call_with_retries(
            attempt, policy=self.policy, url=url, what=what, hint=_UNREACHABLE_HINT, sleep=self.sleep
        )

    def get_bytes(self, key: str, *, max_bytes: int) -> bytes:
        """The whole of a small object (a CSV, ``manifest.json``), at most ``max_bytes`` long.

        Refused: a body longer than ``max_bytes`` or than its Content-Length, and an HTML page
        answered with 200 in place of the object.
        """
        url = self.object_url(key)
        what = f"the S3 object {key!r}"

        def attempt() -> bytes:
            with self.client.stream("GET", url) as response:
                if response.status_code in TRANSIENT_STATUSES:
                    raise_for_status(response, what=what)
                body = read_body(response, max_bytes=max_bytes)
            if response.status_code != 200:
                self._fail(response, body, what)
            announced = content_length(response)
            encoded = response.headers.get("Content-Encoding", "identity").strip().lower() not in ("", "identity")
            if announced is not None and not encoded and len(body) != announced:
                raise SourceError(f"{what} ({url}) sent {len(body)} bytes, but announced {announced}")
            if not key.lower().endswith((".html", ".htm")) and _is_html(response, body):
                raise SourceError(f"{what} ({url}) was answered with an HTML page, not the file", hint=_proxy_hint())
            return body

        return call_with_retries(
            attempt, policy=self.policy, url=url, what=what, hint=_UNREACHABLE_HINT, sleep=self.sleep
        )

    def _fail(self, response: httpx.Response, body: bytes, what: str) -> None:
        """Raise the SourceError for a non-transient, non-200 answer, with S3's error code if any."""
        code = message = None
        try:
            root = ET.fromstring(body) if b"<!DOCTYPE" not in body.upper() and b"<!ENTITY" not in body.upper() else None
        except (ET.ParseError, ValueError, LookupError, RecursionError):
            root = None
        if root is not None and _local(root.tag) == "Error":
            code, message = _child_text(root, "Code"), _child_text(root, "Message")
        said = f": {code} {message or ''}".rstrip() if code else ""
        try:
            raise_for_status(response, what=what)
        except SourceError as error:
            raise SourceError(error.message + said, hint=_HINT) from None
        raise SourceError(f"{what} ({response.request.url}) answered HTTP {response.status_code}{said}", hint=_HINT)


def _proxy_hint() -> str:
    return "a proxy, captive portal or maintenance page may be answering in place of the mirror"
