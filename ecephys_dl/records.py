"""ecephys-dl's own records of the files it put in a cache.

One small JSON file per data file, under ``<cache>/.ecephys-dl/records/`` mirroring the cache
tree (AllenSDK never looks there). Each record is written whole through a temporary file and a
rename, so concurrent runs never corrupt one another's records and a reader sees the old record
or the new one. A record that cannot be read is treated as absent (the file is then checked
again), never trusted.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecephys_dl.layout import CacheLayout, write_atomic

__all__ = ["RECORD_VERSION", "STATE_DIR", "FileRecord", "RecordStore", "utc_now"]

STATE_DIR = ".ecephys-dl"
RECORD_VERSION = 1


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
        """The record, or None when the bytes are not a record of this version."""
        try:
            raw = json.loads(data)
        except ValueError:
            return None
        if not isinstance(raw, dict) or raw.get("version") != RECORD_VERSION:
            return None
        try:
            record = cls(**{k: v for k, v in raw.items() if k != "version"})
        except TypeError:
            return None
        if not isinstance(record.size, int) or isinstance(record.size, bool) or record.size < 0:
            return None
        if not isinstance(record.sha256, str) or len(record.sha256) != 64:
            return None
        return record


class RecordStore:
    """The records of one cache directory."""

    def __init__(self, cache: CacheLayout) -> None:
        self.cache = cache
        self.root = cache.root / STATE_DIR / "records"

    def _path(self, relative: str) -> Path:
        parts = relative.split("/")
        # Records mirror the cache tree; a name that climbs out of it is refused.
        if not relative or any(p in ("", ".", "..") for p in parts) or "\\" in relative or "\x00" in relative:
            raise ValueError(f"not a path inside the cache: {relative!r}")
        return self.root.joinpath(*parts[:-1], parts[-1] + ".json")

    def get(self, relative: str) -> FileRecord | None:
        try:
            data = self._path(relative).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return FileRecord.from_json(data)

    def put(self, record: FileRecord) -> None:
        write_atomic(self._path(record.path), record.to_json())

    def remove(self, relative: str) -> None:
        self._path(relative).unlink(missing_ok=True)

    def all(self) -> list[FileRecord]:
        """Every readable record (unreadable ones are skipped)."""
        out = []
        if self.root.is_dir():
            for path in sorted(self.root.rglob("*.json")):
                record = FileRecord.from_json(path.read_bytes())
                if record is not None:
                    out.append(record)
        return out
