"""How a running ``syncqueue run`` tells other commands where its database and broker are.

While it runs, the stack keeps two files in its data directory (``SYNCQUEUE_DATA_DIR``,
default ``./.syncqueue``):

- ``run.json``: its pid, the pids of the processes it started, and the environment it chose
  (``DATABASE_URL`` / ``CELERY_BROKER_URL`` of the embedded servers, the workbook path);
- ``env``: the same variables as ``KEY=value`` lines, for a shell
  (``set -a; . .syncqueue/env; set +a``) or a Python program using ``.delay()``.

Both are removed when the stack stops. Both hold passwords (the embedded Redis's, in its
URL, and a generated Flower login), so both are owner-only (mode 0600). Every other
``syncqueue`` command run with the same data directory (so: from the same folder) reads
``run.json`` if that pid is alive, and uses those variables unless they are already set in
its own environment.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from syncqueue_tasks.settings import DEFAULT_DATABASE_URL

DATA_DIR_ENV = "SYNCQUEUE_DATA_DIR"
DEFAULT_DATA_DIR = ".syncqueue"
STATE_FILE = "run.json"
ENV_FILE = "env"
CLI_ENV = "SYNCQUEUE_CLI"  # how the user calls the CLI; ./syncq sets it to itself


def data_dir() -> Path:
    """The stack's data directory: ``$SYNCQUEUE_DATA_DIR`` or ``./.syncqueue``, absolute."""
    return Path(os.environ.get(DATA_DIR_ENV, "").strip() or DEFAULT_DATA_DIR).absolute()


def cli_command() -> str:
    """The command that runs this CLI from the user's shell, for hints.

    ``$SYNCQUEUE_CLI`` (``./syncq`` sets it), else ``syncqueue`` when that is this
    installation's script on PATH, else that script's path (``.venv/bin/syncqueue``).
    """
    given = os.environ.get(CLI_ENV, "").strip()
    if given:
        return given
    script = Path(sys.executable).parent / "syncqueue"
    on_path = shutil.which("syncqueue")
    if not script.exists() or (on_path and Path(on_path).resolve() == script.resolve()):
        return "syncqueue"
    if script.absolute().is_relative_to(Path.cwd()):
        return str(script.absolute().relative_to(Path.cwd()))
    return str(script)


@dataclass
class RunState:
    """What a running stack publishes about itself."""

    pid: int
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, int] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    ready: bool = False


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def write(state: RunState, directory: Path) -> None:
    """Publish ``state`` (owner-only files, replaced atomically)."""
    _write_private(directory / STATE_FILE, json.dumps(asdict(state), indent=2) + "\n")
    lines = [
        f"# Written by `syncqueue run` (pid {state.pid}); removed when it stops.",
        "# Load into a shell with: set -a; . <this file>; set +a",
        *(f"{key}={shlex.quote(value)}" for key, value in sorted(state.env.items())),
    ]
    _write_private(directory / ENV_FILE, "\n".join(lines) + "\n")


def read_any(directory: Path) -> RunState | None:
    """The published state, whether or not its process still runs (None if unreadable)."""
    try:
        raw: dict[str, Any] = json.loads((directory / STATE_FILE).read_text())
        return RunState(
            pid=int(raw["pid"]),
            env={str(k): str(v) for k, v in raw.get("env", {}).items()},
            processes={str(k): int(v) for k, v in raw.get("processes", {}).items()},
            info={str(k): str(v) for k, v in raw.get("info", {}).items()},
            ready=bool(raw.get("ready", False)),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def read_live(directory: Path) -> RunState | None:
    """The published state of a stack that is still running, else None."""
    state = read_any(directory)
    return state if state is not None and pid_alive(state.pid) else None


def clear(directory: Path, pid: int) -> None:
    """Remove the files if they belong to ``pid``."""
    state = read_any(directory)
    if state is None or state.pid == pid:
        for name in (STATE_FILE, ENV_FILE):
            (directory / name).unlink(missing_ok=True)


def apply_env(directory: Path | None = None) -> dict[str, str]:
    """Set the running stack's variables that this environment lacks; return those set."""
    state = read_live(directory or data_dir())
    if state is None:
        return {}
    applied = {k: v for k, v in state.env.items() if not os.environ.get(k, "").strip()}
    os.environ.update(applied)
    return applied


def using_default_database() -> bool:
    """Whether commands fall back to the built-in default database.

    True when ``DATABASE_URL`` is unset after :func:`apply_env`: no running stack published
    one, and the user set none. That database may be anyone's: say so before touching it.
    """
    return not os.environ.get("DATABASE_URL", "").strip()


def default_database_note() -> str:
    """One line saying that no running stack was found and which database is used instead."""
    return (
        f"no running `syncqueue run` found (nothing live in {data_dir() / STATE_FILE}) and "
        f"DATABASE_URL is unset: using the default database {DEFAULT_DATABASE_URL}"
    )


def migrate_hint() -> str:
    """What to do about a database without the queue's tables."""
    cli = cli_command()
    if not using_default_database():
        return f"run `{cli} migrate`"
    return (
        f"this is the default database, not one you chose: start `{cli} run` (or set "
        f"DATABASE_URL); to use this one anyway: `{cli} migrate --yes`"
    )


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
