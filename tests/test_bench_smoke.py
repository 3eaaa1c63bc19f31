"""bench/peers.py keeps running: its --quick path, at tiny sizes, against the test server.

Times are not asserted (they depend on the machine). What is: the script exits 0, and every
contender that ran enqueued and drained exactly what the script gave it (the script's own
checks make it exit non-zero otherwise; the JSON says it once more). plain SQL and
syncqueue-tasks always run; pgqueuer and procrastinate run where the ``bench`` extra is
installed, and are reported as not installed otherwise.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
QUICK_TINY = ["--quick", "--scale", "0.02", "--reps", "1"]
ROWS = {"each", "delay", "batched", "drain1", "drain4", "history0", "history", "hot0", "hot"}
PEERS = {"pgqueuer": ("pgqueuer", "asyncpg"), "procrastinate": ("procrastinate",)}


def run_quick(tmp_path: Path) -> dict[str, Any]:
    out = tmp_path / "peers.json"
    done = subprocess.run(
        [sys.executable, "bench/peers.py", *QUICK_TINY, "--json", out],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def test_quick_run_drains_exactly_what_each_contender_enqueued(tmp_path: Path) -> None:
    rows = {r["key"]: r["cells"] for r in run_quick(tmp_path)["rows"]}
    expected = {"plain", "ours"} | {
        name
        for name, modules in PEERS.items()
        if all(importlib.util.find_spec(m) is not None for m in modules)
    }
    assert set(rows) == ROWS
    for key in ("each", "batched", "drain1", "drain4"):
        ran = {name for name, cell in rows[key].items() if isinstance(cell, dict)}
        assert ran == expected, key
        for name in ran:
            checks = rows[key][name]["checks"]
            assert checks["enqueued"] > 0, (key, name, checks)
            if key.startswith("drain"):
                assert checks["handled"] == checks["completed"] == checks["enqueued"], (key, name)
                assert checks["left"] == 0, (key, name, checks)
            else:
                assert checks["left"] == checks["enqueued"], (key, name, checks)
                assert len(rows[key][name]["samples"]) == 1, (key, name)
    for name in PEERS:
        if name not in expected:
            assert "not installed" in rows["each"][name]
    delay = rows["delay"]["ours"]["checks"]
    assert delay["left"] == delay["enqueued"] > 0
    for key in ("history0", "history", "hot0", "hot"):
        assert rows[key]["ours"]["samples"], key  # ours measured its claims


def test_profile_counts_round_trips_of_one_enqueue() -> None:
    done = subprocess.run(
        [sys.executable, "bench/peers.py", "--profile", "--profile-n", "20"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sections = done.stdout.split("\n\n")[1:]
    trips = {s.splitlines()[0]: s.split("round trips ")[1].split(",")[0] for s in sections}
    assert trips["plain SQL INSERT (autocommit)"] == "1"  # one autocommit INSERT: one turn
    assert float(trips["syncqueue-tasks queue.enqueue"]) >= 1  # ours was traced too
