"""The replica's HTTP server over real loopback HTTP: routes, ranges, RMA, log, shutdown, runner."""

from __future__ import annotations

import email.utils
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from replica_fixtures import PREFIX, TinyDataset, build_dataset

from ecephys_dl.replica import Dataset, DatasetError, Replica
from ecephys_dl.replica.server import ByteRange, resolve_range

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[1]

# The queries of PROTOCOL.md §2 exactly as AllenSDK puts them on the wire.
PAGING = "rma::options%5Bstart_row$eq{start}%5D%5Bnum_rows$eq{rows}%5D%5Border$eq'id'%5D"
SESSIONS = "criteria=model::EcephysSession,rma::include,specimen(donor(age)),well_known_files(well_known_file_type),"
CHANNELS = (
    "criteria=model::EcephysChannel,rma::include,structure,rma::options%5Btabular$eq'ecephys_channels.id,"
    "ecephys_probe_id,local_index,probe_horizontal_position,probe_vertical_position,"
    "anterior_posterior_ccf_coordinate,dorsal_ventral_ccf_coordinate,left_right_ccf_coordinate,"
    "structures.id%20as%20ecephys_structure_id,structures.acronym%20as%20ecephys_structure_acronym'%5D,"
)
SESSION_NWB = (
    "criteria=model::WellKnownFile,rma::criteria,well_known_file_type%5Bname$eq'EcephysNwb'%5D"
    "%5Battachable_type$eq'EcephysSession'%5D%5Battachable_id$eq{session}%5D,"
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> TinyDataset:
    return build_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture
def served(tiny: TinyDataset, tmp_path: Path) -> Iterator[Replica]:
    with Replica(tiny.directory, log_path=tmp_path / "requests.jsonl") as replica:
        yield replica


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(5.0)) as http:
        yield http


def _file_urls(served: Replica, tiny: TinyDataset, key: str) -> list[str]:
    """Every URL serving ``key``: S3, warehouse, and the warehouse as AllenSDK spells it."""
    file_id = tiny.file_id(key)
    return [
        f"{served.s3_url}/{quote(key)}",
        f"{served.url}/api/v2/well_known_file_download/{file_id}",
        f"{served.url}//api/v2/well_known_file_download/{file_id}",
    ]


# -- whole files and their headers -----------------------------------------------------------


def test_s3_object_headers_and_bytes(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """An S3 GET returns the stored bytes with S3's ETag, the length, and range support."""
    info = Dataset.open(tiny.directory).object(tiny.big_key)
    response = client.get(f"{served.s3_url}/{tiny.big_key}")
    assert response.status_code == 200
    assert response.content == tiny.contents[tiny.big_key]
    assert response.headers["content-length"] == str(len(tiny.contents[tiny.big_key]))
    assert response.headers["etag"] == info.etag and info.etag.endswith('-3"')
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["content-type"] == "binary/octet-stream"
    assert response.headers["last-modified"] == "Thu, 03 Oct 2019 00:00:00 GMT"
    csv = client.get(f"{served.s3_url}/{PREFIX}sessions.csv")
    assert csv.headers["content-type"] == "text/csv"


def test_warehouse_download_headers(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """A warehouse download carries an nginx-style ETag of mtime and size, and the file name."""
    data = tiny.contents[tiny.big_key]
    for url in _file_urls(served, tiny, tiny.big_key)[1:]:
        response = client.get(url)
        assert response.status_code == 200 and response.content == data
        mtime = int(email.utils.parsedate_to_datetime(response.headers["last-modified"]).timestamp())
        assert response.headers["etag"] == f'"{mtime:x}-{len(data):x}"'
        assert response.headers["content-type"] == "application/octet-stream"
        assert response.headers["content-disposition"] == "attachment; filename=session_1001.nwb"
        assert response.headers["content-length"] == str(len(data))


def test_percent_encoded_key(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """Keys are percent-decoded from the path (spaces, quotes, &, non-ASCII), and ``+`` stays ``+``."""
    response = client.get(f"{served.s3_url}/{quote(tiny.odd_key)}")
    assert response.status_code == 200
    assert response.content == tiny.contents[tiny.odd_key]
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("{url}/api/v2/well_known_file_download/999", None),  # unknown id
        ("{url}/api/v2/well_known_file_download/abc", None),  # not an id
        ("{url}/api/v2/well_known_file_download/%C2%B2", None),  # a digit, but not ASCII
        ("{s3}/visual-coding-neuropixels/ecephys-cache/nope.nwb", "NoSuchKey"),
        ("{url}/nothing/here", None),
        ("{url}/api/v2/data/other.json", None),
    ],
)
def test_not_found(served: Replica, client: httpx.Client, url: str, code: str | None) -> None:
    """Unknown files, keys and routes answer 404; S3 says NoSuchKey in XML."""
    response = client.get(url.format(url=served.url, s3=served.s3_url))
    assert response.status_code == 404
    if code is not None:
        assert response.headers["content-type"] == "application/xml"
        assert f"<Code>{code}</Code>" in response.text
        assert "<Key>visual-coding-neuropixels/ecephys-cache/nope.nwb</Key>" in response.text


def test_other_methods_refused(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """Writes are refused with 405 and an Allow header, and the connection stays usable."""
    response = client.post(f"{served.s3_url}/{tiny.small_key}", content=b"x" * 100)
    assert response.status_code == 405 and response.headers["allow"] == "GET, HEAD"
    assert client.get(f"{served.s3_url}/{tiny.small_key}").status_code == 200


# -- ranges ------------------------------------------------------------------------------------

SIZE = 2 * 64 * 1024 + 12345  # the big object's size


@pytest.mark.parametrize(
    ("header", "status", "part"),
    [
        ("bytes=0-99", 206, (0, 100)),
        ("bytes=100-", 206, (100, SIZE)),
        ("bytes=-50", 206, (SIZE - 50, SIZE)),
        (f"bytes=-{SIZE + 10}", 206, (0, SIZE)),  # a suffix longer than the file: all of it
        (f"bytes=10-{SIZE + 100}", 206, (10, SIZE)),  # the end is clamped
        (f"bytes={SIZE - 1}-", 206, (SIZE - 1, SIZE)),
        ("BYTES = 5-9", 206, (5, 10)),  # unit is case-insensitive, spaces tolerated
        (f"bytes={SIZE}-", 416, None),
        (f"bytes={SIZE}-{SIZE + 5}", 416, None),
        ("bytes=-0", 416, None),
        ("bytes=0-1,5-6", 200, None),  # several ranges: ignored
        ("bytes=5-3", 200, None),  # invalid: ignored
        ("bytes=abc", 200, None),
        ("bytes=-", 200, None),
        ("items=0-5", 200, None),
    ],
)
def test_range_table(
    served: Replica, tiny: TinyDataset, client: httpx.Client, header: str, status: int, part: tuple[int, int] | None
) -> None:
    """Every file route answers a Range with 206 and the exact slice, 416, or 200 with everything."""
    data = tiny.contents[tiny.big_key]
    assert len(data) == SIZE
    for url in _file_urls(served, tiny, tiny.big_key):
        response = client.get(url, headers={"Range": header})
        assert response.status_code == status, url
        if status == 206:
            assert part is not None
            assert response.content == data[part[0] : part[1]]
            assert response.headers["content-range"] == f"bytes {part[0]}-{part[1] - 1}/{SIZE}"
            assert response.headers["content-length"] == str(part[1] - part[0])
        elif status == 416:
            assert response.headers["content-range"] == f"bytes */{SIZE}"
        else:
            assert response.content == data and "content-range" not in response.headers


def test_empty_object_ranges(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """A zero-byte object answers 200 with nothing, and 416 with ``*/0`` to any range."""
    for url in _file_urls(served, tiny, tiny.empty_key):
        whole = client.get(url)
        assert whole.status_code == 200 and whole.content == b"" and whole.headers["content-length"] == "0"
        for header in ("bytes=0-", "bytes=-5", "bytes=0-0"):
            response = client.get(url, headers={"Range": header})
            assert response.status_code == 416 and response.headers["content-range"] == "bytes */0"


def test_if_range(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """If-Range honours the Range only for the current strong ETag or the exact Last-Modified date."""
    data = tiny.contents[tiny.big_key]
    for url in _file_urls(served, tiny, tiny.big_key):
        head = client.head(url)
        etag, date = head.headers["etag"], head.headers["last-modified"]
        cases = {
            etag: 206,
            date: 206,
            "Thu, 03 Oct 2019 00:00:01 GMT": 200,  # another date
            '"0123456789abcdef"': 200,  # another ETag
            "W/" + etag: 200,  # a weak validator never matches
            "not a validator": 200,
        }
        for validator, status in cases.items():
            response = client.get(url, headers={"Range": "bytes=100-199", "If-Range": validator})
            assert response.status_code == status, validator
            assert response.content == (data[100:200] if status == 206 else data)


def test_head_matches_get(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """HEAD answers GET's status and headers, without a body, for 200, 206 and 416."""
    for url in _file_urls(served, tiny, tiny.big_key):
        for headers in ({}, {"Range": "bytes=7-1000"}, {"Range": f"bytes={SIZE}-"}):
            got, head = client.get(url, headers=headers), client.head(url, headers=headers)
            assert head.status_code == got.status_code
            assert head.content == b""
            drop = {"date"}
            assert {k: v for k, v in head.headers.items() if k not in drop} == {
                k: v for k, v in got.headers.items() if k not in drop
            }


def test_resolve_range_pure() -> None:
    """The range rules as a pure function: None means "send it all"."""
    assert resolve_range(None, 10) is None
    assert resolve_range("bytes=2-4", 10) == ByteRange(2, 5)
    assert resolve_range("bytes=-3", 10) == ByteRange(7, 10)
    assert resolve_range("bytes=10-", 10) == ByteRange(0, 0, satisfiable=False)
    assert resolve_range("bytes=0-", 0) == ByteRange(0, 0, satisfiable=False)
    assert resolve_range("bytes=1-2, 4-5", 10) is None


# -- connections -------------------------------------------------------------------------------


def test_keep_alive(served: Replica, tiny: TinyDataset) -> None:
    """Several requests, chunked RMA answers included, share one HTTP/1.1 connection."""
    connection = http.client.HTTPConnection("127.0.0.1", served.port, timeout=5)
    try:
        paths = [
            f"/{served.dataset.bucket}/{quote(tiny.small_key)}",
            "/api/v2/data/query.json?criteria=model::EcephysProbe",
            f"/{served.dataset.bucket}?list-type=2",
            "/api/v2/well_known_file_download/1026124481",
        ]
        sockets = set()
        for path in paths * 2:
            connection.request("GET", path)
            response = connection.getresponse()
            assert response.status == 200
            response.read()
            assert connection.sock is not None
            sockets.add(id(connection.sock))
        assert len(sockets) == 1
    finally:
        connection.close()


def test_loopback_only(tiny: TinyDataset) -> None:
    """The replica refuses to listen anywhere but 127.0.0.1."""
    with pytest.raises(ValueError, match=r"127.0.0.1"):
        Replica(tiny.directory, host="0.0.0.0").start()


# -- RMA ---------------------------------------------------------------------------------------


def _raw_get(port: int, target: str) -> tuple[str, bytes]:
    """Send one GET over a plain socket; return the head and the raw (still chunk-framed) body."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.decode("latin-1").replace("\r\n", "\n"), body


def _dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n", "the chunked body ends with an empty chunk and CRLF"
            return out
        out, rest = out + rest[:size], rest[size:]
        assert rest[:2] == b"\r\n"
        rest = rest[2:]


def test_rma_sessions_query_is_chunked(served: Replica) -> None:
    """The sessions query of the protocol, percent-encoded as AllenSDK sends it, gets a chunked envelope."""
    target = "/api/v2/data/query.json?" + SESSIONS + PAGING.format(start=0, rows=5000)
    head, raw = _raw_get(served.port, target)
    assert head.startswith("HTTP/1.1 200")
    assert re.search(r"(?im)^transfer-encoding: chunked$", head)
    assert not re.search(r"(?im)^content-length:", head)
    assert re.search(r"(?im)^content-type: application/json; charset=utf-8$", head)
    envelope = json.loads(_dechunk(raw))
    assert list(envelope) == ["success", "id", "start_row", "num_rows", "total_rows", "msg"]
    assert envelope["success"] is True and envelope["total_rows"] == 2 and envelope["num_rows"] == 2
    first = envelope["msg"][0]
    assert first["id"] == 1001
    assert first["specimen"]["donor"]["age"]["days"] == 118
    assert first["well_known_files"][0]["well_known_file_type"]["name"] == "EcephysNwb"


def test_rma_paging_and_double_slash(served: Replica, client: httpx.Client) -> None:
    """Pages follow start_row/num_rows, and ``//api`` answers like ``/api``."""
    ids = []
    for start in range(0, 12, 5):
        url = f"{served.url}//api/v2/data/query.json?{CHANNELS}{PAGING.format(start=start, rows=5)}"
        envelope = client.get(url).json()
        assert envelope["success"] is True and envelope["total_rows"] == 12 and envelope["start_row"] == start
        ids += [row["id"] for row in envelope["msg"]]
        assert set(envelope["msg"][0]) >= {"ecephys_structure_id", "ecephys_structure_acronym", "local_index"}
    assert ids == sorted(ids) == list(range(5000, 5012))


def test_rma_file_query_then_download(served: Replica, tiny: TinyDataset, client: httpx.Client) -> None:
    """A WellKnownFile query's download_link, joined the AllenSDK way, downloads the file."""
    url = f"{served.url}/api/v2/data/query.json?{SESSION_NWB.format(session=1001)}{PAGING.format(start=0, rows=5000)}"
    envelope = client.get(url).json()
    assert envelope["success"] is True and envelope["num_rows"] == 1
    link = envelope["msg"][0]["download_link"]
    response = client.get(served.url + "/" + link)
    assert response.status_code == 200 and response.content == tiny.contents[tiny.big_key]


def test_rma_http10_client(served: Replica) -> None:
    """An HTTP/1.0 client, which cannot read chunks, gets the plain JSON and a closed connection."""
    with socket.create_connection(("127.0.0.1", served.port), timeout=5) as sock:
        sock.sendall(b"GET /api/v2/data/query.json?criteria=model::EcephysProbe HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert json.loads(body)["total_rows"] == 4


@pytest.mark.parametrize(
    "q",
    [
        "criteria=model::Specimen,rma::criteria,%5Bname$eq'wt+2&co'%5D",
        "criteria=model::Specimen,rma::criteria,%5Bname$eq'wt%2B2%26co'%5D",
        "criteria%3Dmodel%3A%3ASpecimen%2Crma%3A%3Acriteria%2C%5Bname%24eq%27wt%2B2%26co%27%5D",
    ],
)
def test_rma_query_decoded_whole(served: Replica, q: str) -> None:
    """The whole query string is percent-decoded once: ``+`` stays ``+`` and ``&`` does not split it."""
    head, raw = _raw_get(served.port, f"/api/v2/data/query.json?{q}")
    assert head.startswith("HTTP/1.1 200")
    envelope = json.loads(_dechunk(raw))
    assert envelope["total_rows"] == 1 and envelope["msg"][0]["id"] == 3002


@pytest.mark.parametrize(
    "q", ["criteria=model::NoSuchModel", "criteria=model::EcephysSession,rma::options%5Bstart_row$eqX%5D", "garbage"]
)
def test_rma_error_envelope(served: Replica, q: str) -> None:
    """A query the engine rejects gets status 400 and the error envelope, still chunked."""
    head, raw = _raw_get(served.port, f"/api/v2/data/query.json?{q}")
    assert head.startswith("HTTP/1.1 400")
    assert re.search(r"(?im)^transfer-encoding: chunked$", head)
    envelope = json.loads(_dechunk(raw))
    assert envelope["success"] is False and isinstance(envelope["msg"], str) and envelope["msg"]


# -- the request log ---------------------------------------------------------------------------


def test_request_log(served: Replica, tiny: TinyDataset, client: httpx.Client, tmp_path: Path) -> None:
    """Each request is one JSON line with the raw path, range, status and body bytes actually sent."""
    served.clear_requests()
    client.get(f"{served.s3_url}/{tiny.big_key}", headers={"Range": "bytes=0-9", "If-Range": '"x"'})
    client.head(f"{served.url}/api/v2/well_known_file_download/1026124481")
    client.get(f"{served.url}/api/v2/data/query.json?criteria=model::EcephysProbe")
    client.get(f"{served.url}/missing")
    served.wait_requests(4)
    lines = [json.loads(line) for line in (tmp_path / "requests.jsonl").read_text().splitlines()]
    assert lines == served.requests()
    assert [(r["method"], r["status"]) for r in lines] == [("GET", 200), ("HEAD", 200), ("GET", 200), ("GET", 404)]
    first = lines[0]
    assert first["range"] == "bytes=0-9" and first["if_range"] == '"x"'
    assert first["bytes"] == SIZE  # the stale If-Range made it a whole-file answer
    assert lines[1]["bytes"] == 0 and lines[1]["range"] is None
    assert lines[2]["path"] == "/api/v2/data/query.json?criteria=model::EcephysProbe"
    assert lines[2]["bytes"] > 100
    for record in lines:
        assert set(record) == {"time", "method", "path", "range", "if_range", "status", "bytes", "fault", "duration"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["time"])
        assert record["fault"] is None and record["duration"] >= 0


# -- the dataset directory ---------------------------------------------------------------------


def test_dataset_open_errors(tmp_path: Path) -> None:
    """A missing, corrupt or foreign dataset.json is refused with a message naming the file."""
    with pytest.raises(DatasetError, match="does not exist"):
        Dataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetError, match="cannot be read"):
        Dataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "something-else/2"}))
    with pytest.raises(DatasetError, match="something-else/2"):
        Dataset.open(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "ecephys-dl-replica/1", "bucket": "b"}))
    with pytest.raises(DatasetError, match="malformed"):
        Dataset.open(tmp_path)


def test_dataset_records_lazy_and_cached(tiny: TinyDataset) -> None:
    """Records load once per model (the same list every time, across threads); unknown models are KeyError."""
    dataset = Dataset.open(tiny.directory)
    seen: list[int] = []
    threads = [threading.Thread(target=lambda: seen.append(id(dataset.records("EcephysUnit")))) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(seen)) == 1 and len(dataset.records("EcephysUnit")) == 30
    with pytest.raises(KeyError):
        dataset.records("NoSuchModel")
    with pytest.raises(KeyError):
        dataset.records("../dataset")
    assert dataset.download(1026124469) == dataset.object(tiny.big_key)
    assert dataset.download(1) is None
    assert [o.key.encode() for o in dataset.objects] == sorted(o.key.encode() for o in dataset.objects)


# -- shutdown and the runner -------------------------------------------------------------------


def test_prompt_shutdown_with_hung_request(tiny: TinyDataset) -> None:
    """Leaving the context manager takes under a second even while a request hangs."""
    outcome: list[BaseException | int] = []
    replica = Replica(tiny.directory, faults=["rma-hang:seconds=30", "stall:seconds=30,after=1000"]).start()

    def fetch(url: str) -> None:
        try:
            with httpx.Client(timeout=10) as http, http.stream("GET", url) as response:
                outcome.append(len(b"".join(response.iter_bytes())))
        except httpx.HTTPError as err:
            outcome.append(err)

    threads = [
        threading.Thread(target=fetch, args=(f"{replica.url}/api/v2/data/query.json?criteria=model::EcephysProbe",)),
        threading.Thread(target=fetch, args=(f"{replica.s3_url}/{tiny.big_key}",)),
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and replica.server.open_connections < 2:
        time.sleep(0.01)
    time.sleep(0.1)  # let both requests reach their wait
    started = time.monotonic()
    replica.close()
    elapsed = time.monotonic() - started
    for thread in threads:
        thread.join(timeout=5)
    assert elapsed < 1.0
    assert len(outcome) == 2 and all(isinstance(item, httpx.HTTPError) for item in outcome)


def test_serve_subprocess(tiny: TinyDataset, tmp_path: Path) -> None:
    """``python -m ecephys_dl.replica serve`` prints the URLs, serves, and exits 0 on SIGTERM."""
    log = tmp_path / "serve.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "ecephys_dl.replica", "serve", "--data", str(tiny.directory), "--log", str(log),
         "--fault", "error:status=503,times=1", "--seed", "3"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        warehouse = process.stdout.readline().strip()
        s3 = process.stdout.readline().strip()
        match = re.fullmatch(r"warehouse: (http://127\.0\.0\.1:\d+)", warehouse)
        assert match, warehouse
        assert s3 == f"s3: {match.group(1)}/allen-brain-observatory"
        with httpx.Client(timeout=5) as http:
            assert http.get(f"{match.group(1)}/api/v2/well_known_file_download/1026124481").status_code == 503
            response = http.get(f"{s3[4:]}/{tiny.small_key}")
        assert response.status_code == 200 and response.content == tiny.contents[tiny.small_key]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
        # After the two URLs, the DANDI API's (on a port of its own), and nothing else.
        rest = process.stdout.read()
        assert re.fullmatch(r"dandi: http://127\.0\.0\.1:(\d+)/api\n", rest), rest
        assert [json.loads(line)["status"] for line in log.read_text().splitlines()] == [503, 200]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize(
    "argv",
    [
        ["serve"],  # --data is required
        ["serve", "--data", "{dir}", "--host", "0.0.0.0"],
        ["serve", "--data", "{dir}", "--fault", "explode"],
        ["serve", "--data", "{missing}"],
        ["make-dataset", "{dir}", "--scale", "huge"],
        ["make-dataset", "{dir}", "--file-size", "lots"],
        ["make-dataset", "{dir}", "--backend", "zarr"],
    ],
)
def test_runner_bad_arguments(tiny: TinyDataset, tmp_path: Path, argv: list[str]) -> None:
    """Bad arguments make the runner exit 2 with an argparse message, without serving anything."""
    from ecephys_dl.replica.__main__ import main

    args = [a.format(dir=tiny.directory, missing=tmp_path / "missing") for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2


def test_runner_help_has_examples(capsys: pytest.CaptureFixture[str]) -> None:
    """Every command's --help shows examples."""
    from ecephys_dl.replica.__main__ import main

    for argv in (["--help"], ["serve", "--help"], ["make-dataset", "--help"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        assert "examples:\n  python -m ecephys_dl.replica" in capsys.readouterr().out
