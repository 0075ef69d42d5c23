"""A focused benchmark of the transfer engine alone: one big file, unthrottled, over loopback.

An nginx of its own (``sendfile on``, so the server costs little CPU) serves one file from disk
on a loopback port; ecephys-dl's engine (:func:`ecephys_dl.transfer.download`, called directly),
curl and ``aria2c -xN`` each fetch it into a fresh directory, as a child of this process, which
reads the child's CPU time (user + sys) and peak RSS from ``os.wait4``. The engine's child also
reports the CPU time of the download alone (the interpreter's start-up and imports left out).

    python bench/engine.py --size-mib 1024 --connections 4 --runs 3

CPU seconds per GiB are the number to compare on a shared machine; MiB/s depends on what else
runs. Only 127.0.0.1 is used.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_file(path: Path, size: int) -> None:
    if path.exists() and path.stat().st_size == size:
        return
    block = os.urandom(MIB)
    with open(path, "wb") as out:
        left = size
        while left:
            count = min(left, MIB)
            out.write(block[:count] if left % 7 else bytes(reversed(block[:count])))
            left -= count


def nginx_conf(root: Path, data: Path, port: int) -> str:
    user = "user root;" if os.geteuid() == 0 else ""
    return f"""{user}
worker_processes 1;
daemon off;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 256; }}
http {{
  default_type application/octet-stream;
  sendfile on;
  tcp_nopush on;
  keepalive_requests 100000;
  access_log off;
  client_body_temp_path {root}/tmp;
  proxy_temp_path {root}/tmp;
  fastcgi_temp_path {root}/tmp;
  uwsgi_temp_path {root}/tmp;
  scgi_temp_path {root}/tmp;
  server {{
    listen 127.0.0.1:{port};
    root {data};
  }}
}}
"""


def run(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, float, float, int, str]:
    """Wall seconds, user, sys, peak RSS (KiB) and stdout of a child."""
    began = time.monotonic()
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert process.stdout is not None
    out = process.stdout.read().decode()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.monotonic() - began
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{argv[0]} failed ({status}): {out}")
    return wall, usage.ru_utime, usage.ru_stime, usage.ru_maxrss, out


def child(url: str, part: str, size: int, connections: int, md5: bool) -> None:
    """Download with the engine and print its CPU time for the download alone (JSON)."""
    from ecephys_dl.client import make_client
    from ecephys_dl.transfer import RemoteFile, Shared, TransferSettings, download

    settings = TransferSettings(connections=connections)
    with make_client(trust_env=False) as client:
        shared = Shared(client)
        before = resource.getrusage(resource.RUSAGE_SELF)
        began = time.monotonic()
        result = download(RemoteFile(url, size=size, md5=md5), Path(part), shared=shared, settings=settings)
        wall = time.monotonic() - began
        after = resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
                      "sha256": result.sha256}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--connections", type=int, default=4)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--tools", default="ecephys-dl,curl,aria2c")
    parser.add_argument("--md5", action="store_true", help="the engine computes MD5 too")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "ecephys-engine-bench")
    parser.add_argument("--child", nargs=3, metavar=("URL", "PART", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], int(args.child[2]), args.connections, args.md5)
        return
    size = args.size_mib * MIB
    work = args.work
    (work / "data").mkdir(parents=True, exist_ok=True)
    (work / "nginx" / "tmp").mkdir(parents=True, exist_ok=True)
    source = work / "data" / f"file-{args.size_mib}.bin"
    make_file(source, size)
    port = free_port()
    conf = work / "nginx" / "nginx.conf"
    conf.write_text(nginx_conf(work / "nginx", work / "data", port))
    nginx = subprocess.Popen([shutil.which("nginx") or "/usr/sbin/nginx", "-c", str(conf), "-p", str(work / "nginx")],
                             stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/{source.name}"
    try:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        out = work / "out"
        root = Path(__file__).resolve().parent.parent
        env = dict(os.environ, PYTHONPATH=str(root))
        print(f"{args.size_mib} MiB, {args.connections} connections, {os.cpu_count()} CPUs (load {os.getloadavg()[0]:.2f})")
        print(f"{'tool':12} {'MiB/s':>8} {'wall s':>7} {'user s':>7} {'sys s':>7} {'CPU s/GiB':>10} {'RSS MiB':>8}  note")
        for _ in range(args.runs):
            for tool in args.tools.split(","):
                shutil.rmtree(out, ignore_errors=True)
                out.mkdir()
                note = ""
                if tool == "ecephys-dl":
                    argv = [sys.executable, __file__, "--connections", str(args.connections),
                            *(["--md5"] if args.md5 else []), "--child", url, str(out / "f.part"), str(size)]
                elif tool == "curl":
                    argv = ["curl", "-s", "-o", str(out / "f"), url]
                elif tool == "aria2c":
                    argv = ["aria2c", "-q", f"-x{args.connections}", f"-s{args.connections}", "-k1M",
                            "--file-allocation=none", "-d", str(out), "-o", "f", url]
                else:
                    raise SystemExit(f"unknown tool {tool}")
                wall, user, sys_, rss, text = run(argv, env)
                if tool == "ecephys-dl":
                    inner = json.loads(text.strip().splitlines()[-1])
                    note = (f"download alone: {inner['wall']:.2f} s wall, {inner['user']:.2f}+{inner['sys']:.2f} s CPU "
                            f"= {(inner['user'] + inner['sys']) * GIB / size:.2f} s/GiB")
                    got = out / "f.part"
                else:
                    got = out / "f"
                if got.stat().st_size != size:
                    raise SystemExit(f"{tool} wrote {got.stat().st_size} bytes, not {size}")
                cpu = user + sys_
                print(f"{tool:12} {size / MIB / wall:8.1f} {wall:7.2f} {user:7.2f} {sys_:7.2f} {cpu * GIB / size:10.2f} "
                      f"{rss / 1024:8.1f}  {note}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    finally:
        nginx.terminate()
        nginx.wait()


if __name__ == "__main__":
    main()
