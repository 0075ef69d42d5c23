"""The answer judge: one row per server behaviour, no server needed (the judge does no I/O)."""

from __future__ import annotations

from typing import Any

import pytest

from ecephys_dl.answers import (
    Accept,
    Asked,
    Check,
    HttpError,
    Restart,
    Retry,
    Single,
    TooLarge,
    Verdict,
    judge_head,
    judge_plain,
    judge_range,
)
from ecephys_dl.facts import Facts, Validator

SIZE = 1000
CEILING = 2 * SIZE + 64
V1 = Validator('"v1"', "Mon, 01 Jan 2024 00:00:00 GMT")
V2 = Validator('"v2"', "Tue, 02 Jan 2024 00:00:00 GMT")
KNOWN = Facts(SIZE, V1, CEILING)  # size and version known (a listing, a record)
UNKNOWN = Facts(None, Validator(), CEILING)  # nothing known yet
NO_VALIDATOR = Facts(SIZE, Validator(), CEILING)  # the size known, no version
MIDDLE = Asked(100, 200)  # bytes=100-199
TAIL = Asked(900, None)  # bytes=900-


def v1(**headers: str) -> dict[str, str]:
    return {"ETag": '"v1"', "Last-Modified": V1.last_modified or "", **headers}


def v2(**headers: str) -> dict[str, str]:
    return {"ETag": '"v2"', "Last-Modified": V2.last_modified or "", **headers}


CR = "Content-Range"
CL = "Content-Length"

# (status, headers, asked, facts, verdict, what the verdict must say)
ROWS: list[tuple[int, dict[str, str], Asked, Facts, Verdict, dict[str, Any]]] = [
    # the bytes asked for, of the expected total: written
    (206, v1(**{CR: "bytes 100-199/1000", CL: "100"}), MIDDLE, KNOWN, Verdict.ACCEPT, {"start": 100, "length": 100, "total": 1000}),
    # a range that ends sooner than asked is usable (the rest is asked for again)
    (206, v1(**{CR: "bytes 100-149/1000"}), MIDDLE, KNOWN, Verdict.ACCEPT, {"length": 50}),
    # an open-ended range to the end, the unit in capitals, spaces around
    (206, v1(**{CR: " BYTES 900-999/1000 "}), TAIL, KNOWN, Verdict.ACCEPT, {"length": 100, "total": 1000}),
    # the first answer teaches the size and the version
    (206, v2(**{CR: "bytes 100-199/1500"}), MIDDLE, UNKNOWN, Verdict.ACCEPT, {"total": 1500, "validator": V2}),
    # header names in any case
    (206, {"content-range": "bytes 100-199/1000", "etag": '"v1"'}, MIDDLE, KNOWN, Verdict.ACCEPT, {"length": 100}),
    # a weak ETag that matches is the same version
    (206, {CR: "bytes 100-199/1000", "ETag": 'W/"v1"'}, MIDDLE, Facts(SIZE, Validator('W/"v1"'), CEILING), Verdict.ACCEPT, {}),
    # no ETag either side: compared by date
    (206, {CR: "bytes 100-199/1000", "Last-Modified": "later"}, MIDDLE, Facts(SIZE, Validator(None, "earlier"), CEILING), Verdict.RESTART, {"size": 1000}),
    # a 206 of another version (the If-Range was ignored): start over with its facts
    (206, v2(**{CR: "bytes 100-199/1000"}), MIDDLE, KNOWN, Verdict.RESTART, {"size": 1000, "validator": V2, "single": False}),
    # a range that starts elsewhere than asked
    (206, v1(**{CR: "bytes 0-99/1000"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "answered Content-Range 'bytes 0-99/1000' to bytes=100-199"}),
    # a range that ends later than asked
    (206, v1(**{CR: "bytes 100-299/1000"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "answered Content-Range 'bytes 100-299/1000' to bytes=100-199"}),
    # a last byte before the first
    (206, v1(**{CR: "bytes 100-50/1000"}), MIDDLE, KNOWN, Verdict.RETRY, {}),
    # a last byte past the total
    (206, v1(**{CR: "bytes 900-1000/1000"}), TAIL, KNOWN, Verdict.RETRY, {}),
    # a total other than the size known
    (206, v1(**{CR: "bytes 100-199/2000"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "a total other than the 1000 bytes expected"}),
    # an unknown total
    (206, v1(**{CR: "bytes 100-199/*"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "no usable range and total"}),
    # no Content-Range at all
    (206, v1(), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "answered Content-Range None to bytes=100-199: no usable range and total"}),
    # another unit
    (206, v1(**{CR: "items 100-199/1000"}), MIDDLE, KNOWN, Verdict.RETRY, {}),
    # a number too long to be a byte position
    (206, v1(**{CR: f"bytes 100-{'9' * 25}/1000"}), TAIL, KNOWN, Verdict.RETRY, {}),
    # a Content-Length that is not the range's length
    (206, v1(**{CR: "bytes 100-199/1000", CL: "150"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "announced 150 bytes for the range 100-199 of 100 bytes"}),
    # a total far above what the file can be: fails for good
    (206, v2(**{CR: "bytes 100-199/999999"}), MIDDLE, UNKNOWN, Verdict.TOO_LARGE, {"size": 999999}),
    # an HTML page (an error page, a login wall) is never the file
    (206, v1(**{CR: "bytes 100-199/1000", "Content-Type": "text/HTML; charset=utf-8"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "answered an HTML page instead of the file"}),
    # an encoded body is not the file's bytes
    (206, v1(**{CR: "bytes 100-199/1000", "Content-Encoding": "gzip"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "answered an encoded body (gzip) instead of the file's bytes"}),
    # identity encoding is no encoding
    (206, v1(**{CR: "bytes 100-199/1000", "Content-Encoding": "identity"}), MIDDLE, KNOWN, Verdict.ACCEPT, {}),
    # a 200 of the same version: the server ignores ranges
    (200, v1(**{CL: "1000"}), MIDDLE, KNOWN, Verdict.SINGLE, {"validator": V1, "length": 1000}),
    # a 200 without a length, nothing known: ranges ignored, the answer's version taken
    (200, v2(), Asked(0, None), UNKNOWN, Verdict.SINGLE, {"validator": V2, "length": None}),
    # a 200 of another version: start over with the new facts
    (200, v2(**{CL: "1200"}), MIDDLE, KNOWN, Verdict.RESTART, {"size": 1200, "validator": V2, "single": False}),
    # a 200 of unknowable version but another length: another version
    (200, {CL: "1200"}, MIDDLE, NO_VALIDATOR, Verdict.RESTART, {"size": 1200}),
    # a 200 of the same version but another length: not trustworthy, retried
    (200, v1(**{CL: "1200"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "announced 1200 bytes for the same version, not 1000"}),
    # a 200 announcing a size far above the file's
    (200, v2(**{CL: "999999"}), MIDDLE, KNOWN, Verdict.TOO_LARGE, {"size": 999999}),
    # a 200 that is an HTML page
    (200, v1(**{"Content-Type": "text/html"}), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "answered an HTML page instead of the file"}),
    # a 416: the range is past the file as the server has it; a HEAD decides
    (416, v1(), TAIL, KNOWN, Verdict.CHECK, {}),
    # another success status is not an answer to a range request
    (204, v1(), MIDDLE, KNOWN, Verdict.RETRY, {"reason": "answered HTTP 204 to a range request"}),
    # error statuses are the HTTP layer's (503 is retried there, 404 is not)
    (503, v1(**{"Retry-After": "1"}), MIDDLE, KNOWN, Verdict.ERROR, {"status": 503}),
    (404, {"Content-Type": "text/html"}, MIDDLE, KNOWN, Verdict.ERROR, {"status": 404}),
]


@pytest.mark.parametrize(("status", "headers", "asked", "facts", "verdict", "said"), ROWS)
def test_an_answer_is_written_only_when_it_is_exactly_the_bytes_asked_for(
    status: int, headers: dict[str, str], asked: Asked, facts: Facts, verdict: Verdict, said: dict[str, Any]
) -> None:
    """Only a 206 whose Content-Range starts where asked, ends no later and gives the expected total
    (of the same version, not HTML, not encoded, of the announced length) is accepted; every other
    answer is a restart, a retry, a HEAD check or an error, and says why."""
    judged = judge_range(status, headers, asked, facts)
    assert judged.verdict is verdict
    for name, value in said.items():
        got = getattr(judged, name)
        if isinstance(value, str) and name == "reason":
            assert value in got
        else:
            assert got == value, name
    if isinstance(judged, Accept):
        assert judged.start == asked.first and judged.length >= 1
        assert asked.end is None or judged.start + judged.length <= asked.end
        assert facts.size is None or judged.total == facts.size
    if isinstance(judged, Single):
        assert judged.fallback.single and judged.fallback.validator == judged.validator
    assert isinstance(judged, Accept | Single | Restart | Check | Retry | HttpError | TooLarge)


def test_a_plain_answer_and_a_head() -> None:
    """A plain GET takes a new version as it comes but not a wrong length of the same one; a HEAD reports."""
    assert judge_plain(200, v2(**{CL: "1200"}), KNOWN).verdict is Verdict.PLAIN
    new = judge_plain(200, v2(**{CL: "1200"}), KNOWN)
    assert not isinstance(new, Retry | HttpError | TooLarge) and new.changed and new.length == 1200
    same = judge_plain(200, v1(**{CL: "1000"}), KNOWN)
    assert not isinstance(same, Retry | HttpError | TooLarge) and not same.changed
    assert judge_plain(200, v1(**{CL: "1200"}), KNOWN) == Retry("announced 1200 bytes, not the 1000 expected")
    assert judge_plain(206, v1(), KNOWN) == Retry("answered HTTP 206 to a plain request")
    assert judge_plain(500, v1(), KNOWN) == HttpError(500)
    head = judge_head(200, v2(**{CL: "1200"}), KNOWN)
    assert head.verdict is Verdict.HEAD and not isinstance(head, Retry | HttpError | TooLarge)
    assert (head.size, head.validator) == (1200, V2)
    assert judge_head(200, {CL: "5000"}, KNOWN) == TooLarge(5000)
    assert judge_head(416, {}, KNOWN) == HttpError(416)
