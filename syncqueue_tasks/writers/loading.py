"""Choose the writer from ``SYNCQUEUE_WRITER`` (``package.module:factory``), once per process.

Unset: Google Sheets when a spreadsheet id and a credentials file are configured, otherwise
the local workbook, so the pipeline runs on a machine with nothing set up. A factory takes no
argument, or one: the ``WriterContext`` its caller (the worker, the CLI) passes in.
"""

from __future__ import annotations

import importlib
import inspect
import os
import threading
from collections.abc import Callable

from syncqueue_tasks.core.errors import ConfigurationError
from syncqueue_tasks.settings import Settings
from syncqueue_tasks.writers.base import Writer, WriterContext

SHEETS = "syncqueue_tasks.writers.sheets:create_writer"
WORKBOOK = "syncqueue_tasks.writers.workbook:create_writer"

_lock = threading.Lock()
_cached: tuple[int, Settings, Writer] | None = None


def writer_spec(settings: Settings) -> str:
    """The ``module:factory`` that ``settings`` select."""
    if settings.destination.writer:
        return settings.destination.writer
    if settings.sheets.spreadsheet_id and settings.sheets.credentials_file:
        return SHEETS
    return WORKBOOK


def load_writer(spec: str, context: WriterContext) -> Writer:
    """Import ``module:factory``, call the factory (with ``context`` if it takes an argument),
    check the result is a ``Writer``."""
    module_name, sep, factory_name = spec.partition(":")
    if not sep or not module_name or not factory_name:
        raise ConfigurationError(f"SYNCQUEUE_WRITER must look like package.module:factory: {spec}")
    try:
        factory = getattr(importlib.import_module(module_name), factory_name)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"SYNCQUEUE_WRITER {spec!r} cannot be loaded: {exc}") from None
    writer = factory(context) if _takes_an_argument(factory) else factory()
    if not isinstance(writer, Writer):
        hint = (
            " (it has the old write(items) method: writers now implement "
            "write_records(writes) -> {record key: Outcome}; see the README, Writers)"
            if callable(getattr(writer, "write", None))
            else ""
        )
        raise ConfigurationError(f"SYNCQUEUE_WRITER {spec!r} did not return a writer{hint}")
    return writer


def _takes_an_argument(factory: Callable[..., object]) -> bool:
    """Whether ``factory`` needs an argument (a positional parameter without a default, or
    ``*args``): it gets the context. Optional parameters alone: it is called without."""
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): call it without
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    return any(
        (p.kind in positional and p.default is p.empty) or p.kind is p.VAR_POSITIONAL
        for p in parameters
    )


def get_writer(context: WriterContext) -> Writer:
    """This process's writer, made on first use and again when the settings are re-read
    (``get_settings.cache_clear()``) or in a forked child."""
    global _cached
    with _lock:
        if _cached is None or _cached[0] != os.getpid() or _cached[1] is not context.settings:
            _cached = (
                os.getpid(),
                context.settings,
                load_writer(writer_spec(context.settings), context),
            )
        return _cached[2]
