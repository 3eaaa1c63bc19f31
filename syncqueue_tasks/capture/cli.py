"""``syncqueue backfill``: enqueue the current state of every row of a tracked table.

Added to the ``syncqueue`` group by ``syncqueue_tasks.cli`` (which turns ``CaptureError`` and
database errors into one ``Error:`` line); imports nothing from it.
"""

from __future__ import annotations

import importlib

import click

from syncqueue_tasks.capture import registry
from syncqueue_tasks.capture.backfill import MAX_BATCH
from syncqueue_tasks.capture.backfill import backfill as run_backfill
from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.progress import ProgressPrinter
from syncqueue_tasks.capture.registry import Tracked
from syncqueue_tasks.capture.tables import table_source
from syncqueue_tasks.db import get_engine


@click.command()
@click.option("--model", required=True, help="the model whose rows to enqueue, e.g. Request")
@click.option(
    "--app",
    "modules",
    multiple=True,
    metavar="MODULE",
    help="import this module first (where your code calls capture.track); repeatable",
)
@click.option("--table", help="read this table (schema.name) instead of a tracked class")
@click.option("--key", help="with --table: the key column (default: the primary key)")
@click.option("--columns", help="with --table: the columns to send, comma-separated")
@click.option(
    "--batch-size", type=click.IntRange(1, MAX_BATCH), default=MAX_BATCH, show_default=True
)
@click.option("--restart", is_flag=True, help="start over instead of resuming")
@click.pass_context
def backfill(
    ctx: click.Context,
    model: str,
    modules: tuple[str, ...],
    table: str | None,
    key: str | None,
    columns: str | None,
    batch_size: int,
    restart: bool,
) -> None:
    """Enqueue every row of a table as a CREATE (a new sheet from existing data).

    Resumes where an interrupted run stopped (the last key done is kept in
    $SYNCQUEUE_DATA_DIR/backfill/MODEL.json); running it again after it finished is
    harmless. Progress goes to stderr.
    """
    source = _source(model, modules, table, key, columns)
    printer = ProgressPrinter()
    try:
        report = run_backfill(
            get_engine(), source, batch_size=batch_size, restart=restart, progress=printer
        )
    except KeyboardInterrupt:
        printer.finish()
        click.echo(
            "\nInterrupted: the batches committed so far are kept; run the same command again "
            "to resume.",
            err=True,
        )
        ctx.exit(130)
    printer.finish()
    resumed = " (resumed)" if report.resumed else ""
    click.echo(
        f"Backfilled {report.model}{resumed}: {report.rows:,} rows read, {report.enqueued:,} "
        f"enqueued, {report.skipped:,} already in the sheet, in {report.seconds:.1f}s."
    )


def _source(
    model: str,
    modules: tuple[str, ...],
    table: str | None,
    key: str | None,
    columns: str | None,
) -> Tracked:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CaptureError(f"cannot import {module!r}: {exc}") from None
    if table is not None:
        names = None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]
        return table_source(get_engine(), model, table, key=key, columns=names)
    if key is not None or columns is not None:
        raise click.UsageError("--key and --columns go with --table")
    if registry.find(model) is None:
        raise CaptureError(
            f"model {model!r} is not tracked in this process: name the module that calls "
            "capture.track with --app, or the table with --table"
        )
    return registry.get(model)
