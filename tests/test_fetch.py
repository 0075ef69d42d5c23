"""`ecephys-dl fetch` end to end: from the replica over HTTP into an AllenSDK cache on disk.

Every fetched file is compared byte for byte with the replica's source file; the request log
shows what was asked; nothing unverified is ever found at a final path.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from support import holes, merged

from ecephys_dl.replica import Fault, Replica
from ecephys_dl.replica.dataset import PREFIX

pytestmark = pytest.mark.timeout(240)


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


def _args(replica: Replica, cache: Path, *rest: str, source: str = "warehouse") -> list[str]:
    return ["--cache-dir", str(cache), "--source", source, "--warehouse-url", replica.warehouse_url, "--s3-url", replica.s3_url,
            "--retries", "6", "--retry-wait", "0.02", "--timeout", "10", *rest]  # fmt: skip


SMALL = ["--connections", "3", "--jobs", "3", "--stall-timeout", "2"]


def _session_with_missing_lfp(dataset_dir: Path) -> tuple[int, list[int], int]:
    """A session that has a probe without LFP: (session, probes with LFP, the probe without)."""
    probes = _records(dataset_dir, "EcephysProbe")
    missing = next(p for p in probes if not p["use_lfp_data"])
    session = missing["ecephys_session_id"]
    return session, [p["id"] for p in probes if p["ecephys_session_id"] == session and p["use_lfp_data"]], missing["id"]


def _same_as_source(cache: Path, dataset_dir: Path, relative: str) -> bool:
    return (cache / relative).read_bytes() == (dataset_dir / "bucket" / PREFIX / relative).read_bytes()


def _file_requests(replica: Replica) -> list[dict[str, Any]]:
    return [r for r in replica.requests() if "well_known_file_download" in r["path"] or r["path"].endswith(".nwb")]


@pytest.mark.parametrize("source", ["warehouse", "s3"])
def test_fetch_with_lfp_builds_the_allensdk_tree(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any, source: str) -> None:
    """A session and its LFP files land at AllenSDK's paths, byte-identical, recorded, with no leftovers."""
    session, lfp_probes, no_lfp = _session_with_missing_lfp(dataset_dir)
    cache = tmp_path / "cache"
    result = run(*_args(replica, cache, "fetch", str(session), "--with-lfp", *SMALL, "--format", "json", source=source))
    assert result.code == 0, result.err
    summary = json.loads(result.out)
    expected = [f"session_{session}/session_{session}.nwb", *(f"session_{session}/probe_{p}_lfp.nwb" for p in lfp_probes)]
    for relative in expected:
        assert _same_as_source(cache, dataset_dir, relative), relative
        record = json.loads((cache / ".ecephys-dl" / "records" / (relative + ".json")).read_text())
        assert record["size"] == (cache / relative).stat().st_size and len(record["sha256"]) == 64
    assert summary["fetched"] == len(expected) and summary["failed"] == 0
    assert {"session_id": session, "probe_id": no_lfp} in summary["lfp_not_available"]
    assert "not available" in result.err and str(no_lfp) in result.err
    assert _same_as_source(cache, dataset_dir, f"session_{session}/session_{session}_analysis_metrics.csv")
    leftovers = [p.name for p in (cache / f"session_{session}").iterdir() if p.name.endswith((".part", ".json", ".tmp"))]
    assert leftovers == []
    assert (cache / "manifest.json").is_file()


def test_a_session_metrics_csv_that_fails_is_reported_and_the_nwb_files_still_land(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """The metrics CSVs come down beside the NWB files: one that cannot be had is named in the summary and
    makes the exit code 1, and every NWB file is still fetched and verified."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    cache = tmp_path / "cache"
    with Replica(dataset_dir, faults=[Fault.parse("error:status=503,retry_after=0,paths=*session_*_analysis_metrics.csv")]) as replica:
        result = run(*_args(replica, cache, "fetch", str(session), *SMALL, "--format", "json", source="s3"))
    assert result.code == 1, result.err
    summary = json.loads(result.out)
    assert summary["fetched"] == 1 and summary["failed"] == 0
    assert [f.split(":")[0] for f in summary["other_failures"]] == [f"session {session} metrics"]
    assert f"failed session_{session}_analysis_metrics.csv" in result.err
    assert _same_as_source(cache, dataset_dir, f"session_{session}/session_{session}.nwb")
    assert not (cache / f"session_{session}" / f"session_{session}_analysis_metrics.csv").exists()


def test_a_second_run_fetches_nothing(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """Files verified earlier are skipped without a single file request; the dry run says skip."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    cache = tmp_path / "cache"
    assert run(*_args(replica, cache, "fetch", str(session), "--with-lfp", *SMALL)).code == 0
    replica.wait_requests(1)
    replica.clear_requests()
    again = run(*_args(replica, cache, "fetch", str(session), "--with-lfp", *SMALL, "--format", "json"))
    assert again.code == 0
    summary = json.loads(again.out)
    assert summary["fetched"] == 0 and summary["skipped"] >= 2
    assert _file_requests(replica) == []
    plan = json.loads(run(*_args(replica, cache, "fetch", str(session), "--with-lfp", "--dry-run", "--format", "json")).out)
    assert {f["action"] for f in plan["files"]} == {"skip"} and plan["bytes_to_fetch"] == 0


def test_dry_run_plans_without_downloading(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """--dry-run lists every file with its size and action, and transfers nothing."""
    cache = tmp_path / "cache"
    result = run(*_args(replica, cache, "fetch", "--all", "--with-lfp", "--dry-run", "--format", "json"))
    assert result.code == 0, result.err
    plan = json.loads(result.out)
    index = json.loads((dataset_dir / "dataset.json").read_text())
    nwb = {k[len(PREFIX):]: v["size"] for k, v in index["objects"].items() if k.endswith(".nwb")}
    assert {f["path"]: f["size"] for f in plan["files"]} == nwb
    assert {f["action"] for f in plan["files"]} == {"download"}
    assert plan["bytes_to_fetch"] == sum(nwb.values())
    assert not list(cache.rglob("*.nwb")) and not list(cache.rglob("*.part"))
    table = run(*_args(replica, cache, "fetch", "--all", "--dry-run"))
    assert "fetch plan" in table.out and "to fetch" in table.out


def test_unknown_session_is_a_usage_error(replica: Replica, tmp_path: Path, run: Any) -> None:
    """An unknown session id exits 2 and names it; nothing is fetched."""
    result = run(*_args(replica, tmp_path / "cache", "fetch", "123456"))
    assert result.code == 2 and "123456" in result.err
    result = run(*_args(replica, tmp_path / "cache", "fetch"))
    assert result.code == 2 and "--all" in result.err


def test_not_enough_disk_space_is_exit_4(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """Too little free space for what is left to fetch (plus the reserve) exits 4 giving both numbers."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    result = run(*_args(replica, tmp_path / "cache", "fetch", str(session), "--reserve", "100000T"))
    assert result.code == 4
    assert "still to fetch" in result.err and "free" in result.err
    assert not list((tmp_path / "cache").rglob("*.nwb"))


def test_faults_on_every_download_still_give_identical_files(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """Drops, short bodies, 503s, stalls and an HTML page, mixed over the files: all end byte-identical."""
    faults = [Fault.parse(spec) for spec in (
        "drop:after=40K,share=0.3,paths=*well_known_file_download*", "short:bytes=30K,share=0.2,paths=*well_known_file_download*",
        "error:status=503,retry_after=0,share=0.2,paths=*well_known_file_download*",
        "stall:seconds=5,after=10K,share=0.1,paths=*well_known_file_download*", "html:times=2,paths=*well_known_file_download*")]  # fmt: skip
    session, lfp_probes, _ = _session_with_missing_lfp(dataset_dir)
    cache = tmp_path / "cache"
    with Replica(dataset_dir, faults=faults, seed=3) as replica:
        result = run(*_args(replica, cache, "fetch", str(session), "--with-lfp", *SMALL, "--format", "json"))
        log = replica.requests()
    assert result.code == 0, result.err
    for relative in [f"session_{session}/session_{session}.nwb", *(f"session_{session}/probe_{p}_lfp.nwb" for p in lfp_probes)]:
        assert _same_as_source(cache, dataset_dir, relative), relative
    assert any(r["fault"] for r in log)
    resumed = [r for r in log if r["range"] and not r["range"].startswith("bytes=0-")]
    assert resumed


def test_a_corrupt_file_in_place_is_replaced(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """A truncated file at the final path is fetched again and replaced by a verified one."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    relative = f"session_{session}/session_{session}.nwb"
    cache = tmp_path / "cache"
    source = (dataset_dir / "bucket" / PREFIX / relative).read_bytes()
    (cache / f"session_{session}").mkdir(parents=True)
    (cache / relative).write_bytes(source[: len(source) // 2])
    plan = json.loads(run(*_args(replica, cache, "fetch", str(session), "--dry-run", "--format", "json")).out)
    assert plan["files"][0]["action"] == "download" and "truncated" in plan["files"][0]["reason"]
    assert run(*_args(replica, cache, "fetch", str(session), *SMALL)).code == 0
    assert (cache / relative).read_bytes() == source


def test_a_file_that_never_verifies_fails_alone(dataset_dir: Path, tmp_path: Path, run: Any) -> None:
    """A server that always answers an HTML page for one file: that file fails (exit 1), the others land."""
    session, lfp_probes, _ = _session_with_missing_lfp(dataset_dir)
    index = json.loads((dataset_dir / "dataset.json").read_text())
    bad_id = next(k for k, v in index["downloads"].items() if v.endswith(f"probe_{lfp_probes[0]}_lfp.nwb"))
    cache = tmp_path / "cache"
    with Replica(dataset_dir, faults=[Fault.parse(f"html:paths=*/well_known_file_download/{bad_id}")]) as replica:
        result = run(*_args(replica, cache, "fetch", str(session), "--with-lfp", *SMALL, "--format", "json"))
    assert result.code == 1
    summary = json.loads(result.out)
    failed = [f for f in summary["files"] if f["status"] == "failed"]
    assert [f["relative"] for f in failed] == [f"session_{session}/probe_{lfp_probes[0]}_lfp.nwb"]
    assert not (cache / failed[0]["relative"]).exists()
    assert _same_as_source(cache, dataset_dir, f"session_{session}/session_{session}.nwb")


@pytest.mark.parametrize("source", ["warehouse", "s3"])
def test_a_fetch_by_id_plans_without_pandas_and_as_the_tables_do(replica: Replica, dataset_dir: Path, tmp_path: Path, run: Any,
                                                                  source: str) -> None:  # fmt: skip
    """Sessions and probes chosen by id are read with the csv module (pandas is slow to import) and plan
    exactly the files the AllenSDK views give for the same sessions through a filter."""
    session, lfp_probes, _ = _session_with_missing_lfp(dataset_dir)
    cache = tmp_path / "cache"
    assert run(*_args(replica, cache, "sessions", "--format", "ids", source=source)).code == 0  # the tables, into the cache
    plan = [sys.executable, "-X", "importtime", "-m", "ecephys_dl",
            *_args(replica, cache, "fetch", "--dry-run", "--format", "json", source=source)]  # fmt: skip
    quick = subprocess.run([*plan, str(session), "--with-lfp"], capture_output=True, text=True, timeout=120)
    assert quick.returncode == 0, quick.stderr
    imported = {line.split("|")[-1].strip() for line in quick.stderr.splitlines() if line.startswith("import time:")}
    assert "ecephys_dl.transfer" in imported and "pandas" not in imported
    # The same session through the views (a filter needs them): the same files, the same order.
    session_type = next(r["stimulus_name"] for r in _records(dataset_dir, "EcephysSession") if r["id"] == session)
    viewed = run(*_args(replica, cache, "fetch", "--dry-run", "--format", "json", str(session), "--with-lfp", "--session-type", session_type,
                        source=source))  # fmt: skip
    assert viewed.code == 0, viewed.err
    files = json.loads(quick.stdout)["files"]
    assert files == json.loads(viewed.out)["files"]
    assert {f["probe_id"] for f in files} == {None, *lfp_probes}
    unknown = run(*_args(replica, cache, "fetch", "--dry-run", "999999999", source=source))
    assert unknown.code == 2 and "no session 999999999" in unknown.err


def _final_files_are_sound(cache: Path, dataset_dir: Path) -> None:
    for path in cache.rglob("*.nwb"):
        relative = path.relative_to(cache).as_posix()
        assert path.read_bytes() == (dataset_dir / "bucket" / PREFIX / relative).read_bytes(), f"unverified bytes at {relative}"


def test_sigkill_at_random_points_then_a_rerun_completes(dataset_dir: Path, tmp_path: Path) -> None:
    """Killed with SIGKILL at several points, a final path never holds a bad file, and a rerun finishes the job."""
    import random

    cache = tmp_path / "cache"
    rng = random.Random(5)
    with Replica(dataset_dir, faults=[Fault.parse("rate:bps=400K,paths=*well_known_file_download*")]) as replica:
        args = [sys.executable, "-m", "ecephys_dl", *_args(replica, cache, "fetch", "--all", "--with-lfp", *SMALL)]
        for _ in range(3):
            child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + rng.uniform(1.5, 4.0)
            while time.monotonic() < deadline and child.poll() is None:
                _final_files_are_sound(cache, dataset_dir)
                time.sleep(0.1)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=30)
            _final_files_are_sound(cache, dataset_dir)
        replica.set_faults([])
        done = subprocess.run(args, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    index = json.loads((dataset_dir / "dataset.json").read_text())
    for key in (k for k in index["objects"] if k.endswith(".nwb")):
        assert _same_as_source(cache, dataset_dir, key[len(PREFIX):]), key
    assert not list(cache.rglob("*.part"))


def _total(ranges: list[list[int]]) -> int:
    return sum(b - a for a, b in ranges)


@pytest.mark.parametrize("reboot", [False, True], ids=["same-boot", "after-reboot"])
def test_after_sigkill_a_rerun_keeps_the_written_bytes_until_a_reboot(dataset_dir: Path, tmp_path: Path, reboot: bool) -> None:
    """SIGKILLed, a fetch leaves a record of the bytes it wrote (with the boot id) beside those it synced.
    A rerun on the same boot keeps every written byte and fetches only the rest; after a reboot
    (another boot id) only the synced bytes count. Either way the file ends byte-identical."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    relative = f"session_{session}/session_{session}.nwb"
    cache = tmp_path / "cache"
    sidecar = cache / (relative + ".part.json")
    source = (dataset_dir / "bucket" / PREFIX / relative).read_bytes()
    boot = Path("/proc/sys/kernel/random/boot_id")
    if not boot.exists():
        pytest.skip("the system does not say which boot this is")
    with Replica(dataset_dir, faults=[Fault.parse("rate:bps=200K,paths=*.nwb")]) as replica:
        args = [sys.executable, "-m", "ecephys_dl", *_args(replica, cache, "fetch", str(session), "--connections", "2", "--format", "json",
                                                           source="s3")]  # fmt: skip
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        record: dict[str, Any] = {}
        while time.monotonic() < deadline and child.poll() is None:
            try:
                record = json.loads(sidecar.read_text())
            except (OSError, ValueError):
                record = {}
            if _total(record.get("written", [])) >= 128 * 1024:
                break
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
        record = json.loads(sidecar.read_text())
        written, synced = record.get("written", record["ranges"]), record["ranges"]
        assert record["boot_id"] == boot.read_text().strip()
        assert _total(written) > _total(synced)  # killed before the next sync: some bytes only written
        data = (cache / (relative + ".part")).read_bytes()
        assert all(data[a:b] == source[a:b] for a, b in written)
        if reboot:
            sidecar.write_text(json.dumps({**record, "boot_id": "0" * 8 + "-another-boot"}))
        replica.set_faults([])
        # The killed run's requests are logged when the server notices; the rerun's arrive after this.
        rerun = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        done = subprocess.run(args, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        gets = [r for r in replica.wait_requests(1) if r["path"].endswith(".nwb") and r["method"] == "GET" and r["time"] >= rerun]
    kept = synced if reboot else written
    assert json.loads(done.stdout)["bytes_fetched"] == len(source) - _total(kept)
    # What the rerun asked for is exactly what was not kept (a range cut short by a split may overlap another).
    asked = [(int(first), int(last) + 1) for first, last in (r["range"].split("=")[1].split("-") for r in gets)]
    assert merged(asked) == holes([(a, b) for a, b in kept], len(source))
    assert _same_as_source(cache, dataset_dir, relative)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_cleanly_keeping_partials(dataset_dir: Path, tmp_path: Path, sig: signal.Signals, code: int) -> None:
    """SIGTERM (143) or Ctrl-C (130): transfers stop at a clean point, partials and their state stay for the next run."""
    cache = tmp_path / "cache"
    with Replica(dataset_dir, faults=[Fault.parse("rate:bps=100K,paths=*well_known_file_download*")]) as replica:
        args = [sys.executable, "-m", "ecephys_dl", *_args(replica, cache, "fetch", "--all", *SMALL)]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list(cache.rglob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
        child.send_signal(sig)
        _, err = child.communicate(timeout=60)
    assert child.returncode == code, err
    assert list(cache.rglob("*.part")) and list(cache.rglob("*.part.json"))
    _final_files_are_sound(cache, dataset_dir)

@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 24 MiB tmpfs of our own, to run out of space for real (root only; skipped elsewhere)."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24M", "tmpfs", str(mount)], capture_output=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def _fill(path: Path) -> None:
    with open(path, "wb") as hog:
        try:
            while True:
                hog.write(b"\0" * (1 << 20))
                hog.flush()
        except OSError:
            pass


def test_a_disk_that_fills_up_mid_run_loses_nothing(dataset_dir: Path, small_disk: Path, run: Any) -> None:
    """ENOSPC while writing: the run reports it (exit 1), keeps its partials, no final path holds a bad file; a rerun finishes."""
    session, lfp_probes, _ = _session_with_missing_lfp(dataset_dir)
    cache = small_disk / "cache"
    with Replica(dataset_dir, faults=[Fault.parse("rate:bps=300K,paths=*well_known_file_download*")]) as replica:
        assert run(*_args(replica, cache, "sessions", "--format", "ids")).code == 0
        args = [sys.executable, "-m", "ecephys_dl", *_args(replica, cache, "fetch", str(session), "--with-lfp", *SMALL, "--reserve", "0")]
        child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not list(cache.rglob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.02)
        _fill(small_disk / "hog")
        out, err = child.communicate(timeout=120)
        assert child.returncode == 1, err
        assert "no space left" in (out + err).lower()
        _final_files_are_sound(cache, dataset_dir)
        assert list(cache.rglob("*.part"))
        (small_disk / "hog").unlink()
        replica.set_faults([])
        again = run(*_args(replica, cache, "fetch", str(session), "--with-lfp", *SMALL, "--reserve", "0"))
    assert again.code == 0, again.err
    for relative in [f"session_{session}/session_{session}.nwb", *(f"session_{session}/probe_{p}_lfp.nwb" for p in lfp_probes)]:
        assert _same_as_source(cache, dataset_dir, relative), relative
