"""The replica's HTTP servers: the Allen warehouse and its S3 mirror on one loopback port, the
DANDI archive (its API and its blob bucket) on another.

Routes of the first (``//api`` is accepted wherever ``/api`` is, because AllenSDK sends it)::

    GET       /api/v2/data/query.json?<q>                  RMA query, chunked JSON
    GET|HEAD  /api/v2/well_known_file_download/<id>        a file, nginx-style ETag
    GET       /<bucket>?list-type=2&...                    ListObjectsV2 XML
    GET|HEAD  /<bucket>/<key>                              an object, S3 ETag

Routes of the DANDI server (see :mod:`ecephys_dl.replica.dandi`; the trailing slash is optional)::

    GET       /api/dandisets/<id>/versions/                       versions, paginated JSON
    GET       /api/dandisets/<id>/versions/<v>/assets/?...        assets, paginated JSON
    GET|HEAD  /api/assets/<asset_id>/download/                    302 to a presigned blob URL
    POST      /api/blobs/digest/                                  a blob found by its digest
    GET|HEAD  /dandiarchive/blobs/<a>/<b>/<uuid>[?X-Amz-...]      the bytes, S3 ETag (= DANDI etag)

The servers of one :class:`Replica` share their faults, request counters, changed files and log.

Files are streamed from disk with ``sendfile`` in chunks, so faults can act between chunks and
a 3 GB file costs no memory. Every request is logged as one JSON line with ``time``, ``method``,
``path`` (raw, with the query), ``range``, ``if_range``, ``status`` (null when nothing was
answered), ``bytes`` (body bytes sent), ``fault`` (the fault kind that hit it, ``change`` when
the request was the first to see a changed file, joined by ``+`` when both) and ``duration``.
:class:`Replica` runs the server on a background thread as a context manager.
"""

from __future__ import annotations

import contextlib
import email.utils
import functools
import gzip
import hashlib
import importlib
import json
import os
import re
import socket
import socketserver
import ssl
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType
from typing import IO, Any, BinaryIO, TypeAlias
from urllib.parse import parse_qsl, unquote, urlsplit

from ecephys_dl.replica import dandi
from ecephys_dl.replica.dandi import BLOB_BUCKET, ApiError, PublishedFile, blob_key
from ecephys_dl.replica.faults import Fault, FaultKind, FaultPlan, RequestInfo, Route
from ecephys_dl.replica.s3 import S3Error, content_type, format_s3_time, list_objects_v2
from ecephys_dl.replica.store import Dataset, ObjectInfo

__all__ = [
    "LOOPBACK",
    "PRESIGN_EXPIRY",
    "ByteRange",
    "Replica",
    "ReplicaServer",
    "check_public_origin",
    "http_date",
    "resolve_range",
    "warehouse_etag",
]

LOOPBACK = "127.0.0.1"
PRESIGN_EXPIRY = 6 * 3600  # seconds a presigned blob URL stays valid, as on DANDI
CHUNK = 1 << 20  # bytes per send: small enough for faults to act between chunks
_JSON_BLOCK = 64 << 10
_MAX_IGNORED_BODY = 1 << 20
_PATCH_LENGTH = 4096
_BOMB_PIECE = 16 << 20  # zero bytes per gzip member of a gzip bomb (about 16 KB compressed)
# When the listing-key fault's extra key was "uploaded": any fixed time will do.
_PLANTED_TIME = datetime(2019, 10, 3, tzinfo=UTC)
_RMA_PATH = re.compile(r"/+api/v2/data/query\.json")
_DOWNLOAD_PATH = re.compile(r"/+api/v2/well_known_file_download/([^/?]*)/?")
_DANDI_VERSIONS = re.compile(r"/api/dandisets/([^/]+)/versions/?")
_DANDI_ASSETS = re.compile(r"/api/dandisets/([^/]+)/versions/([^/]+)/assets/?")
_DANDI_DOWNLOAD = re.compile(r"/api/assets/([^/]+)/download/?")
_DANDI_DIGEST = re.compile(r"/api/blobs/digest/?")
_DIGEST_ALGORITHMS = ("dandi:dandi-etag", "dandi:sha2-256")
_HTML_PAGE = (
    b"<!DOCTYPE html>\n<html><head><title>503 Service Temporarily Unavailable</title></head>\n"
    b"<body><center><h1>503 Service Temporarily Unavailable</h1></center>\n"
    b"<hr><center>nginx</center></body></html>\n"
)


def warehouse_etag(last_modified: datetime, size: int) -> str:
    """The ETag nginx gives a static file: ``"<hex mtime>-<hex size>"``."""
    return f'"{int(last_modified.timestamp()):x}-{size:x}"'


def check_public_origin(url: str) -> str:
    """``url`` without a trailing slash, when it is ``http(s)://127.0.0.1[:PORT]`` (or localhost); else ValueError.

    A proxy on the loopback interface in front of a replica server: its URLs may lead there, nowhere else.
    """
    origin = url.rstrip("/")
    try:
        parts = urlsplit(origin)
        port = parts.port
    except ValueError:
        raise ValueError(f"not a URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or parts.hostname not in (LOOPBACK, "localhost") or parts.path or parts.query or parts.fragment:
        raise ValueError(f"a public origin is http(s)://{LOOPBACK}[:PORT] with no path, not {url!r}")
    if port == 0:
        raise ValueError(f"a public origin needs a port other than 0, not {url!r}")
    return origin


def http_date(moment: datetime) -> str:
    """An HTTP date (``Thu, 03 Oct 2019 00:00:00 GMT``)."""
    return email.utils.format_datetime(moment.astimezone(UTC), usegmt=True)


@dataclass(frozen=True)
class ByteRange:
    """What a ``Range`` header asks of a body of ``size`` bytes.

    ``satisfiable`` False means 416; otherwise ``start``..``end`` (exclusive) is the part to send.
    """

    start: int
    end: int
    satisfiable: bool = True


def resolve_range(header: str | None, size: int) -> ByteRange | None:
    """Resolve a ``Range`` header against ``size``: None means "send everything with 200".

    Only one range of the ``bytes`` unit is honoured; several ranges or anything unparsable
    are ignored, as RFC 9110 allows.
    """
    if header is None:
        return None
    unit, sep, spec = header.partition("=")
    if not sep or unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = re.fullmatch(r"\s*(\d*)\s*-\s*(\d*)\s*", spec)
    if match is None or (not match.group(1) and not match.group(2)):
        return None
    first, last = match.group(1), match.group(2)
    if not first:  # suffix range: the last n bytes
        count = int(last)
        if count == 0 or size == 0:
            return ByteRange(0, 0, satisfiable=False)
        return ByteRange(max(0, size - count), size)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        return ByteRange(0, 0, satisfiable=False)
    end = size if not last else min(size, int(last) + 1)
    return ByteRange(start, end)


@dataclass(frozen=True)
class _Patch:
    """Bytes XOR-ed over ``offset``..``offset + len(mask)`` in a changed version of a file."""

    offset: int
    mask: bytes

    def apply(self, data: bytes, at: int) -> bytes:
        """``data`` (read from ``at``) with the patch applied where they overlap."""
        lo, hi = max(at, self.offset), min(at + len(data), self.offset + len(self.mask))
        if lo >= hi:
            return data
        out = bytearray(data)
        for i in range(lo, hi):
            out[i - at] ^= self.mask[i - self.offset]
        return bytes(out)

    def overlaps(self, offset: int, count: int) -> bool:
        """Whether ``offset``..``offset + count`` touches the patched bytes."""
        return offset < self.offset + len(self.mask) and self.offset < offset + count


@dataclass(frozen=True)
class _Patches:
    """Several patches over one body (a changed file served with a ``same-size`` fault)."""

    parts: tuple[_Patch, ...]

    def apply(self, data: bytes, at: int) -> bytes:
        for part in self.parts:
            data = part.apply(data, at)
        return data

    def overlaps(self, offset: int, count: int) -> bool:
        return any(part.overlaps(offset, count) for part in self.parts)


_Mask: TypeAlias = "_Patch | _Patches"


def _flip_patch(size: int, count: int) -> _Patch | None:
    """``count`` bytes from the middle of a ``size``-byte file, every bit flipped (same-size fault)."""
    length = min(count, size - size // 2)
    return _Patch(size // 2, b"\xff" * length) if length > 0 else None


def _with_patch(mask: _Mask | None, extra: _Patch | None) -> _Mask | None:
    if mask is None or extra is None:
        return mask if extra is None else extra
    return _Patches((*(mask.parts if isinstance(mask, _Patches) else (mask,)), extra))


class _Version:
    """The current version of an object once a ``change`` fault has hit it."""

    def __init__(self, original: ObjectInfo, number: int) -> None:
        seed = hashlib.blake2b(f"{original.key}\x1f{number}".encode(), digest_size=32).digest()
        size = original.size
        half = size // 2
        length = min(_PATCH_LENGTH, size - half)
        room = size - half - length
        offset = half + (int.from_bytes(seed[:8], "big") % (room + 1) if room > 0 else 0)
        # Every mask byte is odd, so every byte of the region really changes.
        mask = bytes((seed[i % len(seed)] ^ (i * 151 & 0xFF)) | 1 for i in range(length))
        self.number = number
        self.original = original
        self.patch = _Patch(offset, mask) if length > 0 else None
        self.last_modified = original.last_modified + timedelta(days=number)
        self._s3_etag: str | None = None
        self._lock = threading.Lock()

    def info(self) -> ObjectInfo:
        """The object's facts as of this version (the S3 ETag is the MD5 of the new bytes)."""
        with self._lock:
            if self._s3_etag is None:
                digest = hashlib.md5()
                with open(self.original.path, "rb") as stream:
                    at = 0
                    while block := stream.read(CHUNK):
                        digest.update(self.patch.apply(block, at) if self.patch else block)
                        at += len(block)
                self._s3_etag = f'"{digest.hexdigest()}"'
            return replace(self.original, etag=self._s3_etag, md5=self._s3_etag.strip('"'), last_modified=self.last_modified)


@dataclass(frozen=True)
class _Region:
    """``count`` bytes of the file being sent, from ``offset``."""

    offset: int
    count: int


_Block: TypeAlias = bytes | _Region


def _block_size(block: _Block) -> int:
    return block.count if isinstance(block, _Region) else len(block)


def _split(block: _Block, n: int) -> tuple[_Block, _Block]:
    if isinstance(block, _Region):
        return _Region(block.offset, n), _Region(block.offset + n, block.count - n)
    return block[:n], block[n:]


@dataclass(frozen=True)
class _Body:
    """A response body: bytes in memory, part of a file, or JSON encoded while sent (chunked)."""

    data: bytes = b""
    path: Path | None = None
    start: int = 0
    end: int = 0
    patch: _Mask | None = None
    document: Any = None  # a JSON document, sent with chunked encoding

    @property
    def chunked(self) -> bool:
        """Whether the body goes out with ``Transfer-Encoding: chunked``."""
        return self.document is not None

    def length(self) -> int:
        """The Content-Length of a body that is not chunked."""
        return self.end - self.start if self.path is not None else len(self.data)

    def blocks(self, size: int) -> Iterator[_Block]:
        """The body in blocks of at most ``size`` bytes."""
        if self.path is not None:
            for offset in range(self.start, self.end, size):
                yield _Region(offset, min(size, self.end - offset))
        elif self.document is not None:
            buffered: list[str] = []
            count = 0
            for piece in json.JSONEncoder().iterencode(self.document):
                buffered.append(piece)
                count += len(piece)
                if count >= size:
                    data = "".join(buffered).encode("utf-8")
                    for at in range(0, len(data), size):
                        yield data[at : at + size]
                    buffered, count = [], 0
            data = "".join(buffered).encode("utf-8")
            for at in range(0, len(data), size):
                yield data[at : at + size]
        else:
            for at in range(0, len(self.data), size):
                yield self.data[at : at + size]


@dataclass(frozen=True)
class _Response:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: _Body


class _Hangup(Exception):
    """The connection was ended on purpose (drop, short, shutdown): stop answering."""


class _RequestLog:
    """Request records in memory (most recent first kept) and, optionally, as JSON lines in a file."""

    def __init__(self, path: Path | None, keep: int = 100_000) -> None:
        self._lock = threading.Condition()
        self._records: deque[dict[str, Any]] = deque(maxlen=keep)
        self._added = 0
        self.cleared = 0  # records added before the last clear()
        self._stream: IO[str] | None = open(path, "a", encoding="utf-8") if path is not None else None  # noqa: SIM115  # open for the log's life, closed by close()

    def add(self, record: dict[str, Any]) -> None:
        line = json.dumps(record, ensure_ascii=False)
        with self._lock:
            self._records.append(record)
            self._added += 1
            if self._stream is not None:
                self._stream.write(line + "\n")
                self._stream.flush()
            self._lock.notify_all()

    def wait(self, count: int, timeout: float) -> bool:
        """Wait until ``count`` records were added in all (cleared ones included)."""
        with self._lock:
            return self._lock.wait_for(lambda: self._added >= count, timeout)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._records)

    def clear(self) -> None:
        with self._lock:
            self.cleared = self._added
            self._records.clear()

    def close(self) -> None:
        with self._lock:
            if self._stream is not None:
                self._stream.close()
                self._stream = None


class _Shared:
    """What the servers of one replica share: the faults, request counts, changed files, the log."""

    def __init__(self, faults: Iterable[Fault | str], seed: int, log_path: str | Path | None) -> None:
        self.plan = FaultPlan(tuple(faults), seed)
        self.lock = threading.Lock()
        self.targets: Counter[str] = Counter()
        self.file_requests: Counter[str] = Counter()
        self.versions: dict[str, _Version] = {}
        self.log = _RequestLog(Path(log_path) if log_path is not None else None)


class ReplicaServer(ThreadingHTTPServer):
    """A threaded HTTP/1.1 server answering as the warehouse and the S3 mirror of one dataset.

    With ``dandi`` it answers as the DANDI archive instead: its API and its blob bucket, which
    presigns URLs valid for ``presign_expiry`` seconds (0: expired at once). Given ``peer``, it
    shares that server's faults, counters, changed files and request log (and ignores ``faults``,
    ``seed`` and ``log_path``).

    Given ``tls`` (a server-side :class:`ssl.SSLContext` holding a certificate and its key), it
    speaks HTTPS instead, for tests of certificate verification.

    Given ``public_origin`` (``http://127.0.0.1:PORT``, a proxy in front of it), the URLs it
    names (the DANDI API's listing pages, ``contentUrl`` and presigned redirects) lead there
    instead of to its own port.
    """

    daemon_threads = True
    request_queue_size = 128

    def __init__(
        self,
        dataset: Dataset,
        *,
        host: str = LOOPBACK,
        port: int = 0,
        faults: Iterable[Fault | str] = (),
        seed: int = 0,
        log_path: str | Path | None = None,
        page_cap: int = 50_000,
        tabular_strings: bool = False,
        tls: ssl.SSLContext | None = None,
        dandi: bool = False,
        presign_expiry: int = PRESIGN_EXPIRY,
        peer: ReplicaServer | None = None,
        public_origin: str | None = None,
    ) -> None:
        if host not in (LOOPBACK, "localhost"):
            raise ValueError(f"the replica serves on {LOOPBACK} only, not on {host!r}")
        self.public_origin = None if public_origin is None else check_public_origin(public_origin)
        if presign_expiry < 0:
            raise ValueError(f"a presigned URL's expiry must not be negative, not {presign_expiry}")
        self.dataset = dataset
        self.seed: int = peer.seed if peer is not None else seed
        self.page_cap = page_cap
        self.tabular_strings = tabular_strings
        self.dandi = dandi
        self.presign_expiry = presign_expiry
        self.stopping = threading.Event()
        self._shared: _Shared = peer._shared if peer is not None else _Shared(faults, seed, log_path)
        self._lock = self._shared.lock
        self._targets = self._shared.targets
        self._file_requests = self._shared.file_requests
        self._versions = self._shared.versions
        self._log = self._shared.log
        self._secret = os.urandom(32)
        published = dataset.published() if dandi else []
        self._assets = {f.dandi_asset_id: f for f in published}
        self._blobs = {blob_key(f.blob_id): f for f in published}
        self._connections: set[socket.socket] = set()
        self._idle = threading.Condition()  # guards _connections; notified when one closes
        super().__init__((LOOPBACK, port), _Handler)
        self.tls = tls is not None
        if tls is not None:
            # The handshake is done by each connection's own thread (_Handler.setup), so a
            # client that never finishes it cannot hold up the accept loop.
            self.socket = tls.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN, which may ask a DNS server: the
        # replica must never send anything off the loopback interface.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = LOOPBACK, self.port

    @property
    def port(self) -> int:
        """The TCP port the server listens on."""
        return int(self.server_address[1])

    @property
    def origin(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` when serving TLS)."""
        return f"{'https' if self.tls else 'http'}://{LOOPBACK}:{self.port}"

    @property
    def named_origin(self) -> str:
        """The origin the URLs it gives name: :attr:`public_origin` when set, else :attr:`origin`."""
        return self.public_origin or self.origin

    @property
    def api_url(self) -> str:
        """The DANDI API's base URL, ``http://127.0.0.1:PORT/api`` (on the public origin when set)."""
        return f"{self.named_origin}/api"

    @property
    def blob_url(self) -> str:
        """The DANDI bucket's base URL, ``http://127.0.0.1:PORT/dandiarchive`` (on the public origin when set)."""
        return f"{self.named_origin}/{BLOB_BUCKET}"

    def published(self, dandiset: str) -> list[PublishedFile]:
        """The files of ``dandiset`` in the published table's order."""
        return [f for f in self.dataset.published() if f.dandiset == dandiset]

    def asset(self, asset_id: str) -> PublishedFile | None:
        """The published file of asset ``asset_id``, or None."""
        return self._assets.get(asset_id)

    def blob(self, key: str) -> PublishedFile | None:
        """The published file whose blob is at ``key`` (``blobs/<a>/<b>/<uuid>``), or None."""
        return self._blobs.get(key)

    def find_blob(self, algorithm: str, value: str) -> PublishedFile | None:
        """The published file with this digest (``dandi:sha2-256`` or ``dandi:dandi-etag``), or None."""
        for file in self.dataset.published():
            if (file.sha256 if algorithm == "dandi:sha2-256" else file.dandi_etag) == value:
                return file
        return None

    def presigned(self, file: PublishedFile) -> str:
        """A presigned URL of ``file``'s blob, valid for :attr:`presign_expiry` seconds from now."""
        path = f"/{BLOB_BUCKET}/{dandi.blob_key(file.blob_id)}"
        name = file.dandi_path.rsplit("/", 1)[-1]
        query = dandi.presign_query(self._secret, path, name, datetime.now(UTC), self.presign_expiry)
        return f"{self.named_origin}{path}?{query}"

    @property
    def open_connections(self) -> int:
        """How many client connections are open now."""
        with self._idle:
            return len(self._connections)

    @property
    def faults(self) -> tuple[Fault, ...]:
        """The faults in force."""
        return self._shared.plan.faults

    def set_faults(self, faults: Iterable[Fault | str]) -> None:
        """Replace the faults in force; objects already changed stay changed."""
        self._shared.plan = FaultPlan(tuple(faults), self.seed)

    def requests(self) -> list[dict[str, Any]]:
        """The log records of the requests answered so far, oldest first."""
        return self._log.snapshot()

    def clear_requests(self) -> None:
        """Forget the logged requests (the log file keeps them)."""
        self._log.clear()

    def wait_requests(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The logged requests once ``count`` are there (or ``timeout`` passed).

        A request is logged just after its last byte is sent, so a client can see the answer
        a moment before the log does.
        """
        self._log.wait(count + self._log.cleared, timeout)
        return self._log.snapshot()

    def current_object(self, key: str) -> ObjectInfo:
        """The facts of object ``key`` as served now (changed by a ``change`` fault or not)."""
        original = self.dataset.object(key)
        with self._lock:
            version = self._versions.get(key)
        return original if version is None else version.info()

    def current_bytes(self, key: str) -> bytes:
        """The bytes of object ``key`` as served now: for tests on small objects."""
        original = self.dataset.object(key)
        data = original.path.read_bytes()
        with self._lock:
            version = self._versions.get(key)
        return version.patch.apply(data, 0) if version is not None and version.patch else data

    def stop(self) -> None:
        """Wake every waiting request, close every connection, and close the listening socket."""
        self.stopping.set()
        with self._idle:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self.server_close()
        # Handlers woken above finish within milliseconds; waiting lets them log their request.
        with self._idle:
            self._idle.wait_for(lambda: not self._connections, timeout=0.5)
        self._log.close()

    # -- bookkeeping used by the handler ------------------------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        with self._idle:
            self._connections.discard(request)
            self._idle.notify_all()

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-answer is ordinary here; anything else is a bug the
        # request log shows (status 500), so nothing goes to stderr.
        pass

    def _count_target(self, target: str) -> int:
        with self._lock:
            self._targets[target] += 1
            return self._targets[target]

    def _select(self, request: RequestInfo) -> Fault | None:
        return self._shared.plan.select(request, self._count_target(request.target))

    def _serve_object(self, request: RequestInfo, key: str) -> tuple[ObjectInfo, _Mask | None, bool]:
        """Count a request served from object ``key``; return its current version and whether it just changed."""
        original = self.dataset.object(key)
        plan = self._shared.plan
        with self._lock:
            self._file_requests[key] += 1
            nth = self._file_requests[key]
            version = self._versions.get(key)
            changed_now = False
            if version is None and plan.change_due(request, key, nth) is not None:
                version = self._versions[key] = _Version(original, 1)
                changed_now = True
        if version is None:
            return original, None, False
        return version.info(), version.patch, changed_now


class _Handler(BaseHTTPRequestHandler):
    """One connection: parses requests, routes them, applies faults, logs them."""

    protocol_version = "HTTP/1.1"
    server_version = "ecephys-dl-replica"
    sys_version = ""
    timeout = 120  # an idle keep-alive connection or a client that stopped reading is let go
    # Headers and body go out in separate writes; with Nagle on, the second waits for a
    # delayed ACK (40 ms on Linux) and every small answer is that slow.
    disable_nagle_algorithm = True
    server: ReplicaServer

    def setup(self) -> None:
        super().setup()
        if isinstance(self.connection, ssl.SSLSocket):
            self.connection.do_handshake()  # a failed handshake ends this connection alone

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        pass  # requests are logged as JSON lines instead

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def _not_allowed(self) -> None:
        self._handle(self.command, allowed=False)

    def do_POST(self) -> None:
        self._handle("POST", allowed=self.server.dandi)  # the DANDI API takes a POST; its routes check

    do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    # -- one request ----------------------------------------------------------------------------

    def _handle(self, method: str, *, allowed: bool = True) -> None:
        started = time.monotonic()
        self._status: int | None = None
        self._sent = 0
        self._fault_names: list[str] = []
        self._request_body = b""
        words = self.requestline.split()
        raw = words[1] if len(words) >= 2 else self.path
        record: dict[str, Any] = {
            "time": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "method": method,
            "path": raw,
            "range": self.headers.get("Range"),
            "if_range": self.headers.get("If-Range"),
        }
        try:
            self._request_body = self._read_request_body()
            if allowed:
                self._route(method, raw)
            else:
                self._send_simple(405, b"method not allowed\n", "text/plain; charset=utf-8", (("Allow", "GET, HEAD"),))
        except _Hangup:
            self.close_connection = True
        except OSError:
            # The client went away or the server is stopping; this connection is done.
            self.close_connection = True
        except Exception as err:  # a bug must not kill the thread silently: answer 500 if we can
            self.close_connection = True
            if self._status is None:
                with contextlib.suppress(OSError):
                    body = f"internal error: {type(err).__name__}: {err}\n".encode()
                    self._send_simple(500, body, "text/plain; charset=utf-8", ())
        finally:
            record.update(
                status=self._status,
                bytes=self._sent,
                fault="+".join(self._fault_names) or None,
                duration=round(time.monotonic() - started, 6),
            )
            self.server._log.add(record)

    def _read_request_body(self) -> bytes:
        """The request's body (read so the connection stays usable); empty when absent or too big."""
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        try:
            count = int(length)
        except ValueError:
            count = -1
        if not 0 <= count <= _MAX_IGNORED_BODY:
            self.close_connection = True
            return b""
        return self.rfile.read(count)

    def _route(self, method: str, raw: str) -> None:
        raw_path, _, raw_query = raw.partition("?")
        path, query = unquote(raw_path), unquote(raw_query)
        if self.server.dandi:
            self._dandi_route(method, raw_path, raw_query)
            return
        bucket = "/" + self.server.dataset.bucket
        if _RMA_PATH.fullmatch(raw_path):
            self._rma(method, path, query)
        elif match := _DOWNLOAD_PATH.fullmatch(raw_path):
            self._download(method, path, query, match.group(1))
        elif raw_path in (bucket, bucket + "/"):
            self._listing(method, path, query, raw_query)
        elif raw_path.startswith(bucket + "/"):
            self._s3_object(method, path, query, unquote(raw_path[len(bucket) + 1 :]))
        else:
            request = RequestInfo(Route.OTHER, method, path, query)
            if not self._pre_fault(self.server._select(request)):
                self._send_simple(404, b"not found\n", "text/plain; charset=utf-8", ())

    # -- routes ---------------------------------------------------------------------------------

    def _rma(self, method: str, path: str, query: str) -> None:
        status, document = _run_query(self.server, query)
        start_row = document.get("start_row") if status == 200 and document.get("success") is True else None
        request = RequestInfo(
            Route.RMA, method, path, query, start_row=start_row if isinstance(start_row, int) else None
        )
        fault = self.server._select(request)
        if self._pre_fault(fault):
            return
        if fault is not None and fault.kind is FaultKind.RMA_ZERO:
            document = {**document, "num_rows": 0, "msg": []}
        elif fault is not None and fault.kind is FaultKind.RMA_ERROR:
            # The real server's status on such answers is unknown; 200 is the harder case for a client.
            from ecephys_dl.replica.query import error_envelope

            status, document = 200, error_envelope(fault.message or "")
        elif fault is not None and fault.kind is FaultKind.RMA_FIELD and isinstance(document.get("msg"), list):
            document = {**document, "msg": [_set_field(record, fault) for record in document["msg"]]}
        headers = (("Content-Type", "application/json; charset=utf-8"),)
        self._respond(method, _Response(status, headers, _Body(document=document)), fault)

    def _download(self, method: str, path: str, query: str, file_id: str) -> None:
        info = self.server.dataset.download(int(file_id)) if file_id.isascii() and file_id.isdigit() else None
        request = RequestInfo(Route.FILE, method, path, query, has_range="Range" in self.headers)
        fault = self.server._select(request)
        if self._pre_fault(fault, file=True):
            return
        if info is None:
            body = f"no well-known file with id {file_id!r}\n".encode()
            self._respond(method, _text(404, body), fault)
            return
        current, patch, changed = self.server._serve_object(request, info.key)
        if changed:
            self._fault_names.append(str(FaultKind.CHANGE))
        etag = warehouse_etag(current.last_modified, current.size)
        patch = self._same_size(fault, current, patch)
        headers = (
            ("Content-Type", "application/octet-stream"),
            ("ETag", etag),
            ("Last-Modified", http_date(current.last_modified)),
            ("Accept-Ranges", "bytes"),
            ("Content-Disposition", f"attachment; filename={current.name}"),
        )
        if fault is not None and fault.kind in (FaultKind.OVERSIZE, FaultKind.ENDLESS):
            self._flood(method, headers, fault, current, patch)
            return
        self._respond(method, self._file_response(current, patch, etag, headers, fault, s3=False), fault)

    def _s3_object(self, method: str, path: str, query: str, key: str) -> None:
        request = RequestInfo(Route.FILE, method, path, query, has_range="Range" in self.headers)
        fault = self.server._select(request)
        if self._pre_fault(fault, file=True):
            return
        try:
            self.server.dataset.object(key)
        except KeyError:
            error = S3Error(404, "NoSuchKey", "The specified key does not exist.", (("Key", key),))
            self._respond(method, _xml(error.status, error.xml()), fault)
            return
        current, patch, changed = self.server._serve_object(request, key)
        if changed:
            self._fault_names.append(str(FaultKind.CHANGE))
        patch = self._same_size(fault, current, patch)
        headers = (
            ("Content-Type", content_type(key)),
            ("ETag", current.etag),
            ("Last-Modified", http_date(current.last_modified)),
            ("Accept-Ranges", "bytes"),
        )
        if fault is not None and fault.kind in (FaultKind.OVERSIZE, FaultKind.ENDLESS):
            self._flood(method, headers, fault, current, patch)
            return
        self._respond(method, self._file_response(current, patch, current.etag, headers, fault, s3=True), fault)

    def _same_size(self, fault: Fault | None, info: ObjectInfo, patch: _Mask | None) -> _Mask | None:
        """``patch`` plus the flipped bytes of a ``same-size`` fault (length and ETag stay)."""
        if fault is None or fault.kind is not FaultKind.SAME_SIZE_OTHER_BYTES:
            return patch
        return _with_patch(patch, _flip_patch(info.size, fault.nbytes or 0))

    # -- the DANDI archive ----------------------------------------------------------------------

    def _dandi_route(self, method: str, raw_path: str, raw_query: str) -> None:
        path, query = unquote(raw_path), unquote(raw_query)
        blobs = f"/{BLOB_BUCKET}/"
        if raw_path.startswith(blobs):
            self._blob(method, path, query, unquote(raw_path[len(blobs) :]), raw_query)
            return
        versions, assets = _DANDI_VERSIONS.fullmatch(raw_path), _DANDI_ASSETS.fullmatch(raw_path)
        download, digest = _DANDI_DOWNLOAD.fullmatch(raw_path), _DANDI_DIGEST.fullmatch(raw_path)
        route = Route.ASSETS if assets else Route.API if versions or download or digest else Route.OTHER
        fault = self.server._select(RequestInfo(route, method, path, query))
        if self._pre_fault(fault):
            return
        allowed = ("POST",) if digest else ("GET", "HEAD")
        try:
            if route is Route.OTHER:
                raise ApiError(404, "Not found.")
            if method not in allowed:
                self._respond(method, _json(405, {"detail": f'Method "{method}" not allowed.'}, ("Allow", ", ".join(allowed))), fault)
                return
            params = dict(parse_qsl(raw_query, keep_blank_values=True))
            base = self.server.named_origin + raw_path
            if versions:
                dandiset = versions.group(1)
                self._known_dandiset(dandiset)
                document = dandi.versions_page(dandiset, self.server.published(dandiset), base, params)
            elif assets:
                document = self._assets_page(assets.group(1), assets.group(2), base, params, fault)
            elif download:
                self._asset_download(method, download.group(1), fault)
                return
            else:
                document = self._digest()
        except ApiError as error:
            self._respond(method, _json(error.status, error.document), fault)
            return
        self._respond(method, _json(200, document), fault)

    def _known_dandiset(self, dandiset: str) -> None:
        if dandiset not in dandi.DANDISETS.values():
            raise ApiError(404, "Not found.")

    def _assets_page(
        self, dandiset: str, version: str, base: str, params: dict[str, str], fault: Fault | None
    ) -> dict[str, Any]:
        self._known_dandiset(dandiset)
        if version not in (dandi.DRAFT, dandi.PUBLISHED_VERSION):
            raise ApiError(404, "Not found.")
        files = self.server.published(dandiset)
        if fault is not None and fault.kind is FaultKind.LISTING_KEY and fault.key is not None:
            planted = hashlib.sha256(fault.key.encode("utf-8", "surrogatepass")).hexdigest()
            files.append(
                PublishedFile("lfp", 0, None, "", fault.size or 0, planted, f"{planted[:32]}-1", dandiset,
                              dandi.asset_id(-1, fault.key), fault.key)  # fmt: skip
            )
        document = dandi.assets_page(files, base, params, self.server.api_url, self.server.blob_url)
        results: list[Any] = document["results"]
        if fault is not None and fault.kind is FaultKind.ASSET_FIELD:
            document["results"] = [_set_dotted(result, fault) for result in results]
        elif fault is not None and fault.kind is FaultKind.ASSET_DUPLICATE and results:
            document["results"] = [*results, results[0]]
        return document

    def _asset_download(self, method: str, asset: str, fault: Fault | None) -> None:
        file = self.server.asset(asset)
        if file is None:
            raise ApiError(404, "Not found.")
        headers = (("Location", self.server.presigned(file)), ("Content-Type", "text/html; charset=utf-8"))
        self._respond(method, _Response(302, headers, _Body()), fault)

    def _digest(self) -> dict[str, Any]:
        try:
            asked = json.loads(self._request_body or b"null")
        except ValueError:
            raise ApiError(400, "JSON parse error.") from None
        if not isinstance(asked, dict) or not isinstance(asked.get("value"), str):
            raise ApiError(400, 'Expected {"algorithm": ..., "value": ...}.')
        algorithm = asked.get("algorithm")
        if algorithm not in _DIGEST_ALGORITHMS:
            raise ApiError(400, f"Unsupported Digest Algorithm. Supported: {', '.join(_DIGEST_ALGORITHMS)}")
        file = self.server.find_blob(str(algorithm), asked["value"])
        if file is None:
            raise ApiError(404, "Not found.")
        return {"blob_id": file.blob_id, "etag": file.dandi_etag, "sha256": file.sha256, "size": file.size}

    def _blob(self, method: str, path: str, query: str, key: str, raw_query: str) -> None:
        """A blob of the DANDI bucket, read anonymously or with a presigned URL that must not be stale."""
        request = RequestInfo(Route.FILE, method, path, query, has_range="Range" in self.headers)
        fault = self.server._select(request)
        if self._pre_fault(fault, file=True):
            return
        file = self.server.blob(key)
        fields = parse_qsl(raw_query, keep_blank_values=True)
        error: S3Error | None = None
        if method not in ("GET", "HEAD"):
            error = S3Error(405, "MethodNotAllowed", "The specified method is not allowed against this resource.")
        elif file is None:
            error = S3Error(404, "NoSuchKey", "The specified key does not exist.", (("Key", key),))
        elif any(name.startswith("X-Amz-") for name, _ in fields):
            now = datetime.now(UTC)
            stale = dandi.expired(dict(fields), now)
            if not dandi.signature_holds(self.server._secret, path, fields):
                error = S3Error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match the signature you provided.")
            elif stale is not None:
                signed, seconds = stale
                expires = format_s3_time(signed + timedelta(seconds=seconds)).replace(".000Z", "Z")
                extra = (("X-Amz-Expires", str(seconds)), ("Expires", expires), ("ServerTime", format_s3_time(now).split(".")[0] + "Z"))
                error = S3Error(403, "AccessDenied", "Request has expired", extra)
        if error is not None or file is None:
            assert error is not None
            self._respond(method, _xml(error.status, error.xml()), fault)
            return
        original = self.server.dataset.object(self.server.dataset.prefix + file.cache_path)
        current, patch, changed = self.server._serve_object(request, original.key)
        if changed:
            self._fault_names.append(str(FaultKind.CHANGE))
        # DANDI uploads in 64 MiB parts, so the bucket's ETag is the DANDI etag (until a change).
        etag = current.etag if patch is not None else f'"{file.dandi_etag}"'
        modified = dandi.UPLOADED + (current.last_modified - original.last_modified)
        current = replace(current, etag=etag, last_modified=modified)
        patch = self._same_size(fault, current, patch)
        headers: tuple[tuple[str, str], ...] = (
            ("Content-Type", "application/octet-stream"),
            ("ETag", etag),
            ("Last-Modified", http_date(modified)),
            ("Accept-Ranges", "bytes"),
        )
        disposition = dict(fields).get("response-content-disposition")
        if disposition:
            headers += (("Content-Disposition", disposition),)
        if fault is not None and fault.kind in (FaultKind.OVERSIZE, FaultKind.ENDLESS):
            self._flood(method, headers, fault, current, patch)
            return
        self._respond(method, self._file_response(current, patch, etag, headers, fault, s3=True), fault)

    def _listing(self, method: str, path: str, query: str, raw_query: str) -> None:
        request = RequestInfo(Route.LISTING, method, path, query)
        fault = self.server._select(request)
        if self._pre_fault(fault):
            return
        params = dict(parse_qsl(raw_query, keep_blank_values=True))
        objects = [self.server.current_object(info.key) for info in self.server.dataset.objects]
        if fault is not None and fault.kind is FaultKind.LISTING_KEY and fault.key is not None:
            etag = '"' + hashlib.md5(fault.key.encode("utf-8", "surrogatepass")).hexdigest() + '"'
            planted = ObjectInfo(fault.key, Path(os.devnull), fault.size or 0, etag.strip('"'), etag, _PLANTED_TIME)
            objects.append(planted)
        try:
            response = _xml(200, list_objects_v2(self.server.dataset.bucket, objects, params))
        except S3Error as error:
            response = _xml(error.status, error.xml())
        self._respond(method, response, fault)

    def _file_response(
        self,
        info: ObjectInfo,
        patch: _Mask | None,
        etag: str,
        headers: tuple[tuple[str, str], ...],
        fault: Fault | None,
        *,
        s3: bool,
    ) -> _Response:
        """200, 206 or 416 for ``info`` according to Range and If-Range."""
        header = self.headers.get("Range")
        wanted = None if fault is not None and fault.kind is FaultKind.IGNORE_RANGE else resolve_range(header, info.size)
        if wanted is not None and not _if_range_holds(self.headers.get("If-Range"), etag, info.last_modified):
            wanted = None
        if wanted is None:
            return _Response(200, headers, _Body(path=info.path, start=0, end=info.size, patch=patch))
        if not wanted.satisfiable:
            extra = (("Content-Range", f"bytes */{info.size}"),)
            if s3:
                error = S3Error(
                    416,
                    "InvalidRange",
                    "The requested range is not satisfiable",
                    (("RangeRequested", header or ""), ("ActualObjectSize", str(info.size))),
                )
                failed = _xml(416, error.xml())
            else:
                failed = _text(416, b"requested range not satisfiable\n")
            return replace(failed, headers=failed.headers + extra)
        content_range = (("Content-Range", f"bytes {wanted.start}-{wanted.end - 1}/{info.size}"),)
        body = _Body(path=info.path, start=wanted.start, end=wanted.end, patch=patch)
        return _Response(206, headers + content_range, body)

    # -- sending, with faults -------------------------------------------------------------------

    def _pre_fault(self, fault: Fault | None, *, file: bool = False) -> bool:
        """Apply the faults that act before or instead of the answer; True when it replaced it.

        ``file``: the request is for a file, whose own bytes ``oversize`` and ``endless`` send
        first (its handler does that, once the file is known).
        """
        if fault is None:
            return False
        self._fault_names.append(str(fault.kind))
        if fault.kind is FaultKind.LATENCY:
            self._wait(fault.seconds or 0.0)
            return False
        if fault.kind is FaultKind.RMA_HANG:
            self._wait(fault.seconds or 0.0)
            raise _Hangup  # nothing was said; the connection just ends
        method = self.command
        if fault.kind is FaultKind.ERROR:
            status = fault.status or 503
            extra: tuple[tuple[str, str], ...] = ()
            if fault.retry_after is not None:
                extra = (("Retry-After", str(max(0, round(fault.retry_after)))),)
            body = f"{status} {HTTPStatus(status).phrase}\n".encode()
            response = _text(status, body)
            self._respond(method, replace(response, headers=response.headers + extra), None)
            return True
        if fault.kind is FaultKind.HTML:
            self._respond(method, _Response(200, (("Content-Type", "text/html"),), _Body(data=_HTML_PAGE)), None)
            return True
        if fault.kind is FaultKind.REDIRECT:
            location = (fault.to or "").replace("{path}", self.path)
            response = _text(fault.status or 302, b"moved\n")
            self._respond(method, replace(response, headers=(*response.headers, ("Location", location))), None)
            return True
        if fault.kind is FaultKind.GARBAGE:
            kind = fault.content_type or "application/octet-stream"
            data = (fault.body or "").encode("utf-8", "surrogatepass")
            self._respond(method, _Response(200, (("Content-Type", kind),), _Body(data=data)), None)
            return True
        if fault.kind is FaultKind.GZIP_BOMB:
            headers = (("Content-Type", "application/octet-stream"), ("Content-Encoding", "gzip"))
            self._respond(method, _Response(200, headers, _Body(data=_gzip_bomb(fault.size or 0))), None)
            return True
        if fault.kind in (FaultKind.OVERSIZE, FaultKind.ENDLESS) and not file:
            self._flood(method, (("Content-Type", "application/octet-stream"),), fault, None, None)
            return True
        return False

    def _flood(
        self,
        method: str,
        headers: tuple[tuple[str, str], ...],
        fault: Fault,
        source: ObjectInfo | None,
        patch: _Mask | None,
    ) -> None:
        """200 with more body than there is: the file's bytes (if any), then filler.

        ``oversize`` announces ``fault.length`` bytes and sends that many; ``endless`` announces
        no length and sends until the client hangs up or the server stops.
        """
        endless = fault.kind is FaultKind.ENDLESS
        limit = None if endless else fault.length or 0
        self._status = 200
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        if endless:
            # With no length and no chunking, the end of the body is the end of the connection.
            self.close_connection = True
            self.send_header("Connection", "close")
        else:
            self.send_header("Content-Length", str(limit))
        self.end_headers()
        if method == "HEAD":
            return
        if source is not None:
            count = source.size if limit is None else min(source.size, limit)
            with open(source.path, "rb") as stream:
                for block in _Body(path=source.path, start=0, end=count, patch=patch).blocks(CHUNK):
                    self._write(stream, block, False, patch)
        # Zeros after a file, spaces (JSON and XML whitespace) after nothing.
        filler = (b"\0" if source is not None else b" ") * CHUNK
        while limit is None or self._sent < limit:
            if self.server.stopping.is_set():
                raise _Hangup
            self._write(None, filler if limit is None else filler[: limit - self._sent], False, None)

    def _respond(self, method: str, response: _Response, fault: Fault | None) -> None:
        body = response.body
        chunked = body.chunked and self.request_version != "HTTP/1.0"
        self._status = response.status
        self.send_response(response.status)
        for name, value in response.headers:
            self.send_header(name, value)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        elif body.chunked:
            self.close_connection = True  # an HTTP/1.0 client reads until the connection closes
        else:
            self.send_header("Content-Length", str(body.length()))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if method != "HEAD":
            self._send_body(body, chunked, fault)

    def _send_body(self, body: _Body, chunked: bool, fault: Fault | None) -> None:
        limit = _byte_trigger(fault)
        bps = fault.bps if fault is not None and fault.kind is FaultKind.RATE else None
        size = CHUNK if bps is None else max(1, min(CHUNK, bps // 20))
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            source: BinaryIO | None = stack.enter_context(open(body.path, "rb")) if body.path is not None else None
            for block in body.blocks(size):
                if limit is not None and self._sent + _block_size(block) > limit:
                    head, block = _split(block, limit - self._sent)
                    self._write(source, head, chunked, body.patch)
                    limit = None
                    assert fault is not None
                    self._act(fault)
                self._write(source, block, chunked, body.patch)
                if bps is not None:
                    # Pace on the total so far: the body never gets ahead of bps.
                    self._wait(started + self._sent / bps - time.monotonic())
        if chunked:
            self.connection.sendall(b"0\r\n\r\n")

    def _write(self, source: BinaryIO | None, block: _Block, chunked: bool, patch: _Mask | None) -> None:
        count = _block_size(block)
        if count == 0:
            return
        if isinstance(block, _Region):
            assert source is not None
            if patch is None or not patch.overlaps(block.offset, block.count):
                sent = self.connection.sendfile(source, block.offset, block.count)
                if sent != block.count:
                    raise _Hangup  # the file shrank under us: stop rather than send garbage
            else:
                source.seek(block.offset)
                self.connection.sendall(patch.apply(source.read(block.count), block.offset))
        elif chunked:
            self.connection.sendall(b"%x\r\n%s\r\n" % (count, block))
        else:
            self.connection.sendall(block)
        self._sent += count

    def _act(self, fault: Fault) -> None:
        """What drop, short and stall do once their byte count has gone out."""
        if fault.kind is FaultKind.STALL:
            self._wait(fault.seconds or 0.0)
            return
        if fault.kind is FaultKind.DROP:
            _wait_drained(self.connection, limit=1.0)
            # SO_LINGER 0: close() sends RST instead of FIN, like a broken middlebox.
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()
            self.rfile.close()  # the makefile reference is the last one: the socket closes now
        raise _Hangup  # short: the usual close sends FIN after what was sent

    def _wait(self, seconds: float) -> None:
        """Sleep, but give up the request at once when the server stops."""
        if seconds > 0 and self.server.stopping.wait(seconds):
            raise _Hangup
        if self.server.stopping.is_set():
            raise _Hangup

    def _send_simple(self, status: int, body: bytes, kind: str, headers: tuple[tuple[str, str], ...]) -> None:
        self._respond(self.command, _Response(status, (("Content-Type", kind), *headers), _Body(data=body)), None)


def _byte_trigger(fault: Fault | None) -> int | None:
    """After how many body bytes ``fault`` acts (drop, short, stall), or None."""
    if fault is None:
        return None
    if fault.kind in (FaultKind.DROP, FaultKind.STALL):
        return fault.after or 0
    if fault.kind is FaultKind.SHORT:
        return fault.nbytes or 0
    return None


@functools.lru_cache(maxsize=4)
def _gzip_bomb(size: int) -> bytes:
    """A gzip body of ``size`` zero bytes: repeated members, about a thousandth of that size."""
    whole, rest = divmod(size, _BOMB_PIECE)
    member = gzip.compress(bytes(_BOMB_PIECE), compresslevel=9, mtime=0) if whole else b""
    tail = gzip.compress(bytes(rest), compresslevel=9, mtime=0) if rest or not whole else b""
    return member * whole + tail


def _set_field(record: Any, fault: Fault) -> Any:
    """``record`` with the ``rma-field`` fault's field set (JSON if the value parses, else text)."""
    if not isinstance(record, dict) or fault.field_name is None:
        return record
    original = record.get(fault.field_name)
    text = (fault.value or "").replace("{}", "" if original is None else str(original))
    try:
        value: Any = json.loads(text)
    except ValueError:
        value = text
    return {**record, fault.field_name: value}


def _text(status: int, body: bytes) -> _Response:
    return _Response(status, (("Content-Type", "text/plain; charset=utf-8"),), _Body(data=body))


def _json(status: int, document: Any, *headers: tuple[str, str]) -> _Response:
    body = json.dumps(document, separators=(",", ":")).encode("utf-8")
    return _Response(status, (("Content-Type", "application/json"), *headers), _Body(data=body))


def _set_dotted(record: Any, fault: Fault) -> Any:
    """``record`` with the ``asset-field`` fault's dotted field set, as :func:`_set_field` sets one."""
    names = (fault.field_name or "").split(".")
    if not isinstance(record, dict):
        return record
    if len(names) == 1:
        return _set_field(record, fault)
    inner = replace(fault, field_name=".".join(names[1:]))
    return {**record, names[0]: _set_dotted(record.get(names[0], {}), inner)}


def _xml(status: int, body: bytes) -> _Response:
    return _Response(status, (("Content-Type", "application/xml"),), _Body(data=body))


def _if_range_holds(validator: str | None, etag: str, last_modified: datetime) -> bool:
    """Whether ``If-Range`` lets the Range through: no validator, the exact strong ETag, or the date."""
    if validator is None:
        return True
    validator = validator.strip()
    if validator.startswith(('"', "W/")):
        return validator == etag
    try:
        when = email.utils.parsedate_to_datetime(validator)
    except (TypeError, ValueError):
        return False
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when == last_modified.replace(microsecond=0)


def _run_query(server: ReplicaServer, q: str) -> tuple[int, dict[str, Any]]:
    """Execute an RMA query: (200, envelope), (400, error envelope) or (500, error envelope)."""
    try:
        query = importlib.import_module("ecephys_dl.replica.query")
    except ImportError as err:
        return 500, {"success": False, "id": 0, "msg": f"the RMA engine is not available: {err}"}
    try:
        document = query.execute(
            q, server.dataset.records, page_cap=server.page_cap, tabular_strings=server.tabular_strings
        )
        return 200, document
    except query.QueryError as err:
        return 400, query.error_envelope(str(err))
    except Exception as err:  # the engine failing is the replica's fault, not the query's
        return 500, query.error_envelope(f"internal error: {type(err).__name__}: {err}")


def _wait_drained(connection: socket.socket, limit: float) -> None:
    """Wait (at most ``limit`` s) until the kernel has sent what we wrote, so a reset loses nothing."""
    try:
        import fcntl
        import termios

        request = termios.TIOCOUTQ
    except (ImportError, AttributeError):
        return
    deadline = time.monotonic() + limit
    buffer = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(connection.fileno(), request, buffer)
        except OSError:
            return
        if int.from_bytes(buffer, "little") == 0:
            return
        time.sleep(0.002)


class Replica:
    """The replica served from background threads: ``with Replica(dir) as r: ... r.url ...``.

    Two servers: the warehouse and the S3 mirror on :attr:`port`, the DANDI archive (API and
    blob bucket) on :attr:`dandi_port`; they share faults, counters and the request log.
    ``presign_expiry`` is how long the DANDI API's presigned blob URLs stay valid (seconds).
    ``dandi_public_url`` (``http://127.0.0.1:PORT``) is a proxy in front of the DANDI server:
    the listings' pages and ``contentUrl`` and the presigned redirects lead there, and
    :attr:`dandi_url` and :attr:`dandi_blob_url` name it.
    """

    def __init__(
        self,
        data_dir: str | Path | Dataset,
        *,
        faults: Sequence[Fault | str] = (),
        seed: int = 0,
        log_path: str | Path | None = None,
        page_cap: int = 50_000,
        tabular_strings: bool = False,
        port: int = 0,
        host: str = LOOPBACK,
        tls: ssl.SSLContext | None = None,
        dandi_port: int = 0,
        presign_expiry: int = PRESIGN_EXPIRY,
        dandi_public_url: str | None = None,
    ) -> None:
        self.dataset = data_dir if isinstance(data_dir, Dataset) else Dataset.open(data_dir)
        self._dandi_public = None if dandi_public_url is None else check_public_origin(dandi_public_url)
        self._host, self._port, self._seed, self._log_path = host, port, seed, log_path
        self._faults = tuple(faults)
        self._page_cap, self._tabular_strings = page_cap, tabular_strings
        self._tls = tls
        self._dandi_port, self._presign_expiry = dandi_port, presign_expiry
        self._server: ReplicaServer | None = None
        self._dandi: ReplicaServer | None = None
        self._thread: threading.Thread | None = None
        self._dandi_thread: threading.Thread | None = None

    def start(self) -> Replica:
        """Bind the port and start serving; returns self."""
        if self._thread is None:
            if self._server is not None:
                raise RuntimeError("a replica cannot be restarted: create a new one")
            self._server = ReplicaServer(
                self.dataset,
                host=self._host,
                port=self._port,
                faults=self._faults,
                seed=self._seed,
                log_path=self._log_path,
                page_cap=self._page_cap,
                tabular_strings=self._tabular_strings,
                tls=self._tls,
            )
            try:
                self._dandi = ReplicaServer(
                    self.dataset,
                    host=self._host,
                    port=self._dandi_port,
                    tls=self._tls,
                    dandi=True,
                    presign_expiry=self._presign_expiry,
                    peer=self._server,
                    public_origin=self._dandi_public,
                )
            except BaseException:
                self._server.stop()
                raise
            self._thread = threading.Thread(
                target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="replica", daemon=True
            )
            self._dandi_thread = threading.Thread(
                target=self._dandi.serve_forever, kwargs={"poll_interval": 0.05}, name="replica-dandi", daemon=True
            )
            self._thread.start()
            self._dandi_thread.start()
        return self

    def close(self) -> None:
        """Stop serving, ending open requests (even stalled ones) promptly."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        # The server objects stay, so requests() can still be read after the context exits.
        self._thread = None
        # The DANDI server first: the log they share closes with the main server.
        for each, running in ((self._dandi, self._dandi_thread), (server, thread)):
            if each is None or running is None:
                continue
            each.stopping.set()
            each.shutdown()
            each.stop()
            running.join(timeout=1.0)

    def __enter__(self) -> Replica:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()

    @property
    def server(self) -> ReplicaServer:
        """The running server (raises when not started)."""
        if self._server is None:
            raise RuntimeError("the replica is not running: use it as a context manager or call start()")
        return self._server

    @property
    def port(self) -> int:
        """The port served on."""
        return self.server.port

    @property
    def url(self) -> str:
        """The warehouse base URL, ``http://127.0.0.1:PORT`` (``https://`` when serving TLS)."""
        return f"{'https' if self.server.tls else 'http'}://{LOOPBACK}:{self.port}"

    @property
    def warehouse_url(self) -> str:
        """Same as :attr:`url`."""
        return self.url

    @property
    def s3_url(self) -> str:
        """The bucket's base URL, ``http://127.0.0.1:PORT/allen-brain-observatory``."""
        return f"{self.url}/{self.dataset.bucket}"

    @property
    def dandi_server(self) -> ReplicaServer:
        """The running DANDI server (raises when not started)."""
        if self._dandi is None:
            raise RuntimeError("the replica is not running: use it as a context manager or call start()")
        return self._dandi

    @property
    def dandi_port(self) -> int:
        """The port the DANDI archive is served on."""
        return self.dandi_server.port

    @property
    def dandi_url(self) -> str:
        """The DANDI API's base URL, ``http://127.0.0.1:PORT/api``."""
        return self.dandi_server.api_url

    @property
    def dandi_blob_url(self) -> str:
        """The DANDI bucket's base URL, ``http://127.0.0.1:PORT/dandiarchive`` (blobs under ``blobs/``)."""
        return self.dandi_server.blob_url

    def set_faults(self, faults: Iterable[Fault | str]) -> None:
        """Replace the faults in force (on every server of the replica)."""
        self.server.set_faults(faults)

    def requests(self) -> list[dict[str, Any]]:
        """The logged requests so far, oldest first."""
        return self.server.requests()

    def clear_requests(self) -> None:
        """Forget the logged requests."""
        self.server.clear_requests()

    def wait_requests(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """The logged requests once there are ``count`` of them (or after ``timeout`` seconds)."""
        return self.server.wait_requests(count, timeout)

    def current_bytes(self, key: str) -> bytes:
        """The bytes of object ``key`` as served now."""
        return self.server.current_bytes(key)

    def current_object(self, key: str) -> ObjectInfo:
        """The facts of object ``key`` as served now."""
        return self.server.current_object(key)
