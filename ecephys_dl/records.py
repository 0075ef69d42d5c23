"""ecephys-dl's own records of the files it put in a cache.

One small JSON file per data file, under ``<cache>/.ecephys-dl/records/`` mirroring the cache
tree (AllenSDK never looks there). Each record is written whole through a temporary file and a
rename, so concurrent runs never corrupt one another's records and a reader sees the old record
or the new one. A record that cannot be read, is of another version, has fields of the wrong
type, names a path outside the cache or another path than where it lies, or is reached
through a symbolic link, is treated as absent (the file is then checked again), never trusted.
Records are never written through a symbolic link either: a linked directory on the way is a
:class:`~ecephys_dl.errors.CacheError`.
"""

from __future__ import annotations

import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecephys_dl.errors import CacheError
from ecephys_dl.layout import STATE_DIR, CacheLayout, safe_relative, write_atomic

# STATE_DIR and safe_relative are the layout's; they are named here too for older importers.
__all__ = ["RECORD_VERSION", "STATE_DIR", "FileRecord", "RecordStore", "safe_relative", "utc_now"]

RECORD_VERSION = 1
# A record is well under a kilobyte; anything far larger is not one, and is not read whole.
_MAX_RECORD_BYTES = 1 << 20
_TEXT_FIELDS = ("md5", "etag", "last_modified", "source_url", "fetched_at", "verified_at", "verified_level")


def utc_now() -> str:
    """The current time as an ISO 8601 UTC timestamp (seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class FileRecord:
    """What we know of one file we put in the cache."""

    path: str  # relative to the cache root, forward slashes
    size: int
    sha256: str
    md5: str | None = None
    etag: str | None = None
    last_modified: str | None = None
    source_url: str | None = None
    fetched_at: str | None = None
    verified_at: str | None = None
    verified_level: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"version": RECORD_VERSION, **asdict(self)}, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> FileRecord | None:
        """The record, or None when the bytes are not a record of this version, or not a sound one."""
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            return None
        if not isinstance(raw, dict) or raw.get("version") != RECORD_VERSION:
            return None
        try:
            record = cls(**{k: v for k, v in raw.items() if k != "version"})
        except TypeError:
            return None
        if not safe_relative(record.path):
            return None
        if not isinstance(record.size, int) or isinstance(record.size, bool) or record.size < 0:
            return None
        if not isinstance(record.sha256, str) or len(record.sha256) != 64:
            return None
        if any(not (getattr(record, name) is None or isinstance(getattr(record, name), str)) for name in _TEXT_FIELDS):
            return None
        if not isinstance(record.extra, dict):
            return None
        return record


class RecordStore:
    """The records of one cache directory."""

    def __init__(self, cache: CacheLayout) -> None:
        self.cache = cache
        self.root = cache.records_dir

    def _path(self, relative: str) -> Path:
        # Records mirror the cache tree; a name that climbs out of it is refused (ValueError).
        return self.cache.record(relative)

    def _check_no_links(self, path: Path) -> None:
        """Refuse to write ``path`` if a directory on its way from the cache root is a symbolic link."""
        state = self.cache.state_dir
        for place in [state, *[p for p in path.parents if state in p.parents]]:
            try:
                mode = os.lstat(place).st_mode
            except FileNotFoundError:
                continue
            except OSError as error:
                raise CacheError(f"cannot use {place} for ecephys-dl's records: {error.strerror or error}") from error
            if stat.S_ISLNK(mode) or not stat.S_ISDIR(mode):
                raise CacheError(
                    f"refusing to write the record {path}: {place} is {'a symbolic link' if stat.S_ISLNK(mode) else 'not a directory'}",
                    hint="remove it: ecephys-dl keeps its records in real directories inside the cache",
                )

    @staticmethod
    def _read(path: Path) -> FileRecord | None:
        """The record in ``path``; None when absent, unreadable, a link, or not a sound record."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:  # absent, a link (ELOOP), a directory on the way missing
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            data = os.read(fd, _MAX_RECORD_BYTES + 1)
        except OSError:
            return None
        finally:
            os.close(fd)
        return None if len(data) > _MAX_RECORD_BYTES else FileRecord.from_json(data)

    def get(self, relative: str) -> FileRecord | None:
        """The record of the file at ``relative``, or None (a record naming another path is not its record)."""
        record = self._read(self._path(relative))
        return record if record is not None and record.path == relative else None

    def put(self, record: FileRecord) -> None:
        path = self._path(record.path)
        self._check_no_links(path)
        write_atomic(path, record.to_json())

    def remove(self, relative: str) -> None:
        self._path(relative).unlink(missing_ok=True)

    def all(self) -> list[FileRecord]:
        """Every sound record lying where its path says (others are skipped); links are not followed."""
        out = []
        if self.root.is_dir() and not self.root.is_symlink():
            for folder, _, names in os.walk(self.root, followlinks=False):
                for name in sorted(names):
                    if not name.endswith(".json"):
                        continue
                    path = Path(folder) / name
                    record = self._read(path)
                    if record is not None and self._path(record.path) == path:
                        out.append(record)
            out.sort(key=lambda r: r.path)
        return out
