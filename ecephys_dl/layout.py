"""The AllenSDK cache tree: where every file lives, and how a name in it is read back.

A cache written by ecephys-dl is the one ``EcephysProjectCache.from_warehouse`` writes (manifest
version 0.3.0), so AllenSDK opens it without downloading anything again. Local paths are built
only from integer ids, never from names a server sent. :meth:`CacheLayout.classify` reads a
relative name back into what it is (:class:`CachePath`); the names of ecephys-dl's own files
(``<final>.part``, its ``.json`` state, the ``.ecephys-dl`` directory) are made here too. This
module is the one place that knows the tree's grammar. ``manifest.json``'s content belongs to
:mod:`ecephys_dl.manifest`.
"""

from __future__ import annotations

import enum
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "ID_PATTERN",
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "METADATA_TABLES",
    "PART_STATE_SUFFIX",
    "PART_SUFFIX",
    "SESSION_TYPES",
    "STATE_DIR",
    "CacheLayout",
    "CachePath",
    "FileKind",
    "classify",
    "final_relative",
    "is_leftover",
    "nwb_relative",
    "part_path",
    "safe_relative",
    "session_id_of_dir",
    "sidecar_path",
    "write_atomic",
]

MANIFEST_NAME = "manifest.json"
MANIFEST_VERSION = "0.3.0"
SESSION_TYPES = ("brain_observatory_1.1", "functional_connectivity")
METADATA_TABLES = ("sessions", "probes", "channels", "units")
# ecephys-dl's own directory inside a cache (AllenSDK never looks there).
STATE_DIR = ".ecephys-dl"
PART_SUFFIX = ".part"
_SIDECAR_SUFFIX = ".json"
PART_STATE_SUFFIX = PART_SUFFIX + _SIDECAR_SUFFIX  # the state beside a partial download
_RECORDS = "records"
_MOVIE_DIR = "natural_movie_templates"
_SCENE_DIR = "natural_scene_templates"

# An id in a name: ASCII digits, no leading zero, at most 19 digits (it fits an int64).
ID_PATTERN = r"[1-9][0-9]{0,18}"
_SESSION_DIR = re.compile(rf"session_({ID_PATTERN})")
_LFP = re.compile(rf"probe_({ID_PATTERN})_lfp\.nwb")
# A template's number may be 0 (natural_scene_0.tiff), otherwise as an id.
_MOVIE = re.compile(r"(natural_movie_(0|[1-9][0-9]{0,18}))\.h5")
_SCENE = re.compile(r"(natural_scene_(0|[1-9][0-9]{0,18}))\.tiff")
_TABLE_NAMES = {f"{t}.csv": t for t in METADATA_TABLES}
_TYPEWISE_NAMES = {f"{t}_analysis_metrics.csv": t for t in SESSION_TYPES}


def _check_id(value: int) -> int:
    # bool is an int subclass; an id must be a real positive integer.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"not a valid id: {value!r}")
    return value


class FileKind(enum.StrEnum):
    """What a file at a known place of the AllenSDK tree is."""

    SESSION_NWB = "session-nwb"  # session_<id>/session_<id>.nwb
    LFP_NWB = "lfp-nwb"  # session_<id>/probe_<id>_lfp.nwb
    SESSION_METRICS_CSV = "session-metrics-csv"  # session_<id>/session_<id>_analysis_metrics.csv
    TABLE_CSV = "table-csv"  # sessions.csv, probes.csv, channels.csv, units.csv
    TYPEWISE_METRICS_CSV = "typewise-metrics-csv"  # <session type>_analysis_metrics.csv
    MANIFEST = "manifest"  # manifest.json
    STIMULUS_TEMPLATE = "stimulus-template"  # natural_movie_templates/..., natural_scene_templates/...


@dataclass(frozen=True)
class CachePath:
    """What a relative name in the cache is, read back by :func:`classify`.

    ``session_id`` for the files under ``session_<id>/``, ``probe_id`` for an LFP file, ``name``
    for the others: the table (``units``), the session type of typewise metrics, or the
    template's stem (``natural_movie_1``).
    """

    kind: FileKind
    session_id: int | None = None
    probe_id: int | None = None
    name: str | None = None

    @property
    def nwb_id(self) -> int | None:
        """The id an NWB file's ``identifier`` must be: the probe's for LFP, else the session's."""
        if self.kind is FileKind.LFP_NWB:
            return self.probe_id
        return self.session_id if self.kind is FileKind.SESSION_NWB else None


def nwb_relative(session_id: int, probe_id: int | None = None) -> str:
    """``session_<S>/session_<S>.nwb``, or (``probe_id``) ``session_<S>/probe_<P>_lfp.nwb``: an NWB file's cache path."""
    return CacheLayout(Path()).nwb(session_id, probe_id).as_posix()


def session_id_of_dir(name: str) -> int | None:
    """The session id of a ``session_<id>`` directory name, or None for any other name."""
    match = _SESSION_DIR.fullmatch(name)
    return int(match.group(1)) if match else None


def classify(relative: str) -> CachePath | None:
    """What the file at ``relative`` (forward slashes, from the cache root) is; None for a name
    that is not one of the AllenSDK tree (ecephys-dl's own files and leftovers included)."""
    parts = relative.split("/")
    if len(parts) == 1:
        name = parts[0]
        if name == MANIFEST_NAME:
            return CachePath(FileKind.MANIFEST)
        if name in _TABLE_NAMES:
            return CachePath(FileKind.TABLE_CSV, name=_TABLE_NAMES[name])
        if name in _TYPEWISE_NAMES:
            return CachePath(FileKind.TYPEWISE_METRICS_CSV, name=_TYPEWISE_NAMES[name])
    elif len(parts) == 2:
        folder, name = parts
        if (session := session_id_of_dir(folder)) is not None:
            if name == f"session_{session}.nwb":
                return CachePath(FileKind.SESSION_NWB, session_id=session)
            if name == f"session_{session}_analysis_metrics.csv":
                return CachePath(FileKind.SESSION_METRICS_CSV, session_id=session)
            if lfp := _LFP.fullmatch(name):
                return CachePath(FileKind.LFP_NWB, session_id=session, probe_id=int(lfp.group(1)))
        elif (folder == _MOVIE_DIR and (template := _MOVIE.fullmatch(name))) or (folder == _SCENE_DIR and (template := _SCENE.fullmatch(name))):
            return CachePath(FileKind.STIMULUS_TEMPLATE, name=template.group(1))
    return None


def is_leftover(name: str) -> bool:
    """Whether a file name is what an interrupted write leaves: a partial download
    (``<final>.part``), its state (``<final>.part.json``), or a temporary of :func:`write_atomic`
    (``.<name>.<random>.tmp``)."""
    return name.endswith((PART_SUFFIX, PART_STATE_SUFFIX)) or (name.startswith(".") and name.endswith(".tmp"))


def final_relative(relative: str) -> str:
    """The file a leftover of a download is for: ``x.nwb`` for ``x.nwb.part`` and
    ``x.nwb.part.json``; any other name is returned as it is."""
    for suffix in (PART_STATE_SUFFIX, PART_SUFFIX):
        if relative.endswith(suffix) and len(relative) > len(suffix):
            return relative[: -len(suffix)]
    return relative


def part_path(final: Path) -> Path:
    """Where a download of ``final`` is written until it is whole: ``<final>.part``."""
    final = Path(final)
    return final.with_name(final.name + PART_SUFFIX)


def sidecar_path(part: Path) -> Path:
    """The state beside a part file: ``<final>.part.json``."""
    part = Path(part)
    return part.with_name(part.name + _SIDECAR_SUFFIX)


def safe_relative(relative: object) -> bool:
    """Whether ``relative`` names a path inside the cache: forward slashes, no empty, ``.`` or ``..`` part."""
    if not isinstance(relative, str) or not relative or "\\" in relative:
        return False
    if any(ord(c) < 32 or ord(c) == 127 for c in relative):
        return False
    return all(part not in ("", ".", "..") for part in relative.split("/"))


@dataclass(frozen=True)
class CacheLayout:
    """Paths inside one cache directory (relative names via :meth:`relative`)."""

    root: Path

    @property
    def manifest(self) -> Path:
        return self.root / MANIFEST_NAME

    def manifest_aside(self, stamp: str) -> Path:
        """Where a bad ``manifest.json`` is kept when it is replaced: ``manifest.json.bad-<stamp>``."""
        if not stamp or "/" in stamp or stamp in (".", ".."):
            raise ValueError(f"not a time stamp for a file name: {stamp!r}")
        return self.root / f"{MANIFEST_NAME}.bad-{stamp}"

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

    def nwb(self, session_id: int, probe_id: int | None = None) -> Path:
        """The session's NWB file, or (``probe_id``) the probe's LFP file."""
        return self.session_nwb(session_id) if probe_id is None else self.probe_lfp_nwb(session_id, probe_id)

    def natural_movie(self, number: int) -> Path:
        return self.root / _MOVIE_DIR / f"natural_movie_{int(number)}.h5"

    def natural_scene(self, number: int) -> Path:
        return self.root / _SCENE_DIR / f"natural_scene_{int(number)}.tiff"

    def relative(self, path: Path) -> str:
        """The path's name relative to the cache root, with forward slashes (as in S3 keys)."""
        return path.relative_to(self.root).as_posix()

    def classify(self, relative: str) -> CachePath | None:
        """What the file at ``relative`` is (see :func:`classify`)."""
        return classify(relative)

    def session_ids(self) -> list[int]:
        """The ids of the ``session_<id>`` directories in the cache, in order."""
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        return sorted(i for e in entries if (i := session_id_of_dir(e.name)) is not None and e.is_dir())

    # -- ecephys-dl's own files -------------------------------------------------------------

    def part(self, final: Path) -> Path:
        """``<final>.part``: where ``final`` is downloaded until it is whole."""
        return part_path(final)

    def sidecar(self, part: Path) -> Path:
        """``<part>.json``: the state of a partial download."""
        return sidecar_path(part)

    @property
    def state_dir(self) -> Path:
        """``<cache>/.ecephys-dl``: ecephys-dl's records, locks and pass state."""
        return self.root / STATE_DIR

    @property
    def records_dir(self) -> Path:
        return self.state_dir / _RECORDS

    def record(self, relative: str) -> Path:
        """Where the record of the file at ``relative`` lies: the cache tree mirrored under
        :attr:`records_dir`, ``.json`` appended. A name that climbs out of the cache is refused."""
        if not safe_relative(relative):
            raise ValueError(f"not a path inside the cache: {relative!r}")
        parts = relative.split("/")
        return self.records_dir.joinpath(*parts[:-1], parts[-1] + _SIDECAR_SUFFIX)

    def lock_path(self, name: str) -> Path:
        """``<cache>/.ecephys-dl/<name>.lock``."""
        return self.state_dir / f"{name}.lock"

    def state_file(self, name: str) -> Path:
        """A state file of ecephys-dl's own, directly in :attr:`state_dir`."""
        if not safe_relative(name) or "/" in name:
            raise ValueError(f"not a file name: {name!r}")
        return self.state_dir / name


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
