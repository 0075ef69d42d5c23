"""The ``ecephys-dl`` command line: the only module that imports click.

It parses arguments, calls the core, and turns :class:`~ecephys_dl.errors.EcephysDlError` into a
message on stderr and the exit code the error carries, in one place (:func:`main`).
"""

from __future__ import annotations

import sys

import click

from ecephys_dl import __version__
from ecephys_dl.errors import EcephysDlError, ExitCode

__all__ = ["cli", "main"]

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"], "max_content_width": 100}

EXIT_CODES_HELP = """\b
Exit codes:
  0    everything asked for is done
  1    something failed (files, checks, a server answer)
  2    usage error (bad option, unknown id)
  3    another run holds the cache lock
  4    not enough free disk space
  5    source unreachable (temporary: try again later)
  130  interrupted (Ctrl-C); 143 terminated (SIGTERM)
"""


@click.group(context_settings=CONTEXT_SETTINGS, epilog=EXIT_CODES_HELP)
@click.version_option(__version__, "-V", "--version", prog_name="ecephys-dl")
@click.option("--debug", is_flag=True, envvar="ECEPHYS_DL_DEBUG", help="Show tracebacks on errors.  [env: ECEPHYS_DL_DEBUG]")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Download the Allen Visual Coding - Neuropixels dataset into an AllenSDK-compatible cache.

    \b
    Examples:
      ecephys-dl --version
      python -m ecephys_dl.replica serve --data DIR   # a local stand-in for the Allen services
    """
    ctx.obj = {"debug": debug}


def main(argv: list[str] | None = None) -> None:
    """Run the command line and exit with the documented exit code."""
    try:
        cli.main(args=argv, prog_name="ecephys-dl", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(ExitCode.INTERRUPTED)
    except click.ClickException as error:
        error.show()
        sys.exit(ExitCode.USAGE if error.exit_code == 2 else error.exit_code)
    except click.exceptions.Exit as done:
        sys.exit(done.exit_code)
    except EcephysDlError as error:
        if "--debug" in (argv if argv is not None else sys.argv):
            raise
        click.echo(f"error: {error}", err=True)
        sys.exit(error.exit_code)
    sys.exit(ExitCode.OK)
