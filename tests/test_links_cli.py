"""``ecephys-dl links`` end to end against the replica: the published digests, every source's URL, and aria2c using them."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecephys_dl.published import load_published, write_published
from ecephys_dl.replica import Replica
from ecephys_dl.replica.dataset import PREFIX

pytestmark = pytest.mark.timeout(240)


def _session(dataset_dir: Path) -> int:
    return int(json.loads((dataset_dir / "records" / "EcephysSession.json").read_text())[0]["id"])


def _args(replica: Replica, cache: Path, *rest: str, source: str = "warehouse") -> list[str]:
    # Every source on loopback, so every URL links prints is the replica's.
    return ["--cache-dir", str(cache), "--source", source, "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url, "--dandi-url", replica.dandi_url,
            "--retry-wait", "0.02", "--timeout", "10", *rest]  # fmt: skip


def _bucket_file(dataset_dir: Path, relative: str) -> bytes:
    return (dataset_dir / "bucket" / PREFIX / relative).read_bytes()


def _table_without(dataset_dir: Path, tmp_path: Path, relative: str) -> Path:
    """The replica's published table without the row of ``relative``."""
    path = tmp_path / "published_files.csv"
    write_published(path, [f for f in load_published(dataset_dir / "published_files.csv") if f.cache_path != relative])
    return path


def test_json_carries_the_published_digest_and_every_url_and_each_url_serves_the_file(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any, client: httpx.Client) -> None:
    """Session and LFP files: sha256 is the file's real SHA-256; urls are the warehouse's, the S3 mirror's and DANDI's,
    in that order, and each of them (DANDI's through its 302) serves the file's bytes."""
    session = _session(dataset_dir)
    result = run(*_args(replica, tmp_path / "cache", "links", str(session), "--with-lfp", "--format", "json"))
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert {r["kind"] for r in rows} == {"session", "lfp"} and len(rows) >= 2
    published = load_published(dataset_dir / "published_files.csv")
    for row in rows:
        data = _bucket_file(dataset_dir, row["path"])
        file = published.by_path(row["path"])
        assert file is not None
        assert row["sha256"] == hashlib.sha256(data).hexdigest() == file.sha256
        warehouse, s3, dandi = row["urls"]
        assert row["url"] == warehouse and warehouse.startswith(f"{replica.warehouse_url}/api/v2/well_known_file_download/")
        assert s3 == f"{replica.s3_url}/{PREFIX}{row['path']}"
        assert dandi == f"{replica.dandi_url}/assets/{file.dandi_asset_id}/download/"
        for url in row["urls"]:
            answer = client.get(url, follow_redirects=True)
            assert (answer.status_code, answer.content == data) == (200, True), url
        assert client.get(dandi).status_code == 302


def test_csv_carries_the_digest_and_the_urls_separated_by_spaces(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """The csv form has the json form's fields: sha256, and urls joined by a space."""
    session = _session(dataset_dir)
    common = _args(replica, tmp_path / "cache", "links", str(session), "--with-lfp", "--format")
    as_json = json.loads(run(*common, "json").out)
    rows = list(csv.DictReader(io.StringIO(run(*common, "csv").out)))
    assert [(r["path"], r["url"], r["sha256"], r["urls"].split(" ")) for r in rows] == [(j["path"], j["url"], j["sha256"], j["urls"]) for j in as_json]
    assert any(r["kind"] == "lfp" for r in rows) and all(len(r["sha256"]) == 64 for r in rows)


def test_a_file_the_published_table_does_not_hold_has_no_digest_and_no_dandi_url(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """Where the published table has no row, sha256 is null (empty in csv), there is no DANDI URL, and aria2 gets no checksum."""
    session = _session(dataset_dir)
    cache = tmp_path / "cache"
    first = json.loads(run(*_args(replica, cache, "links", str(session), "--lfp-only", "--format", "json")).out)[0]["path"]
    table = _table_without(dataset_dir, tmp_path, first)
    common = _args(replica, cache, "--published-table", str(table), "links", str(session), "--lfp-only", "--format")
    rows = {r["path"]: r for r in json.loads(run(*common, "json").out)}
    assert rows[first]["sha256"] is None and len(rows[first]["urls"]) == 2
    assert all(len(r["sha256"]) == 64 and len(r["urls"]) == 3 for p, r in rows.items() if p != first)
    assert {r["path"]: r["sha256"] for r in csv.DictReader(io.StringIO(run(*common, "csv").out))}[first] == ""
    aria2 = run(*common, "aria2").out
    assert aria2.count("  checksum=sha-256=") == len(rows) - 1
    entry = aria2.split(f"  out={Path(first).name}\n", 1)[1]
    assert not entry.startswith("  checksum=")


def test_links_from_the_s3_mirror_put_its_url_first_and_ask_the_warehouse_nothing(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """--source s3: the mirror's URL, then DANDI's; the warehouse's link would take RMA queries, so it is left out."""
    session = _session(dataset_dir)
    result = run(*_args(replica, tmp_path / "cache", "links", str(session), "--with-lfp", "--format", "json", source="s3"))
    assert result.code == 0, result.err
    rows = json.loads(result.out)
    assert {r["kind"] for r in rows} == {"session", "lfp"}
    for row in rows:
        assert row["urls"][0] == row["url"] == f"{replica.s3_url}/{PREFIX}{row['path']}"
        assert len(row["urls"]) == 2 and row["urls"][1].startswith(f"{replica.dandi_url}/assets/")
    assert not [r["path"] for r in replica.requests() if r["path"].startswith("/api/v2/")]


def test_aria2c_falls_back_to_the_other_sources_and_rejects_a_file_whose_digest_differs(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """With the warehouse and the S3 mirror failing, aria2c fetches every file from DANDI (through its 302), checks each
    against the published digest, keeps those that match byte for byte, and refuses the one whose published digest was changed."""
    if shutil.which("aria2c") is None:
        pytest.skip("aria2c is not installed")
    session = _session(dataset_dir)
    cache = tmp_path / "cache"
    source_table = load_published(dataset_dir / "published_files.csv")
    wrong = next(f for f in source_table if f.session_id == session and f.probe_id is not None)
    table = tmp_path / "published_files.csv"
    write_published(table, [dataclasses.replace(f, sha256="0" * 64) if f == wrong else f for f in source_table])
    listing = tmp_path / "links.aria2"
    listing.write_text(run(*_args(replica, cache, "--published-table", str(table), "links", str(session), "--with-lfp", "--format", "aria2")).out)
    assert f"  out={Path(wrong.cache_path).name}\n  checksum=sha-256={'0' * 64}\n" in listing.read_text()
    replica.set_faults(["error:status=503,paths=/api/v2/well_known_file_download/*|*/visual-coding-neuropixels/ecephys-cache/*.nwb"])
    replica.clear_requests()
    done = subprocess.run(["aria2c", "--no-conf", "--console-log-level=error", "-i", str(listing), "--allow-overwrite=true", "--max-tries=1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 32, done.stdout + done.stderr  # aria2's "checksum validation failed"
    assert "Checksum error detected" in done.stdout and wrong.cache_path in done.stdout
    others = [f for f in source_table if f.session_id == session and f != wrong]
    for file in others:
        assert (cache / file.cache_path).read_bytes() == _bucket_file(dataset_dir, file.cache_path), file.cache_path
    assert (cache / f"{wrong.cache_path}.aria2").exists()  # aria2 holds it unfinished
    refused = {r["path"].split("/")[1] for r in replica.requests() if r["status"] == 503}
    assert refused == {"api", replica.s3_url.rsplit("/", 1)[1]}  # both other sources were tried
    redirected = [r for r in replica.requests() if r["path"].startswith("/api/assets/") and r["status"] == 302]
    assert len(redirected) == len(others) + 1  # every file came through DANDI's download endpoint
