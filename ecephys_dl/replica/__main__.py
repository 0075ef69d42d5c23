"""``python -m ecephys_dl.replica``: serve a replica dataset, or generate one."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from ecephys_dl.errors import UsageError
from ecephys_dl.replica.faults import Fault
from ecephys_dl.replica.server import LOOPBACK, PRESIGN_EXPIRY, Replica, check_public_origin
from ecephys_dl.replica.store import DatasetError
from ecephys_dl.sizes import parse_size

__all__ = ["build_parser", "main"]

_SERVE_EPILOG = """\
examples:
  python -m ecephys_dl.replica serve --data /tmp/replica
  python -m ecephys_dl.replica serve --data /tmp/replica --port 8080 \\
      --fault 'drop:after=1M,share=0.2,paths=*.nwb' --fault 'rate:bps=512K' --seed 7 --log requests.jsonl

fault kinds: drop:after=SIZE  error:status=503,retry_after=2  ignore-range  rate:bps=SIZE
  latency:seconds=0.2  short:bytes=SIZE  stall:seconds=T,after=SIZE  change:after=1  html
  rma-zero:after_row=1  rma-hang:seconds=3600  same-size:bytes=4K
  asset-field:name=metadata.digest.dandi:sha2-256,value={}0  asset-duplicate
selectors for every kind: share=0.5  paths=GLOB[|GLOB]  query=GLOB  times=N
"""

_MAKE_EPILOG = """\
examples:
  python -m ecephys_dl.replica make-dataset /tmp/replica
  python -m ecephys_dl.replica make-dataset /tmp/replica --scale tiny --file-size 64K --force
  python -m ecephys_dl.replica make-dataset /tmp/big --scale full --file-size 20M --part-size 8M
"""


def _fault(text: str) -> Fault:
    try:
        return Fault.parse(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except UsageError as err:
        raise argparse.ArgumentTypeError(err.message) from None


def _scale(text: str) -> str:
    if text in ("full", "small", "tiny") or (text.isascii() and text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not full, small, tiny or a number of sessions")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m ecephys_dl.replica``."""
    parser = argparse.ArgumentParser(
        prog="python -m ecephys_dl.replica",
        description="A local replica of the Allen warehouse and its S3 mirror, for tests and demos.",
        epilog="examples:\n  python -m ecephys_dl.replica make-dataset /tmp/replica --scale tiny\n"
        "  python -m ecephys_dl.replica serve --data /tmp/replica",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve a dataset on 127.0.0.1 until interrupted",
        description="Serve a replica dataset over HTTP on 127.0.0.1. Prints the warehouse and S3 URLs, "
        "then the DANDI API's, and serves until SIGINT or SIGTERM.",
        epilog=_SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--data", required=True, type=Path, metavar="DIR", help="the dataset directory")
    serve.add_argument("--host", default=LOOPBACK, help="address to bind: 127.0.0.1 only (default)")
    serve.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one (default)")
    serve.add_argument("--dandi-port", type=int, default=0, help="TCP port of the DANDI archive; 0 picks a free one")
    serve.add_argument(
        "--dandi-public-url",
        metavar="URL",
        help="http://127.0.0.1:PORT of a proxy in front of the DANDI archive: its listings' pages and contentUrl "
        "and its presigned redirects lead there (default: its own port)",
    )
    serve.add_argument(
        "--presign-expiry",
        type=int,
        default=PRESIGN_EXPIRY,
        metavar="SECONDS",
        help=f"how long the DANDI API's presigned blob URLs stay valid (default {PRESIGN_EXPIRY}; 0: expired at once)",
    )
    serve.add_argument(
        "--fault", action="append", type=_fault, default=[], metavar="SPEC", help="a fault to inject (repeatable)"
    )
    serve.add_argument("--seed", type=int, default=0, help="seed deciding which requests faults hit (default 0)")
    serve.add_argument("--log", type=Path, metavar="FILE", help="append one JSON line per request to FILE")
    serve.add_argument("--page-cap", type=int, default=50_000, metavar="N", help="most rows in one RMA page")
    serve.add_argument(
        "--tabular-strings", action="store_true", help="answer tabular RMA queries with values as strings"
    )

    make = commands.add_parser(
        "make-dataset",
        help="generate a dataset directory",
        description="Generate a synthetic Visual Coding - Neuropixels dataset: RMA records, NWB files, "
        "metadata CSVs, and the S3 bucket layout.",
        epilog=_MAKE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    make.add_argument("dir", type=Path, metavar="DIR", help="where to write the dataset")
    make.add_argument(
        "--scale", type=_scale, default="small", help="full, small, tiny, or a number of sessions (default small)"
    )
    make.add_argument("--file-size", type=_size, default="256K", metavar="SIZE", help="size of each NWB file")
    make.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    make.add_argument("--part-size", type=_size, default="8M", metavar="SIZE", help="S3 multipart part size")
    make.add_argument("--backend", choices=("auto", "pynwb", "h5py"), default="auto", help="how NWB files are written")
    make.add_argument("--force", action="store_true", help="replace an existing dataset")
    return parser


def _serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    if args.host not in (LOOPBACK, "localhost"):
        parser.error(f"--host: the replica serves on {LOOPBACK} only, not on {args.host!r}")
    for option, value in (("--port", args.port), ("--dandi-port", args.dandi_port)):
        if not 0 <= value <= 65535:
            parser.error(f"{option}: {value} is not a TCP port")
    if args.presign_expiry < 0:
        parser.error("--presign-expiry must not be negative")
    if args.page_cap <= 0:
        parser.error("--page-cap must be positive")
    if args.dandi_public_url is not None:
        try:
            check_public_origin(args.dandi_public_url)
        except ValueError as err:
            parser.error(f"--dandi-public-url: {err}")
    done = threading.Event()

    def stop(signum: int, frame: FrameType | None) -> None:
        done.set()

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        replica = Replica(
            args.data,
            faults=args.fault,
            seed=args.seed,
            log_path=args.log,
            page_cap=args.page_cap,
            tabular_strings=args.tabular_strings,
            port=args.port,
            dandi_port=args.dandi_port,
            presign_expiry=args.presign_expiry,
            dandi_public_url=args.dandi_public_url,
        )
    except DatasetError as err:
        parser.error(f"--data: {err}")
    try:
        replica.start()
    except OSError as err:
        print(f"error: cannot listen on {LOOPBACK}:{args.port}: {err.strerror or err}", file=sys.stderr)
        return 1
    with replica:
        print(f"warehouse: {replica.warehouse_url}", flush=True)
        print(f"s3: {replica.s3_url}", flush=True)
        print(f"dandi: {replica.dandi_url}", flush=True)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not done.wait(0.5):
            pass
    return 0


def _make_dataset(args: argparse.Namespace) -> int:
    from ecephys_dl.replica.dataset import make_dataset

    summary = make_dataset(
        args.dir,
        scale=args.scale,
        file_size=args.file_size,
        seed=args.seed,
        part_size=args.part_size,
        backend=None if args.backend == "auto" else args.backend,
        force=args.force,
    )
    print(summary)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args, parser)
    return _make_dataset(args)


if __name__ == "__main__":
    sys.exit(main())
