"""Carry out a plan: transfer each file, verify it, promote it, record it.

A file moves to its final path only by an atomic rename after it passed every check: its size
is the server's, its HDF5 superblock's end of file is its size, h5py opens it and its NWB
identifier is the session or probe id it should be (and its MD5 is the S3 ETag's, where that
is a plain MD5). A file that fails verification is fetched again from scratch, up to a budget;
a file that still fails is reported and the run goes on with the others.
"""

from __future__ import annotations

import errno
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from ecephys_dl.config import Source
from ecephys_dl.errors import CacheError, EcephysDlError
from ecephys_dl.integrity import Verdict, check_nwb, check_size_and_superblock
from ecephys_dl.layout import CacheLayout
from ecephys_dl.partial import sidecar_path
from ecephys_dl.plan import Action, PlannedFile
from ecephys_dl.records import FileRecord, RecordStore, utc_now
from ecephys_dl.transfer import (
    RemoteFile,
    Shared,
    TransferCancelled,
    TransferListener,
    TransferResult,
    TransferSettings,
    download,
)

if TYPE_CHECKING:
    import httpx

    from ecephys_dl.catalog import Catalog
    from ecephys_dl.config import Settings
    from ecephys_dl.http import RetryPolicy
    from ecephys_dl.plan import Target
    from ecephys_dl.select import SessionSelection

__all__ = [
    "FetchListener",
    "FetchRequest",
    "FetchSummary",
    "FileOutcome",
    "Prepared",
    "choose",
    "fetch_files",
    "plan_repairs",
    "prepare",
    "resolve",
    "verify_part",
]

# Fetching a file again from byte 0 after it failed verification, at most this often.
REFETCHES = 2


class FetchListener(TransferListener, Protocol):
    """Transfer events plus what happens around each file."""

    def skipped(self, name: str, reason: str) -> None: ...
    def verified(self, name: str, size: int) -> None: ...
    def failed(self, name: str, message: str) -> None: ...


@dataclass(frozen=True)
class FileOutcome:
    relative: str
    status: str  # "fetched", "skipped", "failed", "cancelled"
    size: int = 0
    fetched: int = 0
    message: str = ""


@dataclass
class FetchSummary:
    outcomes: list[FileOutcome] = field(default_factory=list)
    seconds: float = 0.0
    cancelled: bool = False

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    @property
    def bytes_fetched(self) -> int:
        return sum(o.fetched for o in self.outcomes)

    @property
    def ok(self) -> bool:
        return not self.cancelled and all(o.status in ("fetched", "skipped") for o in self.outcomes)

    def as_dict(self) -> dict[str, object]:
        return {
            "fetched": self.count("fetched"),
            "skipped": self.count("skipped"),
            "failed": self.count("failed"),
            "cancelled": self.cancelled,
            "bytes_fetched": self.bytes_fetched,
            "seconds": round(self.seconds, 3),
            "mean_speed_bytes_per_second": round(self.bytes_fetched / self.seconds) if self.seconds > 0 else 0,
            "files": [o.__dict__ for o in self.outcomes],
        }


def verify_part(part: Path, planned: PlannedFile, result: TransferResult) -> Verdict:
    """Every check a file must pass before it may take its final name."""
    target = planned.target
    verdict = check_size_and_superblock(part, target.size if target.size is not None else result.size)
    if not verdict.ok:
        return verdict
    if target.md5 is not None and result.md5 != target.md5:
        from ecephys_dl.integrity import Problem

        return Verdict(Problem.HASH_MISMATCH, f"MD5 {result.md5} differs from the S3 ETag's {target.md5}")
    return check_nwb(part, target.expected_id)


def _promote(part: Path, final: Path) -> None:
    """Rename the verified partial into place and make the rename durable."""
    os.replace(part, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fetch_one(planned: PlannedFile, cache: CacheLayout, records: RecordStore, shared: Shared,
               settings: TransferSettings, listener: FetchListener) -> FileOutcome:  # fmt: skip
    relative = cache.relative(planned.final)
    name = planned.final.name
    if shared.cancelled:
        return FileOutcome(relative, "cancelled")
    if planned.action is Action.SKIP:
        listener.skipped(name, planned.reason)
        return FileOutcome(relative, "skipped", planned.have)
    try:
        if planned.final.parent.is_symlink():
            raise CacheError(f"{planned.final.parent} is a symbolic link: nothing is written through it", hint="remove it, then run again")
        planned.final.parent.mkdir(parents=True, exist_ok=True)
    except (OSError, CacheError) as error:
        message = str(error) if isinstance(error, CacheError) else f"cannot make {planned.final.parent}: {error}"
        listener.failed(name, message)
        return FileOutcome(relative, "failed", message=message)
    part = planned.final.with_name(planned.final.name + ".part")
    remote = RemoteFile(url=planned.target.url, size=planned.target.size, etag=planned.target.etag, name=name,
                        md5=planned.target.md5 is not None)  # fmt: skip
    fetched = 0
    for attempt in range(REFETCHES + 1):
        try:
            result = download(remote, part, shared=shared, settings=settings, listener=listener)
        except TransferCancelled:
            return FileOutcome(relative, "cancelled", fetched=fetched)
        except EcephysDlError as error:
            message = str(error)
            if isinstance(error.__cause__, OSError) and error.__cause__.errno == errno.ENOSPC:
                message = f"no space left on the device writing {name}; its partial is kept for the next run ({error})"
            listener.failed(name, message)
            return FileOutcome(relative, "failed", fetched=fetched, message=message)
        fetched += result.fetched
        verdict = verify_part(part, planned, result)
        if verdict.ok:
            try:
                if planned.final.is_symlink():
                    raise CacheError(f"{planned.final} is a symbolic link: it is not replaced", hint="remove it, then run again")
                _promote(part, planned.final)
                sidecar_path(part).unlink(missing_ok=True)
                now = utc_now()
                records.put(FileRecord(path=relative, size=result.size, sha256=result.sha256, md5=result.md5, etag=result.etag,
                                       last_modified=result.last_modified, source_url=planned.target.url, fetched_at=now,
                                       verified_at=now, verified_level="fetch"))  # fmt: skip
            except (OSError, CacheError) as error:
                listener.failed(name, str(error))
                return FileOutcome(relative, "failed", fetched=fetched, message=str(error))
            listener.verified(name, result.size)
            return FileOutcome(relative, "fetched", result.size, fetched)
        # Bytes that do not verify are worth nothing to a resume: start again from byte 0.
        part.unlink(missing_ok=True)
        sidecar_path(part).unlink(missing_ok=True)
        message = f"{name} failed verification ({verdict.problem}: {verdict.detail})"
        if attempt < REFETCHES:
            listener.restarted(name, message + "; fetching it again")
        else:
            listener.failed(name, message)
            return FileOutcome(relative, "failed", fetched=fetched, message=message)
    raise AssertionError("unreachable")


def fetch_files(
    planned: Sequence[PlannedFile],
    cache: CacheLayout,
    *,
    shared: Shared,
    settings: TransferSettings,
    listener: FetchListener,
    jobs: int = 4,
) -> FetchSummary:
    """Transfer, verify, promote and record every planned file, ``jobs`` files at a time."""
    records = RecordStore(cache)
    summary = FetchSummary()
    started = time.monotonic()
    lock = threading.Lock()
    order = {p.final: i for i, p in enumerate(planned)}
    results: dict[Path, FileOutcome] = {}
    if any(p.action is not Action.SKIP for p in planned):
        # The first verification needs h5py: import it while the first bytes are on their way.
        threading.Thread(target=_import_h5py, name="import h5py", daemon=True).start()
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="fetch") as pool:
        futures = {pool.submit(_fetch_one, p, cache, records, shared, settings, listener): p for p in planned}
        for future in as_completed(futures):
            outcome = future.result()
            with lock:
                results[futures[future].final] = outcome
    summary.outcomes = [results[p.final] for p in sorted(planned, key=lambda p: order[p.final])]
    summary.cancelled = shared.cancelled or any(o.status == "cancelled" for o in summary.outcomes)
    summary.seconds = time.monotonic() - started
    return summary


def _import_h5py() -> None:
    try:
        import h5py  # noqa: F401
    except ImportError:  # reported where the verification needs it
        pass


@dataclass(frozen=True)
class FetchRequest:
    """What to fetch: the sessions a selection picks, and which of their files."""

    selection: SessionSelection
    all_sessions: bool = False
    with_lfp: bool = False
    lfp_only: bool = False
    probe_ids: tuple[int, ...] = ()

    @property
    def wants_lfp(self) -> bool:
        """Whether any LFP file is wanted (``--with-lfp``, ``--lfp-only`` or ``--probe``)."""
        return self.with_lfp or self.lfp_only or bool(self.probe_ids)


@dataclass(frozen=True)
class Prepared:
    """A resolved, planned fetch."""

    sessions: list[int]
    planned: list[PlannedFile]
    unavailable: list[tuple[int, int]]

    @property
    def total(self) -> int:
        return sum(p.target.size or 0 for p in self.planned)

    @property
    def to_fetch(self) -> int:
        return sum(p.remaining or 0 for p in self.planned)

    def as_dict(self) -> dict[str, object]:
        return {
            "sessions": self.sessions,
            "files": [
                {"path": p.relative, "kind": str(p.target.kind), "session_id": p.target.session_id, "probe_id": p.target.probe_id,
                 "action": str(p.action), "size": p.target.size, "have": p.have, "remaining": p.remaining, "reason": p.reason,
                 "url": p.target.url}  # fmt: skip
                for p in self.planned
            ],
            "lfp_not_available": [{"session_id": s, "probe_id": p} for s, p in self.unavailable],
            "total_bytes": self.total,
            "bytes_to_fetch": self.to_fetch,
        }


def _int_columns(path: Path, *names: str) -> list[tuple[int, ...]] | None:
    """The named columns of a metadata CSV as whole numbers, row by row, with the csv module.

    None when the file is anything but plain (a column missing or twice, a value not a whole
    number, the first column's values not unique): the caller then reads it with pandas, which
    gives the proper error or reading.
    """
    import csv

    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            if any(header.count(name) != 1 for name in names):
                return None
            at = [header.index(name) for name in names]
            rows = [tuple(int(row[i]) for i in at) for row in reader]
    except (OSError, ValueError, IndexError, StopIteration, csv.Error):
        return None
    return rows if len({row[0] for row in rows}) == len(rows) else None


def _choose_by_id(catalog: Catalog, request: FetchRequest) -> tuple[list[int], list[tuple[int, int]]] | None:
    """Session ids and (probe, session) pairs for a selection by id only, without pandas (which takes
    longer to import than a small fetch takes to plan); None when the tables need pandas."""
    if not request.selection.ids_only:
        return None
    sessions = _int_columns(catalog.layout.table("sessions"), "id")
    if sessions is None:
        return None
    present = [row[0] for row in sessions]
    probes: list[tuple[int, int]] = []
    if request.wants_lfp:
        rows = _int_columns(catalog.layout.table("probes"), "id", "ecephys_session_id")
        if rows is None:
            return None
        known = set(present)
        probes = [(p, s) for p, s in rows if s in known]  # the inner join of the probes view
    return present, probes


def choose(catalog: Catalog, request: FetchRequest) -> tuple[list[int], dict[int, list[int]]]:
    """The session ids, and the probe ids per session whose LFP files are wanted."""
    quick = _choose_by_id(catalog, request)
    if quick is not None:
        present, pairs = quick
        chosen = [i for i, keep in zip(present, request.selection.id_flags(present), strict=True) if keep]
        return chosen, _probes_for(request, chosen, pairs)
    views = catalog.views()
    chosen = [int(i) for i in request.selection.apply(views.sessions()).index]
    if request.wants_lfp:
        probes = views.probes()
        return chosen, _probes_for(request, chosen, [(int(p), int(s)) for p, s in zip(probes.index, probes["ecephys_session_id"], strict=True)])
    return chosen, {}


def _probes_for(request: FetchRequest, chosen: list[int], pairs: list[tuple[int, int]]) -> dict[int, list[int]]:
    """The probe ids per chosen session whose LFP files are wanted; ``pairs``: (probe, session), the probes view's rows."""
    from ecephys_dl.errors import UsageError

    probes_by_session: dict[int, list[int]] = {}
    if not request.wants_lfp:
        return probes_by_session
    wanted = set(chosen)
    session_of = dict(pairs)
    if request.probe_ids:
        unknown = [p for p in request.probe_ids if p not in session_of]
        if unknown:
            raise UsageError(f"unknown probe id(s): {', '.join(map(str, unknown))}", hint="ecephys-dl probes lists them")
        outside = [p for p in request.probe_ids if session_of[p] not in wanted]
        if outside:
            raise UsageError(f"probe(s) {', '.join(map(str, outside))} are not in the selected sessions")
    for probe_id, session_id in pairs:
        if session_id in wanted and (not request.probe_ids or probe_id in request.probe_ids):
            probes_by_session.setdefault(session_id, []).append(probe_id)
    return probes_by_session


def resolve(settings: Settings, request: FetchRequest, catalog: Catalog, client: httpx.Client, policy: RetryPolicy) -> tuple[list[Target], list[tuple[int, int]]]:
    """The selection's files and their download links (and the probes without an LFP file)."""
    from ecephys_dl import plan as plan_mod
    from ecephys_dl.config import Source

    sessions, probes = choose(catalog, request)
    session_files = not request.lfp_only
    if settings.source is Source.S3:
        from ecephys_dl.s3 import S3Client

        return plan_mod.resolve_s3(S3Client(settings.s3_url, client=client, policy=policy), sessions, probes, session_files=session_files)
    from ecephys_dl.rma import RmaClient

    rma = RmaClient(settings.warehouse_url, client=client, policy=policy, page_timeout=settings.timeout)
    return plan_mod.resolve_warehouse(rma, settings.warehouse_url, sessions, probes, session_files=session_files, allowed_hosts=settings.allowed_hosts)


def prepare(settings: Settings, request: FetchRequest, catalog: Catalog, client: httpx.Client, policy: RetryPolicy) -> Prepared:
    """Resolve the selection into download links and plan each file."""
    from ecephys_dl import plan as plan_mod
    from ecephys_dl.partial import partial_bytes

    targets, unavailable = resolve(settings, request, catalog, client, policy)
    sessions = sorted({t.session_id for t in targets} | {s for s, _ in unavailable})
    cache = CacheLayout(settings.cache_dir)
    records = RecordStore(cache)
    planned = plan_mod.plan_files(targets, cache, records, partial_bytes)
    # Sizes the source did not list are asked for (HEAD) only for files not already in place.
    unknown = {p.target for p in planned if p.action is not Action.SKIP and p.target.size is None}
    if unknown:
        sized = {t: s for t, s in zip(unknown, plan_mod.probe_sizes(client, unknown, policy=policy, timeout=settings.timeout, allowed_hosts=settings.allowed_hosts))}
        planned = plan_mod.plan_files([sized.get(p.target, p.target) for p in planned], cache, records, partial_bytes)
    return Prepared(sessions, planned, unavailable)


def plan_repairs(settings: Settings, relatives: Sequence[str], catalog: Catalog, client: httpx.Client, policy: RetryPolicy) -> list[PlannedFile]:
    """Plans that fetch these NWB files again (resuming a usable partial), whatever is in place now."""
    import re
    from dataclasses import replace as _replace

    from ecephys_dl import plan as plan_mod
    from ecephys_dl.partial import partial_bytes

    sessions: set[int] = set()
    probes: dict[int, list[int]] = {}
    wanted: set[str] = set()
    for relative in relatives:
        if match := re.fullmatch(r"session_(\d+)/session_(\d+)\.nwb", relative):
            sessions.add(int(match.group(1)))
        elif match := re.fullmatch(r"session_(\d+)/probe_(\d+)_lfp\.nwb", relative):
            probes.setdefault(int(match.group(1)), []).append(int(match.group(2)))
        else:
            continue
        wanted.add(relative)
    session_list = sorted(sessions | set(probes))
    if settings.source is Source.S3:
        from ecephys_dl.s3 import S3Client

        targets, _ = plan_mod.resolve_s3(S3Client(settings.s3_url, client=client, policy=policy), session_list, probes)
    else:
        from ecephys_dl.rma import RmaClient

        rma = RmaClient(settings.warehouse_url, client=client, policy=policy, page_timeout=settings.timeout)
        targets, _ = plan_mod.resolve_warehouse(rma, settings.warehouse_url, session_list, probes, allowed_hosts=settings.allowed_hosts)
    cache = CacheLayout(settings.cache_dir)
    targets = [t for t in targets if cache.relative(t.final(cache)) in wanted]
    targets = plan_mod.probe_sizes(client, targets, policy=policy, timeout=settings.timeout, allowed_hosts=settings.allowed_hosts)
    planned = plan_mod.plan_files(targets, cache, RecordStore(cache), partial_bytes)
    # A file in place may be the wrong bytes at the right size: never skip what verification failed.
    return [_replace(p, action=Action.DOWNLOAD, have=0, reason="failed verification") if p.action is Action.SKIP else p for p in planned]
