"""Settings shared by every command, each with an environment variable.

The command line builds one :class:`Settings` from its global options; click reads the
environment variables named here, so ``--help`` can show them.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from ecephys_dl.layout import CacheLayout

if TYPE_CHECKING:
    import httpx

    from ecephys_dl.published import PublishedTable
    from ecephys_dl.retry import RetryPolicy

__all__ = [
    "AUTO",
    "DEFAULT_DANDI_URL",
    "DEFAULT_S3_URL",
    "DEFAULT_SOURCES",
    "DEFAULT_WAREHOUSE_URL",
    "ENV",
    "Settings",
    "Source",
    "allowed_hosts_from",
    "default_cache_dir",
    "parse_sources",
]

DEFAULT_WAREHOUSE_URL = "http://api.brain-map.org"
DEFAULT_S3_URL = "https://allen-brain-observatory.s3.us-west-2.amazonaws.com"
DEFAULT_DANDI_URL = "https://api.dandiarchive.org/api"
# The name of a refreshed published table in the cache's state directory.
PUBLISHED_NAME = "published_files.csv"

# Environment variable of each global option.
ENV = {
    "cache_dir": "ECEPHYS_DL_CACHE_DIR",
    "source": "ECEPHYS_DL_SOURCE",
    "warehouse_url": "ECEPHYS_DL_WAREHOUSE_URL",
    "s3_url": "ECEPHYS_DL_S3_URL",
    "dandi_url": "ECEPHYS_DL_DANDI_URL",
    "published_table": "ECEPHYS_DL_PUBLISHED_TABLE",
    "retries": "ECEPHYS_DL_RETRIES",
    "retry_wait": "ECEPHYS_DL_RETRY_WAIT",
    "timeout": "ECEPHYS_DL_TIMEOUT",
    "debug": "ECEPHYS_DL_DEBUG",
    "log_file": "ECEPHYS_DL_LOG_FILE",
    "allow_host": "ECEPHYS_DL_ALLOW_HOST",
    "ca_bundle": "ECEPHYS_DL_CA_BUNDLE",
    "verbose": "ECEPHYS_DL_VERBOSE",
}


class Source(enum.StrEnum):
    """Where metadata and files come from."""

    WAREHOUSE = "warehouse"
    S3 = "s3"
    DANDI = "dandi"


# Every source, the fast and reliable mirrors first: the warehouse gives about 0.5 MB/s per
# connection and often hangs.
DEFAULT_SOURCES: tuple[Source, ...] = (Source.S3, Source.DANDI, Source.WAREHOUSE)
# The name of every source at once, in the order above.
AUTO = "auto"


def parse_sources(values: Sequence[str]) -> tuple[Source, ...]:
    """The sources of ``--source`` (repeatable, each value a name or a comma list), in the order given.

    ``auto`` stands for every source in :data:`DEFAULT_SOURCES`' order; a source named twice keeps
    its first place; no value at all is ``auto``. An unknown name is a
    :class:`~ecephys_dl.errors.UsageError` naming the valid ones.
    """
    names = [name.strip().lower() for value in values for name in value.split(",") if name.strip()]
    chosen: list[Source] = []
    for name in names or [AUTO]:
        if name == AUTO:
            chosen += DEFAULT_SOURCES
            continue
        try:
            chosen.append(Source(name))
        except ValueError:
            from ecephys_dl.errors import UsageError

            valid = ", ".join([AUTO, *(s.value for s in DEFAULT_SOURCES)])
            raise UsageError(f"unknown source {name!r}: choose from {valid} (several: repeat --source, or separate them with commas)") from None
    return tuple(dict.fromkeys(chosen))


def allowed_hosts_from(values: Sequence[str]) -> frozenset[str]:
    """The hosts of ``--allow-host`` (each value may hold several, separated by spaces or commas), normalised."""
    hosts = [h for value in values for h in value.replace(",", " ").split()]
    if not hosts:
        return frozenset()
    from ecephys_dl.redirects import normalize_hosts

    return normalize_hosts(hosts)


def default_cache_dir() -> Path:
    """The per-user data directory (``~/.local/share/ecephys-dl/cache`` on Linux)."""
    import platformdirs

    return platformdirs.user_data_path("ecephys-dl") / "cache"


@dataclass(frozen=True)
class Settings:
    """Global options of one run, and the things every command builds from them."""

    cache_dir: Path
    sources: tuple[Source, ...] = DEFAULT_SOURCES  # the sources taking part, the preferred first
    warehouse_url: str = DEFAULT_WAREHOUSE_URL
    s3_url: str = DEFAULT_S3_URL
    dandi_url: str = DEFAULT_DANDI_URL
    published_table: Path | None = None  # a table to use instead of the cache's refreshed one or the shipped one
    retries: int = 5
    retry_wait: float = 1.0
    timeout: float = 60.0
    debug: bool = False
    log_file: Path | None = None
    verbose: bool = False
    allowed_hosts: frozenset[str] = frozenset()
    ca_bundle: Path | None = None

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("a run needs at least one source")

    @property
    def tls_verify(self) -> bool | str:
        """What the HTTP client verifies certificates with: the system's CAs, or the given bundle."""
        return str(self.ca_bundle) if self.ca_bundle else True

    @cached_property
    def layout(self) -> CacheLayout:
        """The cache directory's paths (built once)."""
        return CacheLayout(self.cache_dir)

    @property
    def refreshed_published(self) -> Path:
        """Where a published table fetched from DANDI is kept: ``<cache>/.ecephys-dl/published_files.csv``."""
        return self.layout.state_dir / PUBLISHED_NAME

    def published(self) -> PublishedTable:
        """The published sizes and digests this run checks against: ``--published-table`` if given,
        else the cache's refreshed copy (``published --refresh``), else the table shipped in the package."""
        from ecephys_dl.published import load_published

        if self.published_table is not None:
            return load_published(self.published_table)
        if self.refreshed_published.is_file():
            return load_published(self.refreshed_published)
        return load_published()

    def retry_policy(self) -> RetryPolicy:
        """How requests are retried: ``--retries`` after the first attempt, backing off from ``--retry-wait``."""
        from ecephys_dl.retry import RetryPolicy

        return RetryPolicy(attempts=self.retries + 1, backoff=self.retry_wait)

    def client(self, *, read_timeout: float | None = None, max_connections: int | None = None) -> httpx.Client:
        """A new HTTP client with the run's TLS settings (the caller closes it, e.g. in a ``with``).

        ``read_timeout`` defaults to ``--timeout``; ``max_connections`` to the client's default pool.
        """
        from ecephys_dl.client import make_client

        return make_client(
            read_timeout=self.timeout if read_timeout is None else read_timeout,
            max_connections=16 if max_connections is None else max_connections,
            verify=self.tls_verify,
        )
