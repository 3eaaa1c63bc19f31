"""Every Celery setting of syncqueue-tasks, read from environment variables with safe defaults.

Loaded by ``syncqueue_tasks.celery_app`` (``config_from_object``); the top-level module
``celeryconfig`` re-exports it. Each variable is listed in the README's configuration table.
The variables are parsed as ``settings`` parses its own (bounded; a bad value raises
``ConfigurationError`` naming the variable), and those both read (the broker, the queue's
name, the data folder) by ``settings``' own readers.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from celery.schedules import crontab

from syncqueue_tasks.core.errors import ConfigurationError
from syncqueue_tasks.settings import (
    broker_url_from_env,
    data_dir_from_env,
    env_bool,
    env_float,
    env_text,
    queue_name_from_env,
)

DAY = 86400.0


def _cron(name: str, default: str) -> crontab:
    """The variable ``name``, ``"minute hour day_of_month month day_of_week"``, as a
    ``crontab``; ``ConfigurationError`` naming it when it is not one."""
    expression = env_text(name, default)
    try:
        minute, hour, day_of_month, month, day_of_week = expression.split()
        return crontab(minute, hour, day_of_week, day_of_month, month)
    except ValueError:
        raise ConfigurationError(
            f"{name} must be five cron fields (minute hour day month weekday), got {expression!r}"
        ) from None


# --- broker: Redis or RabbitMQ, JSON only, no result backend (nothing reads task results) ---
broker_url = broker_url_from_env()
task_serializer = "json"
result_serializer = "json"
accept_content = ["json"]
result_backend = None
task_ignore_result = True
task_default_queue = queue_name_from_env()
imports = ("syncqueue_tasks.celery.tasks", "syncqueue_tasks.celery.verify_task")
timezone = "UTC"
enable_utc = True

# --- time limits of process_batch (seconds); reset_stuck must wait longer than the hard one
PROCESS_BATCH_SOFT_TIME_LIMIT = env_float("SYNCQUEUE_BATCH_SOFT_TIME_LIMIT", 120.0, 1.0, DAY)
PROCESS_BATCH_TIME_LIMIT = env_float("SYNCQUEUE_BATCH_TIME_LIMIT", 150.0, 1.0, DAY)

# --- delivery ---------------------------------------------------------------------------------
# The enqueue tasks (publishing.EnqueueTask, beside this module) acknowledge late, after the change
# is stored, and go back to the queue when their worker process dies: that is what keeps an
# accepted change. The other tasks need no redelivery (a lost process_batch is harmless: beat
# and the enqueue kicks issue it again, and reset_stuck returns a dead worker's claims), but
# they acknowledge late too: a running process_batch then holds its process's one prefetch
# slot, so no enqueue message waits in that worker behind a long batch; the broker keeps it
# for a free worker. One that runs past the visibility timeout is delivered again: a second,
# harmless run (claims are exclusive).
task_acks_late = True
task_reject_on_worker_lost = True
worker_prefetch_multiplier = 1
worker_send_task_events = True  # for Flower
# A "task sent" event costs every .delay() a second Redis publish; Flower works without it.
task_send_sent_event = env_bool("CELERY_SEND_SENT_EVENT", False)

# --- the worker side of an enqueue: database errors are retried in the task with backoff for
# up to ENQUEUE_RETRY_SECONDS, then the message goes back to the broker (never acknowledged
# unstored); each attempt's statements and lock waits are bounded by ENQUEUE_STATEMENT_TIMEOUT.
ENQUEUE_RETRY_SECONDS = env_float("SYNCQUEUE_ENQUEUE_RETRY_SECONDS", 30.0, 0.0, 3600.0)
ENQUEUE_STATEMENT_TIMEOUT = env_float("SYNCQUEUE_ENQUEUE_STATEMENT_TIMEOUT", 10.0, 0.01, 600.0)
# The longest an enqueue task runs: the retry window, then one last attempt (pool checkout
# 10 s + connect 5 s, see syncqueue_tasks/store/db.py, + its statement).
ENQUEUE_LONGEST_SECONDS = ENQUEUE_RETRY_SECONDS + 15.0 + ENQUEUE_STATEMENT_TIMEOUT

# --- publishing never hangs the caller: short socket timeouts, no publish retries; a change
# that cannot be published is written straight to PostgreSQL (see publishing.EnqueueTask).
BROKER_CONNECT_TIMEOUT = env_float("CELERY_BROKER_CONNECT_TIMEOUT", 0.05, 0.001, 60.0)
BROKER_SOCKET_TIMEOUT = env_float("CELERY_BROKER_SOCKET_TIMEOUT", 5.0, 0.01, 600.0)
task_publish_retry = False
broker_connection_timeout = BROKER_CONNECT_TIMEOUT
broker_connection_retry_on_startup = True
# A worker that lost the broker reconnects for as long as it takes (Celery's default gives up
# after 100 attempts and exits).
broker_connection_max_retries = None
broker_pool_limit = 10
# RabbitMQ: the default queue is durable and messages persistent (Celery's defaults); every
# publish waits for the broker's confirm, so .delay() returns only once RabbitMQ has the
# message; reads and writes are bounded, so a blocked broker cannot hang a caller.
AMQP_TRANSPORT_OPTIONS: dict[str, object] = {
    "confirm_publish": True,
    "read_timeout": BROKER_SOCKET_TIMEOUT,
    "write_timeout": BROKER_SOCKET_TIMEOUT,
}
REDIS_TRANSPORT_OPTIONS: dict[str, object] = {
    # Redis redelivers a message left unacknowledged this long (its worker died, or lost the
    # connection). Above the longest enqueue task, so a live one is not delivered twice; if
    # one is anyway (a task slower than this), storing it again is a no-op.
    "visibility_timeout": int(env_float("CELERY_VISIBILITY_TIMEOUT", 120, 1, 7 * DAY)),
    # How often each worker looks for such messages (every interval * throttle seconds).
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 2,
    # One list per queue, so the guarded transport takes messages with BLMOVE (see
    # syncqueue_tasks/celery/broker_guard.py: no message lost between the pop and the unacked hash).
    "priority_steps": [0],
    "socket_connect_timeout": BROKER_CONNECT_TIMEOUT,
    "socket_timeout": BROKER_SOCKET_TIMEOUT,
    "retry_on_timeout": False,
    "max_retries": 0,
}
AMQP_SCHEMES = ("amqp", "pyamqp", "amqps")
# Malformed messages (wrong shape, not just bad arguments) are rejected and logged once,
# instead of stopping or wedging the worker: task messages by the consumer, and bytes that are
# not even a kombu envelope by the transport (kombu's Redis transport, guarded, which also
# keeps a worker alive through a Redis restart). Any other scheme, rediss:// included (kombu
# keys its TLS defaults on that name), keeps its own transport.
GUARDED_CONSUMER = "syncqueue_tasks.celery.consumer:GuardedConsumer"
GUARDED_REDIS_TRANSPORT = "syncqueue_tasks.celery.broker_guard:GuardedRedisTransport"


def transport_options(scheme: str) -> dict[str, object]:
    """The broker transport options for a broker URL scheme (a copy)."""
    return dict(AMQP_TRANSPORT_OPTIONS if scheme in AMQP_SCHEMES else REDIS_TRANSPORT_OPTIONS)


def transport(scheme: str) -> str | None:
    """The guarded transport for ``redis://``; None (kombu's own) for any other scheme."""
    return GUARDED_REDIS_TRANSPORT if scheme == "redis" else None


BROKER_SCHEME = urlsplit(broker_url).scheme
broker_transport_options = transport_options(BROKER_SCHEME)
worker_consumer = GUARDED_CONSUMER
broker_transport = transport(BROKER_SCHEME)

# --- beat: exactly one beat process per deployment -------------------------------------------
beat_schedule_filename = env_text("CELERY_BEAT_SCHEDULE_FILE") or str(
    data_dir_from_env() / "celerybeat-schedule"
)
PROCESS_BATCH_EVERY = env_float("SYNCQUEUE_PROCESS_BATCH_EVERY", 10.0, 0.1, DAY)
RESET_STUCK_EVERY = env_float("SYNCQUEUE_RESET_STUCK_EVERY", 300.0, 1.0, DAY)
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
        "kwargs": {"older_than_minutes": env_float("SYNCQUEUE_STUCK_MINUTES", 10.0, 0.0, 7 * 1440)},
        "options": {"expires": RESET_STUCK_EVERY},
    },
    "cleanup-completed": {
        "task": "syncqueue.cleanup_completed",
        "schedule": _cron("SYNCQUEUE_CLEANUP_CRON", "0 3 * * 0"),
        "kwargs": {"older_than_days": env_float("SYNCQUEUE_CLEANUP_DAYS", 7.0, 0.0, 3650.0)},
    },
}
# verify (and with SYNCQUEUE_VERIFY_REPAIR=true, repair) the destination every so many seconds
VERIFY_EVERY = env_float("SYNCQUEUE_VERIFY_EVERY", 0.0, 0.0, 7 * DAY)  # 0: off
if VERIFY_EVERY > 0:
    beat_schedule["verify"] = {
        "task": "syncqueue.verify",
        "schedule": VERIFY_EVERY,
        "kwargs": {"repair": env_bool("SYNCQUEUE_VERIFY_REPAIR", False)},
        "options": {"expires": VERIFY_EVERY},
    }
