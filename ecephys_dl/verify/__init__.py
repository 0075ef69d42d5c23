"""Check that the files of a cache are whole and sound, at one of three levels.

Which files: every NWB file, metadata CSV and ``manifest.json`` at its AllenSDK path, every file
ecephys-dl keeps a record of (absent: ``missing``), every file the caller expects (absent:
``missing``), and leftovers of interrupted writes (``*.part``, ``*.part.json``, ``.*.tmp``:
``stray-partial``). The stimulus templates are checked only if a record names them.

Levels, each doing what the one before does:

- ``quick``: the size is the recorded (or expected) size and the HDF5 superblock's end of file
  is the size; a CSV is not empty and ends with a newline. A few hundred bytes read per file,
  no h5py.
- ``standard``: h5py opens each NWB file, reads every group's and dataset's header (no data),
  and ``int(identifier)`` is the session or probe id of its name; pandas reads each CSV and the
  four tables have AllenSDK's header; ``manifest.json`` is one AllenSDK 0.3.0 accepts.
- ``deep``: every byte is read. A recorded file's SHA-256 must be its record's. An NWB file
  without a record has every dataset read through h5py (which checks fletcher32 checksums),
  and, when that passes, its hashes are recorded ("adopted"), so the next deep pass compares
  them. A flipped byte in unchecksummed data of an unrecorded file cannot be seen by anyone.

A zero-length or shorter-than-its-superblock HDF5 file is ``truncated``: that is what a write
killed early leaves. Stray partials are reported but do not fail a pass (a ``.part`` is a
resumable download); they are removed only with ``clean``, and then only when untouched for
ten minutes, since a fetch of another shard may be writing them.

Passes. The files of a level are checked in a fixed order, and which ones are done is kept in
``<cache>/.ecephys-dl/verify-state.json``, so a call stopped by its time limit (or interrupted)
is continued by the next call at the same level; results of files unchanged since (same size,
modification time and inode) are carried over. When every file is checked the pass is recorded
as the last full pass of its level (:func:`last_pass`) and the next call starts a new one.

Nothing on disk changes except that state file, adopted records, and what ``clean`` removes.

The parts: :mod:`.model` (levels, statuses, results), :mod:`.checks` and :mod:`.deep` (one
file, level by level), :mod:`.state` (the pass state and :func:`last_pass`), :mod:`.runner`
(:func:`verify_cache`).
"""

from ecephys_dl.verify.checks import CLEAN_AFTER
from ecephys_dl.verify.model import ExpectedFile, FileResult, Kind, Level, Status, VerifyProgress, VerifyReport, VerifySummary
from ecephys_dl.verify.runner import verify_cache
from ecephys_dl.verify.state import STATE_NAME, FinishedPass, PassProgress, VerifyHistory, last_pass

__all__ = [
    "CLEAN_AFTER",
    "STATE_NAME",
    "ExpectedFile",
    "FileResult",
    "FinishedPass",
    "Kind",
    "Level",
    "PassProgress",
    "Status",
    "VerifyHistory",
    "VerifyProgress",
    "VerifyReport",
    "VerifySummary",
    "last_pass",
    "verify_cache",
]
