"""The answer judge: what an answer to a download request means, decided from its status and headers alone.

No I/O and no state: :func:`judge_range` weighs the answer to a ranged request, :func:`judge_plain`
the answer to a plain GET (a server that ignores ranges), :func:`judge_head` a HEAD, each against
the :class:`~ecephys_dl.facts.Facts` of the file, and returns a verdict the engine acts on:

* :class:`Accept` - a 206 that is exactly the bytes asked for: write them.
* :class:`Single` - a 200 of the same version to a ranged request: the server ignores ranges.
* :class:`Plain` - a 200 to a plain GET: the whole file (perhaps a new version).
* :class:`Head` - what a HEAD says of the file now.
* :class:`Restart` - another version of the file: the partial must go.
* :class:`Check` - a 416: compare with what a HEAD says.
* :class:`Retry` - not the file's bytes this time (HTML, an encoded body, a wrong length or
  Content-Range): a transient failure, before anything of it is written.
* :class:`HttpError` - an error status: the HTTP layer's rules say whether it is worth retrying.
* :class:`TooLarge` - a stated size far above what the file can be: it fails for good.

Each verdict carries its :class:`Verdict` (a StrEnum) for tables and messages.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

import httpx

from ecephys_dl.errors import TransientError
from ecephys_dl.facts import Facts, Validator

__all__ = [
    "Accept",
    "Asked",
    "Check",
    "Head",
    "HttpError",
    "Plain",
    "Restart",
    "Retry",
    "Single",
    "TooLarge",
    "Verdict",
    "content_range",
    "judge_head",
    "judge_plain",
    "judge_range",
    "refusal",
]

# At most 19 digits: past 2**63 no number is a byte position, and Python refuses int() of
# thousands of digits, which a hostile header would otherwise make an unexpected exception.
_CONTENT_RANGE = re.compile(r"\s*bytes\s+([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)\s*", re.IGNORECASE)
_LENGTH = re.compile(r"\s*([0-9]{1,19})\s*")  # as ecephys_dl.bodies.content_length reads Content-Length


class Verdict(enum.StrEnum):
    """What an answer means for the transfer."""

    ACCEPT = "accept"
    SINGLE = "single"
    PLAIN = "plain"
    HEAD = "head"
    RESTART = "restart"
    CHECK = "check"
    RETRY = "retry"
    ERROR = "error"
    TOO_LARGE = "too-large"


@dataclass(frozen=True)
class Asked:
    """The range a request asked for: from byte ``first`` up to ``end`` (exclusive; None: to the end)."""

    first: int
    end: int | None

    @property
    def header(self) -> str:
        """The ``Range`` header's value."""
        return f"bytes={self.first}-{self.end - 1 if self.end is not None else ''}"


@dataclass(frozen=True)
class Accept:
    """A 206 with exactly the bytes asked for: bytes ``start`` on, ``length`` of them, of a ``total``-byte file."""

    verdict: ClassVar[Verdict] = Verdict.ACCEPT
    start: int
    length: int
    total: int
    validator: Validator  # the answer's: taken where the file's is not known yet


@dataclass(frozen=True)
class Restart:
    """Another version of the file, or ranges that cannot be used: the partial goes; these are the new facts."""

    verdict: ClassVar[Verdict] = Verdict.RESTART
    reason: str
    size: int | None
    validator: Validator
    single: bool = False  # start again as one stream from byte 0


@dataclass(frozen=True)
class Single:
    """A 200 to a ranged request, same version: the server ignores ranges.

    The body is the whole file from byte 0 (``length`` bytes, if announced); when nothing is to
    be kept it can be the one stream, else the transfer starts over as :attr:`fallback` says.
    """

    verdict: ClassVar[Verdict] = Verdict.SINGLE
    validator: Validator  # the file's, or the answer's when the file's is not known
    length: int | None
    fallback: Restart


@dataclass(frozen=True)
class Plain:
    """A 200 to a plain GET: the whole file, ``length`` bytes (if announced); ``changed``: a new version."""

    verdict: ClassVar[Verdict] = Verdict.PLAIN
    validator: Validator  # the answer's
    length: int | None
    changed: bool


@dataclass(frozen=True)
class Head:
    """What a HEAD says of the file now."""

    verdict: ClassVar[Verdict] = Verdict.HEAD
    size: int | None
    validator: Validator


@dataclass(frozen=True)
class Check:
    """A 416: the range is beyond the file as the server has it; a HEAD tells whether anything is missing."""

    verdict: ClassVar[Verdict] = Verdict.CHECK


@dataclass(frozen=True)
class Retry:
    """Not the file's bytes this time: a transient failure, retried; nothing of the body is written."""

    verdict: ClassVar[Verdict] = Verdict.RETRY
    reason: str


@dataclass(frozen=True)
class HttpError:
    """An error status (not 2xx, not the 416 of a ranged request): transient or not as the HTTP layer says."""

    verdict: ClassVar[Verdict] = Verdict.ERROR
    status: int


@dataclass(frozen=True)
class TooLarge:
    """The server states a size above the file's ceiling: not this file; it fails for good."""

    verdict: ClassVar[Verdict] = Verdict.TOO_LARGE
    size: int


def _unusable(status: int, headers: Mapping[str, str]) -> HttpError | Retry | None:
    """An error status, or a body that cannot be the file's bytes (HTML, an encoding); None when neither."""
    if not 200 <= status < 300:
        return HttpError(status)
    refused = refusal(headers)
    return Retry(refused) if refused is not None else None


def judge_range(
    status: int, headers: Mapping[str, str], asked: Asked, facts: Facts
) -> Accept | Single | Restart | Check | Retry | HttpError | TooLarge:
    """What the answer to a ranged request for ``asked`` means, the file being as ``facts`` say."""
    headers = _headers(headers)
    if status == 416:
        return Check()
    unusable = _unusable(status, headers)
    if unusable is not None:
        return unusable
    if status == 200:
        return _whole(headers, facts)
    if status != 206:
        return Retry(f"answered HTTP {status} to a range request")
    stated = content_range(headers.get("Content-Range"), asked, facts.size)
    if isinstance(stated, str):
        return Retry(stated)
    start, last, total = stated
    if total > facts.ceiling:
        return TooLarge(total)
    length = last - start + 1
    announced = _content_length(headers)
    if announced is not None and announced != length:
        return Retry(f"announced {announced} bytes for the range {start}-{last} of {length} bytes")
    theirs = Validator.of(headers)
    if facts.validator.differs(theirs):
        return Restart(f"the file changed on the server (ETag {facts.validator.etag} is now {theirs.etag})", size=total, validator=theirs)
    return Accept(start, length, total, theirs)


def _whole(headers: Mapping[str, str], facts: Facts) -> Single | Restart | Retry | TooLarge:
    """A 200 to a ranged request: another version (start over), or a server ignoring ranges."""
    theirs = Validator.of(headers)
    length = _content_length(headers)
    if length is not None and length > facts.ceiling:
        return TooLarge(length)
    size = facts.size
    changed = facts.validator.differs(theirs)
    if changed is None and size is not None and length is not None and length != size:
        changed = True
    if changed:
        return Restart(
            f"the file changed on the server (ETag {facts.validator.etag} is now {theirs.etag}, "
            f"{length if length is not None else 'unknown'} bytes)",
            size=length,
            validator=theirs,
        )
    if size is not None and length is not None and length != size:
        return Retry(f"announced {length} bytes for the same version, not {size}")
    ours = facts.validator if facts.validator.known else theirs
    fallback = Restart(
        "the server ignored a byte range: downloading in one stream from byte 0",
        size=size if size is not None else length,
        validator=ours,
        single=True,
    )
    return Single(ours, length, fallback)


def judge_plain(status: int, headers: Mapping[str, str], facts: Facts) -> Plain | Retry | HttpError | TooLarge:
    """What the answer to a plain GET of the whole file means, the file being as ``facts`` say."""
    headers = _headers(headers)
    unusable = _unusable(status, headers)
    if unusable is not None:
        return unusable
    if status != 200:
        return Retry(f"answered HTTP {status} to a plain request")
    theirs = Validator.of(headers)
    length = _content_length(headers)
    if length is not None and length > facts.ceiling:
        return TooLarge(length)
    if facts.validator.differs(theirs):
        return Plain(theirs, length, changed=True)
    if facts.size is not None and length is not None and length != facts.size:
        return Retry(f"announced {length} bytes, not the {facts.size} expected")
    return Plain(theirs, length, changed=False)


def judge_head(status: int, headers: Mapping[str, str], facts: Facts) -> Head | Retry | HttpError | TooLarge:
    """What the answer to a HEAD says of the file now."""
    headers = _headers(headers)
    unusable = _unusable(status, headers)
    if unusable is not None:
        return unusable
    size = _content_length(headers)
    if size is not None and size > facts.ceiling:
        return TooLarge(size)
    return Head(size, Validator.of(headers))


def refusal(headers: Mapping[str, str]) -> str | None:
    """Why a body with these headers cannot be the file's bytes (HTML, an encoded body), or None."""
    kind = (headers.get("Content-Type") or "").split(";", 1)[0].strip().lower()
    if kind == "text/html":
        return "answered an HTML page instead of the file"
    encoding = (headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding not in ("", "identity"):
        return f"answered an encoded body ({encoding}) instead of the file's bytes"
    return None


def content_range(header: str | None, asked: Asked, size: int | None) -> tuple[int, int, int] | str:
    """A 206's ``Content-Range`` as (start, last, total) if exactly usable for ``asked``, else why not."""
    match = _CONTENT_RANGE.fullmatch(header or "")
    if match is None or match.group(3) == "*":
        return f"answered Content-Range {header!r} to {asked.header}: no usable range and total"
    start, last, total = int(match.group(1)), int(match.group(2)), int(match.group(3))
    if start != asked.first or last < start or last >= total or (asked.end is not None and last > asked.end - 1):
        return f"answered Content-Range {header!r} to {asked.header}"
    if size is not None and total != size:
        return f"answered Content-Range {header!r}: a total other than the {size} bytes expected"
    return start, last, total


def _content_range(response: httpx.Response, url: str, first: int, end: int | None, size: int | None) -> tuple[int, int, int]:
    """:func:`content_range` of an answer, a refusal raised as the engine's retry raises it (for the property tests)."""
    stated = content_range(response.headers.get("Content-Range"), Asked(first, end), size)
    if isinstance(stated, str):
        raise TransientError(stated, url=url)
    return stated


def _content_length(headers: Mapping[str, str]) -> int | None:
    match = _LENGTH.fullmatch(headers.get("Content-Length") or "")
    return int(match.group(1)) if match is not None else None


def _headers(headers: Mapping[str, str]) -> Mapping[str, str]:
    """Headers looked up by name in any case, as HTTP has them."""
    return headers if isinstance(headers, httpx.Headers) else httpx.Headers(headers)
