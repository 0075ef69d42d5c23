"""How fast ``ecephys-dl fetch`` moves NWB files when the server is slow per connection.

The real warehouse gives each connection 0.5-0.8 MB/s, so what counts is how many connections
a tool keeps busy and how little it wastes. This script rebuilds that situation on 127.0.0.1:

- a replica dataset (``python -m ecephys_dl.replica make-dataset``, one session) whose session
  NWB file is at least ``--size`` bytes, made once and kept in ``--work``;
- an nginx of its own serving the dataset's bucket on two ports: a throttled one, where each TCP
  connection gets at most ``--rate`` bytes/s however many requests it carries (the stream
  module's ``proxy_download_rate`` in front of the HTTP server; without that module,
  ``limit_rate`` per response), and an unthrottled one. Each serves the S3 path layout
  (``/allen-brain-observatory/<key>``, with the listing's ETags, so ``ecephys-dl --source s3``
  works; the ListObjectsV2 listing itself is proxied to ``python -m ecephys_dl.replica serve``)
  and the warehouse (RMA queries proxied to the replica, ``well_known_file_download/<id>`` from
  disk), so AllenSDK downloads from the same nginx, the way it does: one stream per file.

In one run, on the same files, into fresh directories on the same disk (page cache dropped
before each case where the kernel allows it), it times:

- throttled, one file: ecephys-dl with 1, 4 and 16 connections (``--jobs 1``), ``curl -o``
  (one connection), ``aria2c -x16 -s16``, and AllenSDK's ``get_session_data`` when a Python
  with allensdk is found (``ALLENSDK_PYTHON``, else ``/tmp/allensdk-venv/bin/python``);
- throttled, four files at once: ecephys-dl ``--jobs 4 --connections 4`` against
  ``aria2c -j4 -x4 -s4`` (16 connections each);
- unthrottled, one file: ecephys-dl with 1 connection (as curl) and with 4, against ``curl -o``
  and ``aria2c -x4 -s4``, taking turns ``--repeat`` times (default 3), compared by their median
  wall times, with CPU seconds (user + sys) per GiB;
- resume: ecephys-dl (4 connections) is SIGKILLed halfway through a throttled file, then run
  again; the bytes nginx sent to the rerun (its access log) are compared with the bytes missing
  from the killed run's partial (its allocated blocks: it is written sparsely);
- multi-source (``bench/multisource.py``): the three sources of the release (warehouse, S3,
  DANDI), each behind an nginx of its own that admits ``--source-connections`` C downloads (503
  beyond) at ``--rate`` R per connection. ``multi``: ecephys-dl ``--source warehouse,s3,dandi
  --connections 3C --source-connections C`` against ``aria2c -xC -s3C`` given the three URLs
  (target >= 0.9 x 3CR, and >= 1.0 x aria2c); ``stall``: ``--stall-source`` is stopped for good
  (SIGSTOP of its worker) once 30 % of the file is in (target: byte-exact, >= 0.8 x the ideal
  t30 + 0.7 size / 2CR); ``liar``: ``--liar-source`` serves other bytes of the right size (target:
  only the published bytes at the final path, the liar reported dropped); ``rss``: peak RSS
  with ``--connections 24 --source-connections 8`` (< 100 MB). The ecephys-dl rows need a
  ``fetch`` with ``--source-connections``: without it they are skipped with a note, and each
  source is fetched from alone with today's ``--source`` instead.

``--cases multi,stall,liar,unthrottled,rss,throttled,resume`` picks cases (default all). The
last table has one line per row with a target: case, tool, wall s, MiB/s, ratio, target,
PASS/FAIL (or "-" for the tools shown beside), CPU s/GiB and peak RSS.

Each tool runs as a child of this small, stdlib-only process, which reads the child's own peak
RSS and CPU time from ``os.wait4``. "served MiB" is what nginx's access log says it sent for
the files (more than their size means bytes fetched twice). Two yardsticks for a throttled case:

- "x N*rate" (the target): the largest file's size divided by (connections per file x rate),
  over the wall time; 1.0 is a tool that keeps every connection busy at the rate from start to end.
- "vs limit": the earliest moment nginx's limiter can have let the last byte go, over the wall
  time. nginx allows a connection rate x (whole seconds since the second it opened in + 1)
  bytes, so it ends on a whole second; a tool whose connections all open in the second it was
  started in, and never wait, scores 1.0 (start-up, planning and verification included).

Run: ``python bench/transfer.py [--size 1G] [--rate 2M] [--work DIR] [--quick] [--repeat 3] [--cases LIST]
[--source-connections 4] [--stall-source dandi] [--liar-source s3]`` with the
project's virtual environment (``.venv/bin/python``). ``--quick`` is a smoke run on 128 MiB
files. Missing nginx, aria2 or curl are installed with apt-get when running as root; a tool
that cannot be had is skipped with a note. Targets: >= 0.9 x N x rate with N connections;
unthrottled >= 0.8 x curl with 1 connection, >= 0.9 x curl and >= 1.0 x aria2c with 4; peak
RSS < 150 MB with 16 connections; rerun bytes <= missing + 1 MiB per connection; the
multi-source targets above.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import multisource

MiB = 1024**2
SEED = 1
BUCKET = "allen-brain-observatory"
PREFIX = "visual-coding-neuropixels/ecephys-cache/"
SESSION_KEY = re.compile(r"session_(\d+)/session_(\d+)\.nwb$")
LFP_KEY = re.compile(r"session_(\d+)/probe_(\d+)_lfp\.nwb$")
TARGET_RATIO = 0.9
TARGET_UNTHROTTLED = 0.8  # 1 connection, as curl
TARGET_UNTHROTTLED_4 = 0.9  # 4 connections, against curl's one
TARGET_VS_ARIA2 = 1.0
TARGET_RSS_BYTES = 150e6
RESUME_SLACK = MiB  # per connection
DEFAULT_ALLENSDK = Path("/tmp/allensdk-venv/bin/python")


def parse_size(text: str) -> int:
    """A byte count with an optional k/M/G suffix (powers of 1024), as ecephys-dl reads sizes."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([kmg]?)(?:i?b)?\s*", text, re.IGNORECASE)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 256M, 1G)")
    return int(float(match.group(1)) * {"": 1, "k": 1024, "m": MiB, "g": 1024**3}[match.group(2).lower()])


def mib(n: float) -> str:
    return f"{n / MiB:.1f}"


# -- children, measured ------------------------------------------------------------------------------


@dataclass
class Measured:
    """One child process: wall seconds, its own peak RSS and CPU, how it ended."""

    wall: float
    rss: int  # bytes
    cpu: float
    code: int | None  # None: killed by us (timeout)
    log: Path
    began: float = 0.0  # time.time() at the start

    @property
    def ok(self) -> bool:
        return self.code == 0

    def tail(self, lines: int = 12) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


def child_env() -> dict[str, str]:
    """The environment for every tool: no proxies, no ecephys-dl settings from the caller."""
    drop = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    env = {k: v for k, v in os.environ.items() if k.lower() not in drop and not k.startswith("ECEPHYS_DL_")}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def start(argv: Sequence[str], log: Path, *, cwd: Path | None = None, stdout: Path | None = None) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output in ``log`` (its stdout alone in ``stdout`` when given)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out, open(stdout or os.devnull, "wb") as alone:
        return subprocess.Popen(list(argv), stdout=alone if stdout else out, stderr=out if stdout else subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=child_env(), cwd=cwd)  # fmt: skip


def reap(child: subprocess.Popen[bytes], started: float, deadline: float, log: Path) -> Measured:
    """Wait for ``child`` (killing it at ``deadline``) and read its own rusage."""
    killed = False
    try:
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid == child.pid:
                break
            if time.monotonic() > deadline and not killed:
                child.kill()
                killed = True
            time.sleep(0.05)
    except BaseException:
        # Interrupted: the tool must not outlive the benchmark.
        child.kill()
        os.wait4(child.pid, 0)
        raise
    child.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - started
    code = None if killed else child.returncode
    return Measured(wall, usage.ru_maxrss * 1024, usage.ru_utime + usage.ru_stime, code, log)


def running(child: subprocess.Popen[bytes]) -> bool:
    """Whether ``child`` still runs, without reaping it (its rusage is read when it is reaped)."""
    return os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None


def run(argv: Sequence[str], log: Path, timeout: float, *, cwd: Path | None = None) -> Measured:
    began, started = time.time(), time.monotonic()
    child = start(argv, log, cwd=cwd)
    measured = reap(child, started, started + timeout, log)
    measured.began = began
    return measured


def run_checked(argv: Sequence[str], log: Path, timeout: float, what: str) -> None:
    measured = run(argv, log, timeout)
    if not measured.ok:
        raise SystemExit(f"{what} failed ({'timed out' if measured.code is None else f'exit {measured.code}'}):\n{measured.tail()}")


_drop_note: list[str] = []


def drop_caches() -> None:
    """Write dirty pages out and drop the page cache, so every case starts from the disk."""
    os.sync()
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError as error:
        if not _drop_note:
            _drop_note.append(f"page cache not dropped ({error.strerror}): cases may read the source files from memory")


# -- tools -------------------------------------------------------------------------------------------


def which(tool: str) -> str | None:
    return shutil.which(tool) or next((f"{d}/{tool}" for d in ("/usr/sbin", "/sbin") if Path(f"{d}/{tool}").exists()), None)


def apt_install(packages: Sequence[str], notes: list[str], updated: list[bool]) -> bool:
    """Install with apt-get (root only), ``apt-get update`` once per run; True on success."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(packages)} with apt-get ...", file=sys.stderr)
    try:
        if not updated:
            subprocess.run(["apt-get", "update", "-qq"], env=env, timeout=600, check=False, stdout=subprocess.DEVNULL)
            updated.append(True)
        done = subprocess.run(["apt-get", "install", "-y", "-qq", *packages], env=env, timeout=900, check=False,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    except subprocess.TimeoutExpired:
        notes.append(f"apt-get install {' '.join(packages)} timed out")
        return False
    return done.returncode == 0


def ensure_tools(notes: list[str]) -> dict[str, str | None]:
    """nginx (with its stream module), aria2c and curl, installed with apt-get when missing and possible."""
    packages = {"nginx": ("nginx-light", "nginx"), "aria2c": ("aria2",), "curl": ("curl",)}
    updated: list[bool] = []
    found: dict[str, str | None] = {}
    for tool, choices in packages.items():
        path = which(tool)
        for package in choices:
            if path is not None:
                break
            apt_install([package], notes, updated)
            path = which(tool)
        if path is None:
            notes.append(f"{tool} is not available (apt-get needs root and a reachable mirror): its cases are skipped")
        found[tool] = path
    nginx = found["nginx"]
    if nginx is not None and stream_module(nginx) is None:
        apt_install(["libnginx-mod-stream"], notes, updated)
    return found


def allensdk_python() -> str | None:
    candidate = os.environ.get("ALLENSDK_PYTHON") or (str(DEFAULT_ALLENSDK) if DEFAULT_ALLENSDK.exists() else None)
    if candidate is None:
        return None
    probe = subprocess.run([candidate, "-c", "import allensdk"], capture_output=True, timeout=120, check=False)
    return candidate if probe.returncode == 0 else None


# -- the dataset -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteObject:
    key: str
    size: int
    wkf_id: int | None  # the warehouse's well_known_file id


@dataclass(frozen=True)
class Dataset:
    root: Path
    session_id: int
    session: RemoteObject
    lfps: dict[int, RemoteObject]  # by probe id
    etags: dict[str, str]  # key -> S3 ETag

    @property
    def bucket(self) -> Path:
        return self.root / "bucket"


def make_dataset(work: Path, size: int) -> Dataset:
    """A one-session replica whose session NWB file is at least ``size`` bytes (made once)."""
    exe = [sys.executable, "-m", "ecephys_dl.replica", "make-dataset"]
    common = ["--scale", "1", "--backend", "h5py", "--seed", str(SEED)]
    # The session file is a fixed share of --file-size for a given seed; learn it on a small one.
    probe = work / "replica-probe"
    if not (probe / "dataset.json").exists():
        run_checked([*exe, str(probe), *common, "--file-size", "4M", "--force"], work / "logs" / "make-probe.log", 300, "make-dataset")
    info = json.loads((probe / "dataset.json").read_text())
    share = next(o["size"] for k, o in info["objects"].items() if SESSION_KEY.search(k)) / info["file_size"]
    file_size = math.ceil(size / share / MiB * 1.01) * MiB
    root = work / f"replica-{file_size // MiB}M"
    if not (root / "dataset.json").exists():
        print(f"making a replica dataset in {root} (--file-size {file_size // MiB}M) ...", file=sys.stderr)
        run_checked([*exe, str(root), *common, "--file-size", f"{file_size // MiB}M", "--force"], work / "logs" / "make-dataset.log",
                    3600, "make-dataset")  # fmt: skip
    info = json.loads((root / "dataset.json").read_text())
    ids = {key: int(wkf) for wkf, key in info["downloads"].items()}
    session: RemoteObject | None = None
    session_id = 0
    lfps: dict[int, RemoteObject] = {}
    for key, obj in info["objects"].items():
        item = RemoteObject(key, int(obj["size"]), ids.get(key))
        if match := SESSION_KEY.search(key):
            session, session_id = item, int(match.group(1))
        elif match := LFP_KEY.search(key):
            lfps[int(match.group(2))] = item
    assert session is not None, "the replica has no session NWB file"
    return Dataset(root, session_id, session, lfps, {k: o["etag"] for k, o in info["objects"].items()})


# -- servers -----------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{what} exited at start:\n{log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen on port {port} within {timeout:.0f} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=15)


@contextmanager
def replica_server(data: Path, work: Path, ports: multisource.Ports) -> Iterator[int]:
    """The replica, answering the S3 listings, RMA queries and DANDI API calls nginx passes on to it.

    Its DANDI archive names the DANDI source's nginx (``--dandi-public-url``), so the asset
    listing's ``contentUrl`` leads through that nginx's caps.
    """
    log = work / "logs" / "replica.log"
    server = start([sys.executable, "-m", "ecephys_dl.replica", "serve", "--data", str(data), "--port", str(ports.replica),
                    "--dandi-port", str(ports.replica_dandi), "--dandi-public-url", f"http://127.0.0.1:{ports.public['dandi']}"], log)  # fmt: skip
    try:
        wait_for_port(ports.replica, server, 60, "the replica", log)
        wait_for_port(ports.replica_dandi, server, 60, "the replica", log)
        yield ports.replica
    finally:
        stop(server)


@dataclass(frozen=True)
class Nginx:
    throttled: int  # ports
    direct: int
    logs: Path
    per_connection: bool  # the throttled port paces connections (stream module), not responses

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port}"

    def s3(self, port: int) -> str:
        return f"{self.url(port)}/{BUCKET}"

    def log(self, port: int) -> Path:
        """The access log that counts what the port sent to its clients."""
        if port == self.throttled:
            return self.logs / ("connections.log" if self.per_connection else "throttled.log")
        return self.logs / "direct.log"

    def sent(self, port: int, offset: int, keys: Sequence[str]) -> int:
        """Bytes the port sent to clients since ``offset`` of its log.

        Behind the stream proxy the HTTP server's own count runs ahead of the client by what the
        socket buffers between the two hold, so there every connection's bytes to the client are
        summed, headers and listings included. Elsewhere: the files' body bytes per response.
        """
        with open(self.log(port), "rb") as handle:
            handle.seek(offset)
            lines = handle.read().decode(errors="replace").splitlines()
        if port == self.throttled and self.per_connection:
            return sum(int(line.split()[1]) for line in lines if len(line.split()) >= 2)
        paths = {f"/{BUCKET}/{k}" for k in keys}
        total = 0
        for line in lines:
            match = re.match(r'\S+ (\d+) (\S+) "([^"]*)" (\d+) ', line)
            if match and (match.group(3) in paths or "/well_known_file_download/" in match.group(3)):
                total += int(match.group(4))
        return total


STREAM_MODULES = ("/usr/lib/nginx/modules/ngx_stream_module.so", "/usr/share/nginx/modules/ngx_stream_module.so",
                  "/usr/lib64/nginx/modules/ngx_stream_module.so")


def stream_module(binary: str) -> str | None:
    """How to get nginx's stream module: "" when built in, a load_module path, or None."""
    built = subprocess.run([binary, "-V"], capture_output=True, text=True, timeout=30, check=False).stderr
    if re.search(r"--with-stream(\s|$)", built):
        return ""
    return next((path for path in STREAM_MODULES if Path(path).exists()), None)


def nginx_config(root: Path, data: Dataset, wkf: Path, replica: int, ports: dict[str, int], rate: int, module: str | None) -> str:
    """Two HTTP servers over the same files, and the throttled port in front of the first.

    With the stream module the throttled port is a TCP proxy with ``proxy_download_rate``: the
    rate holds per connection, however many requests the connection carries, as a server whose
    connections are slow. Without it, ``limit_rate`` paces each response instead.
    """
    etags = "\n".join(f"    /{BUCKET}/{key} '{etag}';" for key, etag in sorted(data.etags.items()))
    per_response = f"limit_rate {rate};" if module is None else ""
    servers = []
    for name, port, limit in (("throttled", ports["origin"], per_response), ("direct", ports["direct"], "")):
        servers.append(f"""
  server {{
    listen 127.0.0.1:{port};
    access_log {root}/logs/{name}.log bench;
    # S3 path style: the listing comes from the replica, the objects from disk with the listing's ETags.
    location = /{BUCKET}/ {{ proxy_pass http://127.0.0.1:{replica}; }}
    location /{BUCKET}/ {{ alias {data.bucket}/; etag off; add_header ETag $s3_etag; {limit} }}
    # The warehouse: RMA queries from the replica, downloads from disk.
    location /api/v2/well_known_file_download/ {{ alias {wkf}/; {limit} }}
    location /api/ {{ proxy_pass http://127.0.0.1:{replica}; }}
  }}""")
    stream = ""
    if module is not None:
        stream = f"""
stream {{
  log_format connection '$msec $bytes_sent $bytes_received $session_time';
  server {{
    listen 127.0.0.1:{ports["throttled"]};
    access_log {root}/logs/connections.log connection;
    proxy_pass 127.0.0.1:{ports["origin"]};
    proxy_download_rate {rate};
  }}
}}"""
    user = "user root;" if os.geteuid() == 0 else ""
    load = f"load_module {module};" if module else ""
    return f"""{load}
{user}
worker_processes 2;
daemon off;
pid {root}/nginx.pid;
error_log {root}/logs/error.log warn;
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
  map $uri $s3_etag {{
    default "";
{etags}
  }}
{"".join(servers)}
}}
{stream}
"""


@contextmanager
def nginx_server(binary: str, data: Dataset, work: Path, replica: int, rate: int, notes: list[str]) -> Iterator[Nginx]:
    root = work / "nginx"
    shutil.rmtree(root, ignore_errors=True)
    (root / "logs").mkdir(parents=True)
    (root / "tmp").mkdir()
    wkf = root / "wkf"  # well_known_file id -> the object, as nginx serves the warehouse's download path
    wkf.mkdir()
    for item in [data.session, *data.lfps.values()]:
        if item.wkf_id is not None:
            (wkf / str(item.wkf_id)).symlink_to(data.bucket / item.key)
    module = stream_module(binary)
    if module is None:
        notes.append("nginx has no stream module: the rate is per response (limit_rate), not per connection")
    ports = {"throttled": free_port(), "origin": free_port(), "direct": free_port()}
    if module is None:
        ports["origin"] = ports["throttled"]
    conf = root / "nginx.conf"
    conf.write_text(nginx_config(root, data, wkf, replica, ports, rate, module))
    log = root / "logs" / "stderr.log"
    process = start([binary, "-c", str(conf), "-p", str(root), "-e", str(root / "logs" / "error.log")], log)
    try:
        for port in set(ports.values()):
            wait_for_port(port, process, 20, "nginx", root / "logs" / "error.log")
        for name in ("throttled", "direct", "connections"):
            (root / "logs" / f"{name}.log").touch()
        yield Nginx(ports["throttled"], ports["direct"], root / "logs", module is not None)
    finally:
        stop(process)


def settle(log: Path, quiet: float = 1.5, timeout: float = 20.0) -> int:
    """The access log's size once nginx has logged what a client that just ended left behind."""
    deadline = time.monotonic() + timeout
    size, since = log.stat().st_size, time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = log.stat().st_size
        if now != size:
            size, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return size


# -- cases -------------------------------------------------------------------------------------------


@dataclass
class Row:
    section: str
    tool: str
    connections: str
    files: int
    size: int  # bytes of the files
    wall: float
    ideal: float | None  # seconds at N x rate, throttled cases
    bound: float | None  # seconds until nginx's limiter allows the last byte, throttled cases
    rss: int
    cpu: float
    served: int
    note: str = ""
    ok: bool = True


@dataclass
class Bench:
    args: argparse.Namespace
    data: Dataset
    nginx: Nginx
    tools: dict[str, str | None]
    allensdk: str | None
    work: Path
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    resume: dict[str, float] = field(default_factory=dict)
    summary: list[multisource.Summary] = field(default_factory=list)  # the multi-source cases' rows

    # fresh directories, each with the metadata a tool needs and no NWB file

    def target(self, name: str, template: Path | None = None) -> Path:
        path = self.work / "targets" / name
        shutil.rmtree(path, ignore_errors=True)
        if template is not None:
            shutil.copytree(template, path)
        else:
            path.mkdir(parents=True)
        return path

    def ecephys_dl(self, cache: Path, port: int, *fetch: str) -> list[str]:
        return [sys.executable, "-m", "ecephys_dl", "--cache-dir", str(cache), "--source", "s3", "--s3-url", self.nginx.s3(port),
                "--published-table", str(self.data.root / "published_files.csv"), "fetch", "-q", "--format", "json", *fetch]  # fmt: skip

    def bound(self, size: int, connections: int, began: float) -> float:
        """Seconds after ``began`` before nginx can have sent ``size`` bytes over ``connections``
        connections opened then: each may have rate x (whole seconds since its opening second + 1)."""
        rate: int = self.args.rate
        seconds = max(0, math.ceil(size / connections / rate - 1 - 1e-9))
        return max(math.floor(began) + seconds - began, 0.0)

    def ideal(self, size: int, connections: int) -> float:
        """Seconds ``size`` bytes take at ``connections`` x the throttled port's rate."""
        rate: int = self.args.rate
        return size / (connections * rate)

    def timeout(self, ideal: float | None) -> float:
        return 120 + 3 * ideal if ideal is not None else 900

    def measure(self, section: str, tool: str, connections: str, items: Sequence[RemoteObject], per_file: int | None,
                argv: Sequence[str], outputs: Sequence[Path], port: int, note: str = "") -> Row:  # fmt: skip
        size = sum(i.size for i in items)
        ideal = self.ideal(max(i.size for i in items), per_file) if per_file else None
        drop_caches()
        log = self.nginx.log(port)
        offset = log.stat().st_size
        name = re.sub(r"[^a-z0-9]+", "-", f"{section} {tool} {connections}".lower()).strip("-")
        print(f"  {section}: {tool} ({connections} connections) ...", file=sys.stderr)
        measured = run(argv, self.work / "logs" / f"{name}.log", self.timeout(ideal))
        settle(log, quiet=0.5)
        sent = self.nginx.sent(port, offset, [i.key for i in items])
        ok = measured.ok and all(o.is_file() and o.stat().st_size == i.size for o, i in zip(outputs, items, strict=True))
        if not ok:
            why = "timed out" if measured.code is None else f"exit {measured.code}" if not measured.ok else "wrong output size"
            note = f"FAILED ({why}); log: {measured.log}" + (f"; {note}" if note else "")
            print(measured.tail(), file=sys.stderr)
        bound = self.bound(max(i.size for i in items), per_file, measured.began) if per_file else None
        row = Row(section, tool, connections, len(items), size, measured.wall, ideal, bound, measured.rss, measured.cpu, sent, note, ok)
        self.rows.append(row)
        shutil.rmtree(self.work / "targets", ignore_errors=True)
        return row

    def templates(self, allensdk: bool = True) -> tuple[Path, Path | None]:
        """A cache with ecephys-dl's metadata, and one with AllenSDK's (fetched unthrottled, untimed)."""
        ours = self.work / "templates" / "ecephys-dl"
        shutil.rmtree(ours, ignore_errors=True)
        run_checked([sys.executable, "-m", "ecephys_dl", "--cache-dir", str(ours), "--source", "s3", "--s3-url",
                     self.nginx.s3(self.nginx.direct), "sessions", "--format", "ids"], self.work / "logs" / "template.log", 300,
                    "fetching the metadata with ecephys-dl")  # fmt: skip
        theirs: Path | None = None
        if self.allensdk and allensdk:
            theirs = self.work / "templates" / "allensdk"
            shutil.rmtree(theirs, ignore_errors=True)
            code = (f"from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache as C\n"
                    f"c = C.from_warehouse(scheme='http', host='127.0.0.1:{self.nginx.direct}', manifest={str(theirs / 'manifest.json')!r})\n"
                    "c.get_session_table(); c.get_probes(); c.get_channels(); c.get_units()\n")  # fmt: skip
            measured = run([self.allensdk, "-c", code], self.work / "logs" / "template-allensdk.log", 600)
            if not measured.ok:
                self.notes.append(f"AllenSDK could not read the replica's metadata, its case is skipped:\n{measured.tail(5)}")
                theirs = None
        return ours, theirs

    def cases(self, multi: multisource.Multi | None, ours: Path, theirs: Path | None) -> None:
        chosen = self.args.cases
        if "throttled" in chosen:
            self.throttled(ours, theirs)
        if "unthrottled" in chosen:
            self.unthrottled(ours)
        if "resume" in chosen:
            self.resume_case(ours)
        for name in ("multi", "stall", "liar", "rss"):
            if name in chosen and multi is not None:
                getattr(multi, name)()
                shutil.rmtree(self.work / "targets", ignore_errors=True)

    def throttled(self, ours: Path, theirs: Path | None) -> None:
        data, nginx = self.data, self.nginx
        sid = data.session_id
        session = data.session
        rel = f"session_{sid}/session_{sid}.nwb"
        t = nginx.throttled
        one = "throttled, 1 file"
        for n in (1, 4, 16):
            cache = self.target(f"ecephys-dl-{n}", ours)
            self.measure(one, "ecephys-dl", str(n), [session], n,
                         self.ecephys_dl(cache, t, str(sid), "--jobs", "1", "--connections", str(n)), [cache / rel], t)  # fmt: skip
        if self.tools["curl"]:
            out = self.target("curl") / "session.nwb"
            self.measure(one, "curl -o", "1", [session], 1, [self.tools["curl"], "-sS", "--fail", "-o", str(out),
                         f"{nginx.s3(t)}/{session.key}"], [out], t)  # fmt: skip
        if self.tools["aria2c"]:
            out = self.target("aria2c") / "session.nwb"
            self.measure(one, "aria2c -x16 -s16", "16", [session], 16, [*self.aria2c(16, 1), "-d", str(out.parent), "-o", out.name,
                         f"{nginx.s3(t)}/{session.key}"], [out], t)  # fmt: skip
        if self.allensdk and theirs is not None:
            cache = self.target("allensdk", theirs)
            code = (f"from allensdk.brain_observatory.ecephys.ecephys_project_cache import EcephysProjectCache as C\n"
                    f"c = C.from_warehouse(scheme='http', host='127.0.0.1:{t}', manifest={str(cache / 'manifest.json')!r}, fetch_tries=1)\n"
                    f"c.get_session_data({sid})\n")  # fmt: skip
            self.measure(one, "AllenSDK get_session_data", "1", [session], 1, [self.allensdk, "-c", code], [cache / rel], t,
                         "whole file in one stream, no resume")  # fmt: skip

        # Four files at once, 4 connections each: the session file and the three largest LFP files.
        lfps = sorted(data.lfps.items(), key=lambda kv: kv[1].size, reverse=True)[:3]
        items = [session, *(item for _, item in lfps)]
        several = "throttled, 4 files"
        cache = self.target("ecephys-dl-4x4", ours)
        probes = [arg for probe, _ in lfps for arg in ("--probe", str(probe))]
        outputs = [cache / rel, *(cache / f"session_{sid}" / f"probe_{p}_lfp.nwb" for p, _ in lfps)]
        self.measure(several, "ecephys-dl --jobs 4", "4x4", items, 4,
                     self.ecephys_dl(cache, t, str(sid), *probes, "--jobs", "4", "--connections", "4"), outputs, t)  # fmt: skip
        if self.tools["aria2c"]:
            folder = self.target("aria2c-4x4")
            listing = self.work / "targets" / "aria2c-4x4.txt"
            listing.write_text("".join(f"{nginx.s3(t)}/{i.key}\n  out={Path(i.key).name}\n" for i in items))
            self.measure(several, "aria2c -j4 -x4 -s4", "4x4", items, 4, [*self.aria2c(4, 4), "-d", str(folder), "-i", str(listing)],
                         [folder / Path(i.key).name for i in items], t)  # fmt: skip

    def unthrottled(self, ours: Path) -> None:
        """Unthrottled, one file, one source: ecephys-dl (1 and 4 connections), curl and aria2c -x4 -s4."""
        nginx, session, sid = self.nginx, self.data.session, self.data.session_id
        rel = f"session_{sid}/session_{sid}.nwb"
        # Unthrottled, a run takes a second or two and varies by tens of percent with the page cache
        # and the other core: the tools take turns, --repeat times, and the medians are compared.
        d = nginx.direct
        direct = "unthrottled, 1 file"
        # ecephys-dl with one connection, as curl, and with its default four.
        for turn in range(1, self.args.repeat + 1):
            note = f"turn {turn} of {self.args.repeat}"
            for count in ("1", "4"):
                cache = self.target("ecephys-dl-direct", ours)
                self.measure(direct, "ecephys-dl", count, [session], None,
                             self.ecephys_dl(cache, d, str(sid), "--jobs", "1", "--connections", count), [cache / rel], d, note)  # fmt: skip
            if self.tools["curl"]:
                out = self.target("curl-direct") / "session.nwb"
                self.measure(direct, "curl -o", "1", [session], None, [self.tools["curl"], "-sS", "--fail", "-o", str(out),
                             f"{nginx.s3(d)}/{session.key}"], [out], d, note)  # fmt: skip
            if self.tools["aria2c"]:
                out = self.target("aria2c-direct") / "session.nwb"
                self.measure(direct, "aria2c -x4 -s4", "4", [session], None, [*self.aria2c(4, 1), "-d", str(out.parent), "-o", out.name,
                             f"{nginx.s3(d)}/{session.key}"], [out], d, note)  # fmt: skip

    def aria2c(self, per_file: int, jobs: int) -> list[str]:
        assert self.tools["aria2c"]
        return [self.tools["aria2c"], f"-x{per_file}", f"-s{per_file}", f"-j{jobs}", "--min-split-size=1M", "--file-allocation=none",
                "--allow-overwrite=true", "--auto-file-renaming=false", "--console-log-level=warn", "--summary-interval=0",
                "--download-result=hide", "--max-tries=5"]  # fmt: skip

    def resume_case(self, ours: Path) -> None:
        """SIGKILL a throttled 4-connection download halfway, run again, count what the rerun fetched."""
        n = 4
        session, sid, t = self.data.session, self.data.session_id, self.nginx.throttled
        cache = self.target("ecephys-dl-resume", ours)
        final = cache / f"session_{sid}" / f"session_{sid}.nwb"
        part = final.with_name(final.name + ".part")
        argv = self.ecephys_dl(cache, t, str(sid), "--jobs", "1", "--connections", str(n))
        ideal = self.ideal(session.size, n)
        log = self.nginx.log(t)
        drop_caches()
        offset = log.stat().st_size
        print(f"  resume: ecephys-dl ({n} connections), SIGKILL at half the file ...", file=sys.stderr)
        started = time.monotonic()
        child = start(argv, self.work / "logs" / "resume-first.log")
        deadline = started + self.timeout(ideal)
        written = 0
        try:
            while running(child) and time.monotonic() < deadline:
                # The part file is written sparsely at each range's offsets: its blocks are the bytes received.
                written = part.stat().st_blocks * 512 if part.exists() else 0
                if written >= session.size // 2:
                    break
                time.sleep(0.05)
        finally:
            if running(child):
                os.kill(child.pid, signal.SIGKILL)
            reap(child, started, deadline, self.work / "logs" / "resume-first.log")
        after_kill = settle(log)
        first = self.nginx.sent(t, offset, [session.key])
        # What the killed run had: the part's allocated blocks (it is written sparsely, at each
        # range's offset). Bytes nginx sent that were still in the socket buffers died with it.
        kept = min(part.stat().st_blocks * 512, session.size) if part.exists() else 0
        sidecar = part.with_name(part.name + ".json")
        try:
            state = json.loads(sidecar.read_text())
            # A rerun on this boot keeps the ranges written (when listed apart), else the synced ones.
            recorded = sum(end - start for start, end in state.get("written", state["ranges"]))
        except (OSError, ValueError, KeyError, TypeError):
            recorded = 0
        print(f"  resume: rerun after {mib(written)} MiB written, {mib(recorded)} MiB recorded ...", file=sys.stderr)
        measured = run(argv, self.work / "logs" / "resume-rerun.log", self.timeout(ideal))
        settle(log, quiet=0.5)
        rerun = self.nginx.sent(t, after_kill, [session.key])
        ok = measured.ok and final.is_file() and final.stat().st_size == session.size
        self.resume = {"size": session.size, "first": first, "kept": kept, "recorded": recorded, "rerun": rerun, "connections": n,
                       "wall": measured.wall, "ok": float(ok)}  # fmt: skip
        if not ok:
            print(measured.tail(), file=sys.stderr)
        shutil.rmtree(self.work / "targets", ignore_errors=True)

    # -- the report ------------------------------------------------------------------------------------

    def report(self) -> None:
        rate = self.args.rate
        print(f"\nthrottled port: {mib(rate)} MiB/s per connection; session file {mib(self.data.session.size)} MiB; "
              f"replica {self.data.root}")  # fmt: skip
        header = (f"{'case':<20} {'tool':<27} {'conns':>5} {'files':>5} {'MiB':>8} {'served MiB':>10} {'wall s':>8} {'MiB/s':>7} "
                  f"{'x N*rate':>8} {'vs limit':>8} {'peak RSS MiB':>12} {'CPU s':>6}")
        print(header)
        print("-" * len(header))
        for r in self.rows:
            versus = f"{r.ideal / r.wall:.2f}" if r.ideal else "-"
            of_limit = f"{r.bound / r.wall:.2f}" if r.bound else "-"
            print(f"{r.section:<20} {r.tool:<27} {r.connections:>5} {r.files:>5} {mib(r.size):>8} {mib(r.served):>10} {r.wall:>8.1f} "
                  f"{r.size / MiB / r.wall:>7.2f} {versus:>8} {of_limit:>8} {r.rss / MiB:>12.0f} {r.cpu:>6.1f}" + (f"  {r.note}" if r.note else ""))  # fmt: skip
        direct_rows = [r for r in self.rows if r.section.startswith("unthrottled")]
        curl_direct = median_row([r for r in direct_rows if r.tool.startswith("curl")])
        ours_direct = median_row([r for r in direct_rows if r.tool == "ecephys-dl" and r.connections == "1"])
        ours_default = median_row([r for r in direct_rows if r.tool == "ecephys-dl" and r.connections == "4"])
        if curl_direct and ours_direct:
            print(f"\nunthrottled, medians of {self.args.repeat} turns: curl {curl_direct.size / MiB / curl_direct.wall:.0f} MiB/s; "
                  f"ecephys-dl, 1 connection {ours_direct.size / MiB / ours_direct.wall:.0f} MiB/s "
                  f"({curl_direct.wall / ours_direct.wall:.2f} x curl)" + (
                      f", 4 connections {ours_default.size / MiB / ours_default.wall:.0f} MiB/s "
                      f"({curl_direct.wall / ours_default.wall:.2f} x curl)" if ours_default else "")
                  + "; curl neither hashes, syncs nor verifies")  # fmt: skip
        res = self.resume
        if res:
            missing = res["size"] - res["kept"]
            print(f"resume: nginx sent the killed run {mib(res['first'])} MiB; its partial held {mib(res['kept'])} MiB "
                  f"({mib(res['recorded'])} MiB recorded); missing {mib(missing)} MiB; the rerun fetched {mib(res['rerun'])} MiB "
                  f"in {res['wall']:.1f} s (re-fetched {mib(res['rerun'] - missing)} MiB; "
                  f"{mib(res['rerun'] - (res['size'] - res['first']))} MiB more than nginx had not sent)")  # fmt: skip

        # One table: every row with a target (PASS/FAIL), the others shown beside them ("-").
        S = multisource.Summary
        table: list[multisource.Summary] = []

        def per_gib(r: Row) -> float:
            return r.cpu / (r.size / multisource.GiB)

        for r in self.rows:
            if r.ideal:
                ours = r.tool.startswith("ecephys-dl")
                ratio = r.ideal / r.wall
                verdict = ("PASS" if r.ok and ratio >= TARGET_RATIO else "FAIL") if ours else "-"
                note = f"{r.bound / r.wall:.2f} of nginx's limit" if r.bound else ""
                table.append(S(r.section, f"{r.tool} ({r.connections} conns)", r.wall, r.size, f"{ratio:.2f} x N*rate",
                               f">= {TARGET_RATIO} x N*rate" if ours else "-", verdict, per_gib(r), r.rss, note))  # fmt: skip
                if ours and r.connections in ("16", "4x4"):
                    table.append(S(r.section, f"{r.tool} ({r.connections} conns), peak RSS", r.wall, r.size, f"{r.rss / 1e6:.0f} MB",
                                   f"< {TARGET_RSS_BYTES / 1e6:.0f} MB", "PASS" if r.rss < TARGET_RSS_BYTES else "FAIL", per_gib(r), r.rss))  # fmt: skip
        aria2_direct = median_row([r for r in direct_rows if r.tool.startswith("aria2c")])
        medians = f"unthrottled (median of {self.args.repeat})"
        for row, name in ((ours_direct, "ecephys-dl (1 conn)"), (ours_default, "ecephys-dl --connections 4"), (curl_direct, "curl -o"),
                          (aria2_direct, "aria2c -x4 -s4")):  # fmt: skip
            if row is None:
                continue
            checks: list[tuple[str, str, bool]] = []
            if curl_direct and row is ours_direct:
                checks.append((f"{curl_direct.wall / row.wall:.2f} x curl", f">= {TARGET_UNTHROTTLED} x curl", curl_direct.wall / row.wall >= TARGET_UNTHROTTLED))
            if curl_direct and row is ours_default:
                checks.append((f"{curl_direct.wall / row.wall:.2f} x curl", f">= {TARGET_UNTHROTTLED_4} x curl", curl_direct.wall / row.wall >= TARGET_UNTHROTTLED_4))
            if aria2_direct and row is ours_default:
                checks.append((f"{aria2_direct.wall / row.wall:.2f} x aria2c", f">= {TARGET_VS_ARIA2} x aria2c", aria2_direct.wall / row.wall >= TARGET_VS_ARIA2))
            for ratio_text, target, passed in checks or [("-", "-", True)]:
                verdict = ("PASS" if passed and row.ok else "FAIL") if checks else "-"
                table.append(S(medians, name, row.wall, row.size, ratio_text, target, verdict, per_gib(row), row.rss))
        if res:
            missing = res["size"] - res["kept"]
            limit = missing + RESUME_SLACK * res["connections"]
            table.append(S("resume (4 conns)", "ecephys-dl rerun", res["wall"], res["rerun"], f"{mib(res['rerun'])} MiB fetched",
                           f"<= {mib(limit)} MiB", "PASS" if bool(res["ok"]) and res["rerun"] <= limit else "FAIL",
                           note=f"missing {mib(missing)} MiB + {res['connections']:.0f} MiB"))  # fmt: skip
        table.extend(self.summary)
        multisource.print_summary(table)
        for note in [*self.notes, *_drop_note]:
            print(f"note: {note}")


CASES = ("multi", "stall", "liar", "unthrottled", "rss", "throttled", "resume")


def cases_list(text: str) -> list[str]:
    chosen = [c.strip() for c in text.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in CASES]
    if unknown or not chosen:
        raise argparse.ArgumentTypeError(f"unknown case(s) {', '.join(unknown) or '(none)'}: choose from {','.join(CASES)}")
    return chosen


def takes_multi_source() -> bool:
    """Whether this ecephys-dl's fetch takes --source-connections (and so --source warehouse,s3,dandi)."""
    answer = subprocess.run([sys.executable, "-m", "ecephys_dl", "fetch", "--help"], capture_output=True, text=True, timeout=120,
                            env=child_env(), check=False)  # fmt: skip
    return "--source-connections" in answer.stdout


def median_row(rows: Sequence[Row]) -> Row | None:
    """The row of median wall time (the lower middle one of an even count)."""
    ordered = sorted(rows, key=lambda r: r.wall)
    return ordered[(len(ordered) - 1) // 2] if ordered else None


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=parse_size, default=None, help="least size of the measured session file (default 1G)")
    parser.add_argument("--rate", type=parse_size, default=parse_size("2M"), help="per-connection rate of the throttled port (default 2M)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ecephys-dl-bench-transfer")
    parser.add_argument("--quick", action="store_true", help="a smoke run on 128 MiB files")
    parser.add_argument("--repeat", type=int, default=3, help="turns of the unthrottled case, compared by median (default 3)")
    parser.add_argument("--cases", type=cases_list, default=list(CASES), metavar="LIST",
                        help=f"comma list of cases to run (default all): {','.join(CASES)}")  # fmt: skip
    parser.add_argument("--source-connections", type=int, default=4, metavar="C",
                        help="connections each source admits in the multi-source cases (nginx limit_conn; default 4)")  # fmt: skip
    parser.add_argument("--stall-source", choices=multisource.SOURCES, default="dandi", help="the source stopped at 30 %% (default dandi)")
    parser.add_argument("--liar-source", choices=multisource.SOURCES, default="s3", help="the source serving other bytes (default s3)")
    args = parser.parse_args()
    if args.source_connections < 1:
        parser.error("--source-connections must be at least 1")
    if args.size is None:
        args.size = parse_size("128M" if args.quick else "1G")
    args.work = args.work.resolve()
    args.work.mkdir(parents=True, exist_ok=True)
    # SIGTERM unwinds like Ctrl-C, so nginx and the replica are stopped on the way out.
    signal.signal(signal.SIGTERM, _interrupt)

    notes: list[str] = []
    tools = ensure_tools(notes)
    if tools["nginx"] is None:
        raise SystemExit("nginx is needed for the throttled server and could not be installed")
    asdk = allensdk_python()
    if asdk is None:
        notes.append("no Python with allensdk (ALLENSDK_PYTHON, /tmp/allensdk-venv): AllenSDK is skipped")
    data = make_dataset(args.work, args.size)
    shutil.rmtree(args.work / "targets", ignore_errors=True)
    started = time.monotonic()
    ports = multisource.Ports({s: free_port() for s in multisource.SOURCES}, {s: free_port() for s in multisource.SOURCES}, free_port(), free_port())
    module = stream_module(tools["nginx"])
    if module is None:
        ports = multisource.Ports(ports.public, ports.public, ports.replica, ports.replica_dandi)
    with replica_server(data.root, args.work, ports) as replica, nginx_server(tools["nginx"], data, args.work, replica, args.rate, notes) as nginx:
        bench = Bench(args, data, nginx, tools, asdk, args.work, notes=notes)
        print(f"nginx on 127.0.0.1:{nginx.throttled} (throttled) and :{nginx.direct}; replica on :{replica}", file=sys.stderr)
        try:
            ours, theirs = bench.templates(allensdk="throttled" in args.cases)
            multi = None
            if set(args.cases) & {"multi", "stall", "liar", "rss"}:
                multi_cli = takes_multi_source()
                if not multi_cli:
                    notes.append("ecephys-dl fetch has no --source-connections (nor --source a,b,c): its multi-source rows are skipped")
                multi = multisource.Multi(sys.modules[__name__], args, data, tools["nginx"], module, ports, ours, args.work, tools["aria2c"],
                                          notes, bench.summary, multi_cli)  # fmt: skip
            bench.cases(multi, ours, theirs)
        finally:
            shutil.rmtree(args.work / "targets", ignore_errors=True)
    bench.report()
    print(f"\n{time.monotonic() - started:.0f} s in all; work directory {args.work}")


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        print("interrupted: the tool running, nginx and the replica were stopped", file=sys.stderr)
        sys.exit(130)
