"""What to do with each file of a selection: skip it, resume its partial, or download it.

:func:`decide` is the decision, a pure function of what is on disk at the file's place
(:class:`OnDisk`), what the sources say of the file (:class:`~ecephys_dl.targets.Target`) and
ecephys-dl's record of it, as pooch's ``download_action`` is. Before it, :func:`eligible` holds what
each source (each :class:`~ecephys_dl.targets.Mirror` of the file) announces (size, SHA-256)
against the published facts of the file: a source announcing other bytes than the archive's is
left out for that file, and the file is refused (:attr:`Action.REFUSE`) when no source is left,
unless the run accepts unpublished files; it also says whether the file's pieces may come from
several sources. :func:`look` reads the disk for it
and :func:`plan_files` applies both to a whole selection. :func:`check_free_space` compares what
is still to fetch with the free disk space.

A file whose place holds a symbolic link (its session directory, the file, its partial or the
partial's record) is never skipped on the strength of what the link points to: it is planned for
download, and the transfer refuses to write through the link and reports it.
"""

from __future__ import annotations

import enum
import os
import shutil
import stat
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ecephys_dl.errors import NoSpace
from ecephys_dl.integrity import OK, Verdict, check_size_and_superblock
from ecephys_dl.layout import CacheLayout
from ecephys_dl.published import PublishedFile, PublishedTable
from ecephys_dl.records import FileRecord, RecordStore
from ecephys_dl.sizes import format_size
from ecephys_dl.targets import Mirror, Target

__all__ = [
    "Action",
    "Decision",
    "Eligibility",
    "OnDisk",
    "PlannedFile",
    "check_free_space",
    "decide",
    "eligible",
    "expected_size",
    "look",
    "plan_files",
    "refusal",
]


class Action(enum.StrEnum):
    """What a run does with a file."""

    SKIP = "skip"
    RESUME = "resume"
    DOWNLOAD = "download"
    REFUSE = "refuse"  # the source announces other bytes than the published ones


@dataclass(frozen=True)
class OnDisk:
    """What the cache holds at a file's place, as :func:`look` read it."""

    link: str | None = None  # a symbolic link in the file's place, if any
    size: int | None = None  # the size of the file at its final path; None when there is none
    whole: Verdict = OK  # the file's O(1) check (size, HDF5 end of file) against the expected size
    partial: int = 0  # bytes of a partial download that its record vouches for


@dataclass(frozen=True)
class Decision:
    """The action for one file, the bytes already in place, and why."""

    action: Action
    have: int = 0
    reason: str = ""


@dataclass(frozen=True)
class PlannedFile:
    """One target, where it goes in the cache, and what the run will do with it."""

    target: Target
    final: Path
    action: Action
    have: int  # bytes already in place (the file, or a partial's written ranges)
    reason: str = ""
    published: PublishedFile | None = None  # what the archive publishes of the file, if it does
    mix: bool = False  # the file's pieces may come from several sources (``target.mirrors``), all holding the published bytes
    dropped_mirrors: tuple[str, ...] = ()  # why each source left out for this file was (it announces other bytes)

    @property
    def relative(self) -> str:
        return self.final.parent.name + "/" + self.final.name

    @property
    def remaining(self) -> int | None:
        if self.action in (Action.SKIP, Action.REFUSE):
            return 0
        return None if self.target.size is None else max(0, self.target.size - self.have)


def expected_size(target: Target, record: FileRecord | None) -> int | None:
    """The size the file should have: the source's, else the one ecephys-dl recorded."""
    if target.size is not None:
        return target.size
    return record.size if record is not None else None


@dataclass(frozen=True)
class Eligibility:
    """The sources a file may be read from, against its published facts (:func:`eligible`)."""

    kept: tuple[Mirror, ...]  # in the run's order of preference; none: the file is refused
    dropped: tuple[str, ...] = ()  # why each other source was left out
    mix: bool = False  # pieces may come from several of the kept sources


def _disagreement(mirror: Mirror, published: PublishedFile) -> str | None:
    """How what ``mirror`` announces differs from the published file, or None when nothing does."""
    who = f"source {mirror.source}" if mirror.source else "the source"
    why = []
    if mirror.size is not None and mirror.size != published.size:
        why.append(f"{who} announces {mirror.size} bytes, the published size is {published.size} bytes")
    if mirror.sha256 is not None and mirror.sha256 != published.sha256:
        why.append(f"{who} announces SHA-256 {mirror.sha256[:16]}..., the published one is {published.sha256[:16]}...")
    return "; ".join(why) or None


def eligible(mirrors: Sequence[Mirror], published: PublishedFile | None, *, accept_unpublished: bool = False) -> Eligibility:
    """Which of a file's ``mirrors`` a run may read it from, and whether it may mix them.

    A source announcing another size or SHA-256 than the published file is left out, with the
    reason; with ``accept_unpublished`` every source is kept. Pieces may come from several sources
    only for a published file, with more than one source kept, none of them announcing other bytes
    than the published ones: the parts of two different files never make one.
    """
    if published is None:
        return Eligibility(tuple(mirrors))
    differs = [_disagreement(mirror, published) for mirror in mirrors]
    if accept_unpublished:
        return Eligibility(tuple(mirrors), (), len(mirrors) > 1 and not any(differs))
    kept = tuple(mirror for mirror, why in zip(mirrors, differs, strict=True) if why is None)
    return Eligibility(kept, tuple(why for why in differs if why is not None), len(kept) > 1)


def _refused(dropped: Sequence[str], published: PublishedFile) -> str:
    return "; ".join(dropped) + f" (dandiset {published.dandiset}): not the published file"


def refusal(target: Target, published: PublishedFile | None, *, accept_unpublished: bool = False) -> str | None:
    """Why the file is refused (every source announces another size or SHA-256 than the published
    one), or None: nothing published, a source left that announces nothing that differs, or ``accept_unpublished``."""
    found = eligible(target.offers, published, accept_unpublished=accept_unpublished)
    if found.kept or published is None:
        return None
    return _refused(found.dropped, published)


def decide(on_disk: OnDisk, target: Target, record: FileRecord | None) -> Decision:
    """Skip, resume or download one file, from what is on disk, what the source says and our record."""
    if on_disk.link is not None:
        return Decision(Action.DOWNLOAD, 0, f"{on_disk.link} is a symbolic link")
    reason = ""
    if on_disk.size is not None:
        expected = expected_size(target, record)
        if record is not None and record.size == on_disk.size and (target.size is None or target.size == on_disk.size):
            return Decision(Action.SKIP, on_disk.size, "verified earlier, same size")
        if on_disk.whole.ok and expected is not None:
            return Decision(Action.SKIP, on_disk.size, "present, same size, whole")
        if not on_disk.whole.ok:
            reason = f"present but {on_disk.whole.detail}"
        else:
            # No size to compare against yet: the caller learns the size and plans again.
            return Decision(Action.DOWNLOAD, 0, "present, size unknown to compare")
    if on_disk.partial:
        return Decision(Action.RESUME, on_disk.partial, f"{format_size(on_disk.partial)} already fetched")
    return Decision(Action.DOWNLOAD, 0, reason)


def _linked(cache: CacheLayout, final: Path) -> str | None:
    """What in the place of ``final`` is a symbolic link (its session directory, the file, its partial), or None."""
    part = cache.part(final)
    for place in (final.parent, final, part, cache.sidecar(part)):
        try:
            if stat.S_ISLNK(os.lstat(place).st_mode):
                return str(place)
        except OSError:
            continue
    return None


def look(cache: CacheLayout, target: Target, record: FileRecord | None, partial_bytes: Callable[[Path], int]) -> OnDisk:
    """Read what :func:`decide` needs from the disk: links in the way, the file, its partial."""
    final = target.final(cache)
    link = _linked(cache, final)
    if link is not None:
        return OnDisk(link=link)
    size: int | None = None
    whole = OK
    if final.is_file():
        size = final.stat().st_size
        whole = check_size_and_superblock(final, expected_size(target, record))
    part = cache.part(final)
    return OnDisk(size=size, whole=whole, partial=partial_bytes(part) if part.exists() else 0)


def plan_files(targets: Iterable[Target], cache: CacheLayout, records: RecordStore, partial_bytes: Callable[[Path], int],
               published: PublishedTable | None = None, *, accept_unpublished: bool = False) -> list[PlannedFile]:  # fmt: skip
    """Decide skip / resume / download (or refuse, against ``published``) for each target.

    Each planned target carries only the sources :func:`eligible` kept (its own fields those of
    the first); a refused one keeps them all, so the plan can say what each announced.
    """
    planned: list[PlannedFile] = []
    for target in targets:
        final = target.final(cache)
        relative = cache.relative(final)
        facts = published.by_path(relative) if published is not None else None
        found = eligible(target.offers, facts, accept_unpublished=accept_unpublished)
        if not found.kept and facts is not None:
            planned.append(PlannedFile(target, final, Action.REFUSE, 0, _refused(found.dropped, facts), facts, dropped_mirrors=found.dropped))
            continue
        chosen = target.with_mirrors(found.kept) if target.mirrors else target
        record = records.get(relative)
        decision = decide(look(cache, chosen, record, partial_bytes), chosen, record)
        planned.append(PlannedFile(chosen, final, decision.action, decision.have, decision.reason, facts, found.mix, found.dropped))
    return planned


def check_free_space(planned: Sequence[PlannedFile], root: Path, reserve: int) -> tuple[int, int]:
    """(bytes still to fetch, bytes free); raise :class:`NoSpace` when they do not fit with the reserve."""
    needed = sum(p.remaining or 0 for p in planned)
    probe = root
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if needed + reserve > free:
        raise NoSpace(
            f"not enough disk space in {root}: {format_size(needed)} ({needed} bytes) still to fetch "
            f"plus a reserve of {format_size(reserve)}, but only {format_size(free)} ({free} bytes) free",
            hint="free some space, choose fewer sessions, or lower --reserve",
        )
    return needed, free
