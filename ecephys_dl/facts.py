"""What is known of one remote file while it downloads: its size, its version and the bytes fetched.

:class:`Validator` identifies a version (ETag, Last-Modified); :class:`Facts` is a frozen look
at the file at one moment, what the answer judge (:mod:`ecephys_dl.answers`) weighs an answer
against; :class:`FileFacts` is the one owner of those facts for a download, behind one lock,
read and updated by every thread of the transfer and kept across restarts.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["Facts", "FileFacts", "Validator"]


@dataclass(frozen=True)
class Validator:
    """What identifies a version of the file: its ETag and Last-Modified date, as the server sent them."""

    etag: str | None = None
    last_modified: str | None = None

    @classmethod
    def of(cls, headers: Mapping[str, str]) -> Validator:
        """The validator of an answer's headers (an ``httpx.Headers``: names in any case)."""
        etag = (headers.get("ETag") or "").strip() or None
        modified = (headers.get("Last-Modified") or "").strip() or None
        return cls(etag, modified)

    @property
    def known(self) -> bool:
        return self.etag is not None or self.last_modified is not None

    def if_range(self) -> str | None:
        """The ``If-Range`` value: a strong ETag (a weak one is not allowed there), else the date."""
        if self.etag is not None and not self.etag.startswith("W/"):
            return self.etag
        return self.last_modified

    def differs(self, other: Validator) -> bool | None:
        """Whether ``other`` is another version: compared by ETag, else by date; None when unknowable."""
        if self.etag is not None and other.etag is not None:
            return self.etag != other.etag
        if self.last_modified is not None and other.last_modified is not None:
            return self.last_modified != other.last_modified
        return None


@dataclass(frozen=True)
class Facts:
    """The file as known at one moment: its size (None: not yet known), its version, and its ceiling.

    ``ceiling`` is the largest size the file may turn out to have: a stated size above it is
    not this file.
    """

    size: int | None
    validator: Validator
    ceiling: int


class FileFacts:
    """The one owner of a download's facts: size, validator and bytes fetched, behind one lock.

    Worker threads learn the facts from answers (:meth:`learn` fills in only what is unknown);
    a restart or a resumed record replaces them (:meth:`replace`). The lock is a leaf: nothing
    is called while it is held, so any other lock may be held around a call.
    """

    def __init__(self, size: int | None, validator: Validator, ceiling: int) -> None:
        self._lock = threading.Lock()
        self._size = size
        self._validator = validator
        self._fetched = 0
        self.ceiling = ceiling

    def now(self) -> Facts:
        """A frozen look at the facts."""
        with self._lock:
            return Facts(self._size, self._validator, self.ceiling)

    @property
    def size(self) -> int | None:
        with self._lock:
            return self._size

    @property
    def validator(self) -> Validator:
        with self._lock:
            return self._validator

    @property
    def fetched(self) -> int:
        """Body bytes written by every session so far (restarted ones included)."""
        with self._lock:
            return self._fetched

    def replace(self, size: int | None, validator: Validator) -> None:
        """Another version (a restart) or the one a record holds: these are the facts now."""
        with self._lock:
            self._size, self._validator = size, validator

    def learn(self, *, size: int | None = None, validator: Validator | None = None) -> Facts:
        """Take ``size`` and ``validator`` where the file's are not known yet; the facts after."""
        with self._lock:
            if self._size is None and size is not None:
                self._size = size
            if validator is not None and not self._validator.known:
                self._validator = validator
            return Facts(self._size, self._validator, self.ceiling)

    def add_fetched(self, nbytes: int) -> None:
        """A session ended having written ``nbytes`` body bytes."""
        with self._lock:
            self._fetched += nbytes
