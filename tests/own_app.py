"""A user's own Celery app for tests/test_own_app.py: its own name and queue, the test run's
Redis broker, the package's tasks through ``include`` and ``configure``. Workers start it with
``celery -A own_app worker`` (tests/ is on their PYTHONPATH)."""

from __future__ import annotations

import os

from celery import Celery

from syncqueue_tasks.celery.setup import configure

#: Not the test run's CELERY_QUEUE (the package app's queue), but named after it, so the
#: test session's broker purge removes it too.
QUEUE = f"{os.environ['CELERY_QUEUE']}_own"

# Not the current app of the pytest process, which also runs the package's app in other
# tests; the test makes it current where it needs it. A worker makes it current itself.
app = Celery(
    "own_app",
    broker=os.environ["CELERY_BROKER_URL"],
    include=["syncqueue_tasks.celery.tasks"],
    set_as_current=False,
)
app.conf.task_ignore_result = True
configure(app, queue=QUEUE)
