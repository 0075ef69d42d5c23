"""The S3 client: listings that page to the end and never loop, small reads that are the bucket's
bytes or an error, and a listing parser that lets nothing but SourceError escape.

End-to-end cases run over real HTTP against the replica's S3 mirror; a listing whose token comes
back (which the replica never sends) comes from a scripted ``httpx.MockTransport`` server.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import FAST, Sleeps

from ecephys_dl.errors import SourceError, SourceUnreachable
from ecephys_dl.replica import Fault, Replica
from ecephys_dl.s3 import PREFIX, S3Client, S3Object, parse_listing

pytestmark = pytest.mark.timeout(60)

CSV = PREFIX + "sessions.csv"
NS = "http://s3.amazonaws.com/doc/2006-03-01/"


def _index(dataset_dir: Path) -> dict[str, Any]:
    index: dict[str, Any] = json.loads((dataset_dir / "dataset.json").read_text())
    return index


def _listing(entries: str, *, truncated: str = "false", token: str | None = None, ns: bool = True) -> bytes:
    xmlns = f' xmlns="{NS}"' if ns else ""
    next_token = f"<NextContinuationToken>{escape(token)}</NextContinuationToken>" if token is not None else ""
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult{xmlns}><Name>b</Name><Prefix></Prefix>'
        f"{next_token}<IsTruncated>{truncated}</IsTruncated>{entries}</ListBucketResult>"
    ).encode()


def _entry(key: str = "k", size: str = "5", etag: str = '"0123456789abcdef0123456789abcdef"', modified: str = "2019-10-31T00:00:00.000Z") -> str:
    return (
        f"<Contents><Key>{escape(key)}</Key><LastModified>{escape(modified)}</LastModified>"
        f"<ETag>{escape(etag)}</ETag><Size>{escape(size)}</Size><StorageClass>STANDARD</StorageClass></Contents>"
    )


# -- over real HTTP ----------------------------------------------------------------------------


def test_listing_pages_through_the_whole_bucket(replica: Replica, dataset_dir: Path, client: httpx.Client) -> None:
    """Small pages (max-keys 7) list every object once, with the index's size and ETag, in several requests."""
    s3 = S3Client(replica.s3_url, client=client, policy=FAST, sleep=Sleeps(), max_keys=7)
    objects = s3.list()
    index = _index(dataset_dir)["objects"]
    assert {o.key: (o.size, o.etag) for o in objects} == {k: (v["size"], v["etag"]) for k, v in index.items()}
    assert len(objects) == len(index)
    log = replica.wait_requests(-(-len(index) // 7))
    assert len(log) == -(-len(index) // 7) and all("max-keys=7" in r["path"] for r in log)
    for item in objects:
        assert item.md5 == (index[item.key]["md5"] if "-" not in item.etag else None)


def test_listing_retries_a_503(dataset_dir: Path, client: httpx.Client) -> None:
    """A 503 on a listing page is retried and the listing completes."""
    with Replica(dataset_dir, faults=[Fault.parse("error:status=503,times=1")]) as replica:
        sleeps = Sleeps()
        objects = S3Client(replica.s3_url, client=client, policy=FAST, sleep=sleeps, max_keys=10).list()
    assert len(objects) == len(_index(dataset_dir)["objects"]) and len(sleeps) == 1


def test_get_bytes_is_the_bucket_file(replica: Replica, dataset_dir: Path, client: httpx.Client) -> None:
    """A small object's bytes are exactly the file in the bucket."""
    s3 = S3Client(replica.s3_url, client=client, policy=FAST, sleep=Sleeps())
    for key in (CSV, PREFIX + "manifest.json"):
        assert s3.get_bytes(key, max_bytes=10 * 1024**2) == (dataset_dir / "bucket" / key).read_bytes()


def test_an_html_page_in_place_of_a_csv_is_refused(dataset_dir: Path, client: httpx.Client) -> None:
    """A 200 with an HTML error page for a CSV is a SourceError, not the file (and not retried)."""
    with Replica(dataset_dir, faults=[Fault.parse("html:paths=*.csv")]) as replica:
        sleeps = Sleeps()
        with pytest.raises(SourceError, match="HTML") as caught:
            S3Client(replica.s3_url, client=client, policy=FAST, sleep=sleeps).get_bytes(CSV, max_bytes=10**7)
    assert not isinstance(caught.value, SourceUnreachable) and sleeps == []


def test_a_missing_key_is_an_error_with_the_s3_code(replica: Replica, client: httpx.Client) -> None:
    """A 404 names the key and S3's error code, and is not retried."""
    sleeps = Sleeps()
    with pytest.raises(SourceError, match="NoSuchKey") as caught:
        S3Client(replica.s3_url, client=client, policy=FAST, sleep=sleeps).get_bytes(PREFIX + "nope.csv", max_bytes=1000)
    assert "nope.csv" in caught.value.message and "404" in caught.value.message and sleeps == []


def test_a_body_over_max_bytes_is_refused(replica: Replica, client: httpx.Client) -> None:
    """An object longer than max_bytes is refused rather than read."""
    with pytest.raises(SourceError, match="more than the 100"):
        S3Client(replica.s3_url, client=client, policy=FAST, sleep=Sleeps()).get_bytes(CSV, max_bytes=100)


def test_a_short_body_is_retried(dataset_dir: Path, client: httpx.Client) -> None:
    """A body cut short of its Content-Length is a transient failure: the retry gets the whole file."""
    with Replica(dataset_dir, faults=[Fault.parse("short:bytes=50,times=1")]) as replica:
        sleeps = Sleeps()
        body = S3Client(replica.s3_url, client=client, policy=FAST, sleep=sleeps).get_bytes(CSV, max_bytes=10**7)
    assert body == (dataset_dir / "bucket" / CSV).read_bytes() and len(sleeps) == 1


def test_object_urls_are_encoded_and_dot_segments_refused() -> None:
    """Keys are percent-encoded segment by segment; keys that a normaliser would rewrite are refused."""
    with httpx.Client() as http:
        s3 = S3Client("http://127.0.0.1:1/bucket/", client=http)
        assert s3.object_url("a b/c+d?é#.csv") == "http://127.0.0.1:1/bucket/a%20b/c%2Bd%3F%C3%A9%23.csv"
        for key in ("", "a/../b", "./a", "a//b", "/a"):
            with pytest.raises(SourceError):
                s3.object_url(key)


def test_a_repeating_token_is_an_error_not_a_loop() -> None:
    """A server that hands back the same continuation token fails the listing instead of looping."""
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(str(request.url))
        n = len(calls)
        return httpx.Response(200, content=_listing(_entry(key=f"{PREFIX}k{n}"), truncated="true", token="same"))

    with httpx.Client(transport=httpx.MockTransport(handler)) as scripted, pytest.raises(SourceError, match="second time"):
        S3Client("http://s3.invalid/b", client=scripted, policy=FAST, sleep=Sleeps()).list()
    assert len(calls) == 2 and "continuation-token=same" in calls[1]


def test_a_key_listed_twice_is_an_error() -> None:
    """Pages that overlap (a key on two pages) fail the listing."""

    def handler(request: httpx.Request) -> httpx.Response:
        more = "continuation-token" not in str(request.url)
        body = _listing(_entry(key=PREFIX + "k"), truncated="true" if more else "false", token="t" if more else None)
        return httpx.Response(200, content=body)

    with httpx.Client(transport=httpx.MockTransport(handler)) as scripted, pytest.raises(SourceError, match="twice"):
        S3Client("http://s3.invalid/b", client=scripted, policy=FAST, sleep=Sleeps()).list()


# -- the listing parser ------------------------------------------------------------------------


def test_a_listing_parses_with_or_without_namespace() -> None:
    """Entries come back as S3Objects; a plain MD5 ETag gives md5, a multipart one gives None."""
    entries = _entry(key="a", size="0") + _entry(key="b", size="12", etag='"0123456789abcdef0123456789abcdef-3"')
    for ns in (True, False):
        objects, token = parse_listing(_listing(entries, truncated="true", token="tok", ns=ns))
        assert token == "tok"
        assert objects == [
            S3Object("a", 0, '"0123456789abcdef0123456789abcdef"', "2019-10-31T00:00:00.000Z"),
            S3Object("b", 12, '"0123456789abcdef0123456789abcdef-3"', "2019-10-31T00:00:00.000Z"),
        ]
        assert objects[0].md5 == "0123456789abcdef0123456789abcdef" and objects[1].md5 is None
    assert parse_listing(_listing(""))[1] is None


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b"not xml", "not XML"),
        (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><ListBucketResult/>', "DOCTYPE"),
        (b"<ListBucketResult><IsTruncated>false</IsTruncated>&lol;</ListBucketResult>", "not XML"),
        (b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>", "AccessDenied"),
        (b"<Other/>", "not a <ListBucketResult>"),
        (_listing("").replace(b"<IsTruncated>false</IsTruncated>", b""), "IsTruncated"),
        (_listing("", truncated="maybe"), "IsTruncated"),
        (_listing("", truncated="true"), "NextContinuationToken"),
        (_listing(_entry(size="-1")), "non-negative integer"),
        (_listing(_entry(size="1.5")), "non-negative integer"),
        (_listing(_entry(size="+3")), "non-negative integer"),
        (_listing(_entry().replace("<ETag>", "<Etag>").replace("</ETag>", "</Etag>")), "ETag"),
        (_listing(_entry(key="")), "Key"),
    ],
)
def test_malformed_listings_are_source_errors(body: bytes, words: str) -> None:
    """Each malformed listing is a SourceError saying what is wrong."""
    with pytest.raises(SourceError, match=words):
        parse_listing(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_only_ever_give_source_errors(body: bytes) -> None:
    """Whatever bytes arrive, the parser returns a listing or raises SourceError: nothing else escapes."""
    try:
        parse_listing(body)
    except SourceError:
        pass


_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(_text, _text, _text, _text), max_size=4),
    st.sampled_from(["true", "false", "True", "", "x"]),
    st.one_of(st.none(), _text),
    st.booleans(),
)
def test_near_valid_listings_parse_consistently_or_fail_cleanly(
    entries: list[tuple[str, str, str, str]], truncated: str, token: str | None, ns: bool
) -> None:
    """Listings with arbitrary field text give objects with non-negative sizes and a token when truncated, or SourceError."""
    xml_chars = [e for e in entries if all(c.isprintable() for field in e for c in field)]
    body = _listing("".join(_entry(*e) for e in xml_chars), truncated=truncated, token=token, ns=ns)
    try:
        objects, next_token = parse_listing(body)
    except SourceError:
        return
    assert all(o.size >= 0 and o.key and o.etag for o in objects)
    assert (next_token is not None) == (truncated.lower() == "true")
