"""The passes of verify: ``<cache>/.ecephys-dl/verify-state.json``.

Per level, the pass in progress (the files checked so far, each with the signature of the
version checked, so a later call carries its result over while the file is unchanged) and the
last full pass. The file is written whole; one that is absent, unreadable, of another format or
malformed is a fresh state, and a malformed entry in it is dropped, so a pass never stops on it.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ecephys_dl.layout import CacheLayout, write_atomic
from ecephys_dl.records import utc_now
from ecephys_dl.verify.context import Signature
from ecephys_dl.verify.model import LEVELS, NO_REFERENCE, FileResult, Kind, Level, Status, VerifySummary, count_problems

__all__ = [
    "STATE_NAME",
    "Checked",
    "FinishedPass",
    "OpenPass",
    "PassProgress",
    "PassState",
    "VerifyHistory",
    "close_pass",
    "last_pass",
    "load_state",
    "open_pass",
    "save_state",
]

STATE_NAME = "verify-state.json"
_STATE_FORMAT = "ecephys-dl-verify/1"


class _Keyed:
    """Read by key as well as by attribute (``full["level"]``), as the dicts these replace were."""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class Checked:
    """A file checked in a pass: its result, and the signature of the version checked."""

    result: FileResult
    signature: Signature

    def to_json(self) -> dict[str, Any]:
        entry = self.result.as_dict()
        if entry["reference"] == NO_REFERENCE:
            del entry["reference"]  # the entry as earlier releases wrote it
        return {**entry, "signature": list(self.signature)}

    @classmethod
    def from_json(cls, value: object) -> Checked | None:
        """The entry, or None if it is malformed."""
        if not isinstance(value, dict):
            return None
        signature = value.get("signature")
        if not (isinstance(signature, list) and len(signature) == 3 and all(type(v) is int for v in signature)):
            return None
        try:
            result = FileResult(str(value["path"]), Kind(value["kind"]), value.get("size"), Level(value["level"]),
                                Status(value["status"]), str(value.get("detail", "")), str(value.get("reference", NO_REFERENCE)))  # fmt: skip
        except (KeyError, ValueError, TypeError):
            return None
        if result.size is not None and type(result.size) is not int:
            return None
        return cls(result, (signature[0], signature[1], signature[2]))


@dataclass(frozen=True)
class OpenPass:
    """A level's pass in progress."""

    id: str
    level: Level
    started_at: str
    seconds: float  # the time of its calls so far
    checked: Mapping[str, Checked]  # relative path -> the file checked

    @classmethod
    def new(cls, level: Level) -> OpenPass:
        return cls(uuid.uuid4().hex[:12], level, utc_now(), 0.0, {})

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "level": str(self.level), "started_at": self.started_at, "seconds": self.seconds,
                "checked": {k: c.to_json() for k, c in self.checked.items()}}  # fmt: skip

    @classmethod
    def from_json(cls, level: Level, value: object) -> OpenPass | None:
        if not (isinstance(value, dict) and isinstance(value.get("id"), str) and isinstance(value.get("started_at"), str)
                and isinstance(value.get("checked"), dict)):  # fmt: skip
            return None
        checked = {k: c for k, v in value["checked"].items() if (c := Checked.from_json(v)) is not None and c.result.path == k}
        seconds = value.get("seconds")
        return cls(value["id"], level, value["started_at"], float(seconds) if isinstance(seconds, (int, float)) else 0.0, checked)


@dataclass(frozen=True)
class FinishedPass(_Keyed):
    """A level's last full pass, as ``status`` shows it."""

    id: str
    level: Level
    started_at: str
    finished_at: str
    files: int
    bytes: int
    ok: int
    problems: Mapping[str, int]  # status -> count, every status but ok
    seconds: float  # the time of all its calls

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "level": str(self.level), "started_at": self.started_at, "finished_at": self.finished_at,
                "files": self.files, "bytes": self.bytes, "ok": self.ok, "problems": dict(self.problems), "seconds": self.seconds}  # fmt: skip

    @classmethod
    def from_json(cls, level: Level, value: object) -> FinishedPass | None:
        """The entry; None without a ``finished_at``. Other fields of a wrong type read as empty."""
        if not isinstance(value, dict) or not isinstance(value.get("finished_at"), str):
            return None

        def text(key: str) -> str:
            item = value.get(key)
            return item if isinstance(item, str) else ""

        def number(key: str) -> int:
            item = value.get(key)
            return item if type(item) is int else 0

        problems = value.get("problems")
        seconds = value.get("seconds")
        return cls(text("id"), level, text("started_at"), value["finished_at"], number("files"), number("bytes"), number("ok"),
                   {k: v for k, v in problems.items() if type(v) is int} if isinstance(problems, dict) else {},
                   float(seconds) if isinstance(seconds, (int, float)) else 0.0)  # fmt: skip


@dataclass(frozen=True)
class PassState:
    """The whole state file: each level's pass in progress and last full pass, and the latest level finished."""

    passes: Mapping[Level, OpenPass]
    finished: Mapping[Level, FinishedPass]
    last: Level | None = None

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"format": _STATE_FORMAT, "passes": {str(k): p.to_json() for k, p in self.passes.items()},
                                "finished": {str(k): f.to_json() for k, f in self.finished.items()}}  # fmt: skip
        if self.last is not None:
            data["last"] = str(self.last)
        return json.dumps(data, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> PassState:
        """The state in ``data``, or a fresh one when it is not a sound state file."""
        fresh = cls({}, {})
        try:
            raw = json.loads(data)
        except (ValueError, RecursionError):
            return fresh
        if not isinstance(raw, dict) or raw.get("format") != _STATE_FORMAT:
            return fresh
        passes, finished = raw.get("passes"), raw.get("finished")
        if not isinstance(passes, dict) or not isinstance(finished, dict):
            return fresh
        open_passes = {level: p for level in LEVELS if (p := OpenPass.from_json(level, passes.get(str(level)))) is not None}
        done = {level: f for level in LEVELS if (f := FinishedPass.from_json(level, finished.get(str(level)))) is not None}
        last = raw.get("last")
        latest = next((level for level in done if level == last), None) if isinstance(last, str) else None
        return cls(open_passes, done, latest)

    def with_pass(self, current: OpenPass) -> PassState:
        """This state with ``current`` as its level's pass in progress."""
        return replace(self, passes={**self.passes, current.level: current})


def _state_path(layout: CacheLayout) -> Path:
    return layout.state_file(STATE_NAME)


def load_state(layout: CacheLayout) -> PassState:
    """The cache's state, or a fresh one when it is absent or not a sound one."""
    try:
        fd = os.open(_state_path(layout), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            data = handle.read()
    except OSError:
        return PassState({}, {})
    return PassState.from_json(data)


def save_state(layout: CacheLayout, state: PassState) -> None:
    """Write the state whole; a cache we cannot write (read-only, a link in the way) keeps none."""
    if layout.state_dir.is_symlink():
        return
    try:
        write_atomic(_state_path(layout), state.to_json())
    except OSError:
        pass


def open_pass(state: PassState, level: Level) -> tuple[PassState, OpenPass, Mapping[str, Checked]]:
    """This level's pass (the unfinished one, else a new one) in the state, emptied of its checked
    files, which are returned with their signatures to be carried over where still valid."""
    current = state.passes.get(level) or OpenPass.new(level)
    earlier = current.checked
    current = replace(current, checked={})
    return state.with_pass(current), current, earlier


def close_pass(state: PassState, current: OpenPass, summary: VerifySummary) -> PassState:
    """Add this call's time to the pass; a complete pass becomes its level's last full pass."""
    current = replace(current, seconds=current.seconds + summary.seconds)
    if not summary.complete:
        return state.with_pass(current)
    level = summary.level
    finished = FinishedPass(current.id, level, current.started_at, utc_now(), summary.files, summary.bytes, summary.ok,
                            summary.problems, round(current.seconds, 3))  # fmt: skip
    passes = {k: p for k, p in state.passes.items() if k is not level}
    return PassState(passes, {**state.finished, level: finished}, level)


# -- what status shows -----------------------------------------------------------------------------


@dataclass(frozen=True)
class PassProgress(_Keyed):
    """A level's pass in progress, as ``status`` shows it."""

    id: str
    started_at: str
    checked: int  # files done so far
    problems: Mapping[str, int]

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "started_at": self.started_at, "checked": self.checked, "problems": dict(self.problems)}


@dataclass(frozen=True)
class VerifyHistory(_Keyed):
    """The last full verify pass (at any level), the latest of each level, and the ones in progress."""

    last_full_pass: FinishedPass | None
    full_passes: Mapping[Level, FinishedPass]
    in_progress: Mapping[Level, PassProgress]

    def to_json(self) -> dict[str, Any]:
        return {"last_full_pass": self.last_full_pass.to_json() if self.last_full_pass is not None else None,
                "full_passes": {str(k): f.to_json() for k, f in self.full_passes.items()},
                "in_progress": {str(k): p.to_json() for k, p in self.in_progress.items()}}  # fmt: skip


def last_pass(cache_dir: Path) -> VerifyHistory | None:
    """The verify passes of the cache, for ``status``; None if there was none."""
    layout = CacheLayout(Path(cache_dir))
    if not _state_path(layout).exists():
        return None
    state = load_state(layout)
    latest = state.finished.get(state.last) if state.last is not None else None
    progress = {level: PassProgress(p.id, p.started_at, len(p.checked), count_problems([c.result for c in p.checked.values()]))
                for level, p in state.passes.items()}  # fmt: skip
    if latest is None and not progress:
        return None
    return VerifyHistory(latest, dict(state.finished), progress)
