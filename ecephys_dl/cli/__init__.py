"""The ``ecephys-dl`` command line: the only package that imports click.

It parses arguments, calls the core, and renders what the core returns; errors become messages
and exit codes in one place (:func:`ecephys_dl.cli.app.main`). Heavy modules (pandas, h5py, rich,
httpx) are imported inside the commands, so ``--help`` and completion stay fast. One module per
group of commands: :mod:`~ecephys_dl.cli.tables` (sessions, probes, channels, units, metrics),
:mod:`~ecephys_dl.cli.fetching` (fetch, links), :mod:`~ecephys_dl.cli.checking` (status,
verify) and :mod:`~ecephys_dl.cli.tools` (completion, selftest).
"""

from __future__ import annotations

from ecephys_dl.cli import checking, fetching, tables, tools, truth  # noqa: F401  (each registers its commands)
from ecephys_dl.cli.app import cli, main
from ecephys_dl.cli.tools import completion_script

__all__ = ["cli", "completion_script", "main"]
