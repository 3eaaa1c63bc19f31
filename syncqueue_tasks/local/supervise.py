"""Child processes for ``syncqueue run``: each in its own session, logged to a file, stopped by pid.

Its own session means its own process group (id = its pid), so a Ctrl-C in the terminal
reaches only ``syncqueue run``, which then stops each child: SIGTERM to the child's pid (a
Celery worker's warm shutdown stops its pool), then SIGKILL to whatever is left in its
process group.

A :class:`Supervisor` restarts a child that exits, after an exponential backoff (see
:class:`RestartPolicy`), and gives up on one that never stays up.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from syncqueue_tasks.core.errors import SyncQueueError


class ChildError(SyncQueueError):
    """A child process did not start or became unready."""


def group_members(pgid: int) -> list[int]:
    """Pids of live (non-zombie) processes in process group ``pgid`` (Linux /proc)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class Child:
    """One command, started in its own session with its output appended to ``log_path``."""

    def __init__(
        self, name: str, args: Sequence[str], env: Mapping[str, str], log_path: Path
    ) -> None:
        self.name = name
        self.args = list(args)
        self.env = dict(env)
        self.log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_start = 0
        self.started_at = 0.0

    @property
    def pid(self) -> int | None:
        """The pid (also the process group id) once started."""
        return None if self._proc is None else self._proc.pid

    def alive(self) -> bool:
        """Whether the process is running."""
        return self._proc is not None and self._proc.poll() is None

    def returncode(self) -> int | None:
        """The exit code, once it exited."""
        return None if self._proc is None else self._proc.poll()

    def start(self) -> None:
        """Start the command (in the current directory)."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._log_start = log.tell()
            self.started_at = time.monotonic()
            self._proc = subprocess.Popen(
                self.args,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def log_text(self) -> str:
        """What the process wrote since this start."""
        try:
            with open(self.log_path, "rb") as log:
                log.seek(self._log_start)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def wait_until(
        self, ready: Callable[[], bool], timeout: float, interrupted: Callable[[], bool]
    ) -> None:
        """Wait for ``ready()``; raise ``ChildError`` if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if interrupted():
                return
            if not self.alive():
                raise ChildError(
                    f"{self.name} exited with code {self.returncode()}: {self._last_line()} "
                    f"(log: {self.log_path})"
                )
            if time.monotonic() > deadline:
                raise ChildError(
                    f"{self.name} not ready after {timeout:.0f}s (log: {self.log_path})"
                )
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM by pid, wait up to ``timeout``, then SIGKILL the rest of its group."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout)
        deadline = time.monotonic() + 5.0
        while group_members(proc.pid) and time.monotonic() < deadline:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            time.sleep(0.05)
        proc.wait()

    def _last_line(self) -> str:
        lines = [line for line in self.log_text().splitlines() if line.strip()]
        return lines[-1].strip()[:300] if lines else "no output"


@dataclass(frozen=True)
class RestartPolicy:
    """When a supervisor restarts a child that exited, and when it gives up on it.

    The n-th exit in a row is followed by a wait of ``first_delay * 2**(n-1)`` seconds, at
    most ``max_delay``. A child that stays up ``stable_after`` seconds counts as healthy: the
    row starts over, so one that crashes now and then is restarted for ever. A child that
    exits ``give_up_after`` times in a row, never staying up that long, cannot start at all
    (a bad setting, a missing module): it is given up on.
    """

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 60.0
    give_up_after: int = 6

    def delay(self, exits_in_a_row: int) -> float:
        """Seconds to wait before the restart that follows the ``exits_in_a_row``-th exit."""
        return min(self.max_delay, self.first_delay * 2.0 ** (exits_in_a_row - 1))


class _Watched:
    """A supervised child and its restart bookkeeping."""

    def __init__(self, child: Child) -> None:
        self.child = child
        self.exits_in_a_row = 0
        self.restart_at: float | None = None  # set while it waits for its restart


class Supervisor:
    """Restarts the children it adopted when they exit, with backoff, saying so each time."""

    def __init__(
        self,
        policy: RestartPolicy,
        echo: Callable[[str], None],
        on_start: Callable[[Child], None],
    ) -> None:
        self.policy = policy
        self.echo = echo
        self.on_start = on_start
        self._watched: list[_Watched] = []

    def adopt(self, child: Child) -> None:
        """Start ``child`` and watch it from now on."""
        child.start()
        self._watched.append(_Watched(child))
        self.on_start(child)

    def check(self) -> None:
        """Handle exits and due restarts; raise ``ChildError`` when giving up on a child."""
        now = time.monotonic()
        for watched in self._watched:
            child = watched.child
            if watched.restart_at is not None:
                if now >= watched.restart_at:
                    watched.restart_at = None
                    child.start()
                    self.echo(f"restarted {child.name} (pid {child.pid})")
                    self.on_start(child)
            elif not child.alive():
                self._exited(watched, now)

    def _exited(self, watched: _Watched, now: float) -> None:
        child, policy = watched.child, self.policy
        uptime = now - child.started_at
        watched.exits_in_a_row = 1 if uptime >= policy.stable_after else watched.exits_in_a_row + 1
        code, pid = child.returncode(), child.pid
        child.stop()  # reap it and whatever is left of its process group
        what = f"{child.name} (pid {pid}) exited with code {code} after {uptime:.1f}s"
        if watched.exits_in_a_row >= policy.give_up_after:
            raise ChildError(
                f"{what}: {watched.exits_in_a_row} exits in a row, none after staying up "
                f"{policy.stable_after:g}s; giving up on it (log: {child.log_path})"
            )
        delay = policy.delay(watched.exits_in_a_row)
        watched.restart_at = now + delay
        self.echo(
            f"{what}; restarting it in {delay:g}s "
            f"(exit {watched.exits_in_a_row} in a row; log: {child.log_path})"
        )
