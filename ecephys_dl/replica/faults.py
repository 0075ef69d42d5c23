"""Faults the replica can inject, and the reproducible choice of the requests they hit.

A fault is written ``kind:key=value,...``, e.g. ``drop:after=64K,share=0.5,paths=*.nwb,times=3``.
Every kind accepts the selectors ``share`` (fraction of matching requests, default 1),
``paths`` (glob on the URL path, default ``*``), ``query`` (glob on the decoded query string,
default ``*``) and ``times`` (at most that many hits in all, default unlimited); a glob may list
alternatives separated by ``|``. The kinds and their parameters:

=============  ==============================  ===================================================
kind           parameters                      effect
=============  ==============================  ===================================================
drop           after=SIZE                      send that many body bytes, then reset (RST)
error          status=503, retry_after=DUR     answer that status (408/429/500/502/503/504)
ignore-range                                   answer 200 with the whole body to a Range request
rate           bps=SIZE                        limit the body to that many bytes per second
latency        seconds=DUR                     wait before the status line
short          bytes=SIZE                      full Content-Length, that many bytes, then FIN
stall          seconds=DUR, after=0            send ``after`` bytes, then nothing for a while
change         after=1                         after that many requests the file changes for good
html                                           200 with an HTML error page
rma-zero       after_row=1                     an RMA page from that row on has ``num_rows: 0``
rma-hang       seconds=3600                    an RMA request gets no answer at all
rma-error      message=TEXT                    an RMA page answers ``success: false`` with TEXT
redirect       to=URL, status=302              redirect there (``{path}`` in URL: the request's
                                               path and query)
rma-field      name=FIELD, value=VALUE         set FIELD of every record of an RMA page to VALUE
                                               (JSON if it parses, else text; ``{}`` in VALUE:
                                               the record's own value)
garbage        body=TEXT, type=MIME            200 with exactly that body (any route)
listing-key    key=KEY, size=1K                a listing also lists KEY (any name) of that size
oversize       length=1T                       200 announcing that Content-Length, then the
                                               file's bytes followed by zeros
endless        (none)                          200 with no length: the file's bytes, then zeros
                                               until the client hangs up
gzip-bomb      size=1G                         200, ``Content-Encoding: gzip``: a small body that
                                               decompresses to that many zero bytes
same-size      bytes=4K                        a file's true length and ETag, but that many bytes
                                               from the middle of the file flipped (any source)
asset-field    name=FIELD, value=VALUE         set FIELD of every asset of a DANDI listing page
                                               (dotted: ``metadata.digest.dandi:sha2-256``; JSON
                                               if it parses, else text; ``{}``: its own value)
asset-duplicate                                a DANDI listing page lists its first asset twice
=============  ==============================  ===================================================

``listing-key`` also plants its key as an asset path in DANDI asset listings; ``garbage`` with
``type=application/json`` gives an API answer that is not JSON.

The text values of ``to``, ``value``, ``body`` and ``key`` are percent-decoded, so ``%2C`` writes
a comma and ``%00`` a NUL; ``str()`` of a fault writes them back that way.

Whether a request is hit depends only on the seed, the fault's position in the list, the
request's path and query, and how many requests to that path and query came before it: not on
what other paths are doing concurrently, so two servers with the same seed hit the same requests.
"""

from __future__ import annotations

import enum
import fnmatch
import hashlib
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any
from urllib.parse import unquote

from ecephys_dl.errors import UsageError
from ecephys_dl.sizes import parse_duration, parse_size

__all__ = ["ERROR_STATUSES", "REDIRECT_STATUSES", "Fault", "FaultKind", "FaultPlan", "RequestInfo", "Route"]

ERROR_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


class FaultKind(enum.StrEnum):
    """The kinds of fault, by the name used in a spec."""

    DROP = "drop"
    ERROR = "error"
    IGNORE_RANGE = "ignore-range"
    RATE = "rate"
    LATENCY = "latency"
    SHORT = "short"
    STALL = "stall"
    CHANGE = "change"
    HTML = "html"
    RMA_ZERO = "rma-zero"
    RMA_HANG = "rma-hang"
    RMA_ERROR = "rma-error"
    REDIRECT = "redirect"
    RMA_FIELD = "rma-field"
    GARBAGE = "garbage"
    LISTING_KEY = "listing-key"
    OVERSIZE = "oversize"
    ENDLESS = "endless"
    GZIP_BOMB = "gzip-bomb"
    SAME_SIZE_OTHER_BYTES = "same-size"
    ASSET_FIELD = "asset-field"
    ASSET_DUPLICATE = "asset-duplicate"


class Route(enum.StrEnum):
    """What a request asks for, as far as faults care."""

    FILE = "file"
    RMA = "rma"
    LISTING = "listing"
    ASSETS = "assets"  # a DANDI asset listing
    API = "api"  # any other DANDI API answer (versions, download redirect, digest lookup)
    OTHER = "other"


@dataclass(frozen=True)
class RequestInfo:
    """The facts about one request that decide which fault applies to it."""

    route: Route
    method: str
    path: str
    query: str
    has_range: bool = False
    start_row: int | None = None

    @property
    def target(self) -> str:
        """Path and query: the unit whose requests are counted."""
        return f"{self.path}?{self.query}" if self.query else self.path


def _size(text: str) -> int:
    return parse_size(text)


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(f"{text} is negative")
    return value


def _seconds(text: str) -> float:
    return parse_duration(text)


def _text(text: str) -> str:
    """A text value, percent-decoded (commas and NULs cannot be written plainly in a spec)."""
    return unquote(text)


def _escape(text: str) -> str:
    """The inverse of :func:`_text` for what a spec cannot hold plainly."""
    return "".join(f"%{ord(c):02X}" if c in "%," or ord(c) < 32 or ord(c) == 127 else c for c in text)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{text} is not between 0 and 1")
    return value


_OPTIONAL: Any = object()  # a parameter default meaning "may stay unset" (retry_after)


@dataclass(frozen=True)
class _Param:
    """A kind-specific parameter: the field it fills, its parser, its default (None: required)."""

    field: str
    parse: Callable[[str], Any]
    default: Any = None


# Kind-specific parameters: spec name -> field, parser, default. Order is the order of __str__.
_PARAMS: dict[FaultKind, dict[str, _Param]] = {
    FaultKind.DROP: {"after": _Param("after", _size)},
    FaultKind.ERROR: {"status": _Param("status", int, 503), "retry_after": _Param("retry_after", _seconds, _OPTIONAL)},
    FaultKind.IGNORE_RANGE: {},
    FaultKind.RATE: {"bps": _Param("bps", _size)},
    FaultKind.LATENCY: {"seconds": _Param("seconds", _seconds)},
    FaultKind.SHORT: {"bytes": _Param("nbytes", _size)},
    FaultKind.STALL: {"seconds": _Param("seconds", _seconds), "after": _Param("after", _size, 0)},
    FaultKind.CHANGE: {"after": _Param("after", _count, 1)},
    FaultKind.HTML: {},
    FaultKind.RMA_ZERO: {"after_row": _Param("after_row", _count, 1)},
    FaultKind.RMA_HANG: {"seconds": _Param("seconds", _seconds, 3600.0)},
    FaultKind.RMA_ERROR: {"message": _Param("message", str, "Data Access Error")},
    FaultKind.REDIRECT: {"to": _Param("to", _text), "status": _Param("status", int, 302)},
    FaultKind.RMA_FIELD: {"name": _Param("field_name", _text), "value": _Param("value", _text)},
    FaultKind.GARBAGE: {"body": _Param("body", _text, ""), "type": _Param("content_type", str, "application/octet-stream")},
    FaultKind.LISTING_KEY: {"key": _Param("key", _text), "size": _Param("size", _size, 1024)},
    FaultKind.OVERSIZE: {"length": _Param("length", _size, 1024**4)},
    FaultKind.ENDLESS: {},
    FaultKind.GZIP_BOMB: {"size": _Param("size", _size, 1024**3)},
    FaultKind.SAME_SIZE_OTHER_BYTES: {"bytes": _Param("nbytes", _size, 4096)},
    FaultKind.ASSET_FIELD: {"name": _Param("field_name", _text), "value": _Param("value", _text)},
    FaultKind.ASSET_DUPLICATE: {},
}
_SELECTORS: dict[str, Callable[[str], Any]] = {"share": _share, "paths": str, "query": str, "times": _count}


@dataclass(frozen=True)
class Fault:
    """One fault to inject; build it with :meth:`parse`, print it back with ``str()``."""

    kind: FaultKind
    after: int | None = None
    status: int | None = None
    retry_after: float | None = None
    bps: int | None = None
    seconds: float | None = None
    nbytes: int | None = None
    after_row: int | None = None
    message: str | None = None
    to: str | None = None
    field_name: str | None = None
    value: str | None = None
    body: str | None = None
    content_type: str | None = None
    key: str | None = None
    size: int | None = None
    length: int | None = None
    share: float = 1.0
    paths: str = "*"
    query: str = "*"
    times: int | None = None

    def __post_init__(self) -> None:
        kind = FaultKind(self.kind)
        object.__setattr__(self, "kind", kind)
        params = _PARAMS[kind]
        allowed = {param.field for param in params.values()}
        for item in fields(self):
            if item.name in allowed or item.name in _SELECTORS or item.name == "kind":
                continue
            if getattr(self, item.name) is not None:
                raise ValueError(f"fault {kind}: takes no parameter {item.name!r}")
        for name, param in params.items():
            if getattr(self, param.field) is None:
                if param.default is None:
                    raise ValueError(f"fault {kind}: parameter {name!r} is required, e.g. {_EXAMPLES[kind]}")
                if param.default is not _OPTIONAL:
                    object.__setattr__(self, param.field, param.default)
        if kind is FaultKind.ERROR and self.status not in ERROR_STATUSES:
            raise ValueError(f"fault error: status must be one of {sorted(ERROR_STATUSES)}, not {self.status}")
        if kind is FaultKind.REDIRECT and self.status not in REDIRECT_STATUSES:
            raise ValueError(f"fault redirect: status must be one of {sorted(REDIRECT_STATUSES)}, not {self.status}")
        if kind in (FaultKind.RMA_FIELD, FaultKind.ASSET_FIELD) and not self.field_name:
            raise ValueError(f"fault {kind}: name must not be empty")
        if kind is FaultKind.SAME_SIZE_OTHER_BYTES and not self.nbytes:
            raise ValueError("fault same-size: bytes must be positive")
        if kind is FaultKind.RATE and (self.bps or 0) <= 0:
            raise ValueError("fault rate: bps must be positive")
        if not 0.0 <= self.share <= 1.0:
            raise ValueError(f"fault {kind}: share must be between 0 and 1, not {self.share}")
        for name in ("after", "nbytes", "after_row", "times", "size", "length"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"fault {kind}: {name} must not be negative")
        for name in ("seconds", "retry_after"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"fault {kind}: {name} must not be negative")

    @classmethod
    def parse(cls, spec: str) -> Fault:
        """Parse ``kind[:key=value,...]``; ``ValueError`` with a readable message when malformed."""
        text = spec.strip()
        name, _, rest = text.partition(":")
        try:
            kind = FaultKind(name.strip())
        except ValueError:
            raise ValueError(
                f"unknown fault kind {name.strip()!r} in {spec!r}; known kinds: {', '.join(k.value for k in FaultKind)}"
            ) from None
        params = _PARAMS[kind]
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))) if rest.strip() else ():
            key, sep, raw = item.partition("=")
            key, raw = key.strip(), raw.strip()
            if not sep or not raw:
                raise ValueError(f"fault {kind}: expected key=value, got {item!r} in {spec!r}")
            if key in params:
                field_name, parser = params[key].field, params[key].parse
            elif key in _SELECTORS:
                field_name, parser = key, _SELECTORS[key]
            else:
                known = [*params, *_SELECTORS]
                raise ValueError(f"fault {kind}: unknown parameter {key!r} in {spec!r}; it takes {', '.join(known)}")
            if field_name in values:
                raise ValueError(f"fault {kind}: parameter {key!r} given twice in {spec!r}")
            try:
                values[field_name] = parser(raw)
            except (ValueError, UsageError) as err:
                reason = err.message if isinstance(err, UsageError) else str(err)
                raise ValueError(f"fault {kind}: bad value for {key!r} in {spec!r}: {reason}") from None
        return cls(kind, **values)

    def __str__(self) -> str:
        parts = []
        for name, param in _PARAMS[self.kind].items():
            value = getattr(self, param.field)
            if value is not None:
                shown = _escape(value) if param.parse is _text and isinstance(value, str) else _format(value)
                parts.append(f"{name}={shown}")
        if self.share != 1.0:
            parts.append(f"share={_format(self.share)}")
        if self.paths != "*":
            parts.append(f"paths={self.paths}")
        if self.query != "*":
            parts.append(f"query={self.query}")
        if self.times is not None:
            parts.append(f"times={self.times}")
        return f"{self.kind}:{','.join(parts)}" if parts else str(self.kind)

    def matches(self, path: str, query: str) -> bool:
        """Whether the request path and decoded query fall under this fault's globs."""
        return _glob(path, self.paths) and _glob(query, self.query)

    def applies_to(self, request: RequestInfo) -> bool:
        """Whether this kind of fault can act on ``request`` at all (before selectors and chance)."""
        kind = self.kind
        if kind in (FaultKind.ERROR, FaultKind.LATENCY, FaultKind.HTML, FaultKind.REDIRECT, FaultKind.GARBAGE):
            return True
        if kind in (FaultKind.OVERSIZE, FaultKind.ENDLESS):
            # Not HEAD: a HEAD answer carries the true length, as a server that misbehaves only
            # while sending would give it.
            return request.method != "HEAD" and request.route is not Route.OTHER
        if kind is FaultKind.GZIP_BOMB:
            return request.route is not Route.OTHER
        if kind is FaultKind.RMA_FIELD:
            return request.route is Route.RMA
        if kind is FaultKind.LISTING_KEY:
            return request.route in (Route.LISTING, Route.ASSETS)
        if kind in (FaultKind.ASSET_FIELD, FaultKind.ASSET_DUPLICATE):
            return request.route is Route.ASSETS
        if kind is FaultKind.SAME_SIZE_OTHER_BYTES:
            return request.route is Route.FILE and request.method != "HEAD"
        if kind in (FaultKind.DROP, FaultKind.SHORT, FaultKind.STALL, FaultKind.RATE):
            return request.method != "HEAD" and request.route is not Route.OTHER
        if kind is FaultKind.IGNORE_RANGE:
            return request.route is Route.FILE and request.has_range
        if kind in (FaultKind.RMA_HANG, FaultKind.RMA_ERROR):
            return request.route is Route.RMA
        if kind is FaultKind.RMA_ZERO:
            return (
                request.route is Route.RMA
                and request.start_row is not None
                and request.start_row >= (self.after_row or 0)
            )
        return False  # CHANGE acts on files through FaultPlan.change_due, not on one response


_EXAMPLES = {
    FaultKind.DROP: "drop:after=64K",
    FaultKind.RATE: "rate:bps=256K",
    FaultKind.LATENCY: "latency:seconds=0.2",
    FaultKind.SHORT: "short:bytes=1000",
    FaultKind.STALL: "stall:seconds=5,after=1M",
    FaultKind.REDIRECT: "redirect:to=http://localhost:8080{path}",
    FaultKind.RMA_FIELD: "rma-field:name=attachable_id,value=1/../../x",
    FaultKind.ASSET_FIELD: "asset-field:name=metadata.digest.dandi:sha2-256,value={}0",
    FaultKind.LISTING_KEY: "listing-key:key=visual-coding-neuropixels/ecephys-cache/session_1/../../x.nwb",
}


def _format(value: float | int | str) -> str:
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        text = repr(value)
        return text if "e" not in text else f"{value:.9f}".rstrip("0")
    return str(value)


def _glob(text: str, pattern: str) -> bool:
    return any(fnmatch.fnmatchcase(text, alternative) for alternative in pattern.split("|"))


def _chance(*parts: object) -> float:
    """A number in [0, 1) fixed by ``parts``: the same inputs give the same number in any process."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class FaultPlan:
    """A list of faults with a seed: decides, request by request, which fault hits it."""

    def __init__(self, faults: Sequence[Fault | str] = (), seed: int = 0) -> None:
        self.faults: tuple[Fault, ...] = tuple(f if isinstance(f, Fault) else Fault.parse(f) for f in faults)
        self.seed = seed
        self._used = [0] * len(self.faults)
        self._lock = threading.Lock()

    def select(self, request: RequestInfo, nth: int) -> Fault | None:
        """The fault that hits ``request``, the ``nth`` (from 1) to its path and query; or None.

        At most one fault acts on a response: the first in list order that applies, matches,
        is chosen by chance and has not used up its ``times``.
        """
        for index, fault in enumerate(self.faults):
            if fault.kind is FaultKind.CHANGE or not fault.applies_to(request):
                continue
            if not fault.matches(request.path, request.query):
                continue
            if self._take(index, fault, request.target, nth):
                return fault
        return None

    def change_due(self, request: RequestInfo, key: str, nth: int) -> Fault | None:
        """The ``change`` fault that changes object ``key`` now, at its ``nth`` request; or None.

        ``share`` picks files (not requests) and ``times`` caps the number of files changed.
        """
        for index, fault in enumerate(self.faults):
            if fault.kind is not FaultKind.CHANGE or nth <= (fault.after or 0):
                continue
            if not fault.matches(request.path, request.query):
                continue
            if self._take(index, fault, "change", key):
                return fault
        return None

    def _take(self, index: int, fault: Fault, *chance_of: object) -> bool:
        """Whether fault ``index`` hits now: picked by its ``share`` and still within its ``times``."""
        if fault.share < 1.0 and _chance(self.seed, index, *chance_of) >= fault.share:
            return False
        with self._lock:
            if fault.times is not None and self._used[index] >= fault.times:
                return False
            self._used[index] += 1
        return True
