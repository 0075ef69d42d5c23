"""The command line's entry points, version and help."""

from __future__ import annotations

import subprocess
import sys

from click.testing import CliRunner

from ecephys_dl import __version__
from ecephys_dl.cli import cli


def test_version_and_help_through_click() -> None:
    """--version prints the version; -h and --help print usage, examples and the exit codes."""
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip() == f"ecephys-dl, version {__version__}"
    for flag in ("-h", "--help"):
        result = runner.invoke(cli, [flag])
        assert result.exit_code == 0
        assert "Examples:" in result.output
        assert "Exit codes:" in result.output
        assert "5    source unreachable" in result.output


def test_python_dash_m_runs_the_same_command() -> None:
    """`python -m ecephys_dl --version` works and exits 0."""
    done = subprocess.run([sys.executable, "-m", "ecephys_dl", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert __version__ in done.stdout


def test_unknown_option_is_a_usage_error() -> None:
    """A bad option exits 2 with the message on stderr and nothing on stdout."""
    done = subprocess.run([sys.executable, "-m", "ecephys_dl", "--no-such-option"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "no-such-option" in done.stderr
    assert done.stdout == ""
