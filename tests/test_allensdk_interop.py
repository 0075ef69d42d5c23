"""Interoperability with the real client, AllenSDK 2.16.2, in both directions.

AllenSDK lives in its own virtual environment (it pins old numpy and pandas); ``ALLENSDK_PYTHON``
names its interpreter (`.ci/run` and `make test` create it). Without it these tests are skipped.

- AllenSDK pointed at the replica downloads a session, and the metadata CSVs it writes are
  byte-identical to the ones ecephys-dl writes.
- AllenSDK pointed at a dead port, over a cache written by ``ecephys-dl fetch --with-lfp`` (from the
  warehouse, or ``--source dandi``), opens the session table, the units, the session and a probe's
  LFP without a single request.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from ecephys_dl.cli import main
from ecephys_dl.layout import CacheLayout
from ecephys_dl.replica import Replica
from ecephys_dl.replica.dataset import PREFIX

ALLENSDK_PYTHON = os.environ.get("ALLENSDK_PYTHON", "")
pytestmark = [
    pytest.mark.skipif(not (ALLENSDK_PYTHON and Path(ALLENSDK_PYTHON).exists()), reason="ALLENSDK_PYTHON is not set"),
    pytest.mark.timeout(600),
]

PRELUDE = """
import json, sys, warnings
warnings.simplefilter("ignore")
from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache
host, manifest = sys.argv[1], sys.argv[2]
cache = EcephysProjectCache.from_warehouse(scheme="http", host=host, manifest=manifest)
"""


def _allensdk(script: str, *args: str) -> dict[str, Any]:
    done = subprocess.run([ALLENSDK_PYTHON, "-c", PRELUDE + script, *args], capture_output=True, text=True, timeout=540)
    assert done.returncode == 0, done.stderr[-4000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


def _ecephys_dl(*args: str) -> None:
    with pytest.raises(SystemExit) as done:
        main(list(args))
    assert done.value.code in (0, None)


def test_allensdk_downloads_from_the_replica_and_writes_our_csvs(replica: Replica, dataset_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """AllenSDK against the replica: its session download is the source file; its CSVs equal ecephys-dl's byte for byte."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    theirs = tmp_path / "allensdk"
    theirs.mkdir()
    host = replica.warehouse_url.removeprefix("http://")
    got = _allensdk(
        "table = cache.get_session_table(); cache.get_units(); cache.get_probes(); cache.get_channels()\n"
        f"session = cache.get_session_data({session})\n"
        "print(json.dumps({'sessions': len(table), 'id': int(session.ecephys_session_id)}))",
        host,
        str(theirs / "manifest.json"),
    )
    assert got == {"sessions": len(_records(dataset_dir, "EcephysSession")), "id": session}
    relative = f"session_{session}/session_{session}.nwb"
    assert (theirs / relative).read_bytes() == (dataset_dir / "bucket" / PREFIX / relative).read_bytes()
    ours = tmp_path / "ours"
    _ecephys_dl("--cache-dir", str(ours), "--source", "warehouse", "--warehouse-url", replica.warehouse_url, "sessions", "--format", "ids")
    for name in ("manifest.json", "sessions.csv", "probes.csv", "channels.csv", "units.csv"):
        assert (ours / name).read_bytes() == (theirs / name).read_bytes(), name

    # The cache AllenSDK filled has no records of ours: verify --deep proves its NWB file equal to
    # the published bytes, and names the same file with one byte flipped mid-file as not the archive's.
    def deep() -> dict[str, Any]:
        with pytest.raises(SystemExit) as done:
            main(["--cache-dir", str(theirs), "verify", "--deep", "--format", "json"])
        assert done.value.code in (0, 1)
        return {r["path"]: r for r in json.loads(capsys.readouterr().out)["results"]}

    capsys.readouterr()
    proven = deep()[relative]
    assert (proven["status"], proven["reference"]) == ("ok", "published:000021"), proven
    raw = bytearray((theirs / relative).read_bytes())
    raw[len(raw) // 2] ^= 0x01
    (theirs / relative).write_bytes(bytes(raw))
    # The first pass recorded its hashes: now it has changed since; without that record, it is not the archive's bytes.
    assert deep()[relative]["status"] == "hash-mismatch"
    CacheLayout(theirs).record(relative).unlink()
    flipped = deep()[relative]
    assert (flipped["status"], flipped["reference"]) == ("differs-from-published", "published:000021"), flipped


@pytest.mark.parametrize("source", ["warehouse", "dandi"])
def test_allensdk_opens_an_ecephys_dl_cache_without_a_request(replica: Replica, dataset_dir: Path, tmp_path: Path, source: str) -> None:
    """Over a cache from `ecephys-dl fetch --with-lfp` (from the warehouse, or from DANDI with the S3 mirror's CSVs),
    AllenSDK (host 127.0.0.1:1) reads tables, the session and an LFP."""
    probes = _records(dataset_dir, "EcephysProbe")
    probe = next(p for p in probes if p["use_lfp_data"])
    session = probe["ecephys_session_id"]
    cache = tmp_path / "cache"
    _ecephys_dl("--cache-dir", str(cache), "--source", source, "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url,
                "--dandi-url", replica.dandi_url, "--retry-wait", "0.05",
                "fetch", str(session), "--with-lfp", "--connections", "2", "-q")  # fmt: skip
    before = set(cache.rglob("*"))
    got = _allensdk(
        "table = cache.get_session_table(); units = cache.get_units()\n"
        f"session = cache.get_session_data({session})\n"
        f"lfp = session.get_lfp({probe['id']})\n"
        "print(json.dumps({'sessions': len(table), 'units': len(units), 'unit_count': int(table.loc[%d, 'unit_count']),"
        " 'probes': len(session.probes), 'session_units': len(session.units), 'lfp_channels': int(lfp.shape[1]),"
        " 'lfp_samples': int(lfp.shape[0])}))" % session,
        "127.0.0.1:1",
        str(cache / "manifest.json"),
    )
    assert got["sessions"] == len(_records(dataset_dir, "EcephysSession"))
    assert got["probes"] == sum(1 for p in probes if p["ecephys_session_id"] == session)
    assert got["session_units"] > 0 and got["lfp_samples"] > 0 and got["lfp_channels"] > 0
    import sys

    ours = subprocess.run([sys.executable, "-m", "ecephys_dl", "--cache-dir", str(cache), "sessions", "--format", "json", "--id", str(session)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert json.loads(ours.stdout)[0]["unit_count"] == got["unit_count"]
    # AllenSDK wrote nothing new into the cache: everything it needed was there.
    assert set(cache.rglob("*")) == before
