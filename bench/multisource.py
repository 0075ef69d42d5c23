"""The multi-source cases of ``bench/transfer.py``: three capped sources of the same file, side by side.

Each source (the warehouse, the S3 bucket, the DANDI archive) gets an nginx of its own (one
worker, so that one source can be stopped with SIGSTOP while the others go on), listening on a
port of its own:

- a TCP front (the stream module's ``proxy_download_rate``: at most ``rate`` bytes/s per
  connection, however many requests it carries; without that module, ``limit_rate`` per response)
  before an HTTP server that admits at most ``C`` downloads at once (``limit_conn`` keyed on the
  server's port; beyond it nginx answers ``503 Service Temporarily Unavailable`` at once, as
  ``limit_conn_status 503`` says, the way S3 answers SlowDown). Only the file locations are
  counted: listings and API answers are not.
- the warehouse: ``/api/v2/well_known_file_download/<id>`` from disk, the RMA queries proxied to
  the replica; S3: the bucket's path layout from disk with the listing's ETags, the listing
  proxied; DANDI: the API proxied to the replica's DANDI server (started with
  ``--dandi-public-url`` naming this nginx, so the listing's ``contentUrl`` and the redirects
  lead here) and the blobs (``/dandiarchive/blobs/<a>/<b>/<uuid>``) from disk, capped as the rest.

The process running this is stdlib-only; every tool is a child of it.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SOURCES = ("warehouse", "s3", "dandi")
BUCKET = "allen-brain-observatory"
BLOBS = "/dandiarchive/blobs/"
# aria2c's -x counts connections per host *name* (FileEntry::getRequest compares the URI's host,
# not its port), and every source is on 127.0.0.1: it is given each source under another
# spelling of the same address, so that -x C holds per source as --source-connections C does.
# They resolve with inet_aton (--async-dns=false): no name is looked up, every byte stays on 127.0.0.1.
ARIA2_HOSTS = {"warehouse": "127.0.0.1", "s3": "127.1", "dandi": "127.0.1"}
DANDISETS = ("000021", "000022")
MiB = 1024**2
GiB = 1024**3
TARGET_MULTI = 0.9  # x 3*C*rate
TARGET_VS_ARIA2 = 1.0
TARGET_STALL = 0.8  # x the ideal time with 2 sources after the stall
TARGET_RSS = 100e6
STALL_AT = 0.3
STALL_TIMEOUT = 5


@dataclass
class Summary:
    """One line of the final table."""

    case: str
    tool: str
    wall: float | None
    size: int
    ratio: str
    target: str
    verdict: str  # PASS, FAIL, SKIP or "-" (shown, no target)
    cpu: float | None = None  # s per GiB
    rss: int | None = None  # bytes
    note: str = ""


@dataclass(frozen=True)
class Ports:
    public: dict[str, int]  # what clients connect to
    origin: dict[str, int]  # the HTTP servers behind the TCP fronts
    replica: int
    replica_dandi: int


@dataclass
class Trio:
    ports: Ports
    processes: dict[str, subprocess.Popen[bytes]]
    logs: dict[str, Path]
    stopped: list[int] = field(default_factory=list)

    def workers(self, source: str) -> list[int]:
        pid = self.processes[source].pid
        try:
            return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []

    def stall(self, source: str) -> list[int]:
        """SIGSTOP the source's nginx worker(s): its connections stay open and say nothing."""
        pids = self.workers(source)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
            self.stopped.append(pid)
        return pids

    def resume(self) -> None:
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stopped.clear()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(4 * MiB):
            digest.update(chunk)
    return digest.hexdigest()


def published_rows(root: Path) -> list[dict[str, str]]:
    with open(root / "published_files.csv", newline="", encoding="utf-8") as stream:
        return list(csv.DictReader(stream))


def dandi_blobs(replica_dandi: int, public: int) -> dict[str, str]:
    """asset id -> the blob's URL path (``/dandiarchive/blobs/...``), from the replica's DANDI listing."""
    found: dict[str, str] = {}
    prefix = f"http://127.0.0.1:{public}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    for dandiset in DANDISETS:
        url = f"http://127.0.0.1:{replica_dandi}/api/dandisets/{dandiset}/versions/draft/assets/?metadata=true&page_size=1000"
        with opener.open(url, timeout=30) as answer:
            page = json.load(answer)
        for result in page["results"]:
            for link in result["metadata"]["contentUrl"]:
                if BLOBS in link and link.startswith(prefix):
                    found[result["asset_id"]] = link[len(prefix) :]
    return found


def corrupt_copy(original: Path, into: Path, flips: int = 4096) -> Path:
    """A copy of ``original`` of the same size and mtime with ``flips`` bytes inverted in the middle."""
    into.parent.mkdir(parents=True, exist_ok=True)
    if not into.exists() or into.stat().st_size != original.stat().st_size:
        shutil.copyfile(original, into)
        with open(into, "r+b") as stream:
            stream.seek(original.stat().st_size // 2)
            data = stream.read(flips)
            stream.seek(original.stat().st_size // 2)
            stream.write(bytes(b ^ 0xFF for b in data))
    stat = original.stat()
    os.utime(into, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return into


def nginx_conf(source: str, root: Path, ports: Ports, *, bucket: Path, wkf: Path, blobs: Path, etags: dict[str, str],
               limit: int, rate: int, stream_module: str | None, session_paths: dict[str, str], liar: Path | None) -> str:  # fmt: skip
    """One source's nginx: an HTTP server admitting ``limit`` downloads, behind a per-connection rate."""
    per_response = f"limit_rate {rate};" if stream_module is None else ""
    capped = f"limit_conn downloads {limit}; {per_response}"
    replica = f"http://127.0.0.1:{ports.replica}"
    etag = "etag off; add_header ETag $file_etag always;"
    if source == "warehouse":
        files = f"location /api/v2/well_known_file_download/ {{ alias {wkf}/; {capped} }}\n    location /api/ {{ proxy_pass {replica}; }}"
    elif source == "s3":
        files = f"location = /{BUCKET}/ {{ proxy_pass {replica}; }}\n    location /{BUCKET}/ {{ alias {bucket}/; {etag} {capped} }}"
    else:
        files = f"location {BLOBS} {{ alias {blobs}/; {etag} {capped} }}\n    location /api/ {{ proxy_pass http://127.0.0.1:{ports.replica_dandi}; }}"
    if liar is not None:
        # The same URL, the same size, ETag and Last-Modified; other bytes in the middle.
        files += f"\n    location = {session_paths[source]} {{ alias {liar}; {etag if source != 'warehouse' else ''} {capped} }}"
    entries = "\n".join(f"    {path} '{value}';" for path, value in sorted(etags.items()))
    stream = ""
    if stream_module is not None:
        stream = f"""
stream {{
  log_format connection '$msec $bytes_sent $bytes_received $session_time';
  server {{
    listen 127.0.0.1:{ports.public[source]};
    access_log {root}/connections.log connection;
    proxy_pass 127.0.0.1:{ports.origin[source]};
    proxy_download_rate {rate};
  }}
}}"""
    user = "user root;" if os.geteuid() == 0 else ""
    load = f"load_module {stream_module};" if stream_module else ""
    return f"""{load}
{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  map_hash_bucket_size 256;
  client_body_temp_path {root}/tmp/body;
  proxy_temp_path {root}/tmp/proxy;
  fastcgi_temp_path {root}/tmp/fastcgi;
  uwsgi_temp_path {root}/tmp/uwsgi;
  scgi_temp_path {root}/tmp/scgi;
  log_format bench '$msec $status $request_method "$uri" $body_bytes_sent $bytes_sent $request_time "$http_range"';
  limit_conn_zone $server_port zone=downloads:1m;
  limit_conn_status 503;
  limit_conn_log_level info;
  map $uri $file_etag {{
    default "";
{entries}
  }}
  server {{
    listen 127.0.0.1:{ports.origin[source]};
    access_log {root}/access.log bench;
    {files}
  }}
}}
{stream}
"""


@dataclass
class Multi:
    """The multi-source cases; ``kit`` holds transfer.py's helpers (run, start, reap, ...)."""

    kit: Any
    args: Any
    data: Any  # transfer.Dataset
    nginx_binary: str
    stream_module: str | None
    ports: Ports
    template: Path  # a cache with ecephys-dl's metadata
    work: Path
    aria2c: str | None
    notes: list[str]
    summary: list[Summary]
    multi_cli: bool  # whether ecephys-dl takes --source a,b,c and --source-connections

    def __post_init__(self) -> None:
        data = self.data
        self.root = self.work / "sources"
        shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        rows = published_rows(data.root)
        sid = data.session_id
        self.session_row = next(r for r in rows if r["kind"] == "session" and int(r["session_id"]) == sid)
        self.wkf = self.root / "wkf"
        self.wkf.mkdir()
        for item in [data.session, *data.lfps.values()]:
            if item.wkf_id is not None:
                (self.wkf / str(item.wkf_id)).symlink_to(data.bucket / item.key)
        self.blobs = self.root / "blobs"
        blob_paths = dandi_blobs(self.ports.replica_dandi, self.ports.public["dandi"])
        self.etags = {f"/{BUCKET}/{k}": e for k, e in data.etags.items()}
        prefix = data.session.key[: -len(self.session_row["cache_path"])]
        for row in rows:
            path = blob_paths.get(row["dandi_asset_id"])
            if path is None:
                continue
            target = self.blobs / path[len(BLOBS) :]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(data.bucket / (prefix + row["cache_path"]))
            self.etags[path] = f'"{row["dandi_etag"]}"'
        session_blob = blob_paths[self.session_row["dandi_asset_id"]]
        self.session_paths = {"warehouse": f"/api/v2/well_known_file_download/{data.session.wkf_id}",
                              "s3": f"/{BUCKET}/{data.session.key}", "dandi": session_blob}  # fmt: skip
        self.rate: int = self.args.rate
        self.c: int = self.args.source_connections
        self.size: int = data.session.size

    # -- servers -------------------------------------------------------------------------------------

    @contextmanager
    def trio(self, limit: int, liar: str | None = None) -> Iterator[Trio]:
        processes: dict[str, subprocess.Popen[bytes]] = {}
        logs: dict[str, Path] = {}
        corrupt = corrupt_copy(self.data.bucket / self.data.session.key, self.work / "corrupt" / "session.nwb") if liar else None
        trio = Trio(self.ports, processes, logs)
        try:
            for source in SOURCES:
                root = self.root / source
                shutil.rmtree(root / "tmp", ignore_errors=True)
                (root / "tmp").mkdir(parents=True)
                conf = root / "nginx.conf"
                conf.write_text(nginx_conf(source, root, self.ports, bucket=self.data.bucket, wkf=self.wkf, blobs=self.blobs, etags=self.etags,
                                           limit=limit, rate=self.rate, stream_module=self.stream_module, session_paths=self.session_paths,
                                           liar=corrupt if source == liar else None))  # fmt: skip
                (root / "access.log").write_text("")
                (root / "connections.log").write_text("")
                logs[source] = root / "access.log"
                processes[source] = self.kit.start([self.nginx_binary, "-c", str(conf), "-p", str(root), "-e", str(root / "error.log")], root / "stderr.log")
            for source in SOURCES:
                for port in {self.ports.public[source], self.ports.origin[source]}:
                    self.kit.wait_for_port(port, processes[source], 20, f"nginx of {source}", self.root / source / "error.log")
            yield trio
        finally:
            trio.resume()
            for process in processes.values():
                self.kit.stop(process)

    # -- tools ---------------------------------------------------------------------------------------

    def ours(self, cache: Path, connections: int, per_source: int, *extra: str) -> list[str]:
        p = self.ports.public
        return [sys.executable, "-m", "ecephys_dl", "--cache-dir", str(cache), "--source", ",".join(SOURCES),
                "--warehouse-url", f"http://127.0.0.1:{p['warehouse']}", "--s3-url", f"http://127.0.0.1:{p['s3']}/{BUCKET}",
                "--dandi-url", f"http://127.0.0.1:{p['dandi']}/api", "--published-table", str(self.data.root / "published_files.csv"),
                "fetch", "-q", "--format", "json", str(self.data.session_id), "--jobs", "1", "--connections", str(connections),
                "--source-connections", str(per_source), *extra]  # fmt: skip

    def theirs(self, out: Path, *extra: str) -> list[str]:
        assert self.aria2c
        p = self.ports.public
        urls = [f"http://{ARIA2_HOSTS[s]}:{p[s]}{self.session_paths[s]}" for s in SOURCES]
        return [self.aria2c, f"-x{self.c}", f"-s{3 * self.c}", "--min-split-size=1M", "--file-allocation=none", "--allow-overwrite=true",
                "--auto-file-renaming=false", "--console-log-level=warn", "--summary-interval=0", "--download-result=hide",
                "--async-dns=false", "--disable-ipv6=true", "-d", str(out.parent), "-o", out.name, *extra, *urls]  # fmt: skip

    def fresh(self, name: str, template: bool) -> Path:
        path = self.work / "targets" / name
        shutil.rmtree(path, ignore_errors=True)
        if template:
            shutil.copytree(self.template, path)
        else:
            path.mkdir(parents=True)
        return path

    def final(self, cache: Path) -> Path:
        sid = self.data.session_id
        return cache / f"session_{sid}" / f"session_{sid}.nwb"

    def watch(self, argv: Sequence[str], name: str, progress: Callable[[], int], timeout: float,
              at: Callable[[float], None] | None = None) -> tuple[Any, float | None]:  # fmt: skip
        """Run ``argv``; once ``progress()`` reaches STALL_AT of the file, call ``at(seconds since start)``."""
        self.kit.drop_caches()
        log = self.work / "logs" / f"{name}.log"
        began, started = time.time(), time.monotonic()
        child = self.kit.start(argv, log, stdout=log.with_suffix(".out"))
        fired: float | None = None
        deadline = started + timeout
        try:
            while at is not None and fired is None and self.kit.running(child) and time.monotonic() < deadline:
                if progress() >= STALL_AT * self.size:
                    fired = time.monotonic() - started
                    at(fired)
                    break
                time.sleep(0.02)
        finally:
            measured = self.kit.reap(child, started, deadline, log)
        measured.began = began
        return measured, fired

    def progress_of(self, *paths: Path) -> Callable[[], int]:
        """Bytes in: the allocated blocks of a sparsely written file, or the ranges of a ``.part.json``."""

        def got() -> int:
            best = 0
            for path in paths:
                try:
                    best = max(best, min(path.stat().st_blocks * 512, self.size))
                except OSError:
                    pass
                sidecar = path.with_name(path.name + ".json")
                try:
                    state = json.loads(sidecar.read_text())
                    best = max(best, sum(end - start for start, end in state.get("written", state.get("ranges", []))))
                except (OSError, ValueError, TypeError, AttributeError):
                    pass
            return best

        return got

    def sources_of(self, measured: Any) -> list[dict[str, Any]]:
        try:
            text = measured.log.with_suffix(".out").read_text(errors="replace")
        except OSError:
            return []
        for candidate in [text, *reversed(text.splitlines())]:
            try:
                document = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(document, dict) and isinstance(document.get("sources"), list):
                return [s for s in document["sources"] if isinstance(s, dict)]
        return []

    def shares(self, measured: Any) -> str:
        """What the run's JSON summary says each source gave, e.g. ``warehouse 34 %, s3 33 %, dandi 33 % (dropped: stalled)``."""
        parts = []
        for entry in self.sources_of(measured):
            try:
                share = f"{entry.get('source')} {100 * float(entry.get('bytes') or 0) / self.size:.0f} %"
            except (TypeError, ValueError):
                continue
            parts.append(share + (f" (dropped: {entry['dropped']})" if entry.get("dropped") else ""))
        return ", ".join(parts)

    def exact(self, path: Path) -> bool:
        return path.is_file() and path.stat().st_size == self.size and sha256(path) == self.session_row["sha256"]

    def add(self, case: str, tool: str, measured: Any, ratio: str, target: str, verdict: str, note: str = "") -> None:
        size = self.size
        self.summary.append(Summary(case, tool, measured.wall, size, ratio, target, verdict, measured.cpu / (size / GiB), measured.rss, note))

    def skip_ours(self, case: str) -> None:
        self.summary.append(Summary(case, "ecephys-dl", None, self.size, "-", "-", "SKIP", note="needs --source a,b,c and --source-connections (not merged)"))

    def timeout(self, ideal: float) -> float:
        return 120 + 3 * ideal

    # -- the cases -----------------------------------------------------------------------------------

    def multi(self) -> None:
        """Three sources, C connections x rate each; ecephys-dl 3C connections against aria2c -x C -s 3C."""
        c, r = self.c, self.rate
        case = f"multi 3x{c}"
        ideal = self.size / (3 * c * r)
        target = f">= {TARGET_MULTI} x 3CR"
        ours_wall: float | None = None
        print(f"  {case}: 3 sources x {c} connections x {r / MiB:.1f} MiB/s ...", file=sys.stderr)
        if self.multi_cli:
            cache = self.fresh("multi-ours", True)
            with self.trio(c):
                m, _ = self.watch(self.ours(cache, 3 * c, c), "multi-ecephys-dl", lambda: 0, self.timeout(ideal))
            ok = m.ok and self.exact(self.final(cache))
            ratio = ideal / m.wall
            self.add(case, f"ecephys-dl --connections {3 * c} --source-connections {c}", m, f"{ratio:.2f} x 3CR", target,
                     "PASS" if ok and ratio >= TARGET_MULTI else "FAIL", self.shares(m) if ok else f"not byte-exact or exit {m.code}; {m.log}")  # fmt: skip
            ours_wall = m.wall if ok else None
        else:
            self.skip_ours(case)
            self.one_by_one(case)
        if self.aria2c:
            out = self.fresh("multi-aria2c", False) / "session.nwb"
            with self.trio(c):
                m, _ = self.watch(self.theirs(out, "--max-tries=5"), "multi-aria2c", lambda: 0, self.timeout(ideal))
            ok = m.ok and self.exact(out)
            self.add(case, f"aria2c -x{c} -s{3 * c} (3 URLs)", m, f"{ideal / m.wall:.2f} x 3CR", "-", "-", "" if ok else f"not byte-exact or exit {m.code}")
            if ours_wall is not None and ok:
                self.summary.append(Summary(case, "ecephys-dl vs aria2c", ours_wall, self.size, f"{m.wall / ours_wall:.2f} x aria2c",
                                            f">= {TARGET_VS_ARIA2} x aria2c", "PASS" if m.wall / ours_wall >= TARGET_VS_ARIA2 else "FAIL"))  # fmt: skip

    def one_by_one(self, case: str) -> None:
        """Today's ecephys-dl (one --source at a time) through each capped source alone: the servers work, C x rate each."""
        c, p = self.c, self.ports.public
        ideal = self.size / (c * self.rate)
        urls = {"warehouse": ["--warehouse-url", f"http://127.0.0.1:{p['warehouse']}"], "s3": ["--s3-url", f"http://127.0.0.1:{p['s3']}/{BUCKET}"],
                "dandi": ["--dandi-url", f"http://127.0.0.1:{p['dandi']}/api", "--s3-url", f"http://127.0.0.1:{p['s3']}/{BUCKET}"]}  # fmt: skip
        for source in SOURCES:
            cache = self.fresh(f"alone-{source}", True)
            argv = [sys.executable, "-m", "ecephys_dl", "--cache-dir", str(cache), "--source", source, *urls[source], "--published-table",
                    str(self.data.root / "published_files.csv"), "fetch", "-q", "--format", "json", str(self.data.session_id), "--jobs", "1",
                    "--connections", str(c)]  # fmt: skip
            with self.trio(c):
                m, _ = self.watch(argv, f"alone-{source}", lambda: 0, self.timeout(ideal))
            ok = m.ok and self.exact(self.final(cache))
            self.add(case, f"ecephys-dl --source {source} alone, {c} conns", m, f"{ideal / m.wall:.2f} x CR", "-", "-",
                     "today's CLI, one source" if ok else f"FAILED (exit {m.code}); {m.log}")  # fmt: skip

    def stall(self) -> None:
        """One source stops for good (SIGSTOP) once 30 % of the file is in; the others must carry the rest."""
        c, r, source = self.c, self.rate, self.args.stall_source
        case = f"stall {source} at 30%"
        print(f"  {case}: ...", file=sys.stderr)
        full = self.size / (3 * c * r)
        target = f">= {TARGET_STALL} x ideal"

        def judge(tool: str, m: Any, fired: float | None, exact: bool, shares: str = "") -> None:
            if fired is None:
                self.add(case, tool, m, "-", target, "FAIL", "ended before 30 % was in: the stall never happened")
                return
            ideal = fired + (1 - STALL_AT) * self.size / (2 * c * r)
            ratio = ideal / m.wall
            verdict = "PASS" if m.ok and exact and ratio >= TARGET_STALL else "FAIL"
            note = f"stalled at {fired:.1f} s; ideal {ideal:.1f} s" + ("" if exact else f"; not byte-exact (exit {m.code})") + (f"; {shares}" if shares else "")
            self.add(case, tool, m, f"{ratio:.2f} x ideal", target, verdict if tool.startswith("ecephys-dl") else "-", note)

        if self.multi_cli:
            cache = self.fresh("stall-ours", True)
            final = self.final(cache)
            with self.trio(c) as trio:
                m, fired = self.watch(self.ours(cache, 3 * c, c, "--stall-timeout", str(STALL_TIMEOUT)), "stall-ecephys-dl",
                                      self.progress_of(final.with_name(final.name + ".part"), final), self.timeout(full * 2),
                                      lambda t: trio.stall(source))  # fmt: skip
            judge(f"ecephys-dl --stall-timeout {STALL_TIMEOUT}", m, fired, self.exact(final), self.shares(m))
        else:
            self.skip_ours(case)
        if self.aria2c:
            out = self.fresh("stall-aria2c", False) / "session.nwb"
            # aria2c: --timeout (seconds a connection may go without data) = --stall-timeout; a
            # connection under 1 KiB/s is dropped too; retries go to the other URLs.
            extra = (f"--timeout={STALL_TIMEOUT}", f"--connect-timeout={STALL_TIMEOUT}", "--lowest-speed-limit=1K", "--max-tries=5", "--retry-wait=1")
            with self.trio(c) as trio:
                m, fired = self.watch(self.theirs(out, *extra), "stall-aria2c", self.progress_of(out), self.timeout(full * 2), lambda t: trio.stall(source))
            judge(f"aria2c --timeout={STALL_TIMEOUT} --lowest-speed-limit=1K", m, fired, m.ok and self.exact(out))

    def liar(self) -> None:
        """One source serves other bytes of the right size; nothing wrong may reach the final path."""
        c, source = self.c, self.args.liar_source
        case = f"liar {source}"
        print(f"  {case}: ...", file=sys.stderr)
        full = self.size / (2 * c * self.rate)
        if self.multi_cli:
            cache = self.fresh("liar-ours", True)
            final = self.final(cache)
            with self.trio(c, liar=source):
                m, _ = self.watch(self.ours(cache, 3 * c, c), "liar-ecephys-dl", lambda: 0, self.timeout(full))
            present = final.exists()
            exact = self.exact(final) if present else False
            entry = next((s for s in self.sources_of(m) if s.get("source") == source), None)
            dropped = entry is not None and bool(entry.get("dropped"))
            safe = exact or (not present and not m.ok)
            verdict = "PASS" if safe and exact and dropped else "FAIL"
            what = "published bytes" if exact else "corrupt file at the final path" if present else f"no file (exit {m.code})"
            reason = f"{source} dropped: {entry.get('dropped')!r}" if dropped and entry else f"{source} not reported dropped"
            self.add(case, "ecephys-dl", m, what, "exact, liar dropped", verdict, reason)
        else:
            self.skip_ours(case)
        if self.aria2c:
            out = self.fresh("liar-aria2c", False) / "session.nwb"
            with self.trio(c, liar=source):
                m, _ = self.watch(self.theirs(out, "--max-tries=5"), "liar-aria2c", lambda: 0, self.timeout(full))
            what = "published bytes" if self.exact(out) else "CORRUPT file" if out.exists() else f"no file (exit {m.code})"
            self.add(case, f"aria2c -x{c} -s{3 * c} (3 URLs)", m, what, "-", "-", "no check of the bytes: shown for comparison")

    def rss(self) -> None:
        """Peak RSS with 3 sources x 8 connections."""
        case, per = "rss 3x8", 8
        print(f"  {case}: ...", file=sys.stderr)
        if not self.multi_cli:
            self.skip_ours(case)
            return
        cache = self.fresh("rss-ours", True)
        ideal = self.size / (3 * per * self.rate)
        with self.trio(per):
            m, _ = self.watch(self.ours(cache, 3 * per, per), "rss-ecephys-dl", lambda: 0, self.timeout(ideal))
        ok = m.ok and self.exact(self.final(cache))
        self.add(case, "ecephys-dl --connections 24 --source-connections 8", m, f"{m.rss / 1e6:.0f} MB", f"< {TARGET_RSS / 1e6:.0f} MB",
                 "PASS" if ok and m.rss < TARGET_RSS else "FAIL", f"{ideal / m.wall:.2f} x 24R" + ("" if ok else f"; not byte-exact or exit {m.code}"))  # fmt: skip


def print_summary(rows: Sequence[Summary]) -> None:
    header = f"{'case':<26} {'tool':<52} {'wall s':>7} {'MiB/s':>7} {'ratio':<24} {'target':<20} {'pass':<4} {'CPU s/GiB':>9} {'peak RSS MiB':>12}"
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        wall = f"{r.wall:.1f}" if r.wall else "-"
        speed = f"{r.size / MiB / r.wall:.1f}" if r.wall else "-"
        cpu = f"{r.cpu:.2f}" if r.cpu is not None else "-"
        rss = f"{r.rss / MiB:.0f}" if r.rss is not None else "-"
        print(f"{r.case:<26} {r.tool:<52} {wall:>7} {speed:>7} {r.ratio:<24} {r.target:<20} {r.verdict:<4} {cpu:>9} {rss:>12}" + (f"  {r.note}" if r.note else ""))
