"""Every parser of what a server or a user sends, fed anything: it answers, or raises the tool's own error.

Property-based (hypothesis): ``Content-Range`` and ``Content-Length``, RMA envelopes and record
ids, ListObjectsV2 XML, S3 keys, download links and redirects, size and duration strings,
shard specs, the records kept in the cache and bodies compressed by the server. None of them
may raise anything but an :class:`~ecephys_dl.errors.EcephysDlError` subclass (pure helpers may
answer None instead), and what they accept must satisfy what the callers rely on.
"""

from __future__ import annotations

import gzip
import json
import math
import re
import zlib
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecephys_dl.answers import _content_range
from ecephys_dl.bodies import content_length, read_body
from ecephys_dl.errors import EcephysDlError, RmaError, SourceError, UsageError
from ecephys_dl.mirror import check_s3_key
from ecephys_dl.records import FileRecord, safe_relative
from ecephys_dl.redirects import check_redirect
from ecephys_dl.rma import parse_envelope, record_id
from ecephys_dl.s3 import parse_listing
from ecephys_dl.shards import parse_shard
from ecephys_dl.sizes import parse_duration, parse_size
from ecephys_dl.warehouse import DOWNLOAD_PATH, _download_url

pytestmark = pytest.mark.timeout(120)

SOME = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

URL = "http://files.test/x.nwb"
PRINTABLE = st.characters(min_codepoint=32, max_codepoint=126)
# Numbers as a hostile server writes them: small, at the edges, huge, with thousands of digits.
NUMBER_TEXT = st.one_of(
    st.integers(min_value=0, max_value=2**70).map(str),
    st.sampled_from(["", "-1", "+5", "0x10", "1e3", "1.0", " 7", "²", "٣", "9" * 25, "9" * 5000]),
)


def _response(status: int, headers: dict[str, str], body: bytes = b"") -> httpx.Response:
    """An answer as it comes off the wire: header values are bytes, whatever their encoding."""

    class Once(httpx.SyncByteStream):
        def __iter__(self) -> Iterator[bytes]:
            yield body

    raw = {name: value.encode("utf-8", "surrogatepass") for name, value in headers.items()}
    return httpx.Response(status, headers=raw, stream=Once(), request=httpx.Request("GET", URL))


# -- Content-Range and Content-Length ----------------------------------------------------------------

content_ranges = st.one_of(
    st.text(PRINTABLE, max_size=60),
    st.builds(lambda unit, a, b, c: f"{unit} {a}-{b}/{c}", st.sampled_from(["bytes", "BYTES", "items", ""]),
              NUMBER_TEXT, NUMBER_TEXT, st.one_of(NUMBER_TEXT, st.just("*"))),  # fmt: skip
)


@SOME
@given(
    header=content_ranges,
    first=st.integers(min_value=0, max_value=2**64),
    span=st.one_of(st.none(), st.integers(min_value=1, max_value=2**40)),
    size=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64)),
)
def test_content_range_is_usable_or_a_source_error(header: str, first: int, span: int | None, size: int | None) -> None:
    """A Content-Range is either exactly the range asked for, of the expected total, or refused."""
    end = None if span is None else first + span
    try:
        start, last, total = _content_range(_response(206, {"Content-Range": header}), URL, first, end, size)
    except SourceError:
        return
    assert start == first and start <= last < total
    assert end is None or last <= end - 1
    assert size is None or total == size


@SOME
@given(NUMBER_TEXT)
def test_content_length_is_a_number_or_none(text: str) -> None:
    """Content-Length is a plain number of bytes, or unknown: never an exception."""
    value = content_length(_response(200, {"Content-Length": text}))
    assert value is None or (isinstance(value, int) and 0 <= value < 2**64)
    if value is not None:
        assert str(value) == text.strip().lstrip("0") or value == 0


# -- RMA envelopes -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
              st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=20)),  # fmt: skip
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)),
    max_leaves=20,
)
ids = st.one_of(json_values, st.integers(min_value=-5, max_value=2**65), st.sampled_from(["1/../../x", "007", "12", "9" * 5000]))
records = st.lists(st.one_of(st.fixed_dictionaries({"id": ids}, optional={"attachable_id": ids, "download_link": json_values}),
                             json_values), max_size=5)  # fmt: skip
envelopes = st.fixed_dictionaries(
    {},
    optional={
        "success": st.one_of(st.just(True), json_values),
        "start_row": st.one_of(st.integers(min_value=-2, max_value=10), json_values),
        "num_rows": st.one_of(st.integers(min_value=-2, max_value=10), json_values),
        "total_rows": st.one_of(st.integers(min_value=-2, max_value=20), json_values),
        "msg": st.one_of(records, json_values),
    },
)


def _json(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@SOME
@given(st.one_of(envelopes.map(_json), json_values.map(_json), st.binary(max_size=200)))
def test_rma_envelopes_parse_or_name_the_query(body: bytes) -> None:
    """Any body is a checked page or an RmaError naming the query; a page's counts fit its records."""
    try:
        page = parse_envelope(body, query_name="probes")
    except RmaError as error:
        assert "probes" in str(error)
        return
    assert page.num_rows == len(page.records) and page.start_row + page.num_rows <= page.total_rows
    found = [record_id(r) for r in page.records]
    assert all(i is not None and i >= 0 for i in found) and len(set(found)) == len(found)


@SOME
@given(ids)
def test_record_ids_are_non_negative_integers_or_none(value: object) -> None:
    found = record_id({"id": value})
    assert found is None or (isinstance(found, int) and not isinstance(found, bool) and 0 <= found < 2**63)


# -- ListObjectsV2 and keys --------------------------------------------------------------------------

xml_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


listings = st.builds(
    lambda truncated, token, entries: (
        '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<IsTruncated>{_escape(truncated)}</IsTruncated>"
        + (f"<NextContinuationToken>{_escape(token)}</NextContinuationToken>" if token is not None else "")
        + "".join(
            "<Contents>" + "".join(f"<{k}>{_escape(v)}</{k}>" for k, v in entry.items()) + "</Contents>" for entry in entries
        )
        + "</ListBucketResult>"
    ).encode("utf-8", "surrogatepass"),
    st.sampled_from(["true", "false", "TRUE", "maybe", ""]),
    st.one_of(st.none(), xml_text),
    st.lists(st.fixed_dictionaries({}, optional={"Key": xml_text, "Size": NUMBER_TEXT, "ETag": xml_text, "LastModified": xml_text}), max_size=4),
)


@SOME
@given(st.one_of(listings, st.binary(max_size=300), xml_text.map(lambda t: t.encode("utf-8", "surrogatepass"))))
def test_listings_parse_or_are_source_errors(body: bytes) -> None:
    """Any body is a listing of well-formed entries, or a SourceError."""
    try:
        objects, token = parse_listing(body)
    except SourceError:
        return
    for item in objects:
        assert item.key.strip() and 0 <= item.size < 2**64 and item.etag and item.last_modified
    assert token is None or token


keys = st.one_of(
    st.text(max_size=40),
    st.builds(lambda parts: "/".join(parts), st.lists(st.sampled_from(
        ["session_1", "session_01", "session_2", "session_1.nwb", "probe_3_lfp.nwb", "..", ".", "", "x.csv", "session_1x",
         "session_\u0663", "a\\b", "\x00", "session_1.nwb\n", "SESSION_1", "probe_3_lfp.NWB"]), min_size=1, max_size=4)),  # fmt: skip
)


@SOME
@given(keys)
def test_s3_keys_are_data_files_by_their_exact_form_or_refused(rest: str) -> None:
    """A key gives ids only when it is exactly one of the two data-file forms, rebuilt from those ids."""
    try:
        ids = check_s3_key(rest, "prefix/" + rest)
    except SourceError as error:
        assert "malformed key" in str(error)
        return
    if ids is None:
        return
    session, probe = ids
    assert session > 0 and (probe is None or probe > 0)
    expected = f"session_{session}/session_{session}.nwb" if probe is None else f"session_{session}/probe_{probe}_lfp.nwb"
    assert rest == expected


# -- links and redirects -----------------------------------------------------------------------------

links = st.one_of(
    st.text(max_size=60),
    st.builds(lambda a, b: a + b, st.sampled_from(["/api/v2/well_known_file_download/", "http://127.0.0.1:8080/api/v2/well_known_file_download/",
                                                    "http://evil.test/api/v2/well_known_file_download/", "//evil.test/", "file:///", "https://127.0.0.1:8080/"]),
              st.text(max_size=20)),  # fmt: skip
    json_values,
)


@SOME
@given(links, st.sampled_from([(), ("mirror.test",), ("evil.test:80",)]))
def test_download_links_stay_on_the_warehouse(link: object, allowed: tuple[str, ...]) -> None:
    """A link is refused, or leads to the warehouse's own download path, or to an allowed host over HTTP(S)."""
    base = "http://127.0.0.1:8080"
    try:
        url = _download_url(base, link, "session NWB files", allowed)
    except SourceError:
        return
    parsed = httpx.URL(url)
    if parsed.host == "127.0.0.1" and parsed.port == 8080 and parsed.scheme == "http":
        assert DOWNLOAD_PATH.fullmatch(parsed.path) and not parsed.query
    else:
        assert parsed.scheme in ("http", "https") and f"{parsed.host}:{parsed.port or 80}" in {"mirror.test:80", "evil.test:80"}


@SOME
@given(st.one_of(st.none(), st.text(max_size=60), links.filter(lambda v: isinstance(v, str))))
def test_redirects_stay_on_the_host(location: str | None) -> None:
    """A redirect is followed only to HTTP(S) on the same host (never down from HTTPS), else refused."""
    origin = httpx.URL("https://api.example.org/api/v2/well_known_file_download/1")
    try:
        target = check_redirect(location, origin, origin)
    except SourceError:
        return
    assert target.scheme == "https" and target.host == "api.example.org"


# -- what users type -----------------------------------------------------------------------------------

user_text = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"\s*[0-9]{0,400}(\.[0-9]*)?\s*([kKmMgGtT]i?[bB]?|ms|s|m|h|d)?\s*", fullmatch=True),
)


@SOME
@given(st.one_of(user_text, st.none(), st.integers(), st.floats()))
def test_sizes_parse_or_are_usage_errors(text: object) -> None:
    try:
        value = parse_size(text)  # type: ignore[arg-type]
    except UsageError:
        return
    assert isinstance(value, int) and 0 <= value <= 2**63 - 1


@SOME
@given(st.one_of(user_text, st.none(), st.integers()))
def test_durations_parse_or_are_usage_errors(text: object) -> None:
    try:
        value = parse_duration(text)  # type: ignore[arg-type]
    except UsageError:
        return
    assert isinstance(value, float) and math.isfinite(value) and value >= 0


@SOME
@given(st.one_of(st.text(max_size=20), st.from_regex(r"\s*[0-9]{1,8}\s*/\s*[0-9]{1,8}\s*", fullmatch=True), st.none()))
def test_shards_parse_or_are_usage_errors(text: object) -> None:
    try:
        k, n = parse_shard(text)  # type: ignore[arg-type]
    except UsageError:
        return
    assert 1 <= k <= n


# -- local state -------------------------------------------------------------------------------------

record_dicts = st.fixed_dictionaries(
    {},
    optional={
        "version": st.one_of(st.just(1), json_values),
        "path": st.one_of(keys, json_values),
        "size": st.one_of(st.integers(min_value=-1, max_value=2**64), json_values),
        "sha256": st.one_of(st.just("a" * 64), json_values),
        "md5": json_values,
        "source_url": json_values,
        "extra": json_values,
        "unknown": json_values,
    },
)


@SOME
@given(st.one_of(record_dicts.map(_json), st.binary(max_size=100)))
def test_records_are_sound_or_ignored(data: bytes) -> None:
    """A record read from the cache is sound (a safe path, a size, a hash) or None: never an exception."""
    record = FileRecord.from_json(data)
    if record is None:
        return
    assert safe_relative(record.path) and ".." not in record.path.split("/")
    assert isinstance(record.size, int) and record.size >= 0 and len(record.sha256) == 64


# -- compressed bodies -------------------------------------------------------------------------------


@FEW
@given(
    st.one_of(
        st.binary(max_size=300),
        st.binary(max_size=5000).map(gzip.compress),
        st.binary(max_size=5000).map(zlib.compress),
        st.integers(min_value=0, max_value=64 * 1024).map(lambda n: gzip.compress(bytes(n)) * 3),
    ),
    st.sampled_from(["gzip", "deflate", "x-gzip", "br", "gzip, gzip", "identity"]),
)
def test_compressed_bodies_are_bounded(body: bytes, encoding: str) -> None:
    """A body in any encoding is read within the bound (decompressed), or refused with a SourceError."""
    limit = 4096
    try:
        data = read_body(_response(200, {"Content-Encoding": encoding}, body), max_bytes=limit)
    except SourceError:
        return
    assert len(data) <= limit
    if encoding == "identity":
        assert data == body
    elif encoding in ("gzip", "x-gzip"):
        assert data == gzip.decompress(body)


def test_the_error_tree_is_what_these_tests_accept() -> None:
    """The errors accepted above are the tool's own."""
    for kind in (RmaError, SourceError, UsageError):
        assert issubclass(kind, EcephysDlError)
    assert re.fullmatch(DOWNLOAD_PATH, "/api/v2/well_known_file_download/1")
