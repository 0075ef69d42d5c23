"""The AllenSDK cache tree: where every file lives, and the ``manifest.json`` that maps it.

A cache written by ecephys-dl is the one ``EcephysProjectCache.from_warehouse`` writes (manifest
version 0.3.0), so AllenSDK opens it without downloading anything again. Local paths are built
only from integer ids, never from names a server sent.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "METADATA_TABLES",
    "SESSION_TYPES",
    "CacheLayout",
    "manifest_bytes",
    "write_atomic",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = "0.3.0"
SESSION_TYPES = ("brain_observatory_1.1", "functional_connectivity")
METADATA_TABLES = ("sessions", "probes", "channels", "units")

# (key, type, spec, parent_key) in AllenSDK's order; None means no parent_key entry.
_MANIFEST_ENTRIES: tuple[tuple[str, str, str, str | None], ...] = (
    ("BASEDIR", "dir", ".", None),
    ("sessions", "file", "sessions.csv", "BASEDIR"),
    ("probes", "file", "probes.csv", "BASEDIR"),
    ("channels", "file", "channels.csv", "BASEDIR"),
    ("units", "file", "units.csv", "BASEDIR"),
    ("session_data", "dir", "session_%d", "BASEDIR"),
    ("session_nwb", "file", "session_%d.nwb", "session_data"),
    ("session_analysis_metrics", "file", "session_%d_analysis_metrics.csv", "session_data"),
    ("probe_lfp_nwb", "file", "probe_%d_lfp.nwb", "session_data"),
    ("movie_dir", "dir", "natural_movie_templates", "BASEDIR"),
    ("typewise_analysis_metrics", "file", "%s_analysis_metrics.csv", "BASEDIR"),
    ("natural_movie", "file", "natural_movie_%d.h5", "movie_dir"),
    ("natural_scene_dir", "dir", "natural_scene_templates", "BASEDIR"),
    ("natural_scene", "file", "natural_scene_%d.tiff", "natural_scene_dir"),
)


def manifest_bytes() -> bytes:
    """The exact bytes AllenSDK writes for a new cache's ``manifest.json``.

    ``json.dumps(..., indent=2)`` of ``{"manifest": [...]}``, no trailing newline.
    """
    entries: list[dict[str, str]] = [{"type": "manifest_version", "value": MANIFEST_VERSION}]
    for key, kind, spec, parent in _MANIFEST_ENTRIES:
        entry = {"key": key, "type": kind, "spec": spec}
        if parent is not None:
            entry["parent_key"] = parent
        entries.append(entry)
    return json.dumps({"manifest": entries}, indent=2).encode("utf-8")


def _check_id(value: int) -> int:
    # bool is an int subclass; an id must be a real positive integer.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"not a valid id: {value!r}")
    return value


@dataclass(frozen=True)
class CacheLayout:
    """Paths inside one cache directory (relative names via :meth:`relative`)."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    def table(self, name: str) -> Path:
        if name not in METADATA_TABLES:
            raise ValueError(f"unknown metadata table {name!r}")
        return self.root / f"{name}.csv"

    def typewise_metrics(self, session_type: str) -> Path:
        if session_type not in SESSION_TYPES:
            raise ValueError(f"unknown session type {session_type!r}")
        return self.root / f"{session_type}_analysis_metrics.csv"

    def session_dir(self, session_id: int) -> Path:
        return self.root / f"session_{_check_id(session_id)}"

    def session_nwb(self, session_id: int) -> Path:
        return self.session_dir(session_id) / f"session_{session_id}.nwb"

    def session_metrics(self, session_id: int) -> Path:
        return self.session_dir(session_id) / f"session_{session_id}_analysis_metrics.csv"

    def probe_lfp_nwb(self, session_id: int, probe_id: int) -> Path:
        return self.session_dir(session_id) / f"probe_{_check_id(probe_id)}_lfp.nwb"

    def natural_movie(self, number: int) -> Path:
        return self.root / "natural_movie_templates" / f"natural_movie_{int(number)}.h5"

    def natural_scene(self, number: int) -> Path:
        return self.root / "natural_scene_templates" / f"natural_scene_{int(number)}.tiff"

    def part(self, final: Path) -> Path:
        """Where ``final`` is downloaded to before it is verified: ``<final>.part``."""
        return final.with_name(final.name + ".part")

    def sidecar(self, part: Path) -> Path:
        """The record beside a partial download: ``<part>.json``."""
        return part.with_name(part.name + ".json")

    def relative(self, path: Path) -> str:
        """The path's name relative to the cache root, with forward slashes (as in S3 keys)."""
        return path.relative_to(self.root).as_posix()


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    Readers see either the old file or the whole new one, never a part.
    """
    if path.parent.is_symlink() or (path.parent.exists() and not path.parent.is_dir()):
        # A planted link (even a dangling one) must not redirect writes out of the cache.
        from ecephys_dl.errors import CacheError

        raise CacheError(f"{path.parent} is a symbolic link or not a directory: nothing is written through it", hint="remove it, then run again")
    if path.is_symlink():
        from ecephys_dl.errors import CacheError

        raise CacheError(f"{path} is a symbolic link: it is not replaced", hint="remove it, then run again")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
