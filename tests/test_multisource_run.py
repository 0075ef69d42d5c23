"""``ecephys-dl fetch`` with every source at once (the default ``--source auto``), end to end over
real HTTP against the replica's warehouse, S3 mirror and DANDI archive: every fault the replica
has, aimed at one source while the others stay good, leaves the published bytes at the final
path and exits 0; all sources bad is the documented failure, with the partials kept."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Run

from ecephys_dl.errors import ExitCode
from ecephys_dl.partial import read_record, sidecar_path
from ecephys_dl.published import load_published
from ecephys_dl.replica import Replica

pytestmark = pytest.mark.timeout(120)

# The NWB files of each source only: the metadata CSVs of the S3 mirror stay good.
NWB = {"s3": "/allen-brain-observatory/*.nwb", "dandi": "/dandiarchive/*", "warehouse": "/api/v2/well_known_file_download/*"}
FAST = ["--connections", "6", "--jobs", "2", "--stall-timeout", "1"]

# Every fault of a file answer, each aimed at one source in turn.
FILE_FAULTS = [
    "drop:after=16K",
    "error:status=503",
    "error:status=429,retry_after=30",
    "ignore-range",
    "latency:seconds=0.3",
    "short:bytes=16K",
    "stall:seconds=30,after=8K",
    "html",
    "redirect:to=http://127.0.0.1:9/{path}",
    "garbage:body=not%20the%20file",
    "oversize:length=1T",
    "endless",
    "gzip-bomb:size=64M",
    "rate:bps=32K",
]
# Every fault of a listing or query: the source cannot resolve the selection and is left out.
RESOLUTION_FAULTS = [
    ("warehouse", "rma-zero:after_row=0"),
    ("warehouse", "rma-error:message=broken"),
    ("warehouse", "rma-field:name=download_link,value=/elsewhere"),
    ("warehouse", "rma-hang:seconds=30"),
    ("s3", "listing-key:key=visual-coding-neuropixels/ecephys-cache/session_1/session_1.nwb,size=1K"),
    ("dandi", "asset-field:name=metadata.digest.dandi:sha2-256,value=00"),
    ("dandi", "asset-duplicate"),
]


def _args(replica: Replica, cache: Path, *rest: str) -> list[str]:
    return ["--cache-dir", str(cache), "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url, "--dandi-url", replica.dandi_url,
            "--retries", "3", "--retry-wait", "0.02", "--timeout", "3", *rest]  # fmt: skip


def _session(dataset_dir: Path) -> int:
    """The session of the largest published file."""
    table = load_published(dataset_dir / "published_files.csv")
    return max(table, key=lambda f: f.size).session_id


def _published(dataset_dir: Path) -> dict[str, str]:
    return {f.cache_path: f.sha256 for f in load_published(dataset_dir / "published_files.csv")}


def _check_cache(cache: Path, dataset_dir: Path, session: int) -> None:
    """Every NWB file of the session is in place with the published SHA-256; no partial is left."""
    published = _published(dataset_dir)
    found = sorted(cache.glob(f"session_{session}/*.nwb"))
    assert found
    for path in found:
        relative = path.relative_to(cache).as_posix()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == published[relative], relative
    assert not list(cache.glob(f"session_{session}/*.part"))


def _json(out: str) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(out)
    return document


def test_the_default_takes_pieces_from_all_three_sources_and_counts_them(start: Callable[..., Replica], dataset_dir: Path, tmp_path: Path,
                                                                         run: Callable[..., Run]) -> None:  # fmt: skip
    replica = start()
    session = _session(dataset_dir)
    done = run(*_args(replica, tmp_path / "cache", "fetch", str(session), "--with-lfp", "--format", "json", *FAST))
    assert done.code == 0, done.err
    _check_cache(tmp_path / "cache", dataset_dir, session)
    summary = _json(done.out)
    sources = {s["source"]: s for s in summary["sources"]}
    assert set(sources) == {"s3", "dandi", "warehouse"}
    assert all(s["bytes"] > 0 and s["dropped"] is None for s in sources.values())
    assert sum(s["bytes"] for s in sources.values()) == summary["bytes_fetched"]
    for entry in summary["files"]:
        assert sum(share["bytes"] for share in entry["sources"]) == entry["fetched"]
    # The replica's log agrees: each source sent at least what it is counted for.
    sent: dict[str, int] = {}
    for record in replica.requests():
        if record["method"] == "GET" and record["status"] == 206:
            name = next((n for n, glob in NWB.items() if record["path"].startswith(glob.split("*")[0])), None)
            if name is not None and (name != "s3" or record["path"].split("?")[0].endswith(".nwb")):
                sent[name] = sent.get(name, 0) + int(record["bytes"])
    for name, share in sources.items():
        assert sent[name] >= share["bytes"]


@pytest.mark.parametrize("index", range(len(FILE_FAULTS)), ids=FILE_FAULTS)
def test_a_fault_in_one_source_leaves_the_published_bytes_and_exit_0(start: Callable[..., Replica], dataset_dir: Path, tmp_path: Path,
                                                                      run: Callable[..., Run], index: int) -> None:  # fmt: skip
    fault = FILE_FAULTS[index]
    bad = ("s3", "dandi", "warehouse")[index % 3]
    replica = start(f"{fault},paths={NWB[bad]}" if ":" in fault else f"{fault}:paths={NWB[bad]}")
    session = _session(dataset_dir)
    done = run(*_args(replica, tmp_path / "cache", "-v", "fetch", str(session), "--format", "json", *FAST))
    assert done.code == 0, done.err
    _check_cache(tmp_path / "cache", dataset_dir, session)
    summary = _json(done.out)
    assert summary["failed"] == 0


def test_a_source_serving_other_bytes_of_the_right_size_is_found_and_dropped(start: Callable[..., Replica], dataset_dir: Path, tmp_path: Path,
                                                                              run: Callable[..., Run]) -> None:  # fmt: skip
    """The preferred source flips the second half of the file, length and ETag kept: the file comes out
    wrong, its bytes from that source are fetched again from the others, and the source is dropped."""
    replica = start(f"same-size:bytes=1M,paths={NWB['s3']}")
    session = _session(dataset_dir)
    cache = tmp_path / "cache"
    # One connection: the first source in the order, the liar, serves the whole file.
    done = run(*_args(replica, cache, "-v", "fetch", str(session), "--format", "json", "--connections", "1", "--jobs", "1"))
    assert done.code == 0, done.err
    _check_cache(cache, dataset_dir, session)
    summary = _json(done.out)
    liar = {s["source"]: s for s in summary["sources"]}["s3"]
    assert liar["dropped"] == "served other bytes than the published ones"
    assert "the bytes from s3 are fetched again" in done.err and "source s3 dropped for the run" in done.err
    shares = {share["source"]: share for share in summary["files"][0]["sources"]}
    assert shares["s3"]["dropped"] == "served other bytes than the published ones"
    assert sum(share["bytes"] for source, share in shares.items() if source != "s3") == summary["files"][0]["size"]


@pytest.mark.parametrize(("bad", "fault"), RESOLUTION_FAULTS, ids=[f for _, f in RESOLUTION_FAULTS])
def test_a_source_that_cannot_resolve_is_left_out_and_the_others_serve(start: Callable[..., Replica], dataset_dir: Path, tmp_path: Path,
                                                                        run: Callable[..., Run], bad: str, fault: str) -> None:  # fmt: skip
    replica = start(fault)
    session = _session(dataset_dir)
    # The tables come from the S3 mirror first: they are fetched before the fault matters.
    done = run(*_args(replica, tmp_path / "cache", "fetch", str(session), "--format", "json", *FAST))
    assert done.code == 0, done.err
    _check_cache(tmp_path / "cache", dataset_dir, session)


def test_a_file_changed_upstream_is_never_put_in_place(start: Callable[..., Replica], dataset_dir: Path, tmp_path: Path,
                                                       run: Callable[..., Run]) -> None:  # fmt: skip
    """The replica's ``change`` changes the stored file itself, so every source serves the new bytes:
    not the published ones, so the file fails and nothing is put in place."""
    replica = start("change:after=1,paths=" + "|".join(NWB.values()))
    session = _session(dataset_dir)
    cache = tmp_path / "cache"
    done = run(*_args(replica, cache, "fetch", str(session), "--format", "json", *FAST))
    assert done.code == ExitCode.FAILED
    assert f"failed session_{session}.nwb" in done.err
    assert not list(cache.glob(f"session_{session}/*.nwb"))


def test_every_source_bad_is_a_failure_and_keeps_the_partials(start: Callable[..., Replica], dataset_dir: Path, tmp_path: Path,
                                                              run: Callable[..., Run]) -> None:  # fmt: skip
    every = "paths=" + "|".join(NWB.values())
    replica = start(f"drop:after=24K,times=12,{every}", f"error:status=503,{every}")
    session = _session(dataset_dir)
    cache = tmp_path / "cache"
    done = run(*_args(replica, cache, "fetch", str(session), "--format", "json", *FAST))
    assert done.code == ExitCode.FAILED
    summary = _json(done.out)
    assert summary["failed"] >= 1
    assert not list(cache.glob(f"session_{session}/*.nwb"))  # nothing unverified at a final path
    parts = list(cache.glob(f"session_{session}/*.nwb.part"))
    assert parts
    kept = [read_record(sidecar_path(p))[0] for p in parts]
    assert any(record is not None and record.trusted for record in kept)
