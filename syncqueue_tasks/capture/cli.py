"""``syncqueue backfill`` and ``syncqueue capture add|list|remove|upgrade``.

``register(group)`` adds them to the ``syncqueue`` group (``syncqueue_tasks.ops.cli`` calls it, and
turns ``CaptureError``, ``ValidationError`` and database errors into one ``Error:`` line);
this module imports nothing from it.
"""

from __future__ import annotations

import importlib

import click

from syncqueue_tasks.capture import registry, trigger_sql, triggers
from syncqueue_tasks.capture.backfill import MAX_BATCH
from syncqueue_tasks.capture.backfill import backfill as run_backfill
from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.progress import ProgressPrinter
from syncqueue_tasks.capture.registry import Tracked
from syncqueue_tasks.capture.tables import table_source
from syncqueue_tasks.store.db import get_engine


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
    source = _source(model, modules, table, key, _names(columns))
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
    columns: list[str] | None,
) -> Tracked:
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise CaptureError(f"cannot import {module!r}: {exc}") from None
    if table is not None:
        return table_source(get_engine(), model, table, key=key, columns=columns)
    if key is not None or columns is not None:
        raise click.UsageError("--key and --columns go with --table")
    found = registry.find(model) or triggers.tracked(get_engine(), model)
    if found is None:
        raise CaptureError(
            f"model {model!r} is neither tracked in this process nor captured by triggers: "
            "name the module that calls capture.track with --app, or the table with --table"
        )
    return found


def _names(columns: str | None) -> list[str] | None:
    """``--columns a,b,c`` as a list (None when not given)."""
    return None if columns is None else [c.strip() for c in columns.split(",") if c.strip()]


@click.group()
def capture() -> None:
    """Database triggers that put a table's changes into the queue (any writer: raw SQL,
    bulk statements, COPY, other services), in the writer's transaction."""


@capture.command("add")
@click.option("--table", required=True, help="the table, schema.name (default schema: public)")
@click.option("--model", required=True, help="the model its rows are, e.g. Request")
@click.option("--key", help="the column whose value is the record id (default: primary key)")
@click.option("--columns", help="the columns to send, comma-separated (default: all but the key)")
def capture_add(table: str, model: str, key: str | None, columns: str | None) -> None:
    """Install the triggers of TABLE, or upgrade them (run it again after upgrading the
    package, or use `capture upgrade`)."""
    before = {i.name: i for i in triggers.installed(get_engine())}
    spec = triggers.install(get_engine(), table, model, key=key, columns=_names(columns))
    name = f"{spec.schema}.{spec.table}"
    old = before.get(name)
    done = "installed" if old is None else f"reinstalled (was v{old.version})"
    click.echo(
        f"Capturing {name} as {spec.model} (key {spec.key}; {', '.join(spec.columns)}): "
        f"triggers v{trigger_sql.VERSION} {done}."
    )


@capture.command("list")
def capture_list() -> None:
    """Show the captured tables: installed version, current version, and what differs."""
    found = triggers.installed(get_engine())
    if not found:
        click.echo("No table is captured by triggers.")
        return
    for item in found:
        state = "current" if item.current else "OUTDATED: " + "; ".join(item.problems)
        click.echo(
            f"{item.name}  {item.model}  key {item.key}  columns {','.join(item.columns)}  "
            f"installed v{item.version}, package v{trigger_sql.VERSION}  {state}"
        )


@capture.command("remove")
@click.option("--table", required=True, help="the table, schema.name")
def capture_remove(table: str) -> None:
    """Remove the triggers of TABLE (its changes are no longer captured)."""
    removed = triggers.remove(get_engine(), table)
    click.echo(f"Removed the capture of {removed.name} ({removed.model}).")


@capture.command("upgrade")
def capture_upgrade() -> None:
    """Reinstall every captured table whose triggers are not what this package generates."""
    upgraded = triggers.upgrade(get_engine())
    for item in upgraded:
        click.echo(f"Upgraded {item.name} ({item.model}) from v{item.version}.")
    click.echo(f"{len(upgraded)} upgraded; every captured table is current.")


def register(group: click.Group) -> None:
    """Add ``backfill`` and ``capture`` to the ``syncqueue`` command group."""
    group.add_command(backfill)
    group.add_command(capture)
