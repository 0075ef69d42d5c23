"""Commands about the tool itself: shell completion scripts and the self-test."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ecephys_dl.cli.app import CONTEXT_SETTINGS, cli
from ecephys_dl.errors import ExitCode

if TYPE_CHECKING:
    from ecephys_dl.selftest import StepResult

__all__ = ["SHELLS", "completion", "completion_script", "selftest"]

SHELLS = ("bash", "zsh", "fish")


def completion_script(shell: str) -> str:
    """The completion script click generates for ``shell`` (what `completion` prints)."""
    from click.shell_completion import get_completion_class

    completion_class = get_completion_class(shell)
    if completion_class is None:
        raise click.BadParameter(f"no completion for {shell}")
    return completion_class(cli, {}, "ecephys-dl", "_ECEPHYS_DL_COMPLETE").source()


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for bash, zsh or fish.

    Completing a session id offers the ids of the cached session table.

    \b
    Examples:
      ecephys-dl completion bash > ~/.local/share/bash-completion/completions/ecephys-dl
      ecephys-dl completion zsh > "${fpath[1]}/_ecephys-dl"
      ecephys-dl completion fish > ~/.config/fish/completions/ecephys-dl.fish
    """
    sys.stdout.write(completion_script(shell))


@cli.command(context_settings=CONTEXT_SETTINGS)
@click.option("--keep", "keep", type=click.Path(file_okay=False, path_type=Path), help="Work in this directory and keep it (default: a temporary one).")
def selftest(keep: Path | None) -> None:
    """Check this machine end to end against a built-in replica of the Allen services.

    Makes a small dataset, serves it on 127.0.0.1, then lists sessions, fetches two sessions
    with LFP, verifies them deeply, and kills a transfer with SIGKILL and resumes it. Prints
    pass or fail per step; exit 0 when all pass. Touches neither the real services nor your cache.

    \b
    Examples:
      ecephys-dl selftest
      ecephys-dl selftest --keep /tmp/ecephys-dl-selftest
    """
    from ecephys_dl.selftest import run_selftest

    def show(result: StepResult) -> None:
        mark = "pass" if result.ok else "FAIL"
        click.echo(f"{mark}  {result.name:<40} {result.seconds:6.1f} s  {result.detail}")

    results = run_selftest(workdir=keep, report=show)
    failed = [r for r in results if not r.ok]
    click.echo(f"{len(results) - len(failed)} passed, {len(failed)} failed")
    if failed:
        sys.exit(ExitCode.FAILED)
