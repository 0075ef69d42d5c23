"""`--source dandi`: the DANDI API client, its checks, the path mapping, the published table from
DANDI, and whole fetches against the replica's DANDI archive over loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Run

from ecephys_dl.client import make_client
from ecephys_dl.config import Settings, Source
from ecephys_dl.dandi import DRAFT, DandiClient, DandiPlace, choose_version, parse_asset, place_of
from ecephys_dl.dandisets import dandi_resolver, published_from_dandi, release_sessions
from ecephys_dl.errors import DandiError, SourceError
from ecephys_dl.layout import CacheLayout
from ecephys_dl.published import PublishedFile, load_published, write_published
from ecephys_dl.replica import Replica
from ecephys_dl.replica.dandi import PUBLISHED_VERSION
from ecephys_dl.retry import RetryPolicy
from ecephys_dl.targets import Target, TargetKind

pytestmark = pytest.mark.timeout(240)

BO, FC = "000021", "000022"
SHA = "ab" * 32
ETAG = "0123456789abcdef0123456789abcdef-3"
ASSET = "6d1e4c3a-1f2b-4c5d-8e9f-0a1b2c3d4e5f"
API = "https://api.dandiarchive.org/api"
BLOB = "https://dandiarchive.s3.amazonaws.com/blobs/6d1/e4c/6d1e4c3a-1f2b-4c5d-8e9f-0a1b2c3d4e5f"


# -- pure functions -----------------------------------------------------------------------------

PLACES = [
    # (DANDI path, kind, session, probe, cache path) of paths that map
    ("sub-699733581/sub-699733581_ses-715093703.nwb", TargetKind.SESSION_NWB, 715093703, None, "session_715093703/session_715093703.nwb"),
    ("sub-699733581/sub-699733581_ses-715093703_probe-810755797_ecephys.nwb", TargetKind.LFP_NWB, 715093703, 810755797,
     "session_715093703/probe_810755797_lfp.nwb"),
    ("sub-1/sub-1_ses-2_probe-3_ecephys.nwb", TargetKind.LFP_NWB, 2, 3, "session_2/probe_3_lfp.nwb"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "kind", "session", "probe", "cache_path"), PLACES)
def test_a_release_path_maps_to_its_allensdk_place(path: str, kind: TargetKind, session: int, probe: int | None, cache_path: str) -> None:
    """The mapping reads the ids of the DANDI path and builds the cache path from them alone."""
    place = place_of(path)
    assert (place.kind, place.session_id, place.probe_id, place.cache_path) == (kind, session, probe, cache_path)


REFUSED_PATHS = [
    "sub-1/sub-2_ses-3.nwb",  # two specimens
    "sub-1/sub-1_ses-03.nwb",  # a leading zero
    "sub-1/sub-1_ses-3.nwb/",  # a trailing slash
    "../sub-1/sub-1_ses-3.nwb",  # a parent directory
    "/sub-1/sub-1_ses-3.nwb",  # absolute
    "sub-1/sub-1_ses-3_probe-4.nwb",  # no _ecephys suffix
    "sub-1/sub-1_ses-3_probe-4_ecephys.nwb\n",  # a trailing newline
    "sub-1/sub-1_ses-3_behavior.nwb",  # another kind of file
    "sub-1/sub-1_ses-３.nwb",  # a full-width digit
    "sub-1\\sub-1_ses-3.nwb",  # a backslash
    "sub-1/sub-1_ses-3.NWB",  # another case
    "sub-1/sub-1_ses-12345678901234567890.nwb",  # past an int64
    "",
]


@pytest.mark.parametrize("path", REFUSED_PATHS)
def test_a_path_outside_the_release_layout_is_refused_by_name(path: str) -> None:
    """Anything but the two exact forms is a DandiError quoting the path, on one line."""
    with pytest.raises(DandiError) as refused:
        place_of(path)
    assert repr(path[:300]) in refused.value.message and "\n" not in refused.value.message.replace(repr(path), "")


def _result(**changes: Any) -> dict[str, Any]:
    result: dict[str, Any] = {"asset_id": ASSET, "path": "sub-1/sub-1_ses-2.nwb", "size": 10,
                              "metadata": {"contentSize": 10, "digest": {"dandi:sha2-256": SHA, "dandi:dandi-etag": ETAG},
                                           "contentUrl": [f"{API}/assets/{ASSET}/download/", BLOB]}}  # fmt: skip
    for name, value in changes.items():
        if name in ("sha", "etag"):
            result["metadata"]["digest"]["dandi:sha2-256" if name == "sha" else "dandi:dandi-etag"] = value
        elif name in ("contentUrl", "contentSize"):
            result["metadata"][name] = value
        else:
            result[name] = value
    return result


def test_a_good_asset_is_read_with_both_urls() -> None:
    """Both contentUrls are recognised: the API's download URL and the unsigned blob URL."""
    asset = parse_asset(_result(), BO, API)
    assert (asset.asset_id, asset.size, asset.sha256, asset.dandi_etag) == (ASSET, 10, SHA, ETAG)
    assert (asset.download_url, asset.blob_url) == (f"{API}/assets/{ASSET}/download/", BLOB)
    assert asset.place == DandiPlace(TargetKind.SESSION_NWB, 1, 2, None)


BAD_ASSETS = [
    # (what is wrong, changes, words of the message)
    ("digest too long", {"sha": SHA + "0"}, "64 lowercase hex"),
    ("digest upper case", {"sha": SHA.upper()}, "64 lowercase hex"),
    ("digest missing", {"sha": None}, "64 lowercase hex"),
    ("etag without parts", {"etag": ETAG[:32]}, "dandi-etag"),
    ("size zero", {"size": 0}, "positive integer"),
    ("size a string", {"size": "10"}, "positive integer"),
    ("size a bool", {"size": True}, "positive integer"),
    ("size not contentSize", {"contentSize": 11}, "contentSize"),
    ("asset id not a uuid", {"asset_id": "x"}, "UUID"),
    ("s3 scheme", {"contentUrl": ["s3://dandiarchive/blobs/6d1/e4c/x"]}, "HTTP(S)"),
    ("file scheme", {"contentUrl": ["file:///etc/passwd"]}, "HTTP(S)"),
    ("plain http blob", {"contentUrl": [BLOB.replace("https:", "http:")]}, "plain HTTP"),
    ("another host", {"contentUrl": ["https://evil.example/blobs/6d1/e4c/x"]}, "neither"),
    ("no blob", {"contentUrl": [f"{API}/assets/{ASSET}/download/"]}, "0 blob URLs"),
    ("two blobs", {"contentUrl": [BLOB, BLOB + "0"]}, "2 blob URLs"),
    ("a query on the blob", {"contentUrl": [BLOB + "?X-Amz-Signature=1"]}, "neither"),
    ("another asset's download", {"contentUrl": [f"{API}/assets/{ASSET[:-1]}0/download/", BLOB]}, "neither"),
    ("no list", {"contentUrl": BLOB}, "contentUrl"),
    ("path outside", {"path": "sub-1/../../etc.nwb"}, "outside the release's layout"),
]


@pytest.mark.parametrize(("what", "changes", "words"), BAD_ASSETS, ids=[row[0] for row in BAD_ASSETS])
def test_a_malformed_asset_is_refused_naming_it(what: str, changes: dict[str, Any], words: str) -> None:
    """Each malformed field is a one-line DandiError naming the asset by its path."""
    result = _result(**changes)
    with pytest.raises(DandiError) as refused:
        parse_asset(result, BO, API)
    message = refused.value.message
    assert words in message and "\n" not in message
    assert repr(result["path"]) in message or "outside" in message


def test_a_blob_on_a_host_the_user_allowed_is_read() -> None:
    """The bucket hosts are the archive's and the API's own; --allow-host adds to them, nothing else does."""
    mirror = "https://mirror.example/blobs/6d1/e4c/x"
    with pytest.raises(DandiError, match="neither"):
        parse_asset(_result(contentUrl=[mirror]), BO, API)
    assert parse_asset(_result(contentUrl=[mirror]), BO, API, frozenset({"mirror.example"})).blob_url == mirror
    own = f"{API.removesuffix('/api')}/dandiarchive/blobs/6d1/e4c/x"
    assert parse_asset(_result(contentUrl=[own]), BO, API, frozenset()).blob_url == own


def test_the_release_sessions_are_read_from_sessions_csv() -> None:
    """The ids and session types of AllenSDK's sessions.csv; a table without them is an error."""
    good = b"id,date_of_acquisition,session_type\r\n715093703,2019-01-09,brain_observatory_1.1\r\n766640955,2019-02-01,functional_connectivity\r\n"
    assert release_sessions(good) == {715093703: "brain_observatory_1.1", 766640955: "functional_connectivity"}
    for bad in (b"id,name\r\n1,x\r\n", b"id,session_type\r\n1e3,x\r\n", b"\xff\xfe"):
        with pytest.raises(SourceError, match=r"sessions\.csv"):
            release_sessions(bad)


VERSIONS = [
    # (versions listed, version chosen)
    ([{"version": "draft", "status": "Valid"}], DRAFT),
    ([{"version": "0.210611.1504", "status": "Published"}, {"version": "draft"}], "0.210611.1504"),
    ([{"version": "0.210611.1504", "status": "Published"}, {"version": "0.230101.0900", "status": "Published"}, {"version": "draft"}], "0.230101.0900"),
    ([{"version": "0.230101.0900", "status": "Pending"}, {"version": "draft"}], DRAFT),  # not published yet
    ([{"version": "1.0", "status": "Published"}, {"version": "draft"}], DRAFT),  # not a DANDI version name
]


@pytest.mark.parametrize(("versions", "chosen"), VERSIONS)
def test_the_newest_published_version_is_read_else_the_draft(versions: list[object], chosen: str) -> None:
    """As dandi-cli: the most recent published version, else the draft."""
    assert choose_version(BO, versions) == chosen


def test_a_dandiset_without_versions_is_refused() -> None:
    with pytest.raises(DandiError, match="neither a published version nor a draft"):
        choose_version(BO, [])


# -- the client against the replica ----------------------------------------------------------------


@pytest.fixture
def http() -> Iterator[Any]:
    with make_client(connect_timeout=5.0, read_timeout=10.0, trust_env=False) as client:
        yield client


def _published_rows(dataset_dir: Path, dandiset: str) -> list[PublishedFile]:
    return sorted((f for f in load_published(dataset_dir / "published_files.csv") if f.dandiset == dandiset), key=lambda f: f.dandi_path)


@pytest.mark.parametrize("dandiset", [BO, FC])
def test_a_listing_is_followed_page_by_page(replica: Replica, dataset_dir: Path, http: Any, dandiset: str) -> None:
    """Two assets a page: every page is read, and the assets are the published ones, in path order."""
    client = DandiClient(replica.dandi_url, client=http, policy=RetryPolicy(attempts=2, backoff=0.01), page_size=2)
    version = client.version(dandiset)
    assets = client.assets(dandiset, version)
    rows = _published_rows(dataset_dir, dandiset)
    assert version == PUBLISHED_VERSION and len(rows) > 2
    assert [(a.path, a.asset_id, a.size, a.sha256, a.dandi_etag, a.place.cache_path) for a in assets] == [
        (f.dandi_path, f.dandi_asset_id, f.size, f.sha256, f.dandi_etag, f.cache_path) for f in rows
    ]
    assert all(a.blob_url.startswith(replica.dandi_blob_url + "/blobs/") for a in assets)
    pages = -(-len(rows) // 2)
    log = replica.wait_requests(1 + pages)  # the versions, then each page of assets
    assert len([r for r in log if "/assets/?" in r["path"]]) == pages


def _settings(replica: Replica, cache: Path, **more: Any) -> Settings:
    return Settings(cache_dir=cache, sources=(Source.DANDI,), dandi_url=replica.dandi_url, s3_url=replica.s3_url, retries=3, retry_wait=0.02, timeout=10, **more)


def test_the_published_table_from_dandi_is_the_archives_byte_for_byte(replica: Replica, dataset_dir: Path, tmp_path: Path, http: Any) -> None:
    """Both dandisets listed and written with write_published give the replica's own published table, byte for byte."""
    settings = _settings(replica, tmp_path / "cache")
    table = published_from_dandi(settings, http)
    assert table.source == f"DANDI {BO}@{PUBLISHED_VERSION}, {FC}@{PUBLISHED_VERSION}"
    write_published(settings.refreshed_published, table)
    assert settings.refreshed_published.read_bytes() == (dataset_dir / "published_files.csv").read_bytes()


def test_the_resolver_gives_blob_urls_sizes_and_digests(replica: Replica, dataset_dir: Path, tmp_path: Path, http: Any) -> None:
    """Targets carry the unsigned blob URL, the listed size and SHA-256; a probe without a file is unavailable."""
    rows = list(load_published(dataset_dir / "published_files.csv"))
    session = rows[0].session_id
    probes = [f.probe_id for f in rows if f.session_id == session and f.probe_id is not None]
    resolver = dandi_resolver(_settings(replica, tmp_path / "cache"), http)
    resolution = resolver.targets([session], {session: [*probes, 1]})
    by_path = {f.cache_path: f for f in rows}
    assert len(resolution.targets) == 1 + len(probes) and resolution.unavailable == ((session, 1),)
    for target in resolution.targets:
        row = by_path[_relative(target)]
        assert (target.size, target.sha256) == (row.size, row.sha256)
        assert target.url.startswith(replica.dandi_blob_url + "/blobs/")
    assert resolver.sized(list(resolution.targets)) == list(resolution.targets)


def _relative(target: Target) -> str:
    return target.final(CacheLayout(Path("/c"))).relative_to("/c").as_posix()


# -- whole runs through the command line ------------------------------------------------------------


def _sessions(dataset_dir: Path) -> list[int]:
    return [r["id"] for r in json.loads((dataset_dir / "records" / "EcephysSession.json").read_text())]


def _args(replica: Replica, cache: Path, *rest: str, source: str = "dandi") -> list[str]:
    return ["--cache-dir", str(cache), "--source", source, "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url,
            "--dandi-url", replica.dandi_url, "--retries", "6", "--retry-wait", "0.02", "--timeout", "10", *rest]  # fmt: skip


FAST = ["--connections", "3", "--jobs", "3", "--stall-timeout", "2"]


def _tree(cache: Path) -> dict[str, bytes]:
    """Every file of the AllenSDK tree (ecephys-dl's own state left out), with its bytes."""
    return {p.relative_to(cache).as_posix(): p.read_bytes() for p in sorted(cache.rglob("*"))
            if p.is_file() and ".ecephys-dl" not in p.relative_to(cache).parts}  # fmt: skip


def test_a_dandi_fetch_fills_the_same_tree_as_the_warehouse_and_s3(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Callable[..., Run]) -> None:
    """fetch --with-lfp of every session: the same files, byte for byte (NWB, manifest, CSVs), from all three sources."""
    ids = [str(s) for s in _sessions(dataset_dir)]
    trees = {}
    for source in ("warehouse", "s3", "dandi"):
        done = run(*_args(replica, tmp_path / source, "fetch", *ids, "--with-lfp", *FAST, source=source))
        assert done.code == 0, done.err
        trees[source] = _tree(tmp_path / source)
    published = list(load_published(dataset_dir / "published_files.csv"))
    assert {f.cache_path for f in published} <= set(trees["dandi"])
    assert {"manifest.json", "sessions.csv", "probes.csv", "channels.csv", "units.csv"} <= set(trees["dandi"])
    assert trees["dandi"] == trees["warehouse"] == trees["s3"]
    paths = [r["path"] for r in replica.requests()]
    assert [p for p in paths if "/dandiarchive/blobs/" in p] and not [p for p in paths if "/download/" in p]


def test_a_dandi_fetch_needs_no_presigned_url(dataset_dir: Path, tmp_path: Path, run: Callable[..., Run]) -> None:
    """Presigned URLs that expire at once change nothing: the unsigned blob URLs are read."""
    session = str(_sessions(dataset_dir)[0])
    with Replica(dataset_dir, presign_expiry=0) as replica:
        done = run(*_args(replica, tmp_path / "cache", "fetch", session, "--with-lfp", *FAST))
    assert done.code == 0, done.err
    for file in load_published(dataset_dir / "published_files.csv"):
        if str(file.session_id) == session:
            assert (tmp_path / "cache" / file.cache_path).read_bytes() == (dataset_dir / "bucket" / replica.dataset.prefix / file.cache_path).read_bytes()


DANDI_FAULTS = [
    # each survived: the files end byte-identical
    "drop:after=10K,share=0.5,paths=/dandiarchive/blobs/*,times=6",
    "stall:seconds=4,after=8K,paths=/dandiarchive/blobs/*,times=2",
    "error:status=503,retry_after=0,paths=/dandiarchive/blobs/*,times=4",
    "short:bytes=5K,paths=/dandiarchive/blobs/*,times=3",
    "error:status=503,paths=/api/dandisets/*,times=3",
    "drop:after=100,paths=/api/dandisets/*,times=2",
    "stall:seconds=4,paths=/api/dandisets/*,times=1",
    "short:bytes=50,paths=/api/dandisets/*,times=2",
    "rate:bps=200,paths=/api/dandisets/*/assets/,times=1",  # a trickle: past --timeout, the page is asked again
]


@pytest.mark.parametrize("fault", DANDI_FAULTS)
def test_a_dandi_fetch_survives_the_archives_faults(dataset_dir: Path, tmp_path: Path, run: Callable[..., Run], fault: str) -> None:
    """Drops, stalls, 503s and short bodies on the API and the bucket are retried or resumed."""
    session = _sessions(dataset_dir)[0]
    with Replica(dataset_dir, faults=[fault]) as replica:
        done = run(*_args(replica, tmp_path / "cache", "--timeout", "2", "fetch", str(session), "--with-lfp", *FAST))
        # A stalled answer is logged once the stall is over, after the client gave up on it.
        deadline = time.monotonic() + 6
        while not (hits := [r for r in replica.requests() if r["fault"]]) and time.monotonic() < deadline:
            time.sleep(0.1)
    assert done.code == 0, done.err
    assert hits, "the fault never fired"
    for file in load_published(dataset_dir / "published_files.csv"):
        if file.session_id == session:
            assert (tmp_path / "cache" / file.cache_path).read_bytes() == (dataset_dir / "bucket" / replica.dataset.prefix / file.cache_path).read_bytes()


def test_a_blob_redirecting_to_another_host_is_refused(dataset_dir: Path, tmp_path: Path, run: Callable[..., Run]) -> None:
    """A bucket answering with a redirect elsewhere: not followed (no request leaves), the file fails naming the host."""
    session = _sessions(dataset_dir)[0]
    with Replica(dataset_dir, faults=["redirect:to=http://elsewhere.example/{path},paths=/dandiarchive/blobs/*"]) as replica:
        done = run(*_args(replica, tmp_path / "cache", "fetch", str(session), *FAST))
    assert done.code == 1
    assert "elsewhere.example" in done.err and "another host" in done.err
    assert not list((tmp_path / "cache").rglob("*.nwb"))


def _first(dataset_dir: Path, dandiset: str) -> str:
    return _published_rows(dataset_dir, dandiset)[0].dandi_path


MALFORMED = [
    # (id, fault on the asset listings, the words and the asset the one-line error names)
    ("digest", "asset-field:name=metadata.digest.dandi:sha2-256,value={}0", "64 lowercase hex", BO),
    ("etag", "asset-field:name=metadata.digest.dandi:dandi-etag,value=zz", "dandi-etag", BO),
    ("size", "asset-field:name=size,value=-5", "positive integer", BO),
    ("size-text", "asset-field:name=size,value=big", "positive integer", BO),
    ("scheme", 'asset-field:name=metadata.contentUrl,value=["ftp://127.0.0.1/blobs/x"]', "HTTP(S)", BO),
    ("blob-host", 'asset-field:name=metadata.contentUrl,value=["http://mirror.example/blobs/x"]', "neither", BO),
    ("duplicate", "asset-duplicate:", "the same asset listed twice", BO),
    ("json", "garbage:body={%22count%22: 1,type=application/json", "not JSON", None),
    ("envelope", "garbage:body=[1%2C2],type=application/json", "not a page of results", None),
    ("next-elsewhere", "garbage:body={%22count%22:1%2C%22next%22:%22http://elsewhere.example/api/x%22%2C%22results%22:[]},type=application/json",
     "another site", None),
]  # fmt: skip


@pytest.mark.parametrize(("fault", "words", "dandiset"), [row[1:] for row in MALFORMED], ids=[row[0] for row in MALFORMED])
def test_a_malformed_listing_fails_the_run_naming_the_asset(
    dataset_dir: Path, tmp_path: Path, run: Callable[..., Run], fault: str, words: str, dandiset: str | None
) -> None:
    """Exit 1, one error line naming the asset, no NWB file fetched, nothing written outside the cache."""
    session = _sessions(dataset_dir)[0]
    with Replica(dataset_dir, faults=[f"{fault},paths=/api/dandisets/*/assets/".replace(":,", ":")]) as replica:
        done = run(*_args(replica, tmp_path / "cache", "fetch", str(session), "--with-lfp", *FAST))
        assert not [r for r in replica.requests() if "/dandiarchive/blobs/" in r["path"]]
    errors = [line for line in done.err.splitlines() if line.startswith("error:")]
    assert done.code == 1 and len(errors) == 1, done.err
    assert words in errors[0]
    if dandiset is not None:
        assert repr(_first(dataset_dir, dandiset)) in errors[0] and f"of {dandiset}" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert not list((tmp_path / "cache").rglob("*.nwb*"))


PLANTED = [
    # (id, planted path, the words of the error)
    ("unknown-session", "sub-5/sub-5_ses-123.nwb", "session 123, which is not a session of the release"),
    ("outside", "../../outside.nwb", "outside the release's layout"),
    ("other-specimen", "sub-5/sub-6_ses-123.nwb", "different specimens"),
]


@pytest.mark.parametrize(("key", "words"), [row[1:] for row in PLANTED], ids=[row[0] for row in PLANTED])
def test_an_asset_outside_the_release_fails_the_run_naming_it(dataset_dir: Path, tmp_path: Path, run: Callable[..., Run], key: str, words: str) -> None:
    """An asset the release does not have (another session, a path outside the layout) is refused by name."""
    session = _sessions(dataset_dir)[0]
    with Replica(dataset_dir, faults=[f"listing-key:key={key},size=5,paths=/api/dandisets/*/assets/"]) as replica:
        done = run(*_args(replica, tmp_path / "cache", "fetch", str(session), *FAST))
    errors = [line for line in done.err.splitlines() if line.startswith("error:")]
    assert done.code == 1 and len(errors) == 1, done.err
    assert words in errors[0] and repr(key) in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]
    assert not list((tmp_path / "cache").rglob("*.nwb*"))


def test_an_asset_in_the_other_types_dandiset_is_refused(dataset_dir: Path, tmp_path: Path, run: Callable[..., Run]) -> None:
    """A functional_connectivity session listed in 000021 (brain_observatory_1.1) is not the release's."""
    session = _sessions(dataset_dir)[0]
    other = _first(dataset_dir, FC)
    with Replica(dataset_dir, faults=[f"listing-key:key={other},size=5,paths=/api/dandisets/{BO}/*/assets/"]) as replica:
        done = run(*_args(replica, tmp_path / "cache", "fetch", str(session), *FAST))
    assert done.code == 1
    assert f"the DANDI listing of {BO} has an asset {other!r}" in done.err and "in the dandiset of brain_observatory_1.1" in done.err


def test_bytes_other_than_the_listed_digest_are_fetched_again(dataset_dir: Path, tmp_path: Path, run: Callable[..., Run]) -> None:
    """A bucket answering other bytes of the right length (same-size): the SHA-256 check catches it, the file is fetched again."""
    session = _sessions(dataset_dir)[0]
    with Replica(dataset_dir, faults=["same-size:bytes=1K,paths=/dandiarchive/blobs/*,times=1"]) as replica:
        done = run(*_args(replica, tmp_path / "cache", "fetch", str(session), "--connections", "1", "--jobs", "1"))
        hits = [r for r in replica.requests() if r["fault"] == "same-size"]
    assert done.code == 0, done.err
    assert len(hits) == 1
    relative = f"session_{session}/session_{session}.nwb"
    assert (tmp_path / "cache" / relative).read_bytes() == (dataset_dir / "bucket" / replica.dataset.prefix / relative).read_bytes()


def test_a_listing_announcing_other_digests_than_the_published_is_refused(dataset_dir: Path, tmp_path: Path, run: Callable[..., Run]) -> None:
    """A well-formed digest that is not the published one: the file is not fetched (the run checks the published table)."""
    session = _sessions(dataset_dir)[0]
    fault = "asset-field:name=metadata.digest.dandi:sha2-256,value=" + "0" * 64 + ",paths=/api/dandisets/*/assets/"
    with Replica(dataset_dir, faults=[fault]) as replica:
        done = run(*_args(replica, tmp_path / "cache", "fetch", str(session)))
        assert not [r for r in replica.requests() if "/dandiarchive/blobs/" in r["path"]]
    assert done.code == 1 and "not the published file" in done.err
    assert not list((tmp_path / "cache").rglob("*.nwb"))


def test_the_published_table_from_a_malformed_listing_is_refused(dataset_dir: Path, tmp_path: Path, http: Any) -> None:
    """published_from_dandi checks the listing as a fetch does: nothing is returned to write."""
    fault = "listing-key:key=sub-5/sub-5_ses-123.nwb,size=5,paths=/api/dandisets/*/assets/"
    with Replica(dataset_dir, faults=[fault]) as replica, pytest.raises(DandiError, match="session 123, which is not a session of the release"):
        published_from_dandi(_settings(replica, tmp_path / "cache"), http)
    assert not (tmp_path / "cache").exists()


def test_the_tables_of_a_dandi_run_are_the_s3_mirrors(replica: Replica, tmp_path: Path, run: Callable[..., Run]) -> None:
    """DANDI publishes no AllenSDK tables: `sessions` with --source dandi reads the S3 mirror's, and says the same."""
    outputs = {}
    for source in ("s3", "dandi"):
        done = run(*_args(replica, tmp_path / source, "sessions", "--format", "json", source=source))
        assert done.code == 0, done.err
        outputs[source] = json.loads(done.out)
    assert outputs["dandi"] == outputs["s3"] and outputs["dandi"]
    assert not [r for r in replica.requests() if r["path"].startswith("/api/")]


def test_verify_repair_fetches_a_damaged_file_again_from_dandi(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Callable[..., Run]) -> None:
    """A flipped byte found by verify --deep is mended from the archive's blob, byte for byte."""
    session = _sessions(dataset_dir)[0]
    cache = tmp_path / "cache"
    assert run(*_args(replica, cache, "fetch", str(session), *FAST)).code == 0
    fetched = len([r for r in replica.requests() if "/dandiarchive/blobs/" in r["path"]])
    relative = f"session_{session}/session_{session}.nwb"
    damaged = bytearray((cache / relative).read_bytes())
    damaged[5000] ^= 1
    (cache / relative).write_bytes(bytes(damaged))
    done = run(*_args(replica, cache, "verify", "--deep", "--repair"))
    assert done.code == 0, done.err
    assert (cache / relative).read_bytes() == (dataset_dir / "bucket" / replica.dataset.prefix / relative).read_bytes()
    assert len([r for r in replica.requests() if "/dandiarchive/blobs/" in r["path"]]) > fetched
