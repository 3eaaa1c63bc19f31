"""The soak (``bench/soak.py``) in a short form, in broker mode on Redis, so CI guards it.

About two minutes of production at 150 changes/s with a fault every 9 seconds, in turn: a
worker's process group SIGKILLed, Redis restarted (persistent, down 3 s), PostgreSQL restarted
(fast, then immediate): at least two of each. Then the exact accounting: nothing lost, no
change in two writes at once, every record's final write its last change, no worker that
exited on its own. The visibility timeout is 30 s here (120 s by default), so what a killed
worker held comes back within the run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from processes import ROOT, child_env

pytestmark = pytest.mark.system


@pytest.mark.slow
@pytest.mark.timeout(480)
def test_short_soak_in_broker_mode_on_redis_loses_nothing(tmp_path: Path) -> None:
    report_path = tmp_path / "soak.json"
    args = ["--changes", "10500", "--records", "300", "--fault-every", "9", "--seed", "16"]
    args += ["--max-minutes", "5", "--workdir", str(tmp_path / "run"), "--json", str(report_path)]
    env = child_env({"SYNCQUEUE_ENQUEUE_MODE": "broker", "CELERY_VISIBILITY_TIMEOUT": "30"})
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "soak.py"), *args],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert report_path.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    summary = {k: v for k, v in report.items() if k not in ("faults", "examples")}
    kinds = Counter(fault["kind"] for fault in report["faults"])
    assert all(kinds[k] >= 2 for k in ("kill-worker", "restart-redis", "restart-postgres")), kinds
    assert report["changes_accepted"] == 10500, summary
    assert report["lost"] == 0, report["examples"]["lost"]
    overlaps = report.get("records_in_two_writes_at_once", report.get("duplicates_in_flight"))
    assert overlaps == 0, report["examples"]["overlaps"]
    assert report["records_with_stale_final_write"] == 0, report["examples"]["stale_final"]
    assert report["workers_exited_on_their_own"] == [], summary
    assert done.returncode == 0, done.stdout[-3000:]
