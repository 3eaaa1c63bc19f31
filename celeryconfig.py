"""Every Celery setting of syncqueue-tasks, read from environment variables with safe defaults.

Loaded by ``syncqueue_tasks.celery_app`` with ``config_from_object("celeryconfig")``. Each
variable is listed in the README's configuration table.
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from celery.schedules import crontab


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    return float(raw) if raw else default


def _cron(expression: str) -> crontab:
    """``"minute hour day_of_month month day_of_week"`` -> ``crontab``."""
    minute, hour, day_of_month, month, day_of_week = expression.split()
    return crontab(minute, hour, day_of_week, day_of_month, month)


# --- broker: Redis, JSON only, no result backend (nothing reads task results) ---------------
broker_url = os.environ.get("CELERY_BROKER_URL", "") or "redis://localhost:6379/0"
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_backend = None
task_ignore_result = True
task_default_queue = os.environ.get("CELERY_QUEUE", "") or "syncqueue"
imports = ("syncqueue_tasks.tasks", "syncqueue_tasks.verify_task")
timezone = "UTC"
enable_utc = True

# --- time limits of process_batch (seconds); reset_stuck must wait longer than the hard one
PROCESS_BATCH_SOFT_TIME_LIMIT = _env_float("SYNCQUEUE_BATCH_SOFT_TIME_LIMIT", 120.0)
PROCESS_BATCH_TIME_LIMIT = _env_float("SYNCQUEUE_BATCH_TIME_LIMIT", 150.0)

# --- delivery: a task that must not be lost is acknowledged after it ran, and goes back to
# the queue when its worker dies. One message at a time per process: batches are long.
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_send_task_events = True  # for Flower
# A "task sent" event costs every .delay() a second Redis publish; Flower works without it.
task_send_sent_event = os.environ.get("CELERY_SEND_SENT_EVENT", "").strip().lower() in (
    "1",
    "true",
    "yes",
)

# --- publishing never hangs the caller: short socket timeouts, no publish retries; a change
# that cannot be published is written straight to PostgreSQL (see tasks.EnqueueTask).
BROKER_CONNECT_TIMEOUT = _env_float("CELERY_BROKER_CONNECT_TIMEOUT", 0.05)
task_publish_retry = False
broker_connection_timeout = BROKER_CONNECT_TIMEOUT
broker_connection_retry_on_startup = True
broker_transport_options = {
    # Longer than the hard time limit, or Redis redelivers a batch that is still running.
    "visibility_timeout": int(_env_float("CELERY_VISIBILITY_TIMEOUT", 3600)),
    "socket_connect_timeout": BROKER_CONNECT_TIMEOUT,
    "socket_timeout": _env_float("CELERY_BROKER_SOCKET_TIMEOUT", 5.0),
    "retry_on_timeout": False,
    "max_retries": 0,
}
broker_pool_limit = 10
# Malformed messages (wrong shape, not just bad arguments) are rejected and logged once,
# instead of stopping or wedging the worker: task messages by the consumer, and bytes that are
# not even a kombu envelope by the transport (kombu's Redis transport, guarded). Any other
# scheme, rediss:// included (kombu keys its TLS defaults on that name), keeps its own transport.
worker_consumer = "syncqueue_tasks.consumer:GuardedConsumer"
broker_transport = (
    "syncqueue_tasks.broker_guard:GuardedRedisTransport"
    if urlsplit(broker_url).scheme == "redis"
    else None
)

# --- beat: exactly one beat process per deployment -------------------------------------------
beat_schedule_filename = os.environ.get("CELERY_BEAT_SCHEDULE_FILE", "") or os.path.join(
    os.environ.get("SYNCQUEUE_DATA_DIR", "") or ".syncqueue", "celerybeat-schedule"
)
PROCESS_BATCH_EVERY = _env_float("SYNCQUEUE_PROCESS_BATCH_EVERY", 10.0)
RESET_STUCK_EVERY = _env_float("SYNCQUEUE_RESET_STUCK_EVERY", 300.0)
beat_schedule = {
    "process-batch": {
        "task": "syncqueue.process_batch",
        "schedule": PROCESS_BATCH_EVERY,
        # A tick nobody picked up before the next one is worthless: don't let them pile up.
        "options": {"expires": PROCESS_BATCH_EVERY},
    },
    "reset-stuck": {
        "task": "syncqueue.reset_stuck",
        "schedule": RESET_STUCK_EVERY,
        "kwargs": {"older_than_minutes": _env_float("SYNCQUEUE_STUCK_MINUTES", 10.0)},
        "options": {"expires": RESET_STUCK_EVERY},
    },
    "cleanup-completed": {
        "task": "syncqueue.cleanup_completed",
        "schedule": _cron(os.environ.get("SYNCQUEUE_CLEANUP_CRON", "") or "0 3 * * 0"),
        "kwargs": {"older_than_days": _env_float("SYNCQUEUE_CLEANUP_DAYS", 7.0)},
    },
}
# verify (and with SYNCQUEUE_VERIFY_REPAIR=true, repair) the destination every so many seconds
VERIFY_EVERY = _env_float("SYNCQUEUE_VERIFY_EVERY", 0.0)  # 0: off
if VERIFY_EVERY > 0:
    beat_schedule["verify"] = {
        "task": "syncqueue.verify",
        "schedule": VERIFY_EVERY,
        "kwargs": {
            "repair": os.environ.get("SYNCQUEUE_VERIFY_REPAIR", "").strip().lower()
            in ("1", "true", "yes")
        },
        "options": {"expires": VERIFY_EVERY},
    }
