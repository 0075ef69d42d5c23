"""A client written only from PROTOCOL.md uses the replica as if it were the real service.

Queries are sent exactly as AllenSDK sends them (its percent-encoding, its paging clause, its
``//api`` join for downloads); answers are checked against the generated records and files.
"""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecephys_dl.replica import Replica
from ecephys_dl.replica.dataset import PREFIX

QUERIES = {
    "EcephysSession": "criteria=model::EcephysSession,rma::include,specimen(donor(age)),well_known_files(well_known_file_type)",
    "EcephysProbe": "criteria=model::EcephysProbe",
    "EcephysChannel": "criteria=model::EcephysChannel,rma::include,structure,rma::options[tabular$eq'ecephys_channels.id,ecephys_probe_id,local_index,probe_horizontal_position,probe_vertical_position,anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,left_right_ccf_coordinate,structures.id as ecephys_structure_id,structures.acronym as ecephys_structure_acronym']",
    "EcephysUnit": "criteria=model::EcephysUnit",
}
S3 = "{http://s3.amazonaws.com/doc/2006-03-01/}"


def _encode(q: str) -> str:
    """AllenSDK's wire form: brackets and spaces escaped, everything else literal."""
    return q.replace("[", "%5B").replace("]", "%5D").replace(" ", "%20")


def _page(client: httpx.Client, base: str, q: str, start: int, rows: int) -> dict[str, Any]:
    paged = f"{q},rma::options[start_row$eq{start}][num_rows$eq{rows}][order$eq'id']"
    response = client.get(f"{base}/api/v2/data/query.json?{_encode(paged)}")
    assert response.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in response.headers
    envelope: dict[str, Any] = response.json()
    return envelope


def _query_all(client: httpx.Client, base: str, q: str, rows: int = 5000) -> list[dict[str, Any]]:
    records: list[dict[str, Any]] = []
    first = _page(client, base, q, 0, rows)
    assert first["success"] is True
    total = first["total_rows"]
    records.extend(first["msg"])
    start = first["num_rows"]
    while start < total:
        page = _page(client, base, q, start, rows)
        assert page["total_rows"] == total
        assert page["num_rows"] == len(page["msg"]) > 0
        records.extend(page["msg"])
        start += page["num_rows"]
    return records


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


@pytest.mark.parametrize("model", list(QUERIES))
def test_each_table_query_pages_through_every_record(replica: Replica, dataset_dir: Path, model: str) -> None:
    """Paging by start_row/num_rows returns every record once, in id order, keys alphabetical (tabular: in order)."""
    with httpx.Client(timeout=30) as client:
        got = _query_all(client, replica.warehouse_url, QUERIES[model], rows=2000)
    expected = _records(dataset_dir, model)
    assert [r["id"] for r in got] == [r["id"] for r in expected]
    if model == "EcephysChannel":
        assert list(got[0]) == ["id", "ecephys_probe_id", "local_index", "probe_horizontal_position", "probe_vertical_position",
                                "anterior_posterior_ccf_coordinate", "dorsal_ventral_ccf_coordinate", "left_right_ccf_coordinate",
                                "ecephys_structure_id", "ecephys_structure_acronym"]  # fmt: skip
    else:
        assert list(got[0]) == sorted(got[0])
    if model == "EcephysSession":
        donor = got[0]["specimen"]["donor"]
        assert set(donor["age"]) >= {"days", "name"}
        assert got[0]["well_known_files"][0]["well_known_file_type"]["name"] == "EcephysNwb"


def test_session_and_lfp_links_resolve_and_download(replica: Replica, dataset_dir: Path) -> None:
    """The WellKnownFile queries give download links whose bytes are the bucket's files (AllenSDK's //api join)."""
    index = json.loads((dataset_dir / "dataset.json").read_text())
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    probe = next(p for p in _records(dataset_dir, "EcephysProbe") if p["ecephys_session_id"] == session and p["use_lfp_data"])
    queries = [
        f"criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysNwb'][attachable_type$eq'EcephysSession'][attachable_id$eq{session}]",
        f"criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysLfpNwb'][attachable_type$eq'EcephysProbe'][attachable_id$eq{probe['id']}]",
    ]
    with httpx.Client(timeout=30) as client:
        for q in queries:
            (record,) = _query_all(client, replica.warehouse_url, q)
            response = client.get(replica.warehouse_url + "/" + record["download_link"])
            assert response.status_code == 200
            meta = index["objects"][index["downloads"][str(record["id"])]]
            assert int(response.headers["content-length"]) == meta["size"]
            assert hashlib.md5(response.content).hexdigest() == meta["md5"]


def test_one_query_lists_every_session_nwb(replica: Replica, dataset_dir: Path) -> None:
    """The session-NWB query without an id lists one file per session."""
    q = "criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysNwb'][attachable_type$eq'EcephysSession']"
    with httpx.Client(timeout=30) as client:
        files = _query_all(client, replica.warehouse_url, q)
    assert sorted(f["attachable_id"] for f in files) == sorted(s["id"] for s in _records(dataset_dir, "EcephysSession"))


def test_a_probe_without_lfp_has_no_file(replica: Replica, dataset_dir: Path) -> None:
    """The LFP query for a probe without LFP data answers success with no records (the tutorial's 'not found')."""
    probe = next(p for p in _records(dataset_dir, "EcephysProbe") if not p["use_lfp_data"])
    q = f"criteria=model::WellKnownFile,rma::criteria,well_known_file_type[name$eq'EcephysLfpNwb'][attachable_type$eq'EcephysProbe'][attachable_id$eq{probe['id']}]"
    with httpx.Client(timeout=30) as client:
        page = _page(client, replica.warehouse_url, q, 0, 50)
    assert page["success"] is True and page["total_rows"] == 0 and page["msg"] == []


def test_metrics_queries_split_units_by_session_type(replica: Replica, dataset_dir: Path) -> None:
    """Metric bundles by session type cover every unit exactly once; by session, that session's units."""
    units = _records(dataset_dir, "EcephysUnit")
    seen: list[int] = []
    with httpx.Client(timeout=30) as client:
        for stype in ("brain_observatory_1.1", "functional_connectivity"):
            q = f"criteria=model::EcephysUnitMetricBundle,rma::criteria,ecephys_unit(ecephys_channel(ecephys_probe(ecephys_session[stimulus_name$in'{stype}'])))"
            bundles = _query_all(client, replica.warehouse_url, q)
            assert bundles and all(isinstance(json.loads(b["data"]), dict) for b in bundles)
            seen += [b["ecephys_unit_id"] for b in bundles]
        session = _records(dataset_dir, "EcephysSession")[0]["id"]
        q = f"criteria=model::EcephysUnitMetricBundle,rma::criteria,ecephys_unit(ecephys_channel(ecephys_probe(ecephys_session[id$in{session}])))"
        by_session = _query_all(client, replica.warehouse_url, q)
    assert sorted(seen) == sorted(u["id"] for u in units)
    assert 0 < len(by_session) < len(units)


def test_a_bad_query_gets_the_error_envelope(replica: Replica) -> None:
    """Anything the server cannot parse answers success false with a string msg."""
    with httpx.Client(timeout=30) as client:
        body = client.get(f"{replica.warehouse_url}/api/v2/data/query.json?criteria=model::NoSuchModel").json()
    assert body["success"] is False and isinstance(body["msg"], str) and body["msg"]


def test_s3_listing_is_the_whole_cache(replica: Replica, dataset_dir: Path) -> None:
    """Listing the prefix page by page yields every object with the index's size and ETag."""
    index = json.loads((dataset_dir / "dataset.json").read_text())
    listed: dict[str, tuple[int, str]] = {}
    token: str | None = None
    pages = 0
    with httpx.Client(timeout=30) as client:
        while True:
            params = {"list-type": "2", "prefix": PREFIX, "max-keys": "7"}
            if token:
                params["continuation-token"] = token
            root = ET.fromstring(client.get(replica.s3_url, params=params).content)
            pages += 1
            for item in root.iter(f"{S3}Contents"):
                listed[item.findtext(f"{S3}Key", "")] = (int(item.findtext(f"{S3}Size", "0")), item.findtext(f"{S3}ETag", ""))
            if root.findtext(f"{S3}IsTruncated") != "true":
                break
            token = root.findtext(f"{S3}NextContinuationToken")
    assert pages > 2
    assert listed == {k: (v["size"], v["etag"]) for k, v in index["objects"].items()}


def test_s3_object_ranges_match_the_file(replica: Replica, dataset_dir: Path) -> None:
    """A ranged GET of an S3 object returns exactly those bytes of the file, with its ETag."""
    index = json.loads((dataset_dir / "dataset.json").read_text())
    key = next(k for k in index["objects"] if k.endswith("_lfp.nwb"))
    data = (dataset_dir / "bucket" / key).read_bytes()
    with httpx.Client(timeout=30) as client:
        response = client.get(f"{replica.s3_url}/{key}", headers={"Range": "bytes=1000-1999"})
    assert response.status_code == 206
    assert response.content == data[1000:2000]
    assert response.headers["etag"] == index["objects"][key]["etag"]
