"""The RMA client: paging through the warehouse's answers to a query, and checking them.

The queries themselves and their wire form are in :mod:`ecephys_dl.queries` (re-exported here).
:class:`RmaClient` reads the first page to learn ``total_rows``, then fetches the other pages
concurrently, each with its own retries, and checks that the pages fit together: no empty or
short page before the end, no ``total_rows`` that changes, no id twice. A malformed answer, or a
refused first page, is an :class:`RmaError` naming the query; a server that does not answer, or
keeps refusing a later page of a query it has already answered, is :class:`SourceUnreachable`
after the retries.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Protocol, TypeAlias

import httpx

from ecephys_dl.bodies import read_body
from ecephys_dl.errors import EcephysDlError, RmaError, SourceError, TransientError, UsageError
from ecephys_dl.queries import query_url
from ecephys_dl.retry import TRANSIENT_STATUSES, RetryNotice, RetryPolicy, call_with_retries, raise_for_status

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_PAGE_SIZE", "MAX_PAGES", "MAX_TOTAL_ROWS", "Page", "Record", "RmaClient", "RmaProgress", "parse_envelope", "record_id"]

# One record of an answer: a JSON object, its keys in the warehouse's (alphabetical) order.
Record: TypeAlias = Mapping[str, object]

DEFAULT_PAGE_SIZE = 5000  # what AllenSDK asks for
DEFAULT_MAX_BYTES = 256 * 1024**2
# A table this long is not the Neuropixels dataset (99,180 units): refuse before planning pages.
MAX_TOTAL_ROWS = 50_000_000
MAX_PAGES = 100_000  # a server capping pages at a handful of rows would need more
# At most 19 digits: an id past 2**63 is no id, and int() refuses thousands of digits anyway.
_DIGITS = re.compile(r"0|[1-9][0-9]{0,18}")
_MSG_LIMIT = 500  # characters of a server's error message worth quoting
_HINT = "--source s3 reads the same data from the S3 mirror"
_UNREACHABLE_HINT = f"the warehouse may be down or overloaded: try again later, or {_HINT}"
_DEFAULT_POLICY = RetryPolicy()  # frozen: one instance serves every client


# -- envelopes ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    """One page of an RMA answer, checked: its rows, the table's total, and the records."""

    start_row: int
    num_rows: int
    total_rows: int
    records: tuple[Record, ...]


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= _MSG_LIMIT else text[: _MSG_LIMIT - 1] + "…"


def _count(envelope: Mapping[str, object], key: str, query_name: str) -> int:
    value = envelope.get(key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise RmaError(f"the {query_name} query's answer has no integer {key!r} (got {value!r:.80})", query=query_name, hint=_HINT)
    if value < 0:
        raise RmaError(f"the {query_name} query's answer has a negative {key!r}: {value}", query=query_name, hint=_HINT)
    return value


def record_id(record: Record) -> int | None:
    """A record's id as an int >= 0: an int, or the decimal string a ``tabular`` answer may send; else None."""
    value = record.get("id")
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value < 2**63 else None
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return None


def parse_envelope(body: bytes, *, query_name: str) -> Page:
    """Check an RMA answer and return its page; :class:`RmaError` naming the query otherwise.

    ``success`` false gives the server's message. The counts must be non-negative integers that
    agree with the records, each record an object with an integer id, no id twice.
    """
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise RmaError(f"the {query_name} query's answer is not JSON ({error})", query=query_name, hint=_HINT) from None
    if not isinstance(envelope, dict):
        raise RmaError(f"the {query_name} query's answer is not a JSON object", query=query_name, hint=_HINT)
    if envelope.get("success") is not True:
        msg = envelope.get("msg")
        said = _quote(msg) if isinstance(msg, str) and msg.strip() else "no reason given"
        raise RmaError(f"the warehouse refused the {query_name} query: {said}", query=query_name)
    start_row = _count(envelope, "start_row", query_name)
    num_rows = _count(envelope, "num_rows", query_name)
    total_rows = _count(envelope, "total_rows", query_name)
    records = envelope.get("msg")
    if not isinstance(records, list):
        raise RmaError(f"the {query_name} query's answer has no list of records", query=query_name, hint=_HINT)
    if num_rows != len(records):
        raise RmaError(
            f"the {query_name} query's answer says num_rows {num_rows} but holds {len(records)} records",
            query=query_name,
            hint=_HINT,
        )
    if start_row + num_rows > total_rows:
        raise RmaError(
            f"the {query_name} query's page at row {start_row} holds {num_rows} records, past total_rows {total_rows}",
            query=query_name,
            hint=_HINT,
        )
    seen: set[int] = set()
    for index, record in enumerate(records):
        if not isinstance(record, dict):
            raise RmaError(f"record {start_row + index} of the {query_name} query is not an object", query=query_name, hint=_HINT)
        rid = record_id(record)
        if rid is None:
            raise RmaError(
                f"record {start_row + index} of the {query_name} query has no integer id, or a negative one "
                f"(id: {record.get('id')!r:.80})",
                query=query_name,
                hint=_HINT,
            )
        if rid in seen:
            raise RmaError(f"the {query_name} query's page at row {start_row} lists id {rid} twice", query=query_name, hint=_HINT)
        seen.add(rid)
    return Page(start_row=start_row, num_rows=num_rows, total_rows=total_rows, records=tuple(records))


def _refusal(body: bytes) -> str | None:
    """The message of an error envelope (``success`` false, ``msg`` a string), or None."""
    try:
        envelope = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if isinstance(envelope, dict) and envelope.get("success") is False and isinstance(envelope.get("msg"), str):
        return _quote(envelope["msg"]) or "no reason given"
    return None


# -- the client --------------------------------------------------------------------------------


class RmaProgress(Protocol):
    """Hears how a query goes. ``retry`` may be called from worker threads."""

    def rows(self, name: str, done: int, total: int) -> None:
        """``done`` of ``total`` records of query ``name`` have arrived."""

    def retry(self, name: str, notice: RetryNotice) -> None:
        """A page request of query ``name`` failed and will be retried."""


class _Cancelled(EcephysDlError):
    """The query was given up (another page failed): stop retrying this page."""


class RmaClient:
    """Runs RMA queries against the warehouse at ``base_url`` through ``client``.

    ``page_size`` records are asked per page (the server may cap that lower: the first page
    tells), ``concurrency`` pages are fetched at once, and each page request, retries aside,
    must be over within about ``page_timeout`` seconds. ``sleep`` waits between retries
    (tests inject one); by default the wait is cut short when the query is given up.
    """

    def __init__(
        self,
        base_url: str,
        *,
        client: httpx.Client,
        policy: RetryPolicy = _DEFAULT_POLICY,
        page_size: int = DEFAULT_PAGE_SIZE,
        concurrency: int = 4,
        page_timeout: float = 120.0,
        max_bytes: int = DEFAULT_MAX_BYTES,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
            raise UsageError(f"the RMA page size must be a positive whole number, not {page_size!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError(f"the RMA concurrency must be a positive whole number, not {concurrency!r}")
        if not page_timeout > 0:
            raise UsageError(f"the RMA page timeout must be positive, not {page_timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.client = client
        self.policy = policy
        self.page_size = page_size
        self.concurrency = concurrency
        self.page_timeout = float(page_timeout)
        self.max_bytes = max_bytes
        self.sleep = sleep

    def fetch_one(self, q: str, name: str) -> list[Record]:
        """Every record of a small query (still paged)."""
        return self.fetch_all(q, name=name)

    def fetch_all(self, q: str, *, name: str, progress: RmaProgress | None = None) -> list[Record]:
        """Every record of query ``q`` (called ``name`` in messages), in id order.

        The first page gives ``total_rows``; the others are fetched concurrently and must fit:
        each exactly as long as planned, with the same total, and no id seen twice.
        """
        cancel = threading.Event()
        first = self._page(q, name, 0, self.page_size, progress, cancel)
        total = first.total_rows
        if total > MAX_TOTAL_ROWS:
            raise RmaError(f"the {name} query announces {total} rows, more than this dataset can have", query=name, hint=_HINT)
        if first.start_row != 0:
            raise RmaError(f"the {name} query's first page starts at row {first.start_row}, not 0", query=name, hint=_HINT)
        if first.num_rows == 0 and total > 0:
            raise RmaError(
                f"the {name} query's first page holds zero rows of {total}; paging would never end",
                query=name,
                hint=_HINT,
            )
        # A server may cap pages below what we ask: then its first page's length is the page size.
        size = first.num_rows if first.num_rows < min(self.page_size, total) else self.page_size
        if progress is not None:
            progress.rows(name, first.num_rows, total)
        starts = range(first.num_rows, total, size)
        if len(starts) > MAX_PAGES:
            raise RmaError(
                f"the {name} query would take {len(starts) + 1} pages of {size} rows; the server's pages are too small",
                query=name,
                hint=_HINT,
            )
        pages: dict[int, Page] = {0: first}
        done = first.num_rows
        if starts:
            pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(starts)), thread_name_prefix=f"rma-{name}")
            try:
                futures: dict[Future[Page], int] = {
                    pool.submit(self._page, q, name, start, size, progress, cancel): start for start in starts
                }
                pending = set(futures)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for future in finished:
                        start = futures[future]
                        page = future.result()  # raises the page's error: the query fails
                        self._check_page(page, name, start, min(size, total - start), total)
                        pages[start] = page
                        done += page.num_rows
                        if progress is not None:
                            progress.rows(name, done, total)
            except BaseException:
                # Pages still queued are dropped; pages in flight stop at their next attempt.
                cancel.set()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
            pool.shutdown(wait=True)
        return self._assemble(pages, name, total)

    # -- internals ------------------------------------------------------------------------------

    def _check_page(self, page: Page, name: str, start: int, expected: int, total: int) -> None:
        if page.start_row != start:
            raise RmaError(
                f"the {name} query was asked for row {start} and answered from row {page.start_row}", query=name, hint=_HINT
            )
        if page.total_rows != total:
            raise RmaError(
                f"the {name} query's total_rows changed from {total} to {page.total_rows} between pages "
                "(the table changed while it was read)",
                query=name,
                hint="run the command again; if it persists, " + _HINT,
            )
        if page.num_rows == 0:
            raise RmaError(
                f"the {name} query answered a page of zero rows at row {start} of {total}; paging would never end",
                query=name,
                hint=_HINT,
            )
        if page.num_rows != expected:
            raise RmaError(
                f"the {name} query's page at row {start} holds {page.num_rows} rows, not the {expected} expected "
                "(a short table would follow)",
                query=name,
                hint=_HINT,
            )

    def _assemble(self, pages: dict[int, Page], name: str, total: int) -> list[Record]:
        records: list[Record] = []
        seen: set[int] = set()
        for start in sorted(pages):
            for record in pages[start].records:
                rid = record_id(record)  # never None: parse_envelope checked every id
                if rid in seen:
                    raise RmaError(f"the {name} query lists id {rid} on two pages (the pages overlap)", query=name, hint=_HINT)
                if rid is not None:
                    seen.add(rid)
                records.append(record)
        if len(records) != total:
            raise RmaError(f"the {name} query gave {len(records)} records of the {total} announced", query=name, hint=_HINT)
        return records

    def _timeout(self) -> httpx.Timeout:
        """The client's timeouts, each cut to ``page_timeout``."""
        base = self.client.timeout
        limit = self.page_timeout

        def cut(value: float | None) -> float:
            return limit if value is None else min(value, limit)

        return httpx.Timeout(connect=cut(base.connect), read=cut(base.read), write=cut(base.write), pool=cut(base.pool))

    def _page(
        self, q: str, name: str, start: int, rows: int, progress: RmaProgress | None, cancel: threading.Event
    ) -> Page:
        url = query_url(self.base_url, q, start, rows)
        what = f"the RMA query {name!r}"
        timeout = self._timeout()

        def attempt() -> Page:
            if cancel.is_set():
                raise _Cancelled(f"the {name} query was given up")
            deadline = time.monotonic() + self.page_timeout
            with self.client.stream("GET", url, timeout=timeout) as response:
                status = response.status_code
                if status in TRANSIENT_STATUSES:
                    raise_for_status(response, what=what)  # a TransientError, with any Retry-After
                body = read_body(response, max_bytes=self.max_bytes, deadline=deadline)
            if 200 <= status < 300:
                refusal = _refusal(body) if start > 0 else None
                if refusal is not None:
                    # The same query's first page was answered, so the query is sound: a later
                    # page refused is the server's trouble (a database timeout), worth retrying.
                    raise TransientError(f"refused the page at row {start}: {refusal}", url=url)
                return parse_envelope(body, query_name=name)
            # AllenSDK ignores the status, and a refused query comes with an error envelope:
            # its message says more than the status does.
            refusal = _refusal(body)
            if refusal is not None:
                raise RmaError(f"the warehouse refused the {name} query (HTTP {status}): {refusal}", query=name)
            raise SourceError(f"{what} ({url}) answered HTTP {status}", hint=_HINT)

        def on_retry(notice: RetryNotice) -> None:
            if progress is not None:
                progress.retry(name, notice)

        # By default a backoff wait ends early when the query is given up, so no worker
        # thread outlives a failed query by a long Retry-After.
        sleep = self.sleep if self.sleep is not None else cancel.wait
        return call_with_retries(
            attempt, policy=self.policy, url=url, what=what, hint=_UNREACHABLE_HINT, sleep=sleep, on_retry=on_retry
        )
