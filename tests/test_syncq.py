"""``./syncq``: it says what it does while it installs, and passes other verbs to the CLI.

The real script runs as a process. Only the Python it installs with is a stand-in (a shell
script given as ``PYTHON``): a real install downloads packages and takes minutes. The stand-in
makes a "virtual environment" whose ``python`` records its arguments (and, run as pytest, the
service URLs it was given) and whose ``syncqueue`` prints what it was called with, from where,
and with which of syncq's variables.
"""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest
from processes import ROOT

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

SYNCQ = ROOT / "syncq"

_FAKE_PYTHON = """#!/usr/bin/env bash
# Stand-in python: `-m venv DIR` makes DIR/bin/{python,syncqueue}; anything else is recorded.
if [ "$1 $2" = "-m venv" ]; then
  mkdir -p "$3/bin"
  cp "$0" "$3/bin/python"
  cat > "$3/bin/syncqueue" <<'EOF'
#!/usr/bin/env bash
echo "args=$*"
echo "cwd=$(pwd)"
echo "data=$SYNCQUEUE_DATA_DIR"
echo "cli=$SYNCQUEUE_CLI"
EOF
  chmod +x "$3/bin/python" "$3/bin/syncqueue"
  exit 0
fi
if [ "$1 $2" = "-m pytest" ]; then
  echo "${DATABASE_URL:-} ${SYNCQUEUE_TEST_REDIS_URL:-}" >> "$(dirname "$0")/../pytest.env"
fi
echo "python $*" >> "$(dirname "$0")/../python.log"
"""


def _syncq(
    args: list[str], cwd: Path, venv: Path, fake_python: Path, **env: str
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("SYNCQUEUE_DATA_DIR", "SYNCQUEUE_CLI")}
    return subprocess.run(
        [str(SYNCQ), *args], cwd=cwd, capture_output=True, text=True, timeout=30,
        env={**base, "SYNCQUEUE_VENV": str(venv), "PYTHON": str(fake_python), **env},
    )  # fmt: skip


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "python3"
    path.write_text(_FAKE_PYTHON)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_first_use_says_each_step_then_passes_the_command_through(
    tmp_path: Path, fake_python: Path
) -> None:
    venv, elsewhere = tmp_path / "venv", tmp_path / "elsewhere"
    elsewhere.mkdir()
    first = _syncq(["stats", "--json"], elsewhere, venv, fake_python)
    assert first.returncode == 0, first.stderr
    assert first.stderr.splitlines() == [
        f"syncq: creating the environment in {venv} ({fake_python} -m venv)",
        f"syncq: installing syncqueue-tasks and its dependencies into {venv} "
        "(the first time: a few minutes)",
        "syncq: installed",
    ]
    assert (venv / "python.log").read_text().splitlines() == [
        "python -m pip install --quiet --upgrade pip",
        "python -m pip install --quiet -e .[dev]",
    ]
    # The CLI runs in the caller's folder (so @file paths work), against this checkout's stack.
    assert first.stdout.splitlines() == [
        "args=stats --json",
        f"cwd={elsewhere}",
        f"data={ROOT}/.syncqueue",
        f"cli={SYNCQ}",
    ]

    again = _syncq(["enqueue", "CREATE", "Request", "42"], elsewhere, venv, fake_python,
                   SYNCQUEUE_DATA_DIR="mine")  # fmt: skip
    assert again.returncode == 0 and again.stderr == ""  # installed: nothing to say
    assert "args=enqueue CREATE Request 42" in again.stdout
    assert f"data={elsewhere}/mine" in again.stdout  # relative: from the caller's folder


def test_without_a_verb_it_shows_usage(tmp_path: Path, fake_python: Path) -> None:
    bare = _syncq([], tmp_path, tmp_path / "venv", fake_python)
    assert bare.returncode == 2 and "usage:" in bare.stderr and "COMMAND" in bare.stderr
    assert not (tmp_path / "venv").exists()  # usage installs nothing
    assert _syncq(["--help"], tmp_path, tmp_path / "venv", fake_python).returncode == 0


def test_test_runs_a_tier_or_everything_and_passes_pytest_arguments_through(
    tmp_path: Path, fake_python: Path
) -> None:
    venv = tmp_path / "venv"
    log, seen = venv / "python.log", 0

    def run(*args: str) -> list[str]:
        """The stand-in python's calls made by ``./syncq test ARGS``."""
        nonlocal seen
        result = _syncq(["test", *args], tmp_path, venv, fake_python)
        assert result.returncode == 0, result.stderr
        calls = log.read_text().splitlines()[seen:]
        seen += len(calls)
        return [c for c in calls if "pip install" not in c]

    # The unit tier asks no service and points the tests at a closed port instead.
    assert run("unit", "-k", "fold") == ["python -m pytest -m unit -k fold"]
    closed = "127.0.0.1:1"
    assert (venv / "pytest.env").read_text() == (
        f"postgresql://postgres@{closed}/x redis://{closed}/0\n"
    )
    # Other tiers, a test file or no argument at all: PostgreSQL and Redis are checked first.
    for args, pytest_call in [
        (["integration"], "python -m pytest -m integration"),
        (["system", "-x"], "python -m pytest -m system -x"),
        (["tests/test_x.py"], "python -m pytest tests/test_x.py"),
        ([], "python -m pytest"),
    ]:
        *checks, last = run(*args)
        assert last == pytest_call
        assert [c.split(";")[0] for c in checks] == [
            "python -c import psycopg,sys",
            "python -c import redis,sys",
        ]
