"""Run syncqueue-tasks on your own Celery app: ``configure(app)``.

The tasks (``syncqueue_tasks.celery.tasks``, ``syncqueue_tasks.celery.verify_task``) are shared
tasks: every Celery app of the process gets them, and ``enqueue_change.delay(...)`` publishes
through the current app, yours. ``configure`` gives your app what the package's reliability
needs, with the values ``celery_config`` (the package's own app) uses, where your app kept
Celery's default:

- ``include``: the two task modules, so your workers register the tasks;
- ``worker_consumer``: ``syncqueue_tasks.celery.consumer:GuardedConsumer`` (malformed messages are
  rejected, not fatal);
- for a ``redis://`` broker, ``broker_transport``:
  ``syncqueue_tasks.celery.broker_guard:GuardedRedisTransport``;
- ``broker_transport_options``: ``celery_config``'s for your broker's scheme (Redis: visibility
  timeout, one list per queue, short socket timeouts; RabbitMQ: publisher confirms, bounded
  reads and writes), each one you did not set yourself;
- ``worker_prefetch_multiplier`` 1, ``broker_connection_timeout`` (``CELERY_BROKER_CONNECT_
  TIMEOUT``), ``broker_connection_max_retries`` None (a worker reconnects for as long as it
  takes), ``broker_connection_retry_on_startup`` True;
- with ``queue=``: ``task_routes`` sends every ``syncqueue.*`` task to that queue (your own
  routes come first);
- with ``schedule=True`` (default): ``beat_schedule`` gets the package's entries
  (``process-batch``, ``reset-stuck``, ``cleanup-completed``, and ``verify`` when
  ``SYNCQUEUE_VERIFY_EVERY`` is set), except those whose names your schedule already has.

``acks_late``, ``reject_on_worker_lost`` and ``process_batch``'s time limits are options of the
tasks themselves: they hold on any app, whatever its ``task_acks_late``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import urlsplit

from celery import Celery, _state, shared_task
from celery.app.defaults import DEFAULTS

from syncqueue_tasks.celery import config as celery_config

#: The modules that declare the package's tasks.
TASK_MODULES = ("syncqueue_tasks.celery.tasks", "syncqueue_tasks.celery.verify_task")


def configure(app: Celery, *, queue: str | None = None, schedule: bool = True) -> None:
    """Give ``app`` the settings the package's tasks rely on (see the module's docstring);
    settings you changed from Celery's defaults are kept."""
    conf = app.conf
    scheme = urlsplit(str(conf.broker_url or "")).scheme
    defaults: dict[str, Any] = {
        "worker_consumer": celery_config.GUARDED_CONSUMER,
        "broker_transport": celery_config.transport(scheme),
        "worker_prefetch_multiplier": celery_config.worker_prefetch_multiplier,
        "broker_connection_timeout": celery_config.broker_connection_timeout,
        "broker_connection_max_retries": celery_config.broker_connection_max_retries,
        "broker_connection_retry_on_startup": True,
    }
    for name, value in defaults.items():
        if conf[name] == DEFAULTS[name]:
            conf[name] = value
    conf.broker_transport_options = {
        **celery_config.transport_options(scheme),
        **conf.broker_transport_options,
    }
    conf.include = (*conf.include, *(m for m in TASK_MODULES if m not in conf.include))
    if queue is not None:
        conf.task_routes = (*_routers(conf.task_routes), {"syncqueue.*": {"queue": queue}})
    if schedule:
        conf.beat_schedule = {**celery_config.beat_schedule, **conf.beat_schedule}
    for module in TASK_MODULES:
        importlib.import_module(module)  # registers the shared tasks on every app


def _routers(routes: Any) -> tuple[Any, ...]:
    """``task_routes`` as a tuple of routers (Celery accepts one, a list, or None)."""
    if routes is None:
        return ()
    return tuple(routes) if isinstance(routes, list | tuple) else (routes,)


def syncqueue_task(name: str, **options: Any) -> Callable[[Callable[..., Any]], Any]:
    """``shared_task`` named ``name`` with ``options``, acknowledged late and redelivered when
    its worker process dies, on any app (what ``celery_config`` sets for the package's app)."""
    decorator = shared_task(name=name, acks_late=True, reject_on_worker_lost=True, **options)
    return cast(Callable[[Callable[..., Any]], Any], decorator)


def use_package_app_unless_own() -> None:
    """Standalone use: a process that made no Celery app of its own (``.delay()`` from a
    script, the ``syncqueue`` CLI) publishes through ``syncqueue_tasks.celery_app.app``, in
    every thread, as before the tasks were shared. Celery's fallback app does not count."""
    fallback = _state.default_app
    if fallback is not None and (fallback.main != "default" or fallback.set_as_current):
        fallback = None  # an app set as the default (app.set_default()): someone's own
    if any(a is not fallback for a in _state._get_active_apps()):
        return
    from syncqueue_tasks.celery.app import app

    app.set_default()
