"""The Celery app, configured from ``syncqueue_tasks.celery.config`` and nothing else.

Start a worker with ``celery -A syncqueue_tasks.celery_app worker`` and the one beat process
with ``celery -A syncqueue_tasks.celery_app beat``. To run the tasks on your own app instead,
see ``syncqueue_tasks.celery.setup.configure``.
"""

from celery import Celery

# No broker= here: it would silently win over the config module.
app = Celery("syncqueue")
app.config_from_object("syncqueue_tasks.celery.config")

# Import the broker's transport module now rather than inside the first .delay(): that call
# must return quickly even when it has to fall back to PostgreSQL.
# (Resolving the transport class imports its module; nothing connects.)
app.connection_for_write().get_transport_cls()
