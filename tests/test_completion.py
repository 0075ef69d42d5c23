"""Shell completion: generated from the code, committed, sourced, and answering from the cache."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ecephys_dl.cli import completion_script

ROOT = Path(__file__).parent.parent
FILES = {"bash": "ecephys-dl.bash", "zsh": "_ecephys-dl", "fish": "ecephys-dl.fish"}


@pytest.mark.parametrize("shell", list(FILES))
def test_committed_completions_are_what_the_code_generates(shell: str) -> None:
    """completions/ holds exactly `ecephys-dl completion SHELL` (regenerate with `make completions`)."""
    assert (ROOT / "completions" / FILES[shell]).read_text() == completion_script(shell)


def test_bash_completion_sources_and_registers() -> None:
    """Sourcing the bash script registers a completion function for ecephys-dl."""
    script = f"source {ROOT / 'completions' / FILES['bash']} && complete -p ecephys-dl"
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert "_ecephys_dl_completion" in done.stdout


def _complete(words: str, cword: int, env: dict[str, str]) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "ecephys_dl"],
        env={**env, "COMP_WORDS": words, "COMP_CWORD": str(cword), "_ECEPHYS_DL_COMPLETE": "bash_complete"},
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    # bash_complete answers one "type,value" per line.
    return [line.split(",", 1)[1] for line in done.stdout.splitlines() if "," in line]


def test_commands_and_session_ids_complete(tmp_path: Path) -> None:
    """TAB offers the commands, and session ids from the cached session table."""
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "sessions.csv").write_text("id,session_type,sex,genotype\n715093703,brain_observatory_1.1,M,Sst\n719161530,x,M,wt\n756029989,x,F,wt\n")
    env = {**os.environ, "ECEPHYS_DL_CACHE_DIR": str(cache)}
    commands = _complete("ecephys-dl ", 1, env)
    for name in ("sessions", "fetch", "verify", "status", "links", "completion"):
        assert name in commands
    started = time.perf_counter()
    ids = _complete("ecephys-dl fetch 71", 2, env)
    elapsed = time.perf_counter() - started
    assert ids == ["715093703", "719161530"]
    print(f"completion answered in {elapsed * 1000:.0f} ms")
