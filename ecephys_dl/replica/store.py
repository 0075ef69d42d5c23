"""The replica's dataset directory, read-only: ``dataset.json``, ``records/`` and ``bucket/``.

The layout (written by :mod:`ecephys_dl.replica.dataset`)::

    DIR/dataset.json              format, bucket, prefix, part_size, objects, downloads
    DIR/records/<Model>.json      a JSON array of flat records per RMA model, sorted by id
    DIR/bucket/<key>              the bytes of each S3 object
    DIR/published_files.csv       what the DANDI archive publishes of each NWB file (optional)

Records are loaded on first use, because the channel and unit tables are large and most
requests never touch them.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecephys_dl.replica.dandi import PUBLISHED_TABLE, PublishedFile, read_published

__all__ = ["FORMAT", "Dataset", "DatasetError", "ObjectInfo", "parse_timestamp"]

FORMAT = "ecephys-dl-replica/1"


class DatasetError(Exception):
    """The dataset directory is missing, corrupt, or of another format."""


@dataclass(frozen=True)
class ObjectInfo:
    """One object of the bucket: its key, where its bytes are, and what S3 says about it."""

    key: str
    path: Path
    size: int
    md5: str
    etag: str
    last_modified: datetime

    @property
    def name(self) -> str:
        """The last component of the key (``session_715093703.nwb``)."""
        return self.key.rsplit("/", 1)[-1]


def parse_timestamp(text: str) -> datetime:
    """Parse an ISO 8601 UTC timestamp such as ``2019-10-03T00:00:00Z`` into an aware datetime."""
    value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class Dataset:
    """A replica dataset directory opened for serving; cheap to open, records load lazily."""

    def __init__(
        self,
        directory: Path,
        *,
        bucket: str,
        prefix: str,
        part_size: int,
        objects: list[ObjectInfo],
        downloads: Mapping[int, str],
        meta: Mapping[str, Any],
    ) -> None:
        self.directory = directory
        self.bucket = bucket
        self.prefix = prefix
        self.part_size = part_size
        self.objects = objects
        self.meta = meta
        self._by_key = {info.key: info for info in objects}
        self._downloads = dict(downloads)
        self._records: dict[str, list[dict[str, Any]]] = {}
        self._published: list[PublishedFile] | None = None
        self._lock = threading.Lock()

    @classmethod
    def open(cls, directory: str | Path) -> Dataset:
        """Open ``directory``, checking ``dataset.json``; raise :class:`DatasetError` when unusable."""
        root = Path(directory)
        index = root / "dataset.json"
        try:
            meta = json.loads(index.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DatasetError(
                f"{index} does not exist: create a dataset with "
                f"'python -m ecephys_dl.replica make-dataset {root}'"
            ) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"{index} cannot be read ({err}): recreate the dataset with --force") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
            raise DatasetError(f"{index} is not a replica dataset of format {FORMAT!r} (found {found!r})")
        try:
            bucket = str(meta["bucket"])
            prefix = str(meta["prefix"])
            part_size = int(meta["part_size"])
            objects = sorted(
                (
                    ObjectInfo(
                        key=key,
                        path=root / "bucket" / key,
                        size=int(entry["size"]),
                        md5=str(entry["md5"]),
                        etag=str(entry["etag"]),
                        last_modified=parse_timestamp(str(entry["last_modified"])),
                    )
                    for key, entry in dict(meta["objects"]).items()
                ),
                # S3 lists keys in the order of their UTF-8 bytes, not of code points.
                key=lambda info: info.key.encode("utf-8"),
            )
            downloads = {int(file_id): str(key) for file_id, key in dict(meta.get("downloads", {})).items()}
        except (KeyError, TypeError, ValueError) as err:
            raise DatasetError(f"{index} is malformed ({type(err).__name__}: {err})") from None
        known = {info.key for info in objects}
        missing = sorted(key for key in downloads.values() if key not in known)
        if missing:
            raise DatasetError(f"{index} lists downloads of unknown objects: {missing[:3]}")
        return cls(
            root,
            bucket=bucket,
            prefix=prefix,
            part_size=part_size,
            objects=objects,
            downloads=downloads,
            meta=meta,
        )

    def records(self, model: str) -> list[dict[str, Any]]:
        """The records of ``model``, loaded once; ``KeyError`` when the model has no file."""
        with self._lock:
            cached = self._records.get(model)
            if cached is not None:
                return cached
            # A model name is a single path component; anything else is not a model.
            if not model or "/" in model or "\\" in model or model.startswith("."):
                raise KeyError(model)
            path = self.directory / "records" / f"{model}.json"
            try:
                loaded = json.loads(path.read_text(encoding="utf-8"))
            except FileNotFoundError:
                raise KeyError(model) from None
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
                raise DatasetError(f"{path} cannot be read: {err}") from None
            if not isinstance(loaded, list):
                raise DatasetError(f"{path} does not hold a JSON array")
            self._records[model] = loaded
            return loaded

    @property
    def published_table(self) -> Path:
        """Where ``published_files.csv`` is: the DANDI archive's size and digests of each NWB file."""
        return self.directory / PUBLISHED_TABLE

    def published(self) -> list[PublishedFile]:
        """The rows of ``published_files.csv``, loaded once; empty for a dataset without one.

        :class:`DatasetError` when the table is unreadable or names a file the bucket lacks.
        """
        with self._lock:
            if self._published is not None:
                return self._published
            path = self.published_table
            try:
                files = read_published(path)
            except FileNotFoundError:
                files = []
            except (OSError, UnicodeDecodeError, ValueError) as err:
                raise DatasetError(f"{path} cannot be read: {err}") from None
            missing = [f.cache_path for f in files if self.prefix + f.cache_path not in self._by_key]
            if missing:
                raise DatasetError(f"{path} lists files the bucket does not hold: {missing[:3]}")
            self._published = files
            return files

    def object(self, key: str) -> ObjectInfo:
        """The object stored under ``key``; ``KeyError`` when there is none."""
        return self._by_key[key]

    def download(self, file_id: int) -> ObjectInfo | None:
        """The object holding the bytes of WellKnownFile ``file_id``, or None."""
        key = self._downloads.get(file_id)
        return None if key is None else self._by_key[key]
