"""A hostile server and a tampered cache: nothing is written outside the cache, nothing is trusted that should not be.

Every attack is served over HTTP by the replica (its faults ``listing-key``, ``rma-field``,
``garbage``, ``redirect``, ``oversize``, ``endless`` and ``gzip-bomb``) or planted on disk
(symbolic links, corrupt manifests, records and partial-download records). After each one, the
:class:`Lab` checks the invariants: nothing outside the cache directory changed (a sibling
directory holding a victim file, the test's directory, the temporary root), and the good files
already in the cache kept their bytes and their modification times.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import FAST, Sleeps

from ecephys_dl.cli import main
from ecephys_dl.client import make_client
from ecephys_dl.errors import CacheError, RmaError, SourceError, UsageError
from ecephys_dl.layout import CacheLayout
from ecephys_dl.mirror import check_s3_key, resolve_s3
from ecephys_dl.queries import lfp_nwb_query, sessions_query
from ecephys_dl.records import FileRecord, RecordStore
from ecephys_dl.redirects import check_redirect, normalize_hosts
from ecephys_dl.replica import Fault, FaultKind, Replica
from ecephys_dl.replica.dataset import PREFIX
from ecephys_dl.retry import RetryPolicy
from ecephys_dl.rma import RmaClient
from ecephys_dl.s3 import S3Client
from ecephys_dl.transfer import RemoteFile, Shared, TransferError, TransferSettings, download, partial_bytes
from ecephys_dl.warehouse import resolve_warehouse

pytestmark = pytest.mark.timeout(120)

DOWNLOADS = "/api/v2/well_known_file_download/*"
SMALL = ["--connections", "2", "--jobs", "2", "--stall-timeout", "2"]
MiB = 1024 * 1024
Tree = dict[str, tuple[str, int, int]]


# -- the world around one attack ---------------------------------------------------------------------


def _records(dataset_dir: Path, model: str) -> list[dict[str, Any]]:
    return json.loads((dataset_dir / "records" / f"{model}.json").read_text())


def _tree(root: Path, *, skip: tuple[Path, ...] = ()) -> Tree:
    """Every entry under ``root`` (links not followed): kind, size and modification time."""
    found: Tree = {}
    if not root.exists():
        return found
    for folder, dirs, files in os.walk(root, followlinks=False):
        here = Path(folder)
        dirs[:] = [d for d in dirs if here / d not in skip]
        for name in [*dirs, *files]:
            path = here / name
            if path in skip:
                continue
            info = os.lstat(path)
            kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
            size = info.st_size if kind == "file" else 0
            mtime = info.st_mtime_ns if kind == "file" else 0
            found[str(path.relative_to(root))] = (kind, size, mtime)
    return found


def _fingerprint(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), os.stat(path).st_mtime_ns


@dataclass
class Lab:
    """A cache holding one verified session (``a``), a session still to fetch (``b``), and an
    ``outside`` directory beside the cache with a ``victim`` file that no attack may reach."""

    replica: Replica
    dataset_dir: Path
    root: Path
    cache: Path
    outside: Path
    victim: Path
    a: int
    b: int
    good: dict[Path, tuple[str, int]]
    around: Tree
    tmp_root: list[str]

    def args(self, *rest: str, source: str = "warehouse") -> list[str]:
        return ["--cache-dir", str(self.cache), "--source", source, "--warehouse-url", self.replica.warehouse_url,
                "--s3-url", self.replica.s3_url, "--retries", "3", "--retry-wait", "0.01", "--timeout", "5", *rest]  # fmt: skip

    def nwb(self, session: int) -> Path:
        return self.cache / f"session_{session}" / f"session_{session}.nwb"

    def source_bytes(self, session: int) -> bytes:
        return (self.dataset_dir / "bucket" / PREFIX / f"session_{session}" / f"session_{session}.nwb").read_bytes()

    def assert_contained(self) -> None:
        """Nothing outside the cache changed, and the good files in it are untouched."""
        assert _tree(self.root, skip=(self.cache,)) == self.around, "something changed outside the cache"
        assert sorted(os.listdir(self.root.parent)) == self.tmp_root, "something appeared in the temporary root"
        for path, fingerprint in self.good.items():
            assert _fingerprint(path) == fingerprint, f"{path} was touched"


@pytest.fixture(scope="module")
def hostile(dataset_dir: Path) -> Iterator[Replica]:
    """One replica for the whole module; each test sets its own faults."""
    with Replica(dataset_dir) as running:
        yield running


@pytest.fixture(scope="module")
def primed(hostile: Replica, dataset_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with the metadata tables and session ``a`` fetched and verified, made once per module."""
    cache = tmp_path_factory.mktemp("primed") / "cache"
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    argv = ["--cache-dir", str(cache), "--source", "warehouse", "--warehouse-url", hostile.warehouse_url, "--retries", "3", "--retry-wait", "0.01",
            "fetch", str(session), "-q"]  # fmt: skip
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return cache


@pytest.fixture
def lab(hostile: Replica, primed: Path, dataset_dir: Path, tmp_path: Path) -> Iterator[Lab]:
    sessions = [r["id"] for r in _records(dataset_dir, "EcephysSession")]
    a, b = sessions[0], sessions[1]
    cache = tmp_path / "cache"
    shutil.copytree(primed, cache, symlinks=True)  # copy2 keeps the modification times
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.nwb"
    victim.write_bytes(b"precious data that no download may overwrite\n" * 100)
    good = [cache / "manifest.json", *(cache / f"{t}.csv" for t in ("sessions", "probes", "channels", "units"))]
    good += [cache / f"session_{a}" / f"session_{a}.nwb", cache / f"session_{a}" / f"session_{a}_analysis_metrics.csv"]
    good += [cache / ".ecephys-dl" / "records" / f"session_{a}" / f"session_{a}.nwb.json"]
    hostile.set_faults([])
    world = Lab(hostile, dataset_dir, tmp_path, cache, outside, victim, a, b, {p: _fingerprint(p) for p in good},
                _tree(tmp_path, skip=(cache,)), sorted(os.listdir(tmp_path.parent)))  # fmt: skip
    try:
        yield world
    finally:
        hostile.set_faults([])


@pytest.fixture
def trap() -> Iterator[socket.socket]:
    """A listening socket on 127.0.0.2, "another host": a test asserts nobody connected to it."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.2", 0))
    listener.listen(8)
    listener.setblocking(False)
    yield listener
    listener.close()


def _untouched(trap: socket.socket) -> bool:
    try:
        connection, _ = trap.accept()
    except BlockingIOError:
        return True
    connection.close()
    return False


# -- keys, ids and links from the server -------------------------------------------------------------


TRAVERSAL_KEYS: dict[str, Callable[[int, int], str]] = {
    "dot-dot out of the cache": lambda a, b: f"session_{b}/../../../outside/session_{b}.nwb",
    "dot-dot after a file name": lambda a, b: f"session_{b}/session_{b}.nwb/../../x.nwb",
    "backslashes": lambda a, b: f"session_{b}\\..\\..\\session_{b}.nwb",
    "absolute part": lambda a, b: f"/etc/session_{b}/session_{b}.nwb",
    "odd session directory": lambda a, b: f"session_{b}./session_{b}.nwb",
    "leading zero": lambda a, b: f"session_0{b}/session_0{b}.nwb",
    "ids that disagree": lambda a, b: f"session_{b}/session_{a}.nwb",
    "trailing newline": lambda a, b: f"session_{b}/session_{b}.nwb\n",
    "odd directory, other file": lambda a, b: f"session_{b}x/session_{b}_analysis_metrics.csv",
    "NUL": lambda a, b: f"session_{b}/session_{b}.nwb\x00.txt",
}


@pytest.mark.parametrize("case", list(TRAVERSAL_KEYS))
def test_traversal_keys_in_the_listing_refuse_the_listing(lab: Lab, run: Any, case: str) -> None:
    """A listed key that could pass for a data file but is not exactly one is refused, by name; nothing is fetched."""
    key = PREFIX + TRAVERSAL_KEYS[case](lab.a, lab.b)
    lab.replica.set_faults([Fault(FaultKind.LISTING_KEY, key=key, size=1000)])
    result = run(*lab.args("fetch", str(lab.b), *SMALL, source="s3"))
    assert result.code == 1, result.err
    assert "S3 listing" in result.err
    if "\x00" not in key:  # XML cannot carry a NUL: that listing is refused as not XML at all
        assert repr(key)[1:-1] in result.err and "malformed key" in result.err
    assert not lab.nwb(lab.b).exists() and not list(lab.cache.rglob("*.part"))
    lab.assert_contained()


def test_a_traversal_key_is_refused_by_resolution_itself(hostile: Replica, dataset_dir: Path, client: httpx.Client) -> None:
    """resolve_s3 raises a SourceError naming the key, whatever sessions were asked for."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    key = f"{PREFIX}session_{session}/../../x.nwb"
    hostile.set_faults([Fault(FaultKind.LISTING_KEY, key=key)])
    try:
        with pytest.raises(SourceError, match=r"session_\d+/\.\./\.\./x\.nwb"):
            resolve_s3(S3Client(hostile.s3_url, client=client, policy=FAST, sleep=Sleeps()), [session], {})
    finally:
        hostile.set_faults([])
    assert check_s3_key(f"session_{session}/session_{session}.nwb", "k") == (session, None)
    assert check_s3_key("manifest.json", "k") is None and check_s3_key(f"session_{session}/", "k") is None


@pytest.mark.parametrize("value", ["1/../../x", '"715093703"', "-5", "1.5", "true", "null", "[1]"])
def test_ids_that_are_not_integers_are_refused(lab: Lab, run: Any, value: str) -> None:
    """A WellKnownFile whose attachable_id is a path, a string, negative or not a number fails the run, naming it."""
    lab.replica.set_faults([Fault(FaultKind.RMA_FIELD, field_name="attachable_id", value=value, query="*WellKnownFile*")])
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "attachable_id is not a positive integer" in result.err, result.err
    assert "session NWB files" in result.err
    assert not lab.nwb(lab.b).exists()
    lab.assert_contained()


def test_two_files_for_one_session_are_refused(lab: Lab, run: Any) -> None:
    """Records that all claim one session (a duplicate id) are an error, not a silent choice."""
    lab.replica.set_faults([Fault(FaultKind.RMA_FIELD, field_name="attachable_id", value=str(lab.b), query="*WellKnownFile*")])
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and f"two session NWB files for session {lab.b}" in result.err
    lab.assert_contained()


OFF_LINKS = {
    "another host": "http://127.0.0.2:{port}{}",
    "localhost is another name": "http://localhost:{port}{}",
    "file scheme": "file:///etc/passwd",
    "scheme-relative": "//127.0.0.2:{port}{}",
    "dot-dot in the path": "{}/../../../../etc/passwd",
    "query smuggled": "{}?next=http://127.0.0.2/",
    "javascript": "javascript:alert(1)",
}


@pytest.mark.parametrize("case", list(OFF_LINKS))
def test_download_links_off_the_warehouse_are_refused(lab: Lab, run: Any, trap: socket.socket, case: str) -> None:
    """A download_link leading anywhere but the warehouse's download path is refused before any request."""
    value = OFF_LINKS[case].replace("{port}", str(trap.getsockname()[1] if "127.0.0.2" in OFF_LINKS[case] else lab.replica.port))
    lab.replica.set_faults([Fault(FaultKind.RMA_FIELD, field_name="download_link", value=value, query="*WellKnownFile*")])
    lab.replica.clear_requests()
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "links to" in result.err, result.err
    if case in ("another host", "localhost is another name"):
        assert "another host" in result.err and "--allow-host" in result.err
    assert not [r for r in lab.replica.requests() if "well_known_file_download" in r["path"]]
    assert _untouched(trap)
    lab.assert_contained()


def test_an_allowed_host_may_serve_the_files(hostile: Replica, dataset_dir: Path, client: httpx.Client, tmp_path: Path) -> None:
    """With the host allowed, a link to it is used, and its redirect back to the warehouse is followed."""
    session = _records(dataset_dir, "EcephysSession")[0]["id"]
    elsewhere = f"http://localhost:{hostile.port}{{}}"
    hostile.set_faults([Fault(FaultKind.RMA_FIELD, field_name="download_link", value=elsewhere, query="*WellKnownFile*"),
                        Fault(FaultKind.REDIRECT, to=f"http://127.0.0.1:{hostile.port}/{{path}}", paths=DOWNLOADS)])  # fmt: skip
    try:
        rma = RmaClient(hostile.url, client=client, policy=FAST, sleep=Sleeps())
        with pytest.raises(SourceError, match="another host"):
            resolve_warehouse(rma, hostile.url, [session], {})
        targets, _ = resolve_warehouse(rma, hostile.url, [session], {}, allowed_hosts={"LOCALHOST"})
        assert targets[0].url.startswith(f"http://localhost:{hostile.port}/api/")
        # The file's host is localhost; its redirect to 127.0.0.1 goes to another host...
        part = tmp_path / f"session_{session}.nwb.part"
        with pytest.raises(TransferError, match="another host"):
            download(RemoteFile(targets[0].url), part, shared=Shared(client, sleep=Sleeps()), settings=TransferSettings(policy=FAST))
        # ...which the run may allow too.
        shared = Shared(client, allowed_hosts=["127.0.0.1"], sleep=Sleeps())
        result = download(RemoteFile(targets[0].url), part, shared=shared, settings=TransferSettings(policy=FAST))
    finally:
        hostile.set_faults([])
    assert part.read_bytes() == (dataset_dir / "bucket" / PREFIX / f"session_{session}" / f"session_{session}.nwb").read_bytes()
    assert result.size == part.stat().st_size


# -- redirects ---------------------------------------------------------------------------------------


def test_a_redirect_to_another_host_is_not_followed(lab: Lab, run: Any, trap: socket.socket) -> None:
    """A download redirected to another host fails with a hint to allow it; that host never hears from us."""
    to = f"http://127.0.0.2:{trap.getsockname()[1]}{{path}}"
    lab.replica.set_faults([Fault(FaultKind.REDIRECT, to=to, status=307, paths=DOWNLOADS)])
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "another host" in result.err and "--allow-host 127.0.0.2" in result.err, result.err
    assert not lab.nwb(lab.b).exists()
    assert _untouched(trap)
    lab.assert_contained()


@pytest.mark.parametrize("to", ["file:///etc/passwd", "ftp://127.0.0.1/x.nwb", "gopher://127.0.0.1:70/x", "http://[::1"])
def test_a_redirect_to_another_scheme_is_not_followed(lab: Lab, run: Any, to: str) -> None:
    """file:, ftp: and the like (or no URL at all) are never followed."""
    lab.replica.set_faults([Fault(FaultKind.REDIRECT, to=to, paths=DOWNLOADS)])
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "redirected" in result.err and "retrying" not in result.err, result.err
    lab.assert_contained()


def test_same_host_redirects_are_followed(lab: Lab, run: Any) -> None:
    """A redirect to the warehouse itself is followed and the file arrives whole."""
    to = f"http://127.0.0.1:{lab.replica.port}/{{path}}"  # //api/...: served, and not redirected again
    lab.replica.set_faults([Fault(FaultKind.REDIRECT, to=to, status=302, paths=DOWNLOADS)])
    lab.replica.clear_requests()
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 0, result.err
    assert lab.nwb(lab.b).read_bytes() == lab.source_bytes(lab.b)
    assert any(r["status"] == 302 for r in lab.replica.requests())
    lab.assert_contained()


def test_a_redirect_loop_ends(lab: Lab, run: Any) -> None:
    """A server redirecting to itself for ever is given up after a few hops."""
    lab.replica.set_faults([Fault(FaultKind.REDIRECT, to="{path}", paths=DOWNLOADS)])
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "redirected more than 5 times" in result.err, result.err
    lab.assert_contained()


def test_check_redirect_rules() -> None:
    """The redirect rules, one by one: same host, allowed host, scheme, TLS kept."""
    origin = httpx.URL("https://api.example.org/api/v2/well_known_file_download/1")
    assert check_redirect("/other", origin, origin).path == "/other"
    assert check_redirect("https://cdn.example.net/x", origin, origin, {"cdn.example.net"}).host == "cdn.example.net"
    assert check_redirect("https://cdn.example.net:8443/x", origin, origin, {"cdn.example.net:8443"}).port == 8443
    for location, words in [("http://api.example.org/x", "gives up TLS"), ("https://cdn.example.net/x", "another host"),
                            ("https://cdn.example.net:9/x", "another host"), ("file:///etc/passwd", "not an HTTP"),
                            ("", "without a Location"), (None, "without a Location")]:  # fmt: skip
        with pytest.raises(SourceError, match=words):
            check_redirect(location, origin, origin, {"cdn.example.net:8443"})
    with pytest.raises(UsageError, match="not a host name"):
        normalize_hosts(["http://cdn.example.net/"])
    assert normalize_hosts(["CDN.example.net", "[::1]:80"]) == {"cdn.example.net", "[::1]:80"}


# -- sizes -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["warehouse", "s3"])
def test_a_length_far_above_the_file_is_refused_at_once(lab: Lab, run: Any, source: str) -> None:
    """A download announcing a terabyte is refused from its headers: nothing of it is written."""
    paths = DOWNLOADS if source == "warehouse" else "*.nwb"
    lab.replica.set_faults([Fault(FaultKind.OVERSIZE, length=1024**4, paths=paths)])
    result = run(*lab.args("fetch", str(lab.b), *SMALL, source=source))
    assert result.code == 1 and "far above" in result.err, result.err
    part = lab.nwb(lab.b).with_name(lab.nwb(lab.b).name + ".part")
    assert not part.exists() or part.stat().st_size <= len(lab.source_bytes(lab.b))
    assert not lab.nwb(lab.b).exists()
    lab.assert_contained()


@pytest.mark.parametrize("source", ["warehouse", "s3"])
def test_an_endless_body_is_cut_at_the_size_expected(lab: Lab, run: Any, source: str) -> None:
    """The file's bytes followed by an endless stream: never more than the file is written, and the file fails."""
    paths = DOWNLOADS if source == "warehouse" else "*.nwb"
    lab.replica.set_faults([Fault(FaultKind.ENDLESS, paths=paths)])
    result = run(*lab.args("fetch", str(lab.b), *SMALL, source=source))
    assert result.code == 1 and "sent more than" in result.err, result.err
    part = lab.nwb(lab.b).with_name(lab.nwb(lab.b).name + ".part")
    assert part.stat().st_size <= len(lab.source_bytes(lab.b))
    assert partial_bytes(part) == 0  # the record vouches for none of it
    assert not lab.nwb(lab.b).exists()
    lab.assert_contained()


def test_an_endless_body_of_unknown_size_stops_at_the_ceiling(hostile: Replica, dataset_dir: Path, client: httpx.Client, tmp_path: Path) -> None:
    """With no size known at all, an endless body stops at TransferSettings.max_size."""
    file_id = _records(dataset_dir, "WellKnownFile")[0]["id"]
    hostile.set_faults([Fault(FaultKind.ENDLESS, paths=DOWNLOADS)])
    part = tmp_path / "x.nwb.part"
    settings = TransferSettings(max_size=MiB, chunk_size=64 * 1024, policy=FAST)
    try:
        with pytest.raises(TransferError, match="without a length"):
            download(RemoteFile(f"{hostile.url}/api/v2/well_known_file_download/{file_id}"), part,
                     shared=Shared(client, sleep=Sleeps()), settings=settings)  # fmt: skip
    finally:
        hostile.set_faults([])
    assert part.stat().st_size <= MiB and partial_bytes(part) == 0


@pytest.mark.parametrize("source", ["warehouse", "s3"])
def test_a_gzip_bomb_download_is_never_decompressed(lab: Lab, run: Any, source: str) -> None:
    """A gzip-encoded answer is not the file's bytes: refused before a byte is written."""
    paths = DOWNLOADS if source == "warehouse" else "*.nwb"
    lab.replica.set_faults([Fault(FaultKind.GZIP_BOMB, size=1024**3, paths=paths)])
    result = run(*lab.args("fetch", str(lab.b), *SMALL, source=source))
    assert result.code == 1 and "encoded body (gzip)" in result.err, result.err
    part = lab.nwb(lab.b).with_name(lab.nwb(lab.b).name + ".part")
    assert not part.exists() or part.read_bytes().strip(b"\0") == b""
    lab.assert_contained()


@pytest.mark.parametrize(
    "fault, words",
    [
        (Fault(FaultKind.GZIP_BOMB, size=1024**3), "more than the 4194304 bytes"),
        (Fault(FaultKind.ENDLESS), "more than the 4194304 bytes"),
        (Fault(FaultKind.OVERSIZE, length=1024**4), "announced 1099511627776 bytes"),
        (Fault(FaultKind.GARBAGE, body="x" * (5 * MiB)), "announced 5242880 bytes"),
    ],
    ids=["gzip bomb", "endless", "oversize", "just too long"],
)
def test_metadata_answers_are_bounded(hostile: Replica, client: httpx.Client, fault: Fault, words: str) -> None:
    """RMA answers and S3 listings larger than accepted are refused while reading, in bounded memory."""
    hostile.set_faults([fault])
    try:
        tracemalloc.start()
        with pytest.raises(SourceError, match=words):
            RmaClient(hostile.url, client=client, policy=FAST, sleep=Sleeps(), max_bytes=4 * MiB).fetch_all(sessions_query(), name="sessions")
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 64 * MiB
        with pytest.raises(SourceError, match=r"S3 listing|more than|announced"):
            S3Client(hostile.s3_url, client=client, policy=FAST, sleep=Sleeps()).list(PREFIX)
    finally:
        tracemalloc.stop()
        hostile.set_faults([])


# -- malformed JSON and XML --------------------------------------------------------------------------

_ENVELOPE = '"success": true, "id": 0, "start_row": 0'
MALFORMED_RMA = {
    "not JSON": "<html>busy</html>",
    "a list": "[]",
    "no counts": '{"success": true, "msg": []}',
    "a count as text": '{' + _ENVELOPE + ', "num_rows": "1", "total_rows": 1, "msg": [{"id": 1}]}',
    "a negative count": '{' + _ENVELOPE + ', "num_rows": 0, "total_rows": -1, "msg": []}',
    "records not a list": '{' + _ENVELOPE + ', "num_rows": 1, "total_rows": 1, "msg": {"id": 1}}',
    "a record not an object": '{' + _ENVELOPE + ', "num_rows": 1, "total_rows": 1, "msg": [7]}',
    "an id twice": '{' + _ENVELOPE + ', "num_rows": 2, "total_rows": 2, "msg": [{"id": 1}, {"id": 1}]}',
    "a path as id": '{' + _ENVELOPE + ', "num_rows": 1, "total_rows": 1, "msg": [{"id": "1/../../x"}]}',
    "a negative id": '{' + _ENVELOPE + ', "num_rows": 1, "total_rows": 1, "msg": [{"id": -3}]}',
    "a fraction as id": '{' + _ENVELOPE + ', "num_rows": 1, "total_rows": 1, "msg": [{"id": 1.5}]}',
    "an id of 5000 digits": '{' + _ENVELOPE + ', "num_rows": 1, "total_rows": 1, "msg": [{"id": "' + "9" * 5000 + '"}]}',
    "a count of 5000 digits": '{' + _ENVELOPE + ', "num_rows": ' + "9" * 5000 + "}",
    "nested too deep": "[" * 100_000 + "]" * 100_000,
    "more rows than announced": '{' + _ENVELOPE + ', "num_rows": 2, "total_rows": 1, "msg": [{"id": 1}, {"id": 2}]}',
    "refused": '{"success": false, "id": 0, "msg": "Data Access Error"}',
}


@pytest.mark.parametrize("case", list(MALFORMED_RMA))
def test_malformed_rma_answers_name_the_query(hostile: Replica, client: httpx.Client, case: str) -> None:
    """Each malformed RMA answer is an RmaError naming the query, never another exception."""
    hostile.set_faults([Fault(FaultKind.GARBAGE, body=MALFORMED_RMA[case], content_type="application/json")])
    try:
        rma = RmaClient(hostile.url, client=client, policy=FAST, sleep=Sleeps())
        with pytest.raises(RmaError, match="LFP NWB files"):
            rma.fetch_all(lfp_nwb_query([1, 2]), name="LFP NWB files")
    finally:
        hostile.set_faults([])


def test_a_malformed_rma_answer_through_the_command_line(lab: Lab, run: Any) -> None:
    """Through the CLI: exit 1, the query named, the tables already in the cache untouched."""
    lab.replica.set_faults([Fault(FaultKind.GARBAGE, body=MALFORMED_RMA["an id twice"], query="*EcephysSession*")])
    result = run(*lab.args("sessions", "--refresh"))
    assert result.code == 1 and "sessions query" in result.err and "twice" in result.err, result.err
    lab.assert_contained()


_LISTING = '<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
_ENTRY = "<Contents><Key>{key}</Key><LastModified>2019-10-03T00:00:00.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>{size}</Size></Contents>"
MALFORMED_XML = {
    "not XML": "{}",
    "an entity bomb": '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;">]><ListBucketResult>&b;</ListBucketResult>',
    "an external entity": '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY x SYSTEM "file:///etc/passwd">]><ListBucketResult>&x;</ListBucketResult>',
    "another document": '<?xml version="1.0"?><Other/>',
    "no IsTruncated": _LISTING + "</ListBucketResult>",
    "a negative size": _LISTING + "<IsTruncated>false</IsTruncated>" + _ENTRY.format(key=PREFIX + "a.csv", size=-5) + "</ListBucketResult>",
    "a size of 30 digits": _LISTING + "<IsTruncated>false</IsTruncated>" + _ENTRY.format(key=PREFIX + "a.csv", size="9" * 30) + "</ListBucketResult>",
    "a size of 5000 digits": _LISTING + "<IsTruncated>false</IsTruncated>" + _ENTRY.format(key=PREFIX + "a.csv", size="9" * 5000) + "</ListBucketResult>",
    "no key": _LISTING + "<IsTruncated>false</IsTruncated><Contents><Size>1</Size></Contents></ListBucketResult>",
    "a key outside the prefix": _LISTING + "<IsTruncated>false</IsTruncated>" + _ENTRY.format(key="../x", size=1) + "</ListBucketResult>",
    "truncated without a token": _LISTING + "<IsTruncated>true</IsTruncated></ListBucketResult>",
    "an error document": '<?xml version="1.0"?><Error><Code>AccessDenied</Code><Message>no</Message></Error>',
}


@pytest.mark.parametrize("case", list(MALFORMED_XML))
def test_malformed_listings_are_source_errors(hostile: Replica, client: httpx.Client, case: str) -> None:
    """Each malformed ListObjectsV2 answer is a SourceError about the listing, never another exception."""
    hostile.set_faults([Fault(FaultKind.GARBAGE, body=MALFORMED_XML[case], content_type="application/xml", paths="/allen-brain-observatory*")])
    try:
        with pytest.raises(SourceError, match="S3"):
            S3Client(hostile.s3_url, client=client, policy=FAST, sleep=Sleeps()).list(PREFIX)
    finally:
        hostile.set_faults([])


def test_a_malformed_csv_from_the_mirror_is_refused(lab: Lab, run: Any) -> None:
    """A sessions.csv with a path for an id is refused with the table named; nothing is fetched."""
    lab.replica.set_faults([Fault(FaultKind.GARBAGE, body="id,session_type\n1/../../x,a\n", paths="*sessions.csv")])
    result = run(*lab.args("--cache-dir", str(lab.root / "fresh"), "fetch", "--all", source="s3"))
    assert result.code == 1 and "sessions" in result.err, result.err
    assert not list((lab.root / "fresh").rglob("*.nwb"))
    shutil.rmtree(lab.root / "fresh")
    lab.assert_contained()


# -- symbolic links planted in the cache ---------------------------------------------------------------


@pytest.mark.parametrize("where", ["final", "part", "record", "record.tmp"])
def test_a_planted_link_is_never_written_through(lab: Lab, run: Any, where: str) -> None:
    """A link at the file, its partial or the partial's record, pointing outside, is reported; its target is untouched."""
    folder = lab.cache / f"session_{lab.b}"
    folder.mkdir()
    final = lab.nwb(lab.b)
    name = {"final": final.name, "part": final.name + ".part", "record": final.name + ".part.json",
            "record.tmp": final.name + ".part.json.tmp"}[where]  # fmt: skip
    (folder / name).symlink_to(lab.victim)
    if where != "part":
        (folder / (final.name + ".part")).write_bytes(b"")  # a partial, so the record is looked at
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "symbolic link" in result.err and name in result.err, result.err
    assert (folder / name).is_symlink()
    lab.assert_contained()


def test_a_linked_session_directory_is_never_written_through(lab: Lab, run: Any) -> None:
    """A session directory that is a link to a directory outside the cache: the run writes nothing there."""
    (lab.cache / f"session_{lab.b}").symlink_to(lab.outside, target_is_directory=True)
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "symbolic link" in result.err, result.err
    lab.assert_contained()


def test_a_dangling_session_link_is_an_error_for_that_session(lab: Lab, run: Any) -> None:
    """A session directory that is a dangling link is reported for that session, not a crash."""
    (lab.cache / f"session_{lab.b}").symlink_to(lab.root / "nowhere", target_is_directory=True)
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "symbolic link" in result.err, result.err
    lab.assert_contained()


def test_the_transfer_refuses_a_linked_directory(hostile: Replica, dataset_dir: Path, client: httpx.Client, tmp_path: Path) -> None:
    """The transfer engine itself writes only in a real directory: a linked one is a CacheError, and stays empty."""
    outside = tmp_path / "outside"
    outside.mkdir()
    linked = tmp_path / "cache" / "session_1"
    linked.parent.mkdir()
    linked.symlink_to(outside, target_is_directory=True)
    file_id = _records(dataset_dir, "WellKnownFile")[0]["id"]
    remote = RemoteFile(f"{hostile.url}/api/v2/well_known_file_download/{file_id}", name="session_1.nwb")
    with pytest.raises(CacheError, match="is a symbolic link"):
        download(remote, linked / "session_1.nwb.part", shared=Shared(client), settings=TransferSettings(policy=FAST))
    assert list(outside.iterdir()) == []


def test_a_linked_records_directory_is_refused(lab: Lab, run: Any) -> None:
    """Records are never written through a link: the run names it and exits 1."""
    records = lab.cache / ".ecephys-dl" / "records"
    (records / f"session_{lab.b}").symlink_to(lab.outside, target_is_directory=True)
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "symbolic link" in result.err, result.err
    lab.assert_contained()


# -- local state that is not to be trusted -----------------------------------------------------------


@pytest.mark.parametrize("content", [b"{not json", b'{"manifest": [{"type": "manifest_version", "value": "9.9.9"}]}'])
def test_a_corrupt_manifest_is_refused_and_kept(lab: Lab, run: Any, content: bytes) -> None:
    """A manifest.json that is not ours to rewrite: exit 1, and its bytes stay."""
    (lab.cache / "manifest.json").write_bytes(content)
    lab.good.pop(lab.cache / "manifest.json")
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 1 and "manifest" in result.err.lower(), result.err
    assert (lab.cache / "manifest.json").read_bytes() == content
    assert not lab.nwb(lab.b).exists()
    lab.assert_contained()


BAD_RECORDS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "garbage": lambda r: "\x00\xff not a record",
    "another version": lambda r: {**r, "version": 2},
    "a path outside the cache": lambda r: {**r, "path": "../../outside/victim.nwb"},
    "another file's path": lambda r: {**r, "path": "session_1/session_1.nwb"},
    "a size as text": lambda r: {**r, "size": str(r["size"])},
    "a short hash": lambda r: {**r, "sha256": "abc"},
    "a list": lambda r: [r],
}


@pytest.mark.parametrize("case", list(BAD_RECORDS))
@pytest.mark.parametrize("source", ["warehouse", "s3"])
def test_a_corrupt_record_is_ignored_and_the_good_file_kept(lab: Lab, run: Any, case: str, source: str) -> None:
    """A record that is not sound counts for nothing: the file in place is checked again and kept."""
    path = lab.cache / ".ecephys-dl" / "records" / f"session_{lab.a}" / f"session_{lab.a}.nwb.json"
    bad = BAD_RECORDS[case](json.loads(path.read_text()))
    path.write_text(bad if isinstance(bad, str) else json.dumps(bad))
    lab.good.pop(path)
    result = run(*lab.args("fetch", str(lab.a), *SMALL, "--format", "json", source=source))
    assert result.code == 0, result.err
    assert json.loads(result.out)["skipped"] == 1
    lab.assert_contained()


def test_a_record_through_a_link_is_not_read(lab: Lab) -> None:
    """A record that is a link (to a record outside) is not read; a listing skips records lying elsewhere than their path."""
    store = RecordStore(CacheLayout(lab.cache))
    relative = f"session_{lab.a}/session_{lab.a}.nwb"
    path = lab.cache / ".ecephys-dl" / "records" / (relative + ".json")
    copy = lab.outside / "record.json"
    shutil.copy2(path, copy)
    assert store.get(relative) is not None
    path.unlink()
    path.symlink_to(copy)
    assert store.get(relative) is None
    record = FileRecord.from_json(copy.read_bytes())
    assert record is not None
    misplaced = lab.cache / ".ecephys-dl" / "records" / "elsewhere.json"
    misplaced.write_bytes(copy.read_bytes())
    assert relative not in [r.path for r in store.all()]
    assert FileRecord.from_json(json.dumps({**json.loads(copy.read_text()), "path": "a/../../b"}).encode()) is None
    path.unlink()
    misplaced.unlink()
    shutil.copy2(copy, path)
    copy.unlink()
    lab.assert_contained()


_BOOT = Path("/proc/sys/kernel/random/boot_id").read_text().strip() if Path("/proc/sys/kernel/random/boot_id").exists() else None

BAD_SIDECARS: dict[str, Callable[[str, int], bytes]] = {
    "garbage": lambda url, size: b"\xff\xfe garbage",
    "another format": lambda url, size: json.dumps({"format": "ecephys-dl-part/9", "url": url, "size": size, "ranges": [[0, 10]]}).encode(),
    "a URL elsewhere": lambda url, size: json.dumps({"format": "ecephys-dl-part/1", "url": "http://127.0.0.2/x", "size": size,
                                                     "etag": '"x"', "last_modified": None, "ranges": [[0, 1000]]}).encode(),  # fmt: skip
    "ranges past the size": lambda url, size: json.dumps({"format": "ecephys-dl-part/1", "url": url, "size": size, "etag": '"x"',
                                                          "last_modified": None, "ranges": [[0, size + 10]]}).encode(),  # fmt: skip
    "a size of a petabyte": lambda url, size: json.dumps({"format": "ecephys-dl-part/1", "url": url, "size": 1024**5, "etag": '"x"',
                                                          "last_modified": None, "ranges": [[0, 1000]]}).encode(),  # fmt: skip
    "a huge record": lambda url, size: b" " * (2 * MiB),
    "synced bytes never written": lambda url, size: json.dumps({"format": "ecephys-dl-part/1", "url": url, "size": size, "etag": None,
                                                                "last_modified": "x", "ranges": [[0, 1000]], "written": [[0, 10]],
                                                                "boot_id": _BOOT}).encode(),  # fmt: skip
    "a boot id that is not text": lambda url, size: json.dumps({"format": "ecephys-dl-part/1", "url": url, "size": size, "etag": None,
                                                                "last_modified": "x", "ranges": [], "written": [[0, 1000]],
                                                                "boot_id": 7}).encode(),  # fmt: skip
}


@pytest.mark.parametrize("case", list(BAD_SIDECARS))
def test_a_corrupt_partial_record_is_discarded_and_the_file_fetched(lab: Lab, run: Any, case: str) -> None:
    """A partial whose record is corrupt, of another version or of another URL is thrown away, never guessed at."""
    folder = lab.cache / f"session_{lab.b}"
    folder.mkdir()
    final = lab.nwb(lab.b)
    (folder / (final.name + ".part")).write_bytes(b"\x55" * 1000)
    file_id = next(r["id"] for r in _records(lab.dataset_dir, "WellKnownFile") if r["attachable_id"] == lab.b)
    url = f"{lab.replica.url}/api/v2/well_known_file_download/{file_id}"
    (folder / (final.name + ".part.json")).write_bytes(BAD_SIDECARS[case](url, len(lab.source_bytes(lab.b))))
    result = run(*lab.args("fetch", str(lab.b), *SMALL))
    assert result.code == 0, result.err
    assert final.read_bytes() == lab.source_bytes(lab.b)
    lab.assert_contained()


# -- TLS ---------------------------------------------------------------------------------------------


def test_a_missing_or_bogus_ca_bundle_is_a_usage_error(tmp_path: Path) -> None:
    """A CA bundle that does not exist, or holds no certificate, is named in a UsageError."""
    with pytest.raises(UsageError, match=r"nope\.pem does not exist"):
        make_client(verify=str(tmp_path / "nope.pem"))
    bogus = tmp_path / "bogus.pem"
    bogus.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(UsageError, match=r"bogus\.pem holds no usable CA certificate"):
        make_client(verify=bogus)
    (tmp_path / "empty.pem").write_text("")
    with pytest.raises(UsageError, match="holds no usable"):
        make_client(verify=str(tmp_path / "empty.pem"))
    with make_client(verify=tmp_path) as client:  # a directory of certificates is a CA path
        assert client is not None


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (skips without openssl)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1"], check=True, capture_output=True, timeout=30)  # fmt: skip
    return cert, key


@pytest.fixture
def tls_replica(dataset_dir: Path, certificate: tuple[Path, Path]) -> Iterator[Replica]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate[0], certificate[1])
    with Replica(dataset_dir, tls=context) as running:
        yield running


def test_certificates_are_verified_by_default(tls_replica: Replica, run: Any, tmp_path: Path) -> None:
    """A certificate no CA vouches for is refused at once (no retries), with a hint to give a CA bundle."""
    sleeps = Sleeps()
    with make_client(trust_env=False) as client:
        rma = RmaClient(tls_replica.url, client=client, policy=RetryPolicy(attempts=5), sleep=sleeps)
        with pytest.raises(SourceError, match="TLS certificate is not trusted") as refused:
            rma.fetch_all(sessions_query(), name="sessions")
    assert "--ca-bundle" in (refused.value.hint or "") and sleeps == []  # the hint, not the message, says what to do
    assert tls_replica.url.startswith("https://")
    result = run("--cache-dir", str(tmp_path / "cache"), "--source", "warehouse", "--warehouse-url", tls_replica.url, "--retries", "2", "sessions")
    assert result.code == 1 and "certificate" in result.err, result.err


def test_a_ca_bundle_makes_the_certificate_trusted(tls_replica: Replica, dataset_dir: Path, certificate: tuple[Path, Path], tmp_path: Path) -> None:
    """With the CA bundle given, queries and downloads over TLS work, byte for byte."""
    session = _records(dataset_dir, "EcephysSession")[0]
    with make_client(verify=str(certificate[0]), trust_env=False) as client:
        rma = RmaClient(tls_replica.url, client=client, policy=FAST, sleep=Sleeps())
        assert len(rma.fetch_all(sessions_query(), name="sessions")) == len(_records(dataset_dir, "EcephysSession"))
        targets, _ = resolve_warehouse(rma, tls_replica.url, [session["id"]], {})
        part = tmp_path / "x.nwb.part"
        download(RemoteFile(targets[0].url), part, shared=Shared(client), settings=TransferSettings(policy=FAST))
    source = dataset_dir / "bucket" / PREFIX / f"session_{session['id']}" / f"session_{session['id']}.nwb"
    assert part.read_bytes() == source.read_bytes()


def test_a_linked_lock_file_is_never_written_through(lab: Lab, run: Any) -> None:
    """The run's lock file planted as a link to a file outside: the run refuses it, and the file keeps its bytes."""
    (lab.cache / ".ecephys-dl" / "run.lock").unlink(missing_ok=True)
    (lab.cache / ".ecephys-dl" / "run.lock").symlink_to(lab.victim)
    run(*lab.args("fetch", str(lab.a), *SMALL))
    lab.assert_contained()
