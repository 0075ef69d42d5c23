"""A partial download on disk: ``<final>.part``, the record beside it, and its hash.

The record, ``<final>.part.json`` (:func:`sidecar_path`), says which version of the file the
part holds (URL, size, ETag, Last-Modified) and which byte ranges of it are there, in two
tiers (:class:`Record`): the ranges *synced* to the disk, which survive a power loss, and the
ranges *written*, which a process that was killed leaves in the kernel's hands and which count
only on the boot that wrote them (:func:`boot_id`). Records are replaced atomically and read
without following links; one that does not parse is reported, never guessed at.

:class:`Hasher` computes a part's SHA-256 (and MD5) on a thread of its own, in order, reading
back the prefix of the file that is complete as it grows.

The transfer engine (:mod:`ecephys_dl.transfer`; the record through :mod:`ecephys_dl.checkpoint`) writes both; ``status``, ``fetch``'s plan and
``selftest`` read how much of a partial a resume would keep (:func:`partial_bytes`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import stat
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SIDECAR_FORMAT",
    "Hasher",
    "Origin",
    "Ranges",
    "Record",
    "boot_id",
    "fsync_directory",
    "intersect",
    "merge",
    "missing",
    "partial_bytes",
    "partial_size",
    "read_record",
    "sidecar_path",
    "total",
    "write_record",
]

SIDECAR_FORMAT = "ecephys-dl-part/1"
_HASH_BLOCK = 1 << 20  # the hash reads the part back in blocks this large
_HASH_POLL = 0.02  # seconds between looks at how far the file is complete

Ranges = tuple[tuple[int, int], ...]


def sidecar_path(part: Path) -> Path:
    """The record beside a part file: ``<final>.part.json``."""
    part = Path(part)
    return part.with_name(part.name + ".json")


def partial_bytes(part: Path) -> int:
    """How many bytes of ``part`` its record vouches for: what a resume would keep, at most.

    0 when there is no part, no record, or a record that does not parse or claims more than the
    part holds. Whether the server still has that version is learnt only when resuming.
    """
    part = Path(part)
    record, _ = read_record(sidecar_path(part))
    if record is None or not record.trusted:
        return 0
    try:
        info = os.lstat(part)  # a link is not a part: nothing of it would be kept
    except OSError:
        return 0
    if not stat.S_ISREG(info.st_mode):
        return 0
    trusted = record.trusted
    return total(trusted) if trusted[-1][1] <= info.st_size else 0


def partial_size(part: Path) -> int | None:
    """The whole file's size as the partial's sidecar records it (None when unknown or unreadable)."""
    record, _ = read_record(sidecar_path(Path(part)))
    return None if record is None else record.size


@functools.cache
def boot_id() -> str | None:
    """This boot of the machine (Linux), or None where the system does not say."""
    try:
        text = _read_small(Path("/proc/sys/kernel/random/boot_id")).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return text or None


@dataclass(frozen=True)
class Origin:
    """The bytes of a part one source served, where one file's pieces came from several: the
    source's name, its URL and validator, and the ranges (of the record's *written* tier) it gave."""

    source: str
    url: str
    etag: str | None
    last_modified: str | None
    ranges: Ranges

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "url": self.url, "etag": self.etag, "last_modified": self.last_modified,
                "ranges": [list(item) for item in self.ranges]}  # fmt: skip

    @classmethod
    def from_json(cls, data: Any, size: int | None) -> Origin:
        if not isinstance(data, dict):
            raise ValueError("bad origin")
        source, url, etag, modified = (data.get(k) for k in ("source", "url", "etag", "last_modified"))
        if not isinstance(source, str) or not source or not isinstance(url, str):
            raise ValueError("bad origin source or url")
        if not (etag is None or isinstance(etag, str)) or not (modified is None or isinstance(modified, str)):
            raise ValueError("bad origin validator")
        return cls(source, url, etag, modified, _parse_ranges(data.get("ranges"), size))


@dataclass(frozen=True)
class Record:
    """What the sidecar says: the version of the file the part holds and the ranges on disk.

    ``ranges`` were synced to the disk: they survive a power loss. ``written`` (a superset) were
    written by a process that may since have been killed: the kernel holds them until the machine
    stops, so they count only on the boot (``boot_id``) that wrote them.
    """

    url: str
    size: int | None
    etag: str | None
    last_modified: str | None
    ranges: Ranges
    written: Ranges = ()
    boot_id: str | None = None
    origins: tuple[Origin, ...] = ()  # which source gave which bytes, when several did

    @property
    def trusted(self) -> Ranges:
        """The ranges a resume may keep now: all written ones on the same boot, else the synced ones."""
        if self.written and self.boot_id is not None and self.boot_id == boot_id():
            return self.written
        return self.ranges

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": SIDECAR_FORMAT,
            "url": self.url,
            "size": self.size,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "ranges": [list(item) for item in self.ranges],
        }
        if self.written:
            data["written"] = [list(item) for item in self.written]
            data["boot_id"] = self.boot_id
        if self.origins:
            data["origins"] = [origin.to_json() for origin in self.origins]
        return data

    def kept_origins(self) -> dict[str, Ranges]:
        """Each origin's share of the trusted ranges (what a resume keeps of it)."""
        trusted = self.trusted
        return {o.source: kept for o in self.origins if (kept := intersect(o.ranges, trusted))}

    @classmethod
    def from_json(cls, data: Any) -> Record:
        """Parse a record; ``ValueError`` saying what is wrong."""
        if not isinstance(data, dict) or data.get("format") != SIDECAR_FORMAT:
            raise ValueError("not an ecephys-dl part record of this version")
        url, size, etag, modified, boot = (data.get(k) for k in ("url", "size", "etag", "last_modified", "boot_id"))
        if not isinstance(url, str) or not (size is None or _is_count(size)):
            raise ValueError("bad url or size")
        if not (etag is None or isinstance(etag, str)) or not (modified is None or isinstance(modified, str)):
            raise ValueError("bad validator")
        if not (boot is None or isinstance(boot, str)):
            raise ValueError("bad boot id")
        ranges = _parse_ranges(data.get("ranges"), size)
        written = _parse_ranges(data.get("written", []), size)
        if total(merge([*ranges, *written])) != total(written) and written:
            raise ValueError("synced ranges that were not written")
        raw = data.get("origins", [])
        if not isinstance(raw, list):
            raise ValueError("bad origins")
        origins = tuple(Origin.from_json(item, size) for item in raw)
        covered = merge([*ranges, *written])
        if any(total(intersect(o.ranges, covered)) != total(o.ranges) for o in origins):
            raise ValueError("an origin claims bytes that are not in the part")
        if len({o.source for o in origins}) != len(origins):
            raise ValueError("an origin is listed twice")
        if total(merge(r for o in origins for r in o.ranges)) != sum(total(o.ranges) for o in origins):
            raise ValueError("two origins claim the same bytes")
        return cls(url, size, etag, modified, ranges, written, boot, origins)


def _parse_ranges(ranges: Any, size: int | None) -> Ranges:
    if not isinstance(ranges, list):
        raise ValueError("bad ranges")
    pairs: list[tuple[int, int]] = []
    for item in ranges:
        if not (isinstance(item, list) and len(item) == 2 and all(_is_count(v) for v in item) and item[0] < item[1]):
            raise ValueError(f"bad range {item!r}")
        pairs.append((item[0], item[1]))
    merged = merge(pairs)
    if merged and (size is None or merged[-1][1] > size):
        raise ValueError("ranges beyond the file's size")
    return merged


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_record(path: Path) -> tuple[Record | None, str | None]:
    """The record at ``path``, or None and why not (None, None: there is none)."""
    try:
        text = _read_small(path).decode("utf-8")
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as error:
        return None, f"its record {path.name} cannot be read ({error})"
    try:
        return Record.from_json(json.loads(text)), None
    except ValueError as error:  # json.JSONDecodeError is a ValueError
        return None, f"its record {path.name} is corrupt ({error})"


# A record is a few hundred bytes; one far larger is not ours, and is not read into memory.
_MAX_RECORD_BYTES = 1 << 20


def _read_small(path: Path) -> bytes:
    """The bytes of a small regular file, never through a symbolic link (``OSError`` otherwise)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a regular file")
        data = os.read(fd, _MAX_RECORD_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > _MAX_RECORD_BYTES:
        raise OSError(f"{path.name} is larger than any record")
    return data


def write_record(path: Path, record: Record, *, durable: bool = True) -> None:
    """Replace the record atomically: a temporary file, a rename; with ``durable``, fsyncs of both.

    Without them the new record survives the process being killed (the kernel has it), which
    is all the ``written`` ranges it adds are trusted for.
    """
    data = json.dumps(record.to_json(), separators=(",", ":")).encode()
    temporary = path.with_name(path.name + ".tmp")
    # O_NOFOLLOW: a link planted at the temporary name must not make us truncate what it points to.
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temporary, path)
    if durable:
        fsync_directory(path.parent)


def fsync_directory(directory: Path) -> None:
    # The rename (and the part's own directory entry) survive a power loss only once the
    # directory is synced; some file systems refuse to open a directory, which is fine.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def merge(ranges: Iterable[tuple[int, int]]) -> Ranges:
    """Sorted, non-overlapping, non-touching ranges covering the same bytes."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(r for r in ranges if r[0] < r[1]):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return tuple(merged)


def missing(ranges: Ranges, size: int) -> list[tuple[int, int]]:
    """The ranges of ``0..size`` not covered by ``ranges`` (merged)."""
    holes, at = [], 0
    for start, end in ranges:
        if start > at:
            holes.append((at, start))
        at = max(at, end)
    if at < size:
        holes.append((at, size))
    return holes


def total(ranges: Iterable[tuple[int, int]]) -> int:
    return sum(end - start for start, end in ranges)


def intersect(ranges: Ranges, within: Ranges) -> Ranges:
    """The parts of ``ranges`` that lie inside ``within`` (both merged)."""
    out: list[tuple[int, int]] = []
    for a, b in ranges:
        for c, d in within:
            lo, hi = max(a, c), min(b, d)
            if lo < hi:
                out.append((lo, hi))
    return merge(out)


# -- the hash --------------------------------------------------------------------------------------------


class Hasher:
    """SHA-256 (and MD5) of the part, computed in order on a thread of its own as the file fills.

    ``limit()`` says up to where the part holds the file from byte 0 (the prefix); the thread
    reads that back (from the page cache, just written) and hashes it, so no connection waits for
    a hash and, with the pieces handed out in order, little is left to hash when the last byte
    arrives. :meth:`reset` when bytes already hashed are to be written again.
    """

    def __init__(self, part: Path, limit: Callable[[], int], *, md5: bool) -> None:
        self.part = part
        self.limit = limit
        self.md5 = md5
        self._wake = threading.Event()
        self._closed = False
        self._generation = 0  # one more with each reset
        self._guard = threading.Lock()
        self._settled = threading.Condition(self._guard)
        self._done = 0  # bytes hashed, in the generation below
        self._hashed_generation = 0
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"hash {part.name}", daemon=True)
        self._sha256 = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False) if md5 else None
        self._thread.start()

    def reset(self) -> None:
        """Bytes already hashed will be written again: the hash starts over from byte 0."""
        with self._guard:
            self._generation += 1
        self._wake.set()

    def close(self) -> None:
        with self._guard:
            self._closed = True
        self._wake.set()
        self._thread.join()

    def finish(self, size: int) -> tuple[str, str | None]:
        """The digests once every byte up to ``size`` (all written) is hashed."""
        self._wake.set()
        with self._settled:
            while not self._closed and self._error is None and not (
                self._hashed_generation == self._generation and self._done >= size
            ):
                self._settled.wait(0.05)
                self._wake.set()
            error = self._error
            ok = self._hashed_generation == self._generation and self._done == size
        if error is not None:
            raise error
        if not ok:
            raise OSError(f"the hash of {self.part.name} stopped at byte {self._done} of {size}")
        return self._sha256.hexdigest(), self._md5.hexdigest() if self._md5 is not None else None

    def _run(self) -> None:
        view = memoryview(bytearray(_HASH_BLOCK))
        fd = -1
        try:
            fd = os.open(self.part, os.O_RDONLY | os.O_NOFOLLOW)
            while True:
                self._wake.wait(_HASH_POLL)
                self._wake.clear()
                with self._guard:
                    if self._closed:
                        return
                    generation = self._generation
                    if generation != self._hashed_generation:
                        self._sha256 = hashlib.sha256()
                        self._md5 = hashlib.md5(usedforsecurity=False) if self.md5 else None
                        self._done, self._hashed_generation = 0, generation
                limit = self.limit()
                while self._done < limit:
                    count = os.preadv(fd, [view[: min(_HASH_BLOCK, limit - self._done)]], self._done)
                    if self._generation != generation:
                        break
                    if count <= 0:  # bytes written are gone: someone else truncated the part
                        raise OSError(f"{self.part.name} ends at byte {self._done}, before the {limit} bytes written")
                    self._sha256.update(view[:count])
                    if self._md5 is not None:
                        self._md5.update(view[:count])
                    with self._settled:
                        self._done += count
                        self._settled.notify_all()
        except BaseException as error:  # reported by finish()
            with self._settled:
                self._error = error
                self._settled.notify_all()
        finally:
            if fd >= 0:
                os.close(fd)
