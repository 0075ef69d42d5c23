"""Shared fixtures: one generated replica dataset per test session, a replica serving it, and a
guard that keeps every test's traffic on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from offline import guard

from ecephys_dl.cli import main
from ecephys_dl.client import make_client
from ecephys_dl.replica import Replica
from ecephys_dl.replica.dataset import make_dataset

# Small enough to write in seconds, large enough that every file spans several S3 parts.
FILE_SIZE = 192 * 1024
PART_SIZE = 64 * 1024
SEED = 7


@pytest.fixture(scope="session", autouse=True)
def loopback_only() -> Iterator[None]:
    """No test resolves or connects to a host other than 127.0.0.1, localhost or ::1 (see :mod:`offline`)."""
    with guard():
        yield


@pytest.fixture(scope="session")
def dataset_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny replica dataset (3 sessions), written once per test session. Tests must not modify it."""
    path = tmp_path_factory.mktemp("replica") / "data"
    make_dataset(path, scale="tiny", file_size=FILE_SIZE, seed=SEED, part_size=PART_SIZE)
    return path


@pytest.fixture(scope="session", autouse=True)
def replica_published(dataset_dir: Path) -> Iterator[Path]:
    """Every run checks against the replica's own published table (its files are not the release's),
    through ``ECEPHYS_DL_PUBLISHED_TABLE``, module-scoped fixtures too; a test of another table
    sets or removes it with ``monkeypatch``."""
    table = dataset_dir / "published_files.csv"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ECEPHYS_DL_PUBLISHED_TABLE", str(table))
        yield table


@pytest.fixture
def replica(dataset_dir: Path, tmp_path: Path) -> Iterator[Replica]:
    """The replica serving the shared dataset on a free loopback port, with a request log."""
    with Replica(dataset_dir, log_path=tmp_path / "requests.jsonl") as running:
        yield running


@pytest.fixture
def start(dataset_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Replica]]:
    """Start replicas of the shared dataset with the given faults, each with its own request log (all stopped at the end)."""
    started: list[Replica] = []

    def run(*faults: str) -> Replica:
        replica = Replica(dataset_dir, faults=list(faults), log_path=tmp_path / f"requests-{len(started)}.jsonl").start()
        started.append(replica)
        return replica

    yield run
    for replica in started:
        replica.close()


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """An HTTP client as ecephys-dl makes them, ignoring proxy settings of the environment."""
    with make_client(connect_timeout=5.0, read_timeout=10.0, trust_env=False) as http:
        yield http


@dataclass
class Run:
    """What one command-line run gave."""

    code: int
    out: str
    err: str


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Callable[..., Run]:
    """Run the command line in-process; return its exit code, stdout and stderr."""

    def invoke(*args: str) -> Run:
        capsys.readouterr()
        with pytest.raises(SystemExit) as done:
            main(list(args))
        captured = capsys.readouterr()
        code = done.value.code
        return Run(int(code) if code is not None else 0, captured.out, captured.err)

    return invoke
