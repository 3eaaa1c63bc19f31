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


def _import_config(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    code = (
        "from syncqueue_tasks.celery import config\n"
        "from syncqueue_tasks.settings import get_settings\n"
        "print(config.task_default_queue, get_settings().redis.prefix, config.broker_url,\n"
        "      config.beat_schedule_filename)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={"PYTHONPATH": str(ROOT), "PATH": "", **env},
        capture_output=True,
        text=True,
    )


def test_celery_and_the_package_read_a_shared_variable_alike(tmp_path: Path) -> None:
    run = _import_config(
        tmp_path,
        CELERY_QUEUE=" q1 ",
        CELERY_BROKER_URL="redis://h:1/2",
        SYNCQUEUE_DATA_DIR="/srv/sq",
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["q1", "q1", "redis://h:1/2", "/srv/sq/celerybeat-schedule"]


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("SYNCQUEUE_PROCESS_BATCH_EVERY", "soon", "must be a number, got 'soon'"),
        ("SYNCQUEUE_BATCH_TIME_LIMIT", "0", "must be between 1.0 and 86400.0, got 0.0"),
        ("CELERY_SEND_SENT_EVENT", "maybe", "must be one of true, 1, yes, on, false, 0, no, off"),
        ("SYNCQUEUE_CLEANUP_CRON", "0 3 *", "must be five cron fields"),
    ],
)
def test_a_bad_celery_variable_stops_the_import_naming_it(
    tmp_path: Path, name: str, raw: str, message: str
) -> None:
    run = _import_config(tmp_path, **{name: raw})
    assert run.returncode != 0
    last = run.stderr.strip().splitlines()[-1]
    assert last.startswith(f"syncqueue_tasks.core.errors.ConfigurationError: {name} {message}")
