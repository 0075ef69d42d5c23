"""A fetch run from start to end: lock, plan, check space, transfer, verify, record, report.

:func:`run` is what ``ecephys-dl fetch`` does, and what any other caller (a script, a notebook)
can do the same way: it takes the cache's lock (one per shard), makes the run's HTTP client,
fetches the metadata tables it needs, resolves the selection into files through the sources'
:class:`~ecephys_dl.targets.Resolver` (saying which sources it left out, and why), plans each file, refuses a plan the disk cannot hold,
fetches the session metrics CSVs beside the NWB files, stops at a clean point when asked (``stop``)
or when ``--max-duration`` is up, and returns a :class:`RunReport`. It never prints: everything
it has to say goes to its listener. :func:`prepare` is the planning alone (``--dry-run``,
``links``), and :func:`repair` fetches again the files ``verify`` found bad.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Protocol

from ecephys_dl.catalog import Catalog
from ecephys_dl.config import Settings
from ecephys_dl.delivery import FetchListener, FetchSummary, FileStatus, fetch_files
from ecephys_dl.errors import EcephysDlError
from ecephys_dl.events import JsonEventLog, Tee
from ecephys_dl.layout import CacheLayout, FileKind
from ecephys_dl.lock import RunLock
from ecephys_dl.manifest import repair_manifest
from ecephys_dl.partial import partial_bytes
from ecephys_dl.plan import Action, PlannedFile, check_free_space, plan_files
from ecephys_dl.published import PublishedTable
from ecephys_dl.records import RecordStore
from ecephys_dl.rma import RmaProgress
from ecephys_dl.select import FetchRequest, choose
from ecephys_dl.shards import Shard, in_shard
from ecephys_dl.sources import resolver_for
from ecephys_dl.targets import Resolution, Resolver, SkippedSource, Target
from ecephys_dl.transfer import Shared, TransferSettings

if TYPE_CHECKING:
    import httpx

    from ecephys_dl.links import LinkSet
    from ecephys_dl.verify import FileResult

__all__ = ["FetchOptions", "Prepared", "RepairFailure", "RepairReport", "RunListener", "RunReport", "prepare", "repair", "resolve_links", "run"]


@dataclass(frozen=True)
class FetchOptions:
    """How a run fetches: the transfer options, the share of the files, its time budget and its lock."""

    connections: int = 4  # ranged connections per file
    jobs: int = 4  # files at once
    max_connections: int = 16  # open connections in all
    source_connections: int | None = None  # open connections to any one source (None: no cap of its own)
    stall_timeout: float = 60.0
    min_speed: int = 0
    limit_rate: int | None = None
    reserve: int = 1 << 30  # disk space to leave free
    shard: Shard | None = None
    max_duration: float | None = None
    wait: bool = False  # wait for another run's lock instead of failing
    accept_unpublished: bool = False  # keep a file whose bytes are not the published ones, recorded as such

    def transfer_settings(self, settings: Settings) -> TransferSettings:
        return TransferSettings(connections=self.connections, stall_timeout=self.stall_timeout, min_speed=self.min_speed, policy=settings.retry_policy())

    @property
    def lock_name(self) -> str:
        return "run" if self.shard is None else f"run-shard-{self.shard.k}-of-{self.shard.n}"

    @property
    def command(self) -> str:
        return "ecephys-dl fetch" + (f" --shard {self.shard}" if self.shard else "")


@dataclass(frozen=True)
class Prepared:
    """A resolved, planned fetch, and the sources left out of it."""

    sessions: list[int]
    planned: list[PlannedFile]
    unavailable: list[tuple[int, int]]
    skipped: tuple[SkippedSource, ...] = ()

    @property
    def total(self) -> int:
        return sum(p.target.size or 0 for p in self.planned)

    @property
    def to_fetch(self) -> int:
        return sum(p.remaining or 0 for p in self.planned)

    def to_json(self) -> dict[str, object]:
        return {
            "sessions": self.sessions,
            "files": [
                {"path": p.relative, "kind": str(p.target.kind), "session_id": p.target.session_id, "probe_id": p.target.probe_id,
                 "action": str(p.action), "size": p.target.size, "have": p.have, "remaining": p.remaining, "reason": p.reason,
                 "url": p.target.url, "sources": [m.source for m in p.target.mirrors], "dropped_sources": list(p.dropped_mirrors)}  # fmt: skip
                for p in self.planned
            ],
            "lfp_not_available": [{"session_id": s, "probe_id": p} for s, p in self.unavailable],
            "skipped_sources": [{"source": s.source, "reason": s.reason} for s in self.skipped],
            "total_bytes": self.total,
            "bytes_to_fetch": self.to_fetch,
        }


@dataclass(frozen=True)
class RunReport:
    """What a run did: its plan, every file's outcome, the other failures, and why it stopped."""

    prepared: Prepared
    summary: FetchSummary
    other_failures: tuple[str, ...] = ()
    stopped_by_max_duration: bool = False

    @property
    def ok(self) -> bool:
        return self.summary.ok and not self.other_failures

    def to_json(self) -> dict[str, object]:
        return {**self.summary.to_json(), "lfp_not_available": self.prepared.to_json()["lfp_not_available"],
                "other_failures": list(self.other_failures), "stopped_by_max_duration": self.stopped_by_max_duration}  # fmt: skip


class RunListener(FetchListener, RmaProgress, Protocol):
    """Hears a whole run: the metadata queries, the plan, each file's events and the run's notices."""

    def planned(self, prepared: Prepared) -> None: ...
    def notice(self, message: str) -> None: ...


@contextmanager
def _opened(settings: Settings, options: FetchOptions, progress: RmaProgress | None, *, ensure: bool = True) -> Iterator[tuple[Catalog, Resolver, httpx.Client]]:
    """The run's HTTP client, its resolver, and the cache's catalog (with its tables in place, unless not ``ensure``)."""
    with settings.client(max_connections=options.max_connections + 8) as client:
        resolver = resolver_for(settings, client, progress=progress)
        catalog = Catalog(settings.layout, lambda: resolver)
        if ensure:
            catalog.ensure()
        yield catalog, resolver, client


def _resolve(catalog: Catalog, resolver: Resolver, request: FetchRequest) -> Resolution:
    sessions, probes = choose(catalog, request)
    return resolver.targets(sessions, probes, session_files=not request.lfp_only)


def _plan(settings: Settings, resolver: Resolver, resolution: Resolution, options: FetchOptions) -> Prepared:
    cache = settings.layout
    targets, unavailable = list(resolution.targets), resolution.unavailable
    sessions = sorted({t.session_id for t in targets} | {s for s, _ in unavailable})
    records = RecordStore(cache)
    published = settings.published()

    def planning(chosen: Sequence[Target]) -> list[PlannedFile]:
        return plan_files(chosen, cache, records, partial_bytes, published, accept_unpublished=options.accept_unpublished)

    planned = planning(targets)
    # Sizes the sources did not list are asked for only for files not already in place (of the
    # resolved targets, every source's mirrors, so the plan can weigh them all again); a size a
    # source cannot tell is the published one.
    unknown = [t for t, p in zip(targets, planned, strict=True) if p.action is not Action.SKIP and p.target.size is None]
    if unknown:
        sized = dict(zip(unknown, resolver.sized(unknown), strict=True))
        planned = planning([_published_size(sized.get(t, t), p) for t, p in zip(targets, planned, strict=True)])
    if options.shard is not None:
        planned = [p for p in planned if in_shard(p.relative, options.shard)]
    return Prepared(sessions, planned, list(unavailable), resolution.skipped)


def _published_size(target: Target, planned: PlannedFile) -> Target:
    """The target with the published size for each source that announces none."""
    published = planned.published
    if published is None:
        return target
    if not target.mirrors:
        return replace(target, size=published.size) if target.size is None else target
    return target.with_mirrors([replace(m, size=published.size) if m.size is None else m for m in target.mirrors])


def _skipped_notice(skipped: SkippedSource) -> str:
    return f"source {skipped.source}: left out of this run: {skipped.reason}"


def prepare(settings: Settings, request: FetchRequest, options: FetchOptions = FetchOptions(), *, progress: RmaProgress | None = None) -> Prepared:
    """The plan of a run, without fetching anything (``--dry-run``)."""
    with _opened(settings, options, progress) as (catalog, resolver, _):
        return _plan(settings, resolver, _resolve(catalog, resolver, request), options)


def resolve_links(settings: Settings, request: FetchRequest, *, progress: RmaProgress | None = None) -> LinkSet:
    """The selection's files, their published digests and every URL they can be read from (``links``):
    each source's link in the run's order, then those of the other sources that take no query (see :mod:`ecephys_dl.links`)."""
    from ecephys_dl.links import LinkSet, links_of

    with _opened(settings, FetchOptions(), progress) as (catalog, resolver, _):
        resolution = _resolve(catalog, resolver, request)
    found = links_of(resolution.targets, settings.layout, settings.published(), sources=settings.sources, s3_url=settings.s3_url,
                     dandi_url=settings.dandi_url, left_out={s.source for s in resolution.skipped})  # fmt: skip
    return LinkSet(found, resolution.unavailable, resolution.skipped)


@dataclass
class _Run:
    """The moving parts of one run between its start and its report."""

    settings: Settings
    options: FetchOptions
    listener: RunListener
    shared: Shared
    stop: threading.Event
    out_of_time: threading.Event = field(default_factory=threading.Event)
    failures: list[str] = field(default_factory=list)

    def watch(self, done: threading.Event) -> None:
        """Cancel the transfers when the caller sets ``stop``, until the run is done."""
        while not done.is_set():
            if self.stop.wait(0.05):
                self.shared.cancel()
                return

    def time_is_up(self) -> None:
        self.out_of_time.set()
        self.listener.notice("--max-duration reached: stopping at a clean point; partials stay for the next run")
        self.shared.cancel()

    def fetch_metrics(self, catalog: Catalog, sessions: Sequence[int]) -> None:
        """Each session's metrics CSV (AllenSDK reads it with the session), one after another,
        while the NWB files come down: small requests need not wait for them, nor they for these."""
        for session_id in sessions:
            if self.shared.cancelled:
                return
            if self.options.shard and not in_shard(f"session_{session_id}/session_{session_id}_analysis_metrics.csv", self.options.shard):
                continue
            try:
                catalog.ensure_session_metrics(session_id)
            except EcephysDlError as error:
                self.failures.append(f"session {session_id} metrics: {error}")
                self.listener.notice(f"failed session_{session_id}_analysis_metrics.csv: {error}")


def run(settings: Settings, request: FetchRequest, options: FetchOptions, listener: RunListener, stop: threading.Event) -> RunReport:
    """Fetch what ``request`` selects into the cache; see the module's docstring.

    Setting ``stop`` (e.g. from a signal handler) makes every transfer stop at a clean point:
    partials and their records stay consistent, and the report says what was done.
    """
    lock = RunLock(settings.cache_dir, options.lock_name, command=options.command, wait=options.wait, notes=listener.notice)
    with lock, _opened(settings, options, listener) as (catalog, resolver, client):
        prepared = _plan(settings, resolver, _resolve(catalog, resolver, request), options)
        for skipped in prepared.skipped:
            listener.notice(_skipped_notice(skipped))
        listener.planned(prepared)
        check_free_space(prepared.planned, settings.cache_dir, options.reserve)
        log = JsonEventLog(settings.log_file) if settings.log_file else None
        if log:
            log.emit("run-start", command="fetch", sessions=prepared.sessions, files=len(prepared.planned), bytes_to_fetch=prepared.to_fetch,
                     shard=options.shard, cache=str(settings.cache_dir))  # fmt: skip
        shared = Shared(client, max_connections=options.max_connections, limit_rate=options.limit_rate, allowed_hosts=settings.allowed_hosts,
                        source_connections=options.source_connections)
        state = _Run(settings, options, listener, shared, stop)
        done = threading.Event()
        threads = [
            threading.Thread(target=state.watch, args=(done,), name="stop watch", daemon=True),
            threading.Thread(target=state.fetch_metrics, args=(catalog, [] if request.lfp_only else prepared.sessions), name="session metrics", daemon=True),
        ]
        budget = threading.Timer(options.max_duration, state.time_is_up) if options.max_duration else None
        try:
            if budget:
                budget.daemon = True
                budget.start()
            for thread in threads:
                thread.start()
            summary = fetch_files(prepared.planned, settings.layout, shared=shared, settings=options.transfer_settings(settings),
                                  listener=Tee(listener, log), jobs=options.jobs, accept_unpublished=options.accept_unpublished)  # fmt: skip
            # A stopped run does not wait for them: each CSV is written atomically, or not at all.
            while threads[1].is_alive() and not shared.cancelled:
                threads[1].join(0.1)  # in steps, so a signal still reaches its handler
        finally:
            done.set()
            if budget:
                budget.cancel()
    report = RunReport(prepared, summary, tuple(state.failures), state.out_of_time.is_set())
    if log:
        log.emit("run-end", **{k: v for k, v in report.to_json().items() if k != "files"})
        log.close()
    return report


def _plan_repairs(cache: CacheLayout, resolver: Resolver, relatives: Sequence[str], published: PublishedTable, options: FetchOptions,
                  notice: Callable[[str], None]) -> list[PlannedFile]:  # fmt: skip
    """Plans that fetch these NWB files again (resuming a usable partial), whatever is in place now;
    each source left out is told to ``notice``."""
    sessions: set[int] = set()
    probes: dict[int, list[int]] = {}
    for found in filter(None, map(cache.classify, relatives)):
        if found.kind is FileKind.SESSION_NWB and found.session_id is not None:
            sessions.add(found.session_id)
        elif found.kind is FileKind.LFP_NWB and found.session_id is not None and found.probe_id is not None:
            probes.setdefault(found.session_id, []).append(found.probe_id)
    wanted = set(relatives)
    resolution = resolver.targets(sorted(sessions | set(probes)), probes)
    for skipped in resolution.skipped:
        notice(_skipped_notice(skipped))
    targets: list[Target] = [t for t in resolution.targets if cache.relative(t.final(cache)) in wanted]
    planned = plan_files(resolver.sized(targets), cache, RecordStore(cache), partial_bytes, published, accept_unpublished=options.accept_unpublished)
    # A file in place may be the wrong bytes at the right size: never skip what verification failed.
    return [replace(p, action=Action.DOWNLOAD, have=0, reason="failed verification") if p.action is Action.SKIP else p for p in planned]


@dataclass(frozen=True)
class RepairFailure:
    path: str
    error: str


@dataclass
class RepairReport:
    """What :func:`repair` mended: NWB files fetched again, tables fetched again, the manifest rewritten."""

    fetched: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    manifest: str | None = None  # "rewritten" when it was
    failed: list[RepairFailure] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"fetched": self.fetched, "tables": self.tables, "manifest": self.manifest,
                "failed": [{"path": f.path, "error": f.error} for f in self.failed]}  # fmt: skip


def repair(settings: Settings, bad: Sequence[FileResult], options: FetchOptions, listener: RunListener) -> RepairReport:
    """Mend what ``verify`` found bad: restore AllenSDK's manifest (the bad one kept aside), fetch the
    bad metadata tables again, and fetch the bad NWB files again (resuming usable partials).

    The caller holds the cache's lock (``verify --repair`` takes it before checking).
    """
    cache = settings.layout
    done = RepairReport()
    found = [(result, cache.classify(result.path)) for result in bad]
    if any(place is not None and place.kind is FileKind.MANIFEST for _, place in found):
        aside = repair_manifest(cache)
        if aside is not None:
            listener.notice(f"kept the bad manifest as {aside.name}")
        done.manifest = "rewritten"
    with _opened(settings, options, listener, ensure=False) as (catalog, resolver, client):
        for result, place in found:
            try:
                if place is None:
                    continue
                if place.kind is FileKind.TABLE_CSV and place.name is not None:
                    catalog.ensure([place.name], refresh=True)
                elif place.kind is FileKind.SESSION_METRICS_CSV and place.session_id is not None:
                    catalog.ensure_session_metrics(place.session_id, refresh=True)
                elif place.kind is FileKind.TYPEWISE_METRICS_CSV and place.name is not None:
                    catalog.ensure_metrics(place.name, refresh=True)
                else:
                    continue
                done.tables.append(result.path)
            except (EcephysDlError, ValueError) as error:
                done.failed.append(RepairFailure(result.path, str(error)))
        nwb = [result.path for result, place in found if place is not None and place.kind in (FileKind.SESSION_NWB, FileKind.LFP_NWB)]
        if nwb:
            catalog.ensure()
            planned = _plan_repairs(cache, resolver, nwb, settings.published(), options, listener.notice)
            listener.planned(Prepared(sorted({p.target.session_id for p in planned}), planned, []))
            shared = Shared(client, max_connections=options.max_connections, limit_rate=options.limit_rate, allowed_hosts=settings.allowed_hosts,
                        source_connections=options.source_connections)
            summary = fetch_files(planned, cache, shared=shared, settings=options.transfer_settings(settings), listener=listener, jobs=options.jobs,
                                  accept_unpublished=options.accept_unpublished)  # fmt: skip
            done.fetched = [o.relative for o in summary.outcomes if o.status is FileStatus.FETCHED]
            done.failed += [RepairFailure(o.relative, o.message) for o in summary.outcomes if o.status is not FileStatus.FETCHED]
    return done
