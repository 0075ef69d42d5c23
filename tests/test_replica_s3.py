"""The S3 mirror: ETags by the multipart rule, and ListObjectsV2 paging, prefixes and delimiters."""

from __future__ import annotations

import hashlib
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from replica_fixtures import PREFIX, TinyDataset, build_dataset

from ecephys_dl.replica import Dataset, Replica
from ecephys_dl.replica.s3 import S3Error, list_objects_v2, s3_etag
from ecephys_dl.replica.store import ObjectInfo

pytestmark = pytest.mark.timeout(60)

NS = {"s3": "http://s3.amazonaws.com/doc/2006-03-01/"}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    return build_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def served(tiny: TinyDataset) -> Iterator[Replica]:
    with Replica(tiny.directory) as replica:
        yield replica


@pytest.fixture(scope="module")
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        yield http


@dataclass(frozen=True)
class Page:
    """One parsed ListObjectsV2 answer."""

    keys: list[str]
    etags: dict[str, str]
    sizes: dict[str, int]
    prefixes: list[str]
    truncated: bool
    token: str | None
    key_count: int
    max_keys: int
    root: ET.Element


def _parse(body: bytes) -> Page:
    root = ET.fromstring(body)
    contents = root.findall("s3:Contents", NS)
    keys = [c.findtext("s3:Key", namespaces=NS) or "" for c in contents]
    return Page(
        keys=keys,
        etags={k: c.findtext("s3:ETag", namespaces=NS) or "" for k, c in zip(keys, contents, strict=False)},
        sizes={k: int(c.findtext("s3:Size", namespaces=NS) or -1) for k, c in zip(keys, contents, strict=False)},
        prefixes=[p.findtext("s3:Prefix", namespaces=NS) or "" for p in root.findall("s3:CommonPrefixes", NS)],
        truncated=root.findtext("s3:IsTruncated", namespaces=NS) == "true",
        token=root.findtext("s3:NextContinuationToken", namespaces=NS),
        key_count=int(root.findtext("s3:KeyCount", namespaces=NS) or -1),
        max_keys=int(root.findtext("s3:MaxKeys", namespaces=NS) or -1),
        root=root,
    )


def _list_all(client: httpx.Client, url: str, **params: str) -> tuple[list[str], list[str], int]:
    """Follow continuation tokens to the end: (keys, common prefixes, number of pages)."""
    keys: list[str] = []
    prefixes: list[str] = []
    token: str | None = None
    pages = 0
    while True:
        query = {"list-type": "2", **params, **({"continuation-token": token} if token else {})}
        response = client.get(url, params=query)
        assert response.status_code == 200, response.text
        page = _parse(response.content)
        pages += 1
        assert page.key_count == len(page.keys) + len(page.prefixes)
        if token is not None:
            assert page.root.findtext("s3:ContinuationToken", namespaces=NS) == token
        keys += page.keys
        prefixes += page.prefixes
        if not page.truncated:
            assert page.token is None
            return keys, prefixes, pages
        assert page.token
        token = page.token
        assert pages < 100, "the listing never ends"


# -- ETags -------------------------------------------------------------------------------------


def _multipart_etag(data: bytes, part_size: int) -> str:
    """The S3 rule written independently: MD5 of the concatenated part MD5s, then -N."""
    parts = [data[i : i + part_size] for i in range(0, len(data), part_size)]
    if len(parts) <= 1:
        return '"' + hashlib.md5(data).hexdigest() + '"'
    joined = b"".join(hashlib.md5(part).digest() for part in parts)
    return f'"{hashlib.md5(joined).hexdigest()}-{len(parts)}"'


@pytest.mark.parametrize("size", [0, 1, 999, 1000, 1001, 2000, 2001, 5500])
def test_s3_etag_rule(tmp_path: Path, size: int) -> None:
    """One part (size <= part_size) gives the quoted MD5; more give the MD5 of part MD5s and -N."""
    data = bytes((i * 7 + size) % 251 for i in range(size))
    path = tmp_path / "object"
    path.write_bytes(data)
    etag = s3_etag(path, 1000)
    assert etag == _multipart_etag(data, 1000)
    if size <= 1000:
        assert etag == f'"{hashlib.md5(data).hexdigest()}"'
    else:
        assert etag.endswith(f'-{-(-size // 1000)}"')


def test_served_etags(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """Objects and listing carry the same ETag, matching the rule recomputed from the bytes."""
    listing = _parse(client.get(served.s3_url, params={"list-type": "2"}).content)
    for key, data in tiny.contents.items():
        expected = _multipart_etag(data, tiny.part_size)
        assert listing.etags[key] == expected
        assert listing.sizes[key] == len(data)
        assert client.head(f"{served.s3_url}/{key}").headers["etag"] == expected
    assert listing.etags[tiny.big_key].endswith('-3"')
    assert "-" not in listing.etags[tiny.exact_key]  # exactly one part


# -- listing -----------------------------------------------------------------------------------


def test_listing_whole_bucket(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """Without options: every key once, in UTF-8 byte order, with AWS's document shape."""
    response = client.get(served.s3_url + "/", params={"list-type": "2"})
    assert response.headers["content-type"] == "application/xml"
    assert response.content.startswith(
        b'<?xml version="1.0" encoding="UTF-8"?>\n<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    )
    page = _parse(response.content)
    assert page.keys == sorted(tiny.contents, key=lambda k: k.encode("utf-8"))
    assert not page.truncated and page.max_keys == 1000 and page.key_count == len(tiny.contents)
    assert page.root.findtext("s3:Name", namespaces=NS) == "allen-brain-observatory"
    first = page.root.find("s3:Contents", NS)
    assert first is not None
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", first.findtext("s3:LastModified", namespaces=NS) or "")
    assert first.findtext("s3:StorageClass", namespaces=NS) == "STANDARD"
    # AWS escapes the quotes of ETags, and keys are escaped as XML.
    assert b"<ETag>&quot;" in response.content
    assert b"odd &amp; &lt;name&gt; &quot;q&quot;" in response.content
    assert tiny.odd_key in page.keys


@pytest.mark.parametrize("max_keys", [1, 2, 3, 1000])
def test_listing_pages(served: Replica, tiny: TinyDataset, client: httpx.Client, max_keys: int) -> None:
    """Paging by continuation token returns every key exactly once, max-keys at a time."""
    keys, prefixes, pages = _list_all(client, served.s3_url, **{"max-keys": str(max_keys)})
    assert keys == sorted(tiny.contents, key=lambda k: k.encode("utf-8")) and prefixes == []
    assert pages == -(-len(tiny.contents) // max_keys)


def test_listing_prefix(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """A prefix keeps only the keys that start with it."""
    keys, _, _ = _list_all(client, served.s3_url, prefix=PREFIX + "session_1001/", **{"max-keys": "1"})
    assert keys == [PREFIX + "session_1001/probe_2001_lfp.nwb", PREFIX + "session_1001/session_1001.nwb"]
    keys, _, _ = _list_all(client, served.s3_url, prefix=PREFIX)
    assert "other/readme.txt" not in keys and len(keys) == len(tiny.contents) - 1
    assert _list_all(client, served.s3_url, prefix="nothing/")[0] == []


@pytest.mark.parametrize("max_keys", [1, 2, 1000])
def test_listing_delimiter(served: Replica, client: httpx.Client, max_keys: int) -> None:
    """With a delimiter, deeper keys roll up into common prefixes, each listed once across pages."""
    keys, prefixes, _ = _list_all(client, served.s3_url, prefix=PREFIX, delimiter="/", **{"max-keys": str(max_keys)})
    assert keys == [PREFIX + "manifest.json", PREFIX + 'odd & <name> "q" é+.json', PREFIX + "sessions.csv"]
    assert prefixes == [PREFIX + "natural_scene_templates/", PREFIX + "session_1001/", PREFIX + "session_1002/"]
    top_keys, top_prefixes, _ = _list_all(client, served.s3_url, delimiter="/")
    assert top_keys == [] and top_prefixes == ["other/", "visual-coding-neuropixels/"]


def test_listing_start_after(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """start-after lists only the keys after it."""
    ordered = sorted(tiny.contents, key=lambda k: k.encode("utf-8"))
    keys, _, _ = _list_all(client, served.s3_url, **{"start-after": ordered[2]})
    assert keys == ordered[3:]


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"list-type": "2", "continuation-token": "bm90IGEgdG9rZW4="}, "InvalidArgument"),  # not ours
        ({"list-type": "2", "continuation-token": "%%%"}, "InvalidArgument"),
        ({"list-type": "2", "max-keys": "many"}, "InvalidArgument"),
        ({"list-type": "2", "max-keys": "-1"}, "InvalidArgument"),
        ({"list-type": "2", "encoding-type": "base64"}, "InvalidArgument"),
        ({}, "InvalidArgument"),  # ListObjects V1
        ({"list-type": "1"}, "InvalidArgument"),
    ],
)
def test_listing_errors(served: Replica, client: httpx.Client, params: dict[str, str], code: str) -> None:
    """Bad listing requests answer 400 with an S3 error document."""
    response = client.get(served.s3_url, params=params)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/xml"
    root = ET.fromstring(response.content)
    assert root.tag == "Error" and root.findtext("Code") == code and root.findtext("Message")


def test_listing_url_encoding(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """encoding-type=url percent-encodes keys, which then decode to the real keys."""
    from urllib.parse import unquote_plus

    page = _parse(client.get(served.s3_url, params={"list-type": "2", "encoding-type": "url"}).content)
    assert sorted(unquote_plus(k) for k in page.keys) == sorted(tiny.contents)
    assert all(" " not in k and "&" not in k for k in page.keys)


def _synthetic(n: int) -> list[ObjectInfo]:
    when = datetime(2019, 10, 3, tzinfo=UTC)
    return [ObjectInfo(f"k/{i:05d}", Path("/nonexistent"), i, "0" * 32, f'"{i:032x}"', when) for i in range(n)]


def test_list_objects_caps_max_keys() -> None:
    """max-keys above 1000 is capped at 1000, and 2500 keys come in pages of 1000, 1000, 500."""
    objects = _synthetic(2500)
    seen: list[str] = []
    token: str | None = None
    sizes = []
    while True:
        params = {"list-type": "2", "max-keys": "5000", **({"continuation-token": token} if token else {})}
        page = _parse(list_objects_v2("b", objects, params))
        assert page.max_keys == 1000
        sizes.append(len(page.keys))
        seen += page.keys
        if not page.truncated:
            break
        token = page.token
    assert sizes == [1000, 1000, 500] and seen == [o.key for o in objects]


def test_list_objects_zero_keys() -> None:
    """max-keys=0 lists nothing and is not truncated (so a client cannot loop on it)."""
    page = _parse(list_objects_v2("b", _synthetic(3), {"list-type": "2", "max-keys": "0"}))
    assert page.keys == [] and not page.truncated and page.key_count == 0


def test_s3_error_is_an_exception() -> None:
    """S3Error carries its status and renders the AWS error document."""
    with pytest.raises(S3Error) as info:
        list_objects_v2("b", [], {"list-type": "2", "continuation-token": "x"})
    assert info.value.status == 400
    assert b"<Code>InvalidArgument</Code>" in info.value.xml()
    assert "continuation token" in str(info.value)


def test_listing_reflects_dataset(tiny: TinyDataset) -> None:
    """The listing and the dataset index agree on every key, size and ETag."""
    dataset = Dataset.open(tiny.directory)
    page = _parse(list_objects_v2(dataset.bucket, dataset.objects, {"list-type": "2"}))
    assert page.keys == [o.key for o in dataset.objects]
    assert page.etags == {o.key: o.etag for o in dataset.objects}
