"""`ecephys-dl verify` end to end: exit codes, reports, and --repair bringing a damaged cache back.

A cache is filled by `ecephys-dl fetch` from the replica, damaged for real on disk, checked, and
repaired; the repaired tree must equal the replica's source files byte for byte.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from ecephys_dl.replica import Replica
from ecephys_dl.replica.dataset import PREFIX

pytestmark = pytest.mark.timeout(300)


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


def _args(replica: Replica, cache: Path, *rest: str) -> list[str]:
    return ["--cache-dir", str(cache), "--source", "warehouse", "--warehouse-url", replica.warehouse_url, "--retry-wait", "0.02", *rest]


@pytest.fixture
def filled(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> Path:
    """A cache holding one session with its LFP files, fetched and verified."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    cache = tmp_path / "cache"
    assert run(*_args(replica, cache, "fetch", str(session), "--with-lfp", "-q")).code == 0
    return cache


def _source(dataset_dir: Path, relative: str) -> bytes:
    return (dataset_dir / "bucket" / PREFIX / relative).read_bytes()


def _damage(cache: Path, dataset_dir: Path) -> dict[str, str]:
    """Damage several files in different ways; return relative path -> expected status."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    nwbs = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.nwb"))
    truncated, html, flipped, gone = nwbs[0], nwbs[1], nwbs[2], nwbs[3]
    data = (cache / truncated).read_bytes()
    (cache / truncated).write_bytes(data[: len(data) // 2])
    (cache / html).write_bytes(b"<html><body>502 Bad Gateway</body></html>\n")
    raw = bytearray((cache / flipped).read_bytes())
    raw[len(raw) - 4096] ^= 0xFF  # inside the bulk data near the end: the file still opens
    (cache / flipped).write_bytes(bytes(raw))
    (cache / gone).unlink()
    units = (cache / "units.csv").read_bytes()
    (cache / "units.csv").write_bytes(units[: len(units) // 2])
    leftover = cache / f"session_{session}" / "leftover.nwb.part"
    leftover.write_bytes(b"x")
    days_ago = time.time() - 3 * 86400  # old enough that no running fetch can own it
    os.utime(leftover, (days_ago, days_ago))
    return {truncated: "truncated", html: "not-hdf5", flipped: "hash-mismatch", gone: "missing", "units.csv": "bad-csv"}


def test_a_sound_cache_verifies_at_every_level(filled: Path, replica: Replica, run: Any) -> None:
    """Everything fetched is sound at quick, standard and deep levels: exit 0."""
    for level in ("--quick", None, "--deep"):
        result = run(*_args(replica, filled, "verify", *([level] if level else []), "--format", "json"))
        assert result.code == 0, result.out
        report = json.loads(result.out)
        assert report["summary"]["ok"] == report["summary"]["files"] > 5


def test_damage_is_named_and_repair_restores_the_source_bytes(filled: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """Truncated, HTML, flipped byte, missing, cut CSV, stray partial: each named, exit 1; --repair mends all."""
    expected = _damage(filled, dataset_dir)
    result = run(*_args(replica, filled, "verify", "--deep", "--format", "json"))
    assert result.code == 1
    statuses = {r["path"]: r["status"] for r in json.loads(result.out)["results"]}
    for relative, status in expected.items():
        assert statuses[relative] == status, (relative, statuses[relative])
    assert "stray-partial" in statuses.values()
    table = run(*_args(replica, filled, "verify"))
    assert table.code == 1 and "truncated" in table.out
    repaired = run(*_args(replica, filled, "verify", "--deep", "--repair", "--clean", "--format", "json"))
    assert repaired.code == 0, repaired.out + repaired.err
    for relative in expected:
        assert (filled / relative).read_bytes() == _source(dataset_dir, relative), relative
    assert not list(filled.rglob("*.part"))


def test_a_bad_manifest_is_reported_and_repair_rewrites_it_keeping_the_old_one(filled: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """A manifest of another version is bad-manifest (exit 1); --repair writes AllenSDK's and keeps the old aside."""
    old = json.dumps({"manifest": [{"type": "manifest_version", "value": "0.2.0"}]}).encode()
    (filled / "manifest.json").write_bytes(old)
    result = run(*_args(replica, filled, "verify", "--format", "json"))
    assert result.code == 1
    assert {r["path"]: r["status"] for r in json.loads(result.out)["results"]}["manifest.json"] == "bad-manifest"
    assert run(*_args(replica, filled, "verify", "--repair", "-q")).code == 0
    assert (filled / "manifest.json").read_bytes() == _source(dataset_dir, "manifest.json")
    assert [p.read_bytes() for p in filled.glob("manifest.json.bad-*")] == [old]


def test_expected_files_count_as_missing_with_all(filled: Path, replica: Replica, dataset_dir: Path, run: Any) -> None:
    """--all: session files of the dataset that were never fetched are reported missing."""
    result = run(*_args(replica, filled, "verify", "--all", "--format", "json"))
    assert result.code == 1
    missing = {r["path"] for r in json.loads(result.out)["results"] if r["status"] == "missing"}
    others = [s["id"] for s in _records(dataset_dir, "EcephysSession")[1:]]
    assert {f"session_{s}/session_{s}.nwb" for s in others} <= missing


def test_time_limit_continues_next_time_and_status_shows_the_pass(filled: Path, replica: Replica, run: Any) -> None:
    """A tiny --time-limit stops early (no problems reported for unchecked files); later runs finish the pass."""
    first = json.loads(run(*_args(replica, filled, "verify", "--deep", "--time-limit", "1ms", "--jobs", "1", "--format", "json")).out)
    assert first["summary"]["complete"] is False
    for _ in range(50):
        result = json.loads(run(*_args(replica, filled, "verify", "--deep", "--time-limit", "1ms", "--jobs", "1", "--format", "json")).out)
        if result["summary"]["complete"]:
            break
    assert result["summary"]["complete"] is True
    status = run("--cache-dir", str(filled), "status")
    assert "last verify pass: " in status.out and "deep" in status.out

