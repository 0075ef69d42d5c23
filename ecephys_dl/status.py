"""What a cache holds, per session: files verified, present, partial or missing, and bytes.

Read from the disk, ecephys-dl's records, the partials' state files and the metadata tables; no
network. A file is ``verified`` when a record of ours vouches for it at its current size,
``present`` when it is there without such a record (e.g. written by AllenSDK), ``partial`` when
only a ``.part`` exists, ``missing`` otherwise.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecephys_dl.layout import CacheLayout, FileKind, classify, final_relative
from ecephys_dl.records import RecordStore

__all__ = ["FileState", "Presence", "SessionStatus", "cache_status"]


class Presence(enum.StrEnum):
    """How much of a file the cache holds, and whether a record of ours vouches for it."""

    VERIFIED = "verified"
    PRESENT = "present"
    PARTIAL = "partial"
    MISSING = "missing"


@dataclass(frozen=True)
class FileState:
    path: str
    state: Presence
    bytes_on_disk: int
    size: int | None  # the whole file's size when known

    @property
    def to_fetch(self) -> int | None:
        if self.state in (Presence.VERIFIED, Presence.PRESENT):
            return 0
        return None if self.size is None else max(0, self.size - self.bytes_on_disk)


@dataclass
class SessionStatus:
    session_id: int
    files: list[FileState] = field(default_factory=list)

    def count(self, state: Presence | str) -> int:
        return sum(1 for f in self.files if f.state == state)

    @property
    def bytes_on_disk(self) -> int:
        return sum(f.bytes_on_disk for f in self.files)

    @property
    def to_fetch(self) -> int | None:
        values = [f.to_fetch for f in self.files]
        return None if any(v is None for v in values) else sum(v for v in values if v is not None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id,
            "verified": self.count(Presence.VERIFIED),
            "present": self.count(Presence.PRESENT),
            "partial": self.count(Presence.PARTIAL),
            "missing": self.count(Presence.MISSING),
            "bytes_on_disk": self.bytes_on_disk,
            "bytes_to_fetch": self.to_fetch,
            "files": [{"path": f.path, "state": str(f.state), "bytes_on_disk": f.bytes_on_disk, "size": f.size, "to_fetch": f.to_fetch} for f in self.files],
        }


def _state(cache: CacheLayout, records: RecordStore, final: Path) -> FileState:
    from ecephys_dl.partial import partial_bytes, partial_size

    relative = cache.relative(final)
    record = records.get(relative)
    if final.is_file():
        size = final.stat().st_size
        if record is not None and record.size == size:
            return FileState(relative, Presence.VERIFIED, size, size)
        return FileState(relative, Presence.PRESENT, size, record.size if record else size)
    part = cache.part(final)
    if part.exists():
        return FileState(relative, Presence.PARTIAL, partial_bytes(part), partial_size(part))
    return FileState(relative, Presence.MISSING, 0, record.size if record else None)


def _holds_lfp(cache: CacheLayout, session_id: int) -> bool:
    """Whether the session's directory holds an LFP file, whole or partial."""
    folder = cache.session_dir(session_id)
    for path in folder.iterdir():
        place = classify(final_relative(cache.relative(path)))
        if place is not None and place.kind is FileKind.LFP_NWB:
            return True
    return False


def cache_status(cache_dir: Path, *, sessions: list[int] | None = None, with_lfp: bool | None = None) -> list[SessionStatus]:
    """Per session: the state of its session file and of its LFP files.

    ``sessions`` defaults to those with anything in the cache. LFP files are counted for probes
    with LFP data when ``with_lfp`` is true, or (None) for sessions that already hold an LFP file.
    """
    import csv

    cache = CacheLayout(Path(cache_dir))
    records = RecordStore(cache)
    if sessions is None:
        sessions = cache.session_ids()
    probes: dict[int, list[int]] = {}
    if cache.table("probes").is_file():
        with open(cache.table("probes"), newline="") as handle:
            for row in csv.DictReader(handle):
                if row.get("has_lfp_data") == "True":
                    probes.setdefault(int(row["ecephys_session_id"]), []).append(int(row["id"]))
    out = []
    for session_id in sessions:
        status = SessionStatus(session_id)
        status.files.append(_state(cache, records, cache.session_nwb(session_id)))
        directory = cache.session_dir(session_id)
        has_lfp = _holds_lfp(cache, session_id) if directory.is_dir() else False
        if with_lfp or (with_lfp is None and has_lfp):
            for probe_id in probes.get(session_id, []):
                status.files.append(_state(cache, records, cache.probe_lfp_nwb(session_id, probe_id)))
        out.append(status)
    return out
