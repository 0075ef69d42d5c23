"""How fast ``ecephys-dl verify`` reads a cache, next to ``sha256sum`` on the same files.

Large files. Writes (once, kept in ``--work``) ``--files`` LFP NWB files of ``--size`` each with
the replica's generator, at their AllenSDK paths in a cache tree, then in one run times, each
case ``--runs`` times (median), as a user runs it (a new process, start-up included):

- ``sha256sum`` over all the files (coreutils, one process, one file after another);
- ``ecephys-dl verify --deep`` with records (SHA-256 compared with each record), ``--jobs 1``
  and ``--jobs 4``;
- ``ecephys-dl verify --deep`` with no records (a cache AllenSDK filled): every chunk read
  through h5py, then SHA-256 and MD5, and the records written ("adopted");
- the same with a published table of the files (``--published-table``, as the release's files
  have): the SHA-256 against the published one is proof enough, so no chunk is read through h5py;
- ``verify --quick`` and ``verify`` (standard), for scale.

Both the warm case (files in the page cache, so the hashing is measured) and the cold case
(each file's pages dropped with ``posix_fadvise(DONTNEED)`` before each run, so the disk is
measured too) are run. "vs sha256sum" is sha256sum's time over the tool's: >= 1 is faster.

Full-scale shape (``--full DIR``, a replica made by ``python -m ecephys_dl.replica make-dataset
DIR --scale full --file-size 64K --backend h5py``; made there if absent): quick, standard and
deep over a copy of its cache (58 session files, 325 LFP files, the CSVs, the manifest).

Run: ``python bench/verify.py [--files 4] [--size 512M] [--runs 3] [--work DIR] [--full DIR]``
with the project's virtual environment. Target: ``verify --deep`` at >= 0.8 x sha256sum's speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

SESSION_ID = 700000001
TARGET = 0.8


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1].upper()]) if text[-1].upper() in units else int(text)


def _make_files(cache: Path, count: int, size: int) -> list[Path]:
    """LFP files of ``size`` bytes (96 channels, a fletcher32-checksummed bulk dataset)."""
    from ecephys_dl.replica.nwb import ProbeSpec, write_lfp_nwb

    folder = cache / f"session_{SESSION_ID}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        probe_id = SESSION_ID + 1 + i
        path = folder / f"probe_{probe_id}_lfp.nwb"
        paths.append(path)
        if path.exists() and abs(path.stat().st_size - size) <= max(size // 50, 1 << 20):
            continue
        channels = tuple(range(probe_id * 1000, probe_id * 1000 + 96))
        probe = ProbeSpec(id=probe_id, name=f"probe{'ABCDEF'[i % 6]}", channel_ids=channels,
                          structure_acronyms=("CA1",) * len(channels), unit_ids=(), unit_channel_ids=())  # fmt: skip
        print(f"writing {path} ({size >> 20} MiB) ...", file=sys.stderr)
        write_lfp_nwb(path, session_id=SESSION_ID, probe=probe, size=size, seed=1,
                      start_time=datetime(2019, 1, 1, tzinfo=UTC), backend="h5py")  # fmt: skip
    return paths


def _drop_pages(paths: list[Path]) -> None:
    """Evict the files from the page cache (clean pages only; no root needed)."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _warm(paths: list[Path]) -> None:
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            while handle.read(8 << 20):
                pass


def _timed(argv: list[str], *, check_json: bool = False) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {done.returncode}:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    if check_json:
        report = json.loads(done.stdout)
        if not report.get("passed", False) or report.get("summary", {}).get("files", 0) == 0:
            raise SystemExit(f"{' '.join(argv)}: the pass did not pass: {done.stdout[:2000]}")
    return wall


def _verify(cache: Path, *args: str, published: Path | None = None) -> list[str]:
    """The command line of a verify pass (held to ``published`` if given, else to no table of the bench's files)."""
    table = ["--published-table", str(published)] if published is not None else []
    return [sys.executable, "-m", "ecephys_dl", "--cache-dir", str(cache), *table, "verify", "--format", "json", "-q", *args]


def _forget_records(cache: Path) -> None:
    shutil.rmtree(cache / ".ecephys-dl", ignore_errors=True)


def _published_table(cache: Path, paths: list[Path]) -> Path:
    """A published table of the bench's files (their real SHA-256s), in the shipped table's format."""
    import hashlib
    import uuid

    from ecephys_dl.published import PublishedFile, PublishedKind, write_published

    files = []
    for path in paths:
        probe = int(path.name.removeprefix("probe_").removesuffix("_lfp.nwb"))
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while block := handle.read(8 << 20):
                digest.update(block)
        files.append(PublishedFile(kind=PublishedKind.LFP, session_id=SESSION_ID, probe_id=probe, cache_path=f"session_{SESSION_ID}/{path.name}",
                                   size=path.stat().st_size, sha256=digest.hexdigest(), dandi_etag="0" * 32 + "-1", dandiset="000021",
                                   dandi_asset_id=str(uuid.uuid5(uuid.NAMESPACE_URL, path.name)),
                                   dandi_path=f"sub-1/sub-1_ses-{SESSION_ID}_probe-{probe}_ecephys.nwb"))  # fmt: skip
    table = cache.parent / "published_files.csv"
    write_published(table, files)
    return table


def _large_files(args: argparse.Namespace) -> list[tuple[str, str, float, int]]:
    cache = args.work / "cache"
    paths = _make_files(cache, args.files, args.size)
    published = _published_table(cache, paths)
    total = sum(p.stat().st_size for p in paths)
    rows: list[tuple[str, str, float, int]] = []
    sha256sum = shutil.which("sha256sum")
    for temperature in ("warm", "cold"):
        def prepare(temperature: str = temperature) -> None:
            (_drop_pages if temperature == "cold" else _warm)(paths)

        def measure(label: str, argv: list[str], before: object = None, check_json: bool = False, temperature: str = temperature) -> None:
            walls = []
            for _ in range(args.runs):
                if callable(before):
                    before()
                prepare()
                walls.append(_timed(argv, check_json=check_json))
            rows.append((temperature, label, statistics.median(walls), total))

        if sha256sum:
            measure("sha256sum", [sha256sum, *map(str, paths)])
        measure("verify --deep, no records (adopts)", _verify(cache, "--deep", "--jobs", "4"), before=lambda: _forget_records(cache), check_json=True)
        measure("verify --deep, no records, published", _verify(cache, "--deep", "--jobs", "4", published=published),
                before=lambda: _forget_records(cache), check_json=True)  # fmt: skip
        measure("verify --deep --jobs 1", _verify(cache, "--deep", "--jobs", "1"), check_json=True)
        measure("verify --deep --jobs 4", _verify(cache, "--deep", "--jobs", "4"), check_json=True)
        measure("verify (standard)", _verify(cache), check_json=True)
        measure("verify --quick", _verify(cache, "--quick"), check_json=True)
    return rows


def _full_scale(data: Path, work: Path) -> list[tuple[str, float, int, int]]:
    if not (data / "dataset.json").exists():
        print(f"making a full-scale replica dataset in {data} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "ecephys_dl.replica", "make-dataset", str(data), "--scale", "full",
                        "--file-size", "64K", "--backend", "h5py", "--seed", "1"], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    cache = work / "full-cache"
    shutil.rmtree(cache, ignore_errors=True)
    shutil.copytree(data / "bucket" / "visual-coding-neuropixels" / "ecephys-cache", cache)
    files = sum(1 for p in cache.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    from ecephys_dl.verify import Level, verify_cache

    rows = []
    for label, level in (("quick", Level.QUICK), ("standard", Level.STANDARD), ("deep, no records (adopts)", Level.DEEP),
                         ("deep, with records", Level.DEEP), ("quick, with records", Level.QUICK)):  # fmt: skip
        start = time.perf_counter()
        report = verify_cache(cache, level=level)
        wall = time.perf_counter() - start
        if not report.ok:
            raise SystemExit(f"{label}: {report.summary}")
        rows.append((label, wall, report.summary.files, size))
    cli = _timed(_verify(cache, "--quick"), check_json=True)
    rows.append(("quick, as `ecephys-dl verify --quick` (new process)", cli, rows[0][2], size))
    print(f"\nfull-scale cache: {files} files, {size / 2**20:.0f} MiB (in-process calls, warm page cache)")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size", type=_size, default=512 << 20)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ecephys-dl-bench-verify")
    parser.add_argument("--full", type=Path, default=None, help="a full-scale replica dataset (made there if absent)")
    args = parser.parse_args()

    rows = _large_files(args)
    print(f"\n{args.files} LFP files of {args.size >> 20} MiB; {os.cpu_count()} CPUs; median of {args.runs} runs, new process each")
    print(f"{'cache':<6} {'tool':<40} {'s':>7} {'MiB/s':>8} {'vs sha256sum':>13}")
    reference = {t: wall for t, label, wall, _ in rows if label == "sha256sum"}
    worst = None
    for temperature, label, wall, total in rows:
        ratio = reference[temperature] / wall if temperature in reference else None
        if ratio is not None and label.startswith("verify --deep --jobs"):
            worst = ratio if worst is None else min(worst, ratio)
        shown = f"{ratio:.2f}x" if ratio is not None else "-"
        print(f"{temperature:<6} {label:<40} {wall:>7.2f} {total / wall / 2**20:>8.0f} {shown:>13}")
    if worst is not None:
        print(f"\nverify --deep (with records) at {worst:.2f}x sha256sum's speed at worst; target >= {TARGET}x: "
              f"{'met' if worst >= TARGET else 'NOT met'}")  # fmt: skip

    if args.full is not None:
        full = _full_scale(args.full, args.work)
        print(f"{'level':<52} {'s':>7} {'files':>6}")
        for label, wall, files, _ in full:
            print(f"{label:<52} {wall:>7.3f} {files:>6}")


if __name__ == "__main__":
    main()
