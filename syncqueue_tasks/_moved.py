"""The package's former flat module paths, kept as aliases of where each module lives now.

``syncqueue_tasks.queue`` *is* ``syncqueue_tasks.store.queue`` (the same module object, so
patching or reading either is the same), ``python -m syncqueue_tasks.cli`` still runs the CLI,
and ``celery -A syncqueue_tasks.celery_app`` still finds the app. Installed by the package's
``__init__``, before anything else is imported.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType

#: former path (below ``syncqueue_tasks``) -> the module's path now
MOVED = {
    "ids": "core.ids",
    "errors": "core.errors",
    "models": "store.models",
    "outcomes": "core.outcomes",
    "records": "core.records",
    "validation": "core.validation",
    "sql": "store.sql",
    "db": "store.db",
    "schema": "store.schema",
    "queue": "store.queue",
    "synced": "store.synced",
    "verify_compare": "writers.verify_compare",
    "celery_app": "celery.app",
    "celery_config": "celery.config",
    "celery_setup": "celery.setup",
    "tasks": "celery.tasks",
    "publishing": "celery.publishing",
    "batch": "celery.batch",
    "consumer": "celery.consumer",
    "broker_guard": "celery.broker_guard",
    "invalid_messages": "celery.invalid_messages",
    "verify": "celery.verify",
    "verify_task": "celery.verify_task",
    "cli": "ops.cli",
    "verify_cli": "ops.verify_cli",
    "stack": "ops.stack",
    "doctor": "ops.doctor",
    "demo": "ops.demo",
    "metrics": "ops.metrics",
    "embedded": "local.embedded",
    "supervise": "local.supervise",
    "runstate": "local.runstate",
}
_PREFIX = "syncqueue_tasks."


class _AliasLoader(importlib.abc.Loader):
    """Hands out the module at its new path instead of making a second copy."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.target)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the module ran when it was imported at its new path."""

    def get_code(self, fullname: str) -> CodeType | None:
        """For ``python -m <former path>`` (runpy runs the new module's code as __main__)."""
        spec = importlib.util.find_spec(self.target)
        loader = spec.loader if spec else None
        if not isinstance(loader, importlib.abc.InspectLoader):
            return None
        return loader.get_code(self.target)


class _AliasFinder(importlib.abc.MetaPathFinder):
    """Finds ``syncqueue_tasks.<former>`` as an alias of the module's new path."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if not fullname.startswith(_PREFIX):
            return None
        new = MOVED.get(fullname.removeprefix(_PREFIX))
        if new is None:
            return None
        return importlib.util.spec_from_loader(fullname, _AliasLoader(_PREFIX + new))


def install() -> None:
    """Put the alias finder first on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AliasFinder())
