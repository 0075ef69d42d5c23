"""The ``ecephys-dl`` group, its global options, and :func:`main`, where errors become exit codes.

:func:`main` is the one place an exception turns into output: an
:class:`~ecephys_dl.errors.EcephysDlError` prints ``error: <message>`` and its hint on stderr and
exits with the code it carries; anything else is an internal error (exit 1), with its traceback
only under ``--debug`` or ``ECEPHYS_DL_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from ecephys_dl import __version__
from ecephys_dl.config import (
    AUTO,
    DEFAULT_DANDI_URL,
    DEFAULT_S3_URL,
    DEFAULT_SOURCES,
    DEFAULT_WAREHOUSE_URL,
    ENV,
    Settings,
    Source,
    allowed_hosts_from,
    default_cache_dir,
    parse_sources,
)
from ecephys_dl.errors import EcephysDlError, ExitCode, UsageError, exit_codes_text

__all__ = ["CONTEXT_SETTINGS", "cli", "main", "settings_of"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}
EXIT_CODES_HELP = "\b\nExit codes:\n" + exit_codes_text() + "\n"


def _sources_option(ctx: click.Context, param: click.Parameter, values: Sequence[str]) -> tuple[Source, ...]:
    try:
        return parse_sources(values)
    except UsageError as error:
        raise click.BadParameter(error.message, ctx=ctx, param=param) from None


def _complete_sources(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    """The source names, after the ones already typed in a comma list."""
    head, _, last = incomplete.rpartition(",")
    prefix = head + "," if head else ""
    return [prefix + name for name in (AUTO, *(s.value for s in DEFAULT_SOURCES)) if name.startswith(last)]


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "-V", "--version", prog_name="ecephys-dl")
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar=ENV["cache_dir"],
    show_envvar=True,
    help="The AllenSDK cache directory (holds manifest.json).  [default: ~/.local/share/ecephys-dl/cache]",
)
@click.option(
    "--source",
    "sources",
    multiple=True,
    default=[AUTO],
    metavar="SOURCE[,SOURCE...]",
    callback=_sources_option,
    shell_complete=_complete_sources,
    envvar=ENV["source"],
    show_envvar=True,
    show_default=True,
    help="Where files come from: auto (every source: s3, dandi, warehouse), or a list that restricts the run to those (repeat the option or "
         "separate names with commas), the preferred first: s3 (Allen's S3 mirror), dandi (the DANDI archive), warehouse (the Allen warehouse, "
         "slow). A file's pieces may come from every source that has it. Metadata tables come from the first source, in the order given, that "
         "serves them; DANDI's tables come from the S3 mirror.",
)
@click.option("--warehouse-url", default=DEFAULT_WAREHOUSE_URL, envvar=ENV["warehouse_url"], show_envvar=True, show_default=True, help="Base URL of the Allen warehouse.")
@click.option("--s3-url", default=DEFAULT_S3_URL, envvar=ENV["s3_url"], show_envvar=True, show_default=True, help="Base URL of the S3 bucket.")
@click.option("--dandi-url", default=DEFAULT_DANDI_URL, envvar=ENV["dandi_url"], show_envvar=True, show_default=True, help="Base URL of the DANDI archive's API.")
@click.option("--published-table", type=click.Path(dir_okay=False, path_type=Path), envvar=ENV["published_table"], show_envvar=True,
              help="Check files against this table of published sizes and SHA-256s.  [default: the cache's refreshed copy, else the one shipped]")
@click.option("--retries", type=click.IntRange(0, 100), default=5, envvar=ENV["retries"], show_envvar=True, show_default=True, help="Retries of a request that failed for a passing reason.")
@click.option("--retry-wait", type=click.FloatRange(0, 3600), default=1.0, envvar=ENV["retry_wait"], show_envvar=True, show_default=True, help="Seconds before the first retry (doubling each time, or the server's Retry-After).")
@click.option("--timeout", type=click.FloatRange(0.1, 86400), default=60.0, envvar=ENV["timeout"], show_envvar=True, show_default=True, help="Seconds a request may wait for the server before it counts as failed.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="HOST", envvar=ENV["allow_host"], show_envvar=True, help="A host download links and redirects may lead to besides the source's own (repeatable).")
@click.option("--ca-bundle", type=click.Path(path_type=Path), envvar=ENV["ca_bundle"], show_envvar=True, help="Verify TLS certificates with this CA bundle (file or directory) instead of the system's.")
@click.option("--log-file", type=click.Path(dir_okay=False, path_type=Path), envvar=ENV["log_file"], show_envvar=True, help="Append one JSON object per event (run start/end, file started, resumed, retried, verified, failed).")
@click.option("-v", "--verbose", is_flag=True, envvar=ENV["verbose"], show_envvar=True, help="More detail on stderr (e.g. ranges split, servers ignoring ranges).")
@click.option("--debug", is_flag=True, envvar=ENV["debug"], show_envvar=True, help="Show tracebacks on errors.")
@click.pass_context
def cli(ctx: click.Context, cache_dir: Path | None, sources: tuple[Source, ...], warehouse_url: str, s3_url: str, dandi_url: str, published_table: Path | None, retries: int, retry_wait: float, timeout: float,
        allow_hosts: Sequence[str], ca_bundle: Path | None, log_file: Path | None, verbose: bool, debug: bool) -> None:  # fmt: skip
    """Download the Allen Visual Coding - Neuropixels dataset into an AllenSDK-compatible cache.

    \b
    Examples:
      ecephys-dl --cache-dir /data/ecephys sessions --genotype Sst
      ecephys-dl sessions --sex M --genotype Sst --session-type brain_observatory_1.1 --structure VISl
      ecephys-dl units --session 715093703 --format csv > units.csv
      ECEPHYS_DL_SOURCE=s3 ecephys-dl probes --format json
      ecephys-dl --source s3 --source dandi fetch 715093703 --with-lfp
      ecephys-dl --source s3,warehouse links --all --format aria2 > all.aria2
    """
    ctx.obj = Settings(
        cache_dir=(cache_dir or default_cache_dir()).expanduser(),
        sources=sources,
        warehouse_url=warehouse_url.rstrip("/"),
        s3_url=s3_url.rstrip("/"),
        dandi_url=dandi_url.rstrip("/"),
        published_table=published_table,
        retries=retries,
        retry_wait=retry_wait,
        timeout=timeout,
        debug=debug,
        log_file=log_file,
        verbose=verbose,
        allowed_hosts=allowed_hosts_from(allow_hosts),
        ca_bundle=ca_bundle,
    )


def settings_of(ctx: click.Context) -> Settings:
    """The run's settings, made by the group from its global options."""
    settings: Settings = ctx.find_root().obj
    return settings


def _debugging(args: Sequence[str]) -> bool:
    """``--debug`` among the arguments, or ``ECEPHYS_DL_DEBUG`` set to a true value (as click reads flags)."""
    value = os.environ.get(ENV["debug"], "").strip().lower()
    return "--debug" in args or value in ("1", "true", "t", "yes", "y", "on")


def _show_error(error: EcephysDlError) -> None:
    click.echo(f"error: {error.message}", err=True)
    if error.hint:
        click.echo(f"  hint: {error.hint}", err=True)


def main(argv: list[str] | None = None) -> NoReturn:
    """Run the command line and exit with the documented exit code."""
    args = sys.argv[1:] if argv is None else argv
    try:
        cli.main(args=args, prog_name="ecephys-dl", standalone_mode=False)
    except (click.exceptions.Abort, KeyboardInterrupt):
        click.echo("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(ExitCode.USAGE if error.exit_code == 2 else error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except EcephysDlError as error:
        if _debugging(args):
            raise
        _show_error(error)
        sys.exit(error.exit_code)
    except BrokenPipeError:
        quiet_broken_pipe()
    except Exception as error:  # a bug: say so in one line, never a bare traceback
        if _debugging(args):
            raise
        click.echo(f"internal error: {type(error).__name__}: {error}", err=True)
        click.echo("  hint: run again with --debug (or ECEPHYS_DL_DEBUG=1) for the traceback, and report it", err=True)
        sys.exit(ExitCode.FAILED)
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_broken_pipe()
    sys.exit(ExitCode.OK)


def quiet_broken_pipe() -> NoReturn:
    """`ecephys-dl units | head`: the reader went away, which is not an error.

    Point stdout at /dev/null so the interpreter's final flush does not fail again.
    """
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    sys.exit(ExitCode.OK)
