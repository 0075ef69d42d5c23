"""What a cache holds, per session: files verified, present, partial or missing, and bytes.

Read from the disk, ecephys-dl's records, the partials' state files and the metadata tables; no
network. A file is ``verified`` when a record of ours vouches for it at its current size,
``present`` when it is there without such a record (e.g. written by AllenSDK), ``partial`` when
only a ``.part`` exists, ``missing`` otherwise. Against the published table, a file in place is
``equal`` to the published bytes when our record of it (its SHA-256, computed from every byte
while it was fetched or by ``verify --deep``) is the published size and digest, ``differs``
when the record's digest is another, ``unproven`` when nothing has read it yet; files the
archive does not publish are ``unpublished``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ecephys_dl.layout import CacheLayout, FileKind, classify, final_relative
from ecephys_dl.published import PublishedFile, PublishedTable
from ecephys_dl.records import FileRecord, RecordStore

__all__ = ["FileState", "Presence", "Proof", "SessionStatus", "cache_status", "proof_of"]


class Presence(enum.StrEnum):
    """How much of a file the cache holds, and whether a record of ours vouches for it."""

    VERIFIED = "verified"
    PRESENT = "present"
    PARTIAL = "partial"
    MISSING = "missing"


class Proof(enum.StrEnum):
    """What is known of a file in place against the published bytes."""

    EQUAL = "equal"  # our record's size and SHA-256 are the published ones
    DIFFERS = "differs"  # our record's SHA-256 is another: not the archive's bytes
    UNPROVEN = "unproven"  # no record at its size yet (verify --deep proves it)
    UNPUBLISHED = "unpublished"  # the archive publishes no file at its path
    ABSENT = "absent"  # not in place


def proof_of(size: int | None, record: FileRecord | None, published: PublishedFile | None) -> Proof:
    """The proof of a file of ``size`` on disk (None: not in place), from our record and the published facts."""
    if size is None:
        return Proof.ABSENT
    if published is None:
        return Proof.UNPUBLISHED
    if record is None or record.size != size:
        return Proof.UNPROVEN
    if published.is_bytes(record.size, record.sha256):
        return Proof.EQUAL
    return Proof.DIFFERS


@dataclass(frozen=True)
class FileState:
    path: str
    state: Presence
    bytes_on_disk: int
    size: int | None  # the whole file's size when known
    proof: Proof = Proof.ABSENT

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

    def proven(self, proof: Proof = Proof.EQUAL) -> int:
        """Files with this proof (by default: proven equal to the published bytes)."""
        return sum(1 for f in self.files if f.proof is proof)

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
            "published_equal": self.proven(Proof.EQUAL),
            "published_differs": self.proven(Proof.DIFFERS),
            "bytes_on_disk": self.bytes_on_disk,
            "bytes_to_fetch": self.to_fetch,
            "files": [{"path": f.path, "state": str(f.state), "bytes_on_disk": f.bytes_on_disk, "size": f.size, "to_fetch": f.to_fetch,
                       "published": str(f.proof)} for f in self.files],  # fmt: skip
        }


def _state(cache: CacheLayout, records: RecordStore, final: Path, published: PublishedTable | None) -> FileState:
    from ecephys_dl.partial import partial_bytes, partial_size

    relative = cache.relative(final)
    record = records.get(relative)
    if final.is_file():
        size = final.stat().st_size
        proof = proof_of(size, record, published.by_path(relative) if published is not None else None)
        if record is not None and record.size == size:
            return FileState(relative, Presence.VERIFIED, size, size, proof)
        return FileState(relative, Presence.PRESENT, size, record.size if record else size, proof)
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


def cache_status(cache_dir: Path, *, sessions: list[int] | None = None, with_lfp: bool | None = None,
                 published: PublishedTable | None = None) -> list[SessionStatus]:  # fmt: skip
    """Per session: the state of its session file and of its LFP files (and, with ``published``, their proofs).

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
        status.files.append(_state(cache, records, cache.session_nwb(session_id), published))
        directory = cache.session_dir(session_id)
        has_lfp = _holds_lfp(cache, session_id) if directory.is_dir() else False
        if with_lfp or (with_lfp is None and has_lfp):
            for probe_id in probes.get(session_id, []):
                status.files.append(_state(cache, records, cache.probe_lfp_nwb(session_id, probe_id), published))
        out.append(status)
    return out
