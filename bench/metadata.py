"""Speed of the table commands on a cache of the real dataset's size.

Builds (once) a replica dataset at full scale — 58 sessions, 332 probes, 123,224 channels,
99,180 units — fetches its metadata into a fresh cache through the replica, then times each
command end to end as a user runs it (a new process each time, start-up included) and prints a
table. Beside ecephys-dl it runs the reference points in the same run:

- ``pandas.read_csv`` of units.csv alone, the floor any tool reading the cache pays;
- AllenSDK's ``get_session_table()`` / ``get_units()`` when ``ALLENSDK_PYTHON`` names a Python
  with allensdk installed (it reads the same cache without network).

Run: ``python bench/metadata.py [--runs 5] [--work DIR]``. Targets: sessions < 1 s, units < 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGETS = {"sessions": 1.0, "units": 3.0}


def _run(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds and peak RSS (MiB) of one child process (its own rusage, via wait4)."""
    start = time.perf_counter()
    child = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    stderr = child.stderr.read().decode() if child.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{stderr}")
    return wall, usage.ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ecephys-dl-bench-metadata")
    args = parser.parse_args()

    # The replica runs in its own process: a child forked from a large parent would report the
    # parent's memory as its own peak (Linux keeps ru_maxrss across fork and exec).
    data = args.work / "replica"
    if not (data / "dataset.json").exists():
        print(f"making a full-scale replica dataset in {data} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "ecephys_dl.replica", "make-dataset", str(data), "--scale", "full",
                        "--file-size", "64K", "--backend", "h5py", "--seed", "1"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    cache = args.work / "cache"
    env = {**os.environ, "ECEPHYS_DL_CACHE_DIR": str(cache)}
    exe = [sys.executable, "-m", "ecephys_dl"]

    server = subprocess.Popen([sys.executable, "-m", "ecephys_dl.replica", "serve", "--data", str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        env["ECEPHYS_DL_WAREHOUSE_URL"] = server.stdout.readline().split(": ", 1)[1].strip()
        start = time.perf_counter()
        _run([*exe, "sessions", "--refresh", "--format", "csv"], env)
        first = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait(timeout=30)
    print(f"first fetch of the four tables from the replica (warehouse, paged): {first:.1f} s", file=sys.stderr)

    rows: list[tuple[str, str, float, float, float | None]] = []

    def measure(label: str, tool: str, argv: list[str], target: float | None) -> None:
        walls, peaks = zip(*(_run(argv, env) for _ in range(args.runs)), strict=True)
        rows.append((label, tool, statistics.median(walls), max(peaks), target))

    units_csv = str(cache / "units.csv")
    measure("read units.csv", "pandas.read_csv", [sys.executable, "-c", f"import pandas; pandas.read_csv({units_csv!r}, index_col='id')"], None)
    measure("sessions", "ecephys-dl", [*exe, "sessions", "--format", "csv"], TARGETS["sessions"])
    measure("sessions --genotype Sst", "ecephys-dl", [*exe, "sessions", "--genotype", "Sst", "--format", "csv"], TARGETS["sessions"])
    measure("units", "ecephys-dl", [*exe, "units", "--format", "csv"], TARGETS["units"])
    measure("units --no-quality-filter", "ecephys-dl", [*exe, "units", "--no-quality-filter", "--format", "csv"], TARGETS["units"])
    measure("units --format ids", "ecephys-dl", [*exe, "units", "--format", "ids"], TARGETS["units"])
    allensdk = os.environ.get("ALLENSDK_PYTHON")
    if allensdk:
        prelude = ("from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache as C;"
                   f"c = C.from_warehouse(scheme='http', host='127.0.0.1:1', manifest={str(cache / 'manifest.json')!r});")  # fmt: skip
        measure("sessions", "AllenSDK", [allensdk, "-c", prelude + "c.get_session_table()"], None)
        measure("units", "AllenSDK", [allensdk, "-c", prelude + "c.get_units()"], None)

    floor = rows[0][2]
    print(f"\n{'command':<28} {'tool':<16} {'median s':>9} {'peak MiB':>9} {'target s':>9} {'vs target':>9} {'vs read_csv':>11}")
    for label, tool, wall, peak, target in rows:
        versus = f"{wall / target:.2f}x" if target else "-"
        print(f"{label:<28} {tool:<16} {wall:>9.3f} {peak:>9.0f} {target or '-':>9} {versus:>9} {wall / floor:>10.2f}x")
    print(f"\n{args.runs} runs each, new process per run; dataset: 58 sessions, 332 probes, 123,224 channels, 99,180 units")


if __name__ == "__main__":
    main()
