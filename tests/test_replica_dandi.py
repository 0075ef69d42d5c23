"""The replica's DANDI archive over real loopback HTTP, and the published table it serves from."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from conftest import SEED

from ecephys_dl.replica import Dataset, Fault, FaultKind, Replica
from ecephys_dl.replica.dandi import DANDISETS, DRAFT, PUBLISHED_VERSION, PublishedFile, asset_id, dandi_etag

pytestmark = pytest.mark.timeout(60)

# The reference table's header line, byte for byte (csv's \r\n line ends).
HEADER = b"kind,session_id,probe_id,cache_path,size,sha256,dandi_etag,dandiset,dandi_asset_id,dandi_path\r\n"
BO, FC = DANDISETS["brain_observatory_1.1"], DANDISETS["functional_connectivity"]


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0), follow_redirects=False, trust_env=False) as client:
        yield client


@pytest.fixture(scope="module")
def published(dataset_dir: Path) -> list[PublishedFile]:
    return Dataset.open(dataset_dir).published()


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads((dataset_dir / "records" / f"{model}.json").read_text())
    return rows


def _all_assets(http: httpx.Client, replica: Replica, dandiset: str, page_size: int) -> list[dict[str, Any]]:
    """Every asset of ``dandiset``'s draft, following ``next`` as dandi-cli does."""
    url: str | None = f"{replica.dandi_url}/dandisets/{dandiset}/versions/draft/assets/?metadata=true&page_size={page_size}&order=path"
    results: list[dict[str, Any]] = []
    while url is not None:
        response = http.get(url)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"count", "next", "previous", "results"}
        assert len(page["results"]) <= page_size
        results.extend(page["results"])
        url = page["next"]
    return results


def _by_path(published: list[PublishedFile]) -> dict[str, PublishedFile]:
    return {f.dandi_path: f for f in published}


def _blob_url(replica: Replica, http: httpx.Client, file: PublishedFile) -> str:
    response = http.get(f"{replica.dandi_url}/assets/{file.dandi_asset_id}/download/")
    assert response.status_code == 302
    return response.headers["Location"]


# -- the published table ----------------------------------------------------------------------


def test_published_table_header_format_and_order(dataset_dir: Path) -> None:
    """``published_files.csv`` has the reference's header, line ends and row order."""
    data = (dataset_dir / "published_files.csv").read_bytes()
    assert Dataset.open(dataset_dir).published_table == dataset_dir / "published_files.csv"
    assert data.startswith(HEADER)
    assert data.endswith(b"\r\n") and data.count(b"\n") == data.count(b"\r\n")
    rows = list(csv.DictReader(io.StringIO(data.decode())))
    keys = [(int(r["session_id"]), r["kind"] != "session", int(r["probe_id"] or 0)) for r in rows]
    assert keys == sorted(keys)
    sessions = sorted({int(r["session_id"]) for r in rows})
    for session in sessions:
        mine = [r for r in rows if int(r["session_id"]) == session]
        assert mine[0]["kind"] == "session" and mine[0]["probe_id"] == ""
        assert all(r["kind"] == "lfp" and r["probe_id"].isdigit() for r in mine[1:])
        assert len(mine) > 1


def test_published_table_lists_every_nwb_file_with_its_own_digests(dataset_dir: Path, published: list[PublishedFile]) -> None:
    """One row per NWB file of the bucket, with that file's size, SHA-256, DANDI etag and place."""
    dataset = Dataset.open(dataset_dir)
    nwb = sorted(info.key[len(dataset.prefix) :] for info in dataset.objects if info.key.endswith(".nwb"))
    assert sorted(f.cache_path for f in published) == nwb
    sessions = {s["id"]: s for s in _records(dataset_dir, "EcephysSession")}
    lfp_probes = {p["id"] for p in _records(dataset_dir, "EcephysProbe") if p["use_lfp_data"]}
    assert sorted(f.probe_id for f in published if f.probe_id is not None) == sorted(lfp_probes)
    assert {f.dandiset for f in published} == {BO, FC}
    for file in published:
        path = dataset_dir / "bucket" / dataset.prefix / file.cache_path
        data = path.read_bytes()
        assert file.size == len(data)
        assert file.sha256 == hashlib.sha256(data).hexdigest()
        assert file.dandi_etag == hashlib.md5(hashlib.md5(data).digest()).hexdigest() + "-1"  # under 64 MiB: one part
        session = sessions[file.session_id]
        assert file.dandiset == DANDISETS[session["stimulus_name"]]
        specimen = session["specimen_id"]
        suffix = ".nwb" if file.probe_id is None else f"_probe-{file.probe_id}_ecephys.nwb"
        assert file.dandi_path == f"sub-{specimen}/sub-{specimen}_ses-{file.session_id}{suffix}"
        assert uuid.UUID(file.dandi_asset_id).version == 5
    assert len({f.dandi_asset_id for f in published}) == len(published)


def test_dandi_etag_counts_64_mib_parts(tmp_path: Path) -> None:
    """A file of 64 MiB and one byte has two parts: the MD5 of both parts' MD5s, ``-2``."""
    part = 64 * 1024 * 1024
    path = tmp_path / "big"
    with open(path, "wb") as stream:
        stream.truncate(part + 1)
    first, second = hashlib.md5(bytes(part)).digest(), hashlib.md5(b"\0").digest()
    assert dandi_etag(path) == hashlib.md5(first + second).hexdigest() + "-2"


def test_asset_ids_follow_from_the_seed_and_path(published: list[PublishedFile]) -> None:
    """Asset ids are UUIDs fixed by the dataset's seed and the asset's path: another seed, others."""
    assert all(f.dandi_asset_id == asset_id(SEED, f.dandi_path) for f in published)
    assert all(asset_id(SEED + 1, f.dandi_path) != f.dandi_asset_id for f in published)


# -- the API ----------------------------------------------------------------------------------


def test_versions_of_both_dandisets(replica: Replica, http: httpx.Client, published: list[PublishedFile]) -> None:
    """Each dandiset lists a published version and the draft, with its asset count and size."""
    assert replica.dandi_url == f"http://127.0.0.1:{replica.dandi_port}/api"
    assert replica.dandi_port != replica.port
    for dandiset in (BO, FC):
        page = http.get(f"{replica.dandi_url}/dandisets/{dandiset}/versions/").json()
        assert page["count"] == 2 and page["next"] is None and page["previous"] is None
        assert [v["version"] for v in page["results"]] == [PUBLISHED_VERSION, DRAFT]
        mine = [f for f in published if f.dandiset == dandiset]
        assert all(v["asset_count"] == len(mine) and v["size"] == sum(f.size for f in mine) for v in page["results"])
        assert all(v["dandiset"]["identifier"] == dandiset for v in page["results"])
    missing = http.get(f"{replica.dandi_url}/dandisets/000999/versions/")
    assert missing.status_code == 404 and missing.json() == {"detail": "Not found."}


@pytest.mark.parametrize("page_size", [1, 4, 1000])
def test_asset_listing_pages_cover_each_dandiset(
    replica: Replica, http: httpx.Client, published: list[PublishedFile], page_size: int
) -> None:
    """Following ``next`` gives every asset once, in path order, with the published digests."""
    for dandiset in (BO, FC):
        mine = sorted((f for f in published if f.dandiset == dandiset), key=lambda f: f.dandi_path)
        results = _all_assets(http, replica, dandiset, page_size)
        assert [r["path"] for r in results] == [f.dandi_path for f in mine]
        for result, file in zip(results, mine, strict=True):
            assert result["asset_id"] == file.dandi_asset_id and result["size"] == file.size
            meta = result["metadata"]
            assert meta["digest"] == {"dandi:sha2-256": file.sha256, "dandi:dandi-etag": file.dandi_etag}
            api_url, blob_url = meta["contentUrl"]
            assert api_url == f"{replica.dandi_url}/assets/{file.dandi_asset_id}/download/"
            blob = file.blob_id
            assert blob_url == f"{replica.dandi_blob_url}/blobs/{blob[:3]}/{blob[3:6]}/{blob}"


def test_asset_listing_envelope_links_and_errors(replica: Replica, http: httpx.Client, published: list[PublishedFile]) -> None:
    """``count``, absolute ``next``/``previous`` as DRF writes them, no metadata unless asked, bad pages 404."""
    base = f"{replica.dandi_url}/dandisets/{BO}/versions/draft/assets/"
    total = sum(1 for f in published if f.dandiset == BO)
    first = http.get(base, params={"page_size": "2", "order": "path"}).json()
    assert first["count"] == total and first["previous"] is None and len(first["results"]) == 2
    assert "metadata" not in first["results"][0]
    assert first["next"] == f"{base}?page_size=2&order=path&page=2"
    second = http.get(first["next"]).json()
    assert second["previous"] == f"{base}?page_size=2&order=path"
    assert {r["path"] for r in first["results"]}.isdisjoint(r["path"] for r in second["results"])
    descending = http.get(base, params={"page_size": "1000", "order": "-path"}).json()
    assert [r["path"] for r in descending["results"]] == sorted((f.dandi_path for f in published if f.dandiset == BO), reverse=True)
    assert descending["next"] is None
    assert http.get(base, params={"page": "99"}).status_code == 404
    published_version = http.get(f"{replica.dandi_url}/dandisets/{BO}/versions/{PUBLISHED_VERSION}/assets/").json()
    assert published_version["count"] == total
    assert http.get(f"{replica.dandi_url}/dandisets/{BO}/versions/0.000000.0000/assets/").status_code == 404


# -- downloads ----------------------------------------------------------------------------------


def test_download_redirects_to_a_presigned_blob_with_ranges(replica: Replica, http: httpx.Client, published: list[PublishedFile]) -> None:
    """302 to a presigned URL; the blob has the file's bytes, the DANDI etag, and byte ranges."""
    file = next(f for f in published if f.kind == "session")
    head = http.head(f"{replica.dandi_url}/assets/{file.dandi_asset_id}/download/")
    assert head.status_code == 302
    location = _blob_url(replica, http, file)
    query = parse_qs(urlsplit(location).query)
    assert {"X-Amz-Expires", "X-Amz-Date", "X-Amz-Signature"} <= set(query)
    assert query["X-Amz-Expires"] == ["21600"]
    whole = http.get(location)
    assert whole.status_code == 200
    assert hashlib.sha256(whole.content).hexdigest() == file.sha256 and len(whole.content) == file.size
    assert whole.headers["ETag"] == f'"{file.dandi_etag}"'
    assert whole.headers["Content-Length"] == str(file.size)
    part = http.get(location, headers={"Range": "bytes=100-1099"})
    assert part.status_code == 206 and part.content == whole.content[100:1100]
    assert part.headers["Content-Range"] == f"bytes 100-1099/{file.size}"
    tail = http.get(location, headers={"Range": "bytes=-10"})
    assert tail.status_code == 206 and tail.content == whole.content[-10:]
    unsigned = http.get(f"{replica.dandi_blob_url}/blobs/{file.blob_id[:3]}/{file.blob_id[3:6]}/{file.blob_id}")
    assert unsigned.status_code == 200 and unsigned.content == whole.content
    assert http.get(f"{replica.dandi_url}/assets/{uuid.uuid4()}/download/").status_code == 404


def test_blob_if_range_and_past_the_end(replica: Replica, http: httpx.Client, published: list[PublishedFile]) -> None:
    """If-Range with a stale ETag gets the whole blob (200), with the current one the range; 416 past the end."""
    file = published[1]
    location = _blob_url(replica, http, file)
    stale = http.get(location, headers={"Range": "bytes=10-19", "If-Range": '"0123456789abcdef0123456789abcdef-1"'})
    assert stale.status_code == 200 and len(stale.content) == file.size
    fresh = http.get(location, headers={"Range": "bytes=10-19", "If-Range": f'"{file.dandi_etag}"'})
    assert fresh.status_code == 206 and fresh.content == stale.content[10:20]
    past = http.get(location, headers={"Range": f"bytes={file.size}-"})
    assert past.status_code == 416
    assert past.headers["Content-Range"] == f"bytes */{file.size}"
    assert b"<Code>InvalidRange</Code>" in past.content


def test_expired_or_forged_presigned_urls_are_refused(dataset_dir: Path, http: httpx.Client, published: list[PublishedFile]) -> None:
    """A presigned URL past its expiry gets 403 AccessDenied; a forged signature 403 too."""
    file = published[0]
    with Replica(dataset_dir, presign_expiry=0) as replica:
        location = _blob_url(replica, http, file)
        assert parse_qs(urlsplit(location).query)["X-Amz-Expires"] == ["0"]
        expired = http.get(location)
        assert expired.status_code == 403
        assert b"<Code>AccessDenied</Code>" in expired.content and b"Request has expired" in expired.content
        assert expired.headers["Content-Type"] == "application/xml"
    with Replica(dataset_dir) as replica:
        location = _blob_url(replica, http, file)
        forged = re.sub(r"X-Amz-Expires=\d+", "X-Amz-Expires=999999", location)
        refused = http.get(forged)
        assert refused.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in refused.content
        assert http.get(location).status_code == 200


def test_blob_lookup_by_digest(replica: Replica, http: httpx.Client, published: list[PublishedFile]) -> None:
    """``POST /blobs/digest/`` finds the blob by SHA-256 or DANDI etag; unknown ones are 404."""
    file = published[2]
    url = f"{replica.dandi_url}/blobs/digest/"
    found = http.post(url, json={"algorithm": "dandi:sha2-256", "value": file.sha256})
    assert found.status_code == 200
    assert found.json() == {"blob_id": file.blob_id, "etag": file.dandi_etag, "sha256": file.sha256, "size": file.size}
    by_etag = http.post(url, json={"algorithm": "dandi:dandi-etag", "value": file.dandi_etag})
    assert by_etag.status_code == 200 and by_etag.json()["blob_id"] == file.blob_id
    assert http.post(url, json={"algorithm": "dandi:sha2-256", "value": "0" * 64}).status_code == 404
    assert http.post(url, json={"algorithm": "md5", "value": file.sha256}).status_code == 400
    assert http.post(url, content=b"{not json", headers={"Content-Type": "application/json"}).status_code == 400
    assert http.get(url).status_code == 405
    assert http.post(f"{replica.dandi_url}/dandisets/{BO}/versions/").status_code == 405


# -- faults -------------------------------------------------------------------------------------


def test_same_size_fault_serves_other_bytes_on_every_source(dataset_dir: Path, http: httpx.Client, published: list[PublishedFile]) -> None:
    """``same-size``: the warehouse, S3 and DANDI answer with the true length and ETag, other bytes."""
    fault = Fault.parse("same-size:bytes=1K")
    assert fault.kind is FaultKind.SAME_SIZE_OTHER_BYTES and fault.nbytes == 1024 and str(fault) == "same-size:bytes=1024"
    file = next(f for f in published if f.kind == "lfp")
    dataset = Dataset.open(dataset_dir)
    key = dataset.prefix + file.cache_path
    file_id = next(w["id"] for w in _records(dataset_dir, "WellKnownFile") if w["attachable_id"] == file.probe_id)
    with Replica(dataset_dir) as clean:
        urls = lambda r: [f"{r.url}/api/v2/well_known_file_download/{file_id}", f"{r.s3_url}/{key}", _blob_url(r, http, file)]  # noqa: E731
        good = [http.get(url) for url in urls(clean)]
    assert all(hashlib.sha256(g.content).hexdigest() == file.sha256 for g in good)
    with Replica(dataset_dir, faults=[fault]) as faulty:
        for url, reference in zip(urls(faulty), good, strict=True):
            bad = http.get(url)
            assert bad.status_code == 200
            assert len(bad.content) == file.size and bad.headers["Content-Length"] == str(file.size)
            assert bad.headers["ETag"] == reference.headers["ETag"]
            assert bad.content != reference.content
            assert hashlib.sha256(bad.content).hexdigest() != file.sha256
            middle = file.size // 2
            differing = [i for i in range(file.size) if bad.content[i] != reference.content[i]]
            assert differing == list(range(middle, middle + 1024))
            ranged = http.get(url, headers={"Range": f"bytes={middle}-{middle + 9}"})
            assert ranged.status_code == 206 and ranged.content == bytes(b ^ 0xFF for b in reference.content[middle : middle + 10])
        assert all(r["fault"] == "same-size" for r in faulty.requests() if r["path"].endswith((".nwb", str(file_id))) or "/blobs/" in r["path"])


def test_existing_faults_reach_the_dandi_routes(dataset_dir: Path, http: httpx.Client, published: list[PublishedFile]) -> None:
    """error, drop and short act on the API and the blobs, chosen by ``paths``; the log shows them."""
    faults = [
        "error:status=503,retry_after=2,paths=*/versions/,times=1",
        "drop:after=10,paths=*/assets/,times=1",
        "error:status=502,paths=/api/assets/*,times=1",
        "short:bytes=100,paths=/dandiarchive/blobs/*,times=1",
    ]
    file = published[0]
    with Replica(dataset_dir, faults=faults) as replica:
        versions = f"{replica.dandi_url}/dandisets/{BO}/versions/"
        refused = http.get(versions)
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "2"
        assert http.get(versions).status_code == 200
        with pytest.raises(httpx.TransportError):
            http.get(f"{versions}draft/assets/")
        assert http.get(f"{versions}draft/assets/").json()["count"] > 0
        download = f"{replica.dandi_url}/assets/{file.dandi_asset_id}/download/"
        assert http.get(download).status_code == 502
        location = _blob_url(replica, http, file)
        with pytest.raises(httpx.TransportError):
            http.get(location)
        assert hashlib.sha256(http.get(location).content).hexdigest() == file.sha256
        log = replica.wait_requests(8)
    assert [r["fault"] for r in log] == ["error", None, "drop", None, "error", None, "short", None]
    assert [r["status"] for r in log] == [503, 200, 200, 200, 502, 302, 200, 200]
    assert log[2]["bytes"] == 10 and log[6]["bytes"] == 100


def test_malformed_listing_faults(dataset_dir: Path, http: httpx.Client, published: list[PublishedFile]) -> None:
    """asset-field spoils a digest, asset-duplicate repeats an asset, listing-key plants a path, garbage breaks JSON."""
    assets = f"/api/dandisets/{FC}/versions/draft/assets/"
    mine = sorted((f for f in published if f.dandiset == FC), key=lambda f: f.dandi_path)
    cases = [
        "asset-field:name=metadata.digest.dandi:sha2-256,value={}0",
        "asset-duplicate:",
        "listing-key:key=../../outside.nwb,size=5",
        "garbage:body={%22count%22: 1,type=application/json",
    ]
    for spec in cases:
        with Replica(dataset_dir, faults=[f"{spec},paths={assets}".replace(":,", ":")]) as replica:
            response = http.get(f"{replica.dandi_url}/dandisets/{FC}/versions/draft/assets/?metadata=true&page_size=1000&order=path")
            assert response.status_code == 200
            if spec.startswith("garbage"):
                with pytest.raises(ValueError):
                    response.json()
                continue
            page = response.json()
            results = page["results"]
            if spec.startswith("asset-field"):
                digests = [r["metadata"]["digest"]["dandi:sha2-256"] for r in results]
                assert digests == [f.sha256 + "0" for f in mine] and all(len(d) == 65 for d in digests)
            elif spec == "asset-duplicate:":
                assert len(results) == len(mine) + 1 and results[-1] == results[0]
            else:
                assert page["count"] == len(mine) + 1
                planted = [r for r in results if r["path"] == "../../outside.nwb"]
                assert len(planted) == 1 and planted[0]["size"] == 5
            # The versions route is not a listing of assets: untouched.
            versions = http.get(f"{replica.dandi_url}/dandisets/{FC}/versions/").json()
            assert versions["count"] == 2


def test_faults_are_shared_across_the_servers(dataset_dir: Path, http: httpx.Client, published: list[PublishedFile]) -> None:
    """One fault list for both ports: ``times`` counts hits on either, set_faults reaches both."""
    file = published[0]
    with Replica(dataset_dir, faults=["error:status=500,times=1"]) as replica:
        assert http.get(f"{replica.dandi_url}/dandisets/{BO}/versions/").status_code == 500
        assert http.get(f"{replica.s3_url}/{replica.dataset.prefix}{file.cache_path}").status_code == 200
        replica.set_faults(["error:status=502,paths=/api/blobs/*"])
        assert http.post(f"{replica.dandi_url}/blobs/digest/", json={"algorithm": "dandi:sha2-256", "value": file.sha256}).status_code == 502
        assert replica.dandi_server.faults == replica.server.faults


def test_dataset_without_a_published_table_serves_empty_dandisets(tmp_path: Path, http: httpx.Client) -> None:
    """A dataset written before the table existed still serves; its dandisets have no assets."""
    from replica_fixtures import build_dataset

    tiny = build_dataset(tmp_path / "tiny")
    with Replica(tiny.directory) as replica:
        page = http.get(f"{replica.dandi_url}/dandisets/{BO}/versions/draft/assets/").json()
        assert page == {"count": 0, "next": None, "previous": None, "results": []}
        assert http.get(f"{replica.s3_url}/{tiny.small_key}").content == tiny.contents[tiny.small_key]


def test_public_url_names_the_proxy_in_front(dataset_dir: Path, http: httpx.Client, published: list[PublishedFile]) -> None:
    """With ``dandi_public_url`` the pages, contentUrl and redirects lead to the proxy; the server stays on its port."""
    file = next(f for f in published if f.kind == "session")
    public = "http://127.0.0.1:1"  # a port nothing is asked on: the test only reads the URLs
    with Replica(dataset_dir, dandi_public_url=public + "/") as replica:
        assert replica.dandi_url == f"{public}/api" and replica.dandi_blob_url == f"{public}/dandiarchive"
        own = f"{replica.dandi_server.origin}/api"
        page = http.get(f"{own}/dandisets/{file.dandiset}/versions/draft/assets/?metadata=true&page_size=1").json()
        assert page["next"].startswith(f"{public}/api/dandisets/{file.dandiset}/versions/draft/assets/?")
        urls = [u for r in page["results"] for u in r["metadata"]["contentUrl"]]
        assert urls and all(u.startswith(f"{public}/") for u in urls)
        location = http.get(f"{own}/assets/{file.dandi_asset_id}/download/").headers["Location"]
        assert location.startswith(f"{public}/dandiarchive/blobs/")
        # The presigned URL holds on the server's own port (the proxy passes the path and query on).
        signed = http.get(f"{replica.dandi_server.origin}{location[len(public):]}", headers={"Range": "bytes=0-9"})
        assert signed.status_code == 206 and len(signed.content) == 10


@pytest.mark.parametrize("url", ["http://example.org:80", "ftp://127.0.0.1:21", "http://127.0.0.1:8080/api", "http://127.0.0.1:0", "http://127.0.0.1:x"])
def test_public_url_must_be_a_loopback_origin(dataset_dir: Path, url: str) -> None:
    from ecephys_dl.replica.__main__ import main

    with pytest.raises(ValueError):
        Replica(dataset_dir, dandi_public_url=url)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--data", str(dataset_dir), "--dandi-public-url", url])
    assert exit_info.value.code == 2
