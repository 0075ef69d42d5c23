"""Several sources as one resolver: the metadata from the first that serves it, each file from all that have it.

A run with several sources (``--source auto``, the default, or a list) resolves through one
:class:`PooledResolver` over each source's own resolver, in the run's order of preference:

- a metadata table comes from the first source that answers; one that fails is asked after the
  others for the rest of the run; when every source fails, the first one's error is raised,
  with what the others said;
- a selection is resolved by every source at once (one thread each), and the answers are merged
  by file (:func:`merge`): each :class:`~ecephys_dl.targets.Target` lists every source that has
  the file as a :class:`~ecephys_dl.targets.Mirror`, the preferred first. A source that cannot
  resolve the selection (unreachable, a malformed answer) is left out of the run, and the
  :class:`~ecephys_dl.targets.Resolution` names it with the reason;
- sizes a source did not list are asked of that source for its own mirrors only.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from ecephys_dl.errors import EcephysDlError
from ecephys_dl.targets import Mirror, Resolution, Resolver, SkippedSource, Target, TargetKind

__all__ = ["PooledResolver", "combined_error", "merge"]

_Key = tuple[TargetKind, int, int | None]


def combined_error(failures: Sequence[tuple[str, EcephysDlError]]) -> EcephysDlError:
    """The first source's error (same type, hint and exit code), its message followed by what the others said."""
    first = failures[0][1]
    if len(failures) == 1:
        return first
    error = copy.copy(first)
    error.message = first.message + "".join(f"; {source} failed too: {other.message}" for source, other in failures[1:])
    error.args = (error.message,)
    return error


def _mirrors(source: str, target: Target) -> tuple[Mirror, ...]:
    """The mirrors of a target one source gave, named after that source."""
    return tuple(m if m.source else replace(m, source=source) for m in target.offers)


def merge(answers: Sequence[tuple[str, Resolution]], skipped: Sequence[SkippedSource] = ()) -> Resolution:
    """One resolution from each source's, in the run's order of preference.

    Files are merged by their place (kind, session, probe): the merged target's own fields are the
    first source's that has the file, its mirrors every source's that has it, in order. Files come
    in the order the sources first list them; a probe is without an LFP file when no source has one.
    """
    mirrors: dict[_Key, list[Mirror]] = {}
    first: dict[_Key, Target] = {}
    missing: dict[tuple[int, int], None] = {}
    for source, resolution in answers:
        for target in resolution.targets:
            first.setdefault(target.key, target)
            mirrors.setdefault(target.key, []).extend(_mirrors(source, target))
        missing.update(dict.fromkeys(resolution.unavailable))
        skipped = [*skipped, *resolution.skipped]
    targets = tuple(target.with_mirrors(mirrors[key]) for key, target in first.items())
    unavailable = tuple(pair for pair in missing if (TargetKind.LFP_NWB, *pair) not in first)
    return Resolution(targets, unavailable, tuple(skipped))


@dataclass
class PooledResolver:
    """The sources of a run, each with its resolver, the preferred first (at least two)."""

    members: tuple[tuple[str, Resolver], ...]
    name: str = field(init=False)
    _failed: set[str] = field(default_factory=set, init=False, repr=False)  # sources whose metadata failed
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.members:
            raise ValueError("a pool needs at least one source")
        self.name = "+".join(source for source, _ in self.members)

    # -- metadata: the first source that answers --------------------------------------------------

    def _first_answer(self, ask: Callable[[Resolver], bytes]) -> bytes:
        with self._lock:
            failed = set(self._failed)
        # A source that failed once is asked last: it would most likely fail again, after its retries.
        order = sorted(self.members, key=lambda member: member[0] in failed)
        failures: list[tuple[str, EcephysDlError]] = []
        for source, resolver in order:
            try:
                return ask(resolver)
            except EcephysDlError as error:
                failures.append((source, error))
                with self._lock:
                    self._failed.add(source)
        failures.sort(key=lambda failure: [s for s, _ in self.members].index(failure[0]))
        raise combined_error(failures)

    def table_csv(self, table: str) -> bytes:
        return self._first_answer(lambda resolver: resolver.table_csv(table))

    def metrics_csv(self, session_type: str) -> bytes:
        return self._first_answer(lambda resolver: resolver.metrics_csv(session_type))

    def session_metrics_csv(self, session_id: int) -> bytes:
        return self._first_answer(lambda resolver: resolver.session_metrics_csv(session_id))

    # -- files: every source that has them --------------------------------------------------------

    def targets(self, sessions: Sequence[int], probes: Mapping[int, Sequence[int]], *, session_files: bool = True) -> Resolution:
        def resolve(member: tuple[str, Resolver]) -> Resolution | EcephysDlError:
            try:
                return member[1].targets(sessions, probes, session_files=session_files)
            except EcephysDlError as error:
                return error

        with ThreadPoolExecutor(max_workers=len(self.members), thread_name_prefix="resolve") as pool:
            answers = list(zip((source for source, _ in self.members), pool.map(resolve, self.members), strict=True))
        found = [(source, answer) for source, answer in answers if isinstance(answer, Resolution)]
        failures = [(source, answer) for source, answer in answers if isinstance(answer, EcephysDlError)]
        if not found:
            raise combined_error(failures)
        return merge(found, [SkippedSource(source, error.message) for source, error in failures])

    def sized(self, targets: Sequence[Target]) -> list[Target]:
        """Each source sizes its own mirrors of ``targets`` (all sources at once); the targets' own
        size and ETag are their first mirror's. A source that cannot tell leaves its mirrors unsized."""
        wanted: dict[str, list[Target]] = {source: [] for source, _ in self.members}
        for target in targets:
            for mirror in target.mirrors:
                if mirror.source in wanted and mirror.size is None:
                    wanted[mirror.source].append(Target.at(target.kind, target.session_id, target.probe_id, mirror))

        def size(member: tuple[str, Resolver]) -> list[Target]:
            source, resolver = member
            if not wanted[source]:
                return []
            try:
                return resolver.sized(wanted[source])
            except EcephysDlError:
                return wanted[source]  # each transfer learns its sizes from its first answer

        with ThreadPoolExecutor(max_workers=len(self.members), thread_name_prefix="size") as pool:
            answers = list(zip((source for source, _ in self.members), pool.map(size, self.members), strict=True))
        learnt: dict[tuple[_Key, str], Mirror] = {}
        for source, sized in answers:
            for target in sized:
                learnt[(target.key, source)] = _mirrors(source, target)[0]
        return [target.with_mirrors([learnt.get((target.key, m.source), m) for m in target.mirrors]) if target.mirrors else target for target in targets]
