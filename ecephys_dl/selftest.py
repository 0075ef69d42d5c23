"""A self-test a lab can run on a new server without touching the real Allen services.

It makes a small replica dataset in a temporary directory, serves it on 127.0.0.1, and runs the
tool as a user would (each step a new ``ecephys-dl`` process): list sessions, fetch two sessions
with their LFP files, verify everything deeply, then kill a transfer with SIGKILL halfway and check
that a second run resumes it and fetches only what was missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ecephys_dl.layout import CacheLayout, session_id_of_dir

__all__ = ["StepResult", "run_selftest"]


@dataclass(frozen=True)
class StepResult:
    name: str
    ok: bool
    detail: str
    seconds: float


def _cli(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ecephys_dl", *args], env=env, capture_output=True, text=True, timeout=timeout)


@contextmanager
def _workspace(keep: Path | None) -> Iterator[Path]:
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="ecephys-dl-selftest-") as tmp:
        yield Path(tmp)


def run_selftest(*, workdir: Path | None = None, report: Callable[[StepResult], None] | None = None) -> list[StepResult]:
    """Run every step, calling ``report`` after each; a failed step does not stop the later ones."""
    from ecephys_dl.replica import Fault, Replica
    from ecephys_dl.replica.dataset import make_dataset
    from ecephys_dl.replica.nwb import pynwb_available

    results: list[StepResult] = []

    def step(name: str, action: Callable[[], str]) -> None:
        started = time.monotonic()
        try:
            detail, ok = action(), True
        except Exception as error:
            detail, ok = f"{type(error).__name__}: {error}", False
        result = StepResult(name, ok, detail, time.monotonic() - started)
        results.append(result)
        if report is not None:
            report(result)

    with _workspace(workdir) as root:
        data = root / "replica"
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECEPHYS_DL_")}

        def make() -> str:
            summary = make_dataset(data, scale="tiny", file_size=2 * 1024 * 1024, seed=11, backend=None if pynwb_available() else "h5py", force=True)
            return f"{summary.sessions} sessions, {summary.objects} files, {summary.bytes} bytes ({summary.nwb_backend})"

        step("make a replica dataset", make)
        with Replica(data) as replica:
            env.update({"ECEPHYS_DL_CACHE_DIR": str(root / "cache"), "ECEPHYS_DL_WAREHOUSE_URL": replica.warehouse_url,
                        "ECEPHYS_DL_S3_URL": replica.s3_url, "ECEPHYS_DL_DANDI_URL": replica.dandi_url, "ECEPHYS_DL_RETRY_WAIT": "0.1",
                        "ECEPHYS_DL_PUBLISHED_TABLE": str(replica.dataset.published_table)})  # fmt: skip
            chosen: list[str] = []

            def sessions() -> str:
                done = _cli(["sessions", "--format", "ids"], env)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip())
                chosen.extend(done.stdout.split()[:2])
                if len(chosen) < 2:
                    raise RuntimeError(f"expected sessions, got {done.stdout!r}")
                return f"{len(done.stdout.split())} sessions listed"

            def fetch() -> str:
                done = _cli(["fetch", *chosen, "--with-lfp", "--format", "json"], env)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip()[-500:])
                summary = json.loads(done.stdout)
                return f"{summary['fetched']} files, {summary['bytes_fetched']} bytes in {summary['seconds']:.1f} s"

            def verify() -> str:
                done = _cli(["verify", "--deep", "--format", "json"], env)
                if done.returncode != 0:
                    raise RuntimeError((done.stdout + done.stderr).strip()[-500:])
                summary = json.loads(done.stdout)["summary"]
                return f"{summary['files']} files, {summary['ok']} ok"

            def kill_and_resume() -> str:
                cache = root / "resume-cache"
                local = {**env, "ECEPHYS_DL_CACHE_DIR": str(cache)}
                big = max((f for f in (data / "bucket").rglob("session_*.nwb")), key=lambda p: p.stat().st_size)
                session_id = session_id_of_dir(big.parent.name)
                if session_id is None:
                    raise RuntimeError(f"{big} is not in a session directory")
                session = str(session_id)
                layout = CacheLayout(cache)
                size = big.stat().st_size
                replica.set_faults([Fault.parse("rate:bps=512K,paths=*well_known_file_download*")])
                child = subprocess.Popen([sys.executable, "-m", "ecephys_dl", "fetch", session, "--connections", "2"], env=local,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
                part = layout.part(layout.session_nwb(session_id))
                deadline = time.monotonic() + 60
                from ecephys_dl.partial import partial_bytes

                while time.monotonic() < deadline and (not part.exists() or partial_bytes(part) < size // 3):
                    time.sleep(0.05)
                child.send_signal(signal.SIGKILL)
                child.wait(timeout=30)
                kept = partial_bytes(part)
                if not kept:
                    raise RuntimeError("the killed run left no resumable partial")
                replica.set_faults([])
                # The killed run's connections end (and are logged) a moment after the kill.
                time.sleep(1.0)
                replica.clear_requests()
                done = _cli(["fetch", session, "--connections", "2", "--format", "json"], local)
                if done.returncode != 0:
                    raise RuntimeError(done.stderr.strip()[-500:])
                sent = sum(r["bytes"] for r in replica.wait_requests(1) if "well_known_file_download" in r["path"] and r["method"] == "GET")
                final = layout.session_nwb(session_id)
                if final.read_bytes() != big.read_bytes():
                    raise RuntimeError("the resumed file differs from the source")
                missing = size - kept
                if sent > missing + 2 * 1024 * 1024:  # 1 MiB per connection at most
                    raise RuntimeError(f"the rerun fetched {sent} bytes where {missing} were missing")
                return f"killed at {kept} of {size} bytes; the rerun fetched {sent} bytes for {missing} missing"

            step("list sessions", sessions)
            step("fetch two sessions with LFP", fetch)
            step("verify --deep", verify)
            step("SIGKILL a transfer, then resume it", kill_and_resume)
    return results
