"""Celery settings of the package's own app, re-exported from ``syncqueue_tasks.celery.config``.

The values live inside the package, so that a project with a ``celeryconfig`` module of its own
(as Celery's documentation suggests) does not shadow them. This module stays for existing
``config_from_object("celeryconfig")`` calls and imports.
"""

from syncqueue_tasks.celery.config import *  # noqa: F403
