"""A project with a ``celeryconfig`` module of its own does not shadow the package's settings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from processes import ROOT

pytestmark = pytest.mark.unit

PROBE = """
from celery import Celery
from syncqueue_tasks.celery import setup as celery_setup, tasks
from syncqueue_tasks.celery.app import app as package_app

own = Celery("project")
own.config_from_object("celeryconfig")  # the project's own module
celery_setup.configure(own)
assert own.conf.broker_url == "memory://project", own.conf.broker_url
assert own.conf.worker_consumer.endswith(":GuardedConsumer"), own.conf.worker_consumer
assert "process-batch" in own.conf.beat_schedule, own.conf.beat_schedule
assert package_app.conf.task_default_queue == "syncqueue_probe", package_app.conf.task_default_queue
assert tasks.enqueue_change.name == "syncqueue.enqueue_change"
print("ok")
"""


def test_the_package_reads_its_own_settings_beside_a_projects_celeryconfig(tmp_path: Path) -> None:
    (tmp_path / "celeryconfig.py").write_text('broker_url = "memory://project"\n')
    env = {"PYTHONPATH": f"{tmp_path}:{ROOT}", "CELERY_QUEUE": "syncqueue_probe", "PATH": ""}
    run = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"
