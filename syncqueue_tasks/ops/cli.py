"""``syncqueue``: the operator's command line (click).

Expected failures (database unreachable, bad input, bad settings) end with one ``Error:`` line
on stderr and a non-zero exit code, never a traceback. Commands run in the folder of a running
``syncqueue run`` (same ``SYNCQUEUE_DATA_DIR``) use its database and broker; see ``runstate``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
from redis.exceptions import RedisError
from sqlalchemy.exc import InterfaceError, OperationalError, ProgrammingError, SQLAlchemyError

from syncqueue_tasks.core.errors import (
    ConfigurationError,
    SyncQueueError,
    ValidationError,
    sanitize_error,
)
from syncqueue_tasks.core.validation import validate_item_id
from syncqueue_tasks.local import runstate
from syncqueue_tasks.redis_client import get_redis
from syncqueue_tasks.settings import DEFAULT_DATABASE_URL, get_settings
from syncqueue_tasks.store import queue, sql
from syncqueue_tasks.store.db import dispose_engine, get_engine

log = logging.getLogger(__name__)


class OneLineError(click.ClickException):
    """Printed as ``Error: <message>`` on stderr; exit code 1."""


class OneLineUsageError(OneLineError):
    """A usage error, printed on one line; exit code 2 (as click's own usage errors)."""

    exit_code = 2


def describe_error(exc: BaseException) -> str:
    """One safe line for an expected failure."""
    orig = getattr(exc, "orig", None)
    detail = sanitize_error(orig if isinstance(orig, BaseException) else str(exc))
    if isinstance(exc, OperationalError | InterfaceError):
        return f"database unavailable: {detail}; {_database_hint()}"
    if isinstance(exc, ProgrammingError) and "does not exist" in detail:
        return f"database not ready: {detail}; {runstate.migrate_hint()}"
    if isinstance(exc, SQLAlchemyError):
        return f"database error: {detail}"
    if isinstance(exc, ValidationError):
        return f"invalid {detail}"
    if isinstance(exc, ConfigurationError):
        return f"configuration: {detail}"
    return detail


def _database_hint() -> str:
    if not runstate.using_default_database():
        return "check DATABASE_URL and that PostgreSQL is running"
    return (
        f"DATABASE_URL is unset and no `syncqueue run` is running with data in "
        f"{runstate.data_dir()}: start `{runstate.cli_command()} run` there, or set DATABASE_URL"
    )


def _confirm_or_fail(question: str, refused: str) -> None:
    """Ask ``question`` (default no, on stderr); a no, or no terminal, ends with ``refused``."""
    try:
        click.confirm(question, abort=True, err=True)
    except click.Abort:
        raise OneLineError(refused) from None


class DatabaseCommand(click.Command):
    """A command that uses the database: first says so when that is the built-in default."""

    def invoke(self, ctx: click.Context) -> Any:
        """Print the note on stderr (once the arguments are valid), then run the command."""
        if runstate.using_default_database():
            click.echo(f"Note: {runstate.default_database_note()}", err=True)
        return super().invoke(ctx)


class SafeGroup(click.Group):
    """A group that turns expected failures and usage errors into one ``Error:`` line.

    Its commands are ``DatabaseCommand`` unless they say otherwise (``run`` does).
    """

    command_class = DatabaseCommand

    def invoke(self, ctx: click.Context) -> Any:
        """Run the command; translate expected exceptions."""
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            where = f" (see '{exc.ctx.command_path} --help')" if exc.ctx else ""
            raise OneLineUsageError(exc.format_message() + where) from None
        except (SQLAlchemyError, SyncQueueError) as exc:
            raise OneLineError(describe_error(exc)) from None
        except RedisError as exc:
            raise OneLineError(
                f"Redis unavailable: {sanitize_error(exc)}; check SYNCQUEUE_REDIS_URL "
                "(default: CELERY_BROKER_URL) and that Redis is running"
            ) from None


@click.group(cls=SafeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="syncqueue-tasks", prog_name="syncqueue")
@click.pass_context
def main(ctx: click.Context) -> None:
    """syncqueue: see and steer the PostgreSQL-backed sync queue, or run the whole stack."""
    if ctx.invoked_subcommand != "run" and runstate.apply_env():
        get_settings.cache_clear()
        get_redis.cache_clear()
        dispose_engine()


@main.command()
@click.option("--yes", "-y", is_flag=True, help="migrate the default database without asking")
def migrate(yes: bool) -> None:
    """Apply the database migrations (alembic upgrade head).

    With no running `syncqueue run` and DATABASE_URL unset, the database is the built-in
    default, which may belong to something else: migrate asks first (--yes: do not ask).
    """
    from syncqueue_tasks.store.schema import upgrade_head

    if runstate.using_default_database() and not yes:
        cli = runstate.cli_command()
        _confirm_or_fail(
            f"Create or upgrade the sync_queue tables in the default database "
            f"{DEFAULT_DATABASE_URL}?",
            f"not migrated: start `{cli} run` (every command finds its database) or set "
            f"DATABASE_URL; to migrate the default database: `{cli} migrate --yes`",
        )
    before, after = upgrade_head()
    if before == after:
        click.echo(f"Database already at head ({_revs(after)}).")
    else:
        click.echo(f"Migrated the database: {_revs(before)} -> {_revs(after)}.")


@main.command(cls=click.Command)  # starts its own database, or uses DATABASE_URL
@click.option(
    "--flower-port", type=click.IntRange(1, 65535), envvar="SYNCQUEUE_FLOWER_PORT",
    default=5555, show_default=True, help="Flower's port on 127.0.0.1 [env SYNCQUEUE_FLOWER_PORT]",
)  # fmt: skip
@click.option(
    "--metrics-port", type=click.IntRange(0, 65535), envvar="SYNCQUEUE_METRICS_PORT",
    default=None, help="serve queue metrics on this port [env SYNCQUEUE_METRICS_PORT; default off]",
)  # fmt: skip
@click.option("--metrics-host", default="127.0.0.1", show_default=True)
@click.option("--concurrency", type=click.IntRange(1, 64), default=2, show_default=True)
def run(flower_port: int, metrics_port: int | None, metrics_host: str, concurrency: int) -> None:
    """Start everything: (embedded) PostgreSQL and Redis, migrations, worker, beat, Flower."""
    from syncqueue_tasks.ops.stack import StackOptions
    from syncqueue_tasks.ops.stack import run as run_stack

    options = StackOptions(
        data_dir=runstate.data_dir(),
        flower_port=flower_port,
        metrics_port=metrics_port,
        metrics_host=metrics_host,
        concurrency=concurrency,
    )
    run_stack(options, echo=click.echo)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for scripts")
def stats(as_json: bool) -> None:
    """Counts per status, oldest PENDING age, recent failures and completions."""
    s = queue.get_queue_stats()
    if as_json:
        click.echo(json.dumps(s, sort_keys=True))
        return
    for status in ("pending", "processing", "completed", "failed"):
        click.echo(f"{status.upper():<22}{s[status]:>10}")
    click.echo(f"{'oldest PENDING age':<22}{_age(s['oldest_pending_age_seconds']):>10}")
    click.echo(f"{'FAILED last 24 h':<22}{s['failed_last_24h']:>10}")
    click.echo(f"{'completed last hour':<22}{s['completed_last_hour']:>10}")


@main.command()
@click.argument("model")
@click.argument("record_id")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for scripts")
def record(model: str, record_id: str, limit: int, as_json: bool) -> None:
    """One record: its synced state and its changes still in the queue, oldest first.

    Payload values are not printed (only field names), as in logs: the state's values are
    shown with --json, which is meant for a terminal you trust or a script.
    """
    view = queue.get_record(model, record_id, limit=limit)
    if view is None:
        raise click.ClickException(f"the queue never had a change of {model} {record_id!r}")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "model": model,
                    "record_id": record_id,
                    "live": view.state.live,
                    "fields": view.state.fields,
                    "versions": view.state.versions,
                    "deleted_id": view.state.deleted,
                    "pending": view.pending,
                    "claimed": view.claimed_at is not None,
                    "synced_at": view.synced_at,
                    "changes": [
                        {k: v for k, v in c.items() if k != "payload"} for c in view.changes
                    ],
                },
                default=str,
                sort_keys=True,
            )
        )
        return
    state = "live" if view.state.live else "deleted" if view.state.deleted else "not written"
    click.echo(
        f"{model} {record_id}: {state}; fields {', '.join(sorted(view.state.fields)) or '-'}"
    )
    click.echo(
        f"waiting {view.pending}; {'claimed' if view.claimed_at else 'not claimed'}; "
        f"last written {view.synced_at or 'never'}"
    )
    for change in view.changes:
        click.echo(
            f"{change['id']}  {change['action']:<6} {change['status']:<10} "
            f"attempts {change['retries']}  {change['last_error'] or ''}".rstrip()
        )


@main.command()
@click.option("--model", help="only this model")
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="a JSON list, for scripts")
def failed(model: str | None, limit: int, as_json: bool) -> None:
    """FAILED items (newest first) with their last error."""
    items = queue.list_failed(model=model, limit=limit)
    if as_json:
        click.echo(json.dumps(items, default=str))
        return
    if not items:
        click.echo("No FAILED items" + (f" for {model}." if model else "."))
        return
    for item in items:
        when = item["processed_at"].strftime("%Y-%m-%d %H:%M:%S") if item["processed_at"] else "-"
        click.echo(
            f"{item['id']}  {item['action']:<6} {item['model']}/{item['record_id']}  "
            f"retries={item['retries']}  failed {when}"
        )
        click.echo(f"    {item['last_error'] or '(no error recorded)'}")
    cli = runstate.cli_command()
    click.echo(f"{len(items)} shown. Retry: {cli} retry --id ID; delete: {cli} discard --id ID")


def _selectors(func: Callable[..., None]) -> Callable[..., None]:
    func = click.option("--all", "all_", is_flag=True, help="every FAILED item")(func)
    func = click.option("--model", help="the FAILED items of this model")(func)
    return click.option("--id", "ids", multiple=True, help="an item id (repeatable)")(func)


def _selection(
    ids: tuple[str, ...], model: str | None, all_: bool
) -> tuple[list[str] | None, str | None]:
    if all_ and (ids or model):
        raise click.UsageError("--all cannot be combined with --id or --model")
    if not (all_ or ids or model):
        raise click.UsageError("say which items: --id ID (repeatable), --model MODEL, or --all")
    return ([validate_item_id(i) for i in ids] or None), model


@main.command()
@_selectors
def retry(ids: tuple[str, ...], model: str | None, all_: bool) -> None:
    """Put FAILED items back to PENDING (retries reset): by --id, --model, or --all."""
    item_ids, model = _selection(ids, model, all_)
    count = queue.retry_failed(item_ids, model=model)
    click.echo(f"{count} FAILED item(s) back to PENDING.")
    if count:
        _nudge()


@main.command()
@_selectors
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
def discard(ids: tuple[str, ...], model: str | None, all_: bool, yes: bool) -> None:
    """Delete FAILED items for good: by --id, --model, or --all (asks first)."""
    item_ids, model = _selection(ids, model, all_)
    with get_engine().connect() as conn:
        count = conn.execute(sql.COUNT_FAILED, {"ids": item_ids, "model": model}).scalar_one()
    if not count:
        click.echo("No FAILED items match.")
        return
    if not yes:
        click.confirm(f"Delete {count} FAILED item(s) for good?", abort=True)
    click.echo(f"Deleted {queue.discard_failed(item_ids, model=model)} FAILED item(s).")


@main.command()
@click.argument("action")
@click.argument("model")
@click.argument("record_id")
@click.option(
    "--payload", default="{}", show_default=True,
    help="the fields, a JSON object; @FILE reads it from a file, - from standard input",
)  # fmt: skip
@click.option("--row", type=click.IntRange(min=1), help="sheet row hint (sheet_row_index)")
@click.option("--via-celery", is_flag=True, help="publish with enqueue_change.delay()")
def enqueue(
    action: str, model: str, record_id: str, payload: str, row: int | None, via_celery: bool
) -> None:
    """Add one change (ACTION: CREATE, UPDATE or DELETE); print its id.

    Put options first and `--` before the arguments when a record id starts with "-":
    syncqueue enqueue --payload '{}' -- UPDATE Revenue -1
    """
    fields = _json_object(_payload_text(payload))
    if via_celery:
        from syncqueue_tasks.celery.tasks import enqueue_change

        click.echo(enqueue_change.delay(action, model, record_id, fields, row).id)
        return
    click.echo(queue.enqueue(action, model, record_id, fields, sheet_row_index=row))
    _nudge()


@main.command()
@click.option("--count", type=click.IntRange(1, 10_000), default=30, show_default=True)
@click.option("--timeout", type=click.FloatRange(min=0), default=120.0, show_default=True)
@click.option("--yes", "-y", is_flag=True, help="write into a Google Sheet without asking")
def demo(count: int, timeout: float, yes: bool) -> None:
    """Enqueue COUNT realistic changes and follow them to the writer.

    Says where they will be written first; asks before writing into a Google Sheet.
    """
    from syncqueue_tasks.ops.demo import DEMO_MODELS, demo_changes, destination, follow

    settings = get_settings()
    models = [m for m in DEMO_MODELS if m in settings.limits.models] or sorted(
        settings.limits.models
    )
    where, is_sheet = destination(settings, models)
    click.echo(f"The demo writes into {where}.")
    if is_sheet and not yes:
        _confirm_or_fail(
            f"Write {count} demo changes into this Google Sheet?",
            "nothing enqueued: the demo would write into a Google Sheet; pass --yes to let it",
        )
    changes = demo_changes(count, models)
    started = time.monotonic()
    ids = queue.enqueue_many(changes)
    actions = Counter(c["action"] for c in changes)
    click.echo(
        f"Enqueued {count} changes ("
        + ", ".join(f"{actions[a]} {a}" for a in ("CREATE", "UPDATE", "DELETE") if actions[a])
        + ")."
    )
    _nudge()
    with click.progressbar(length=count, label="Writing", show_pos=True) as bar:
        shown = 0

        def progress(done: int) -> None:
            nonlocal shown
            bar.update(done - shown)
            shown = done

        counts = follow(ids, timeout, progress)
    completed, failed_ = counts.get("COMPLETED", 0), counts.get("FAILED", 0)
    left = count - completed - failed_
    if left:
        raise OneLineError(
            f"timed out after {timeout:g}s: {left} of {count} changes not written; "
            f"is a worker running? (try `{runstate.cli_command()} doctor`)"
        )
    click.echo(f"{completed} completed, {failed_} failed in {time.monotonic() - started:.1f}s.")
    if failed_:
        raise OneLineError(
            f"{failed_} of {count} changes FAILED; see `{runstate.cli_command()} failed`"
        )


@main.command()
def doctor() -> None:
    """Check database, migrations, broker and writer; say what to do about each failure."""
    from syncqueue_tasks.ops.doctor import run_checks

    checks = run_checks()
    for check in checks:
        if check.ok:
            click.echo(f"OK    {check.name}: {check.detail}")
        else:
            click.echo(f"FAIL  {check.name}: {check.detail} -> {check.fix}")
    bad = [c.name for c in checks if not c.ok]
    if bad:
        raise OneLineError(f"{len(bad)} of {len(checks)} checks failed: {', '.join(bad)}")
    click.echo("All checks passed.")


@main.command()
@click.option(
    "--port", type=click.IntRange(0, 65535), envvar="SYNCQUEUE_METRICS_PORT", default=9808,
    show_default=True, help="[env SYNCQUEUE_METRICS_PORT]",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True)
def metrics(port: int, host: str) -> None:
    """Serve the queue's Prometheus metrics on /metrics until Ctrl-C."""
    from syncqueue_tasks.ops import metrics as queue_metrics

    queue_metrics.render()  # fail now, not on the first scrape, when the database is down
    try:
        server = queue_metrics.serve(port, host)
    except OSError as exc:
        raise OneLineError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    click.echo(
        f"Serving queue metrics on http://{host}:{server.server_port}/metrics (Ctrl-C stops)"
    )
    try:
        _wait_for_signal()
    finally:
        server.shutdown()
        server.server_close()
    click.echo("stopped")


@main.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="a JSON list, for scripts")
@click.pass_context
def invalid(ctx: click.Context, as_json: bool) -> None:
    """Broker messages a worker kept as invalid: list them; then retry or discard."""
    if ctx.invoked_subcommand is not None:
        return
    from syncqueue_tasks.celery.invalid_messages import list_invalid

    kept = list_invalid()
    if as_json:
        click.echo(json.dumps([dataclasses.asdict(m) for m in kept], default=str))
        return
    if not kept:
        click.echo("No invalid messages kept.")
        return
    now = time.time()
    for message in kept:
        what = " ".join(str(a) for a in message.args[:3]) or _kwargs_summary(message.kwargs)
        click.echo(f"{message.id}  {message.task}  {what}  kept {_age(now - message.kept_at)} ago")
        click.echo(f"    {message.error}")
    cli = runstate.cli_command()
    click.echo(
        f"{len(kept)} kept. Retry: {cli} invalid retry --id ID (or --all); "
        f"delete: {cli} invalid discard --id ID"
    )


def _kwargs_summary(kwargs: dict[str, Any]) -> str:
    """Action, model and record id of a kept message's keyword arguments (no payload values)."""
    return " ".join(str(kwargs[k]) for k in ("action", "model", "record_id") if k in kwargs)


@invalid.command("retry")
@click.option("--id", "ids", multiple=True, help="a kept message's id (repeatable)")
@click.option("--all", "all_", is_flag=True, help="every kept message")
def invalid_retry(ids: tuple[str, ...], all_: bool) -> None:
    """Send kept messages through their task again (once their cause is fixed)."""
    from syncqueue_tasks.celery.invalid_messages import retry_invalid
    from syncqueue_tasks.celery.tasks import enqueue_change

    if all_ == bool(ids):
        raise click.UsageError("say which messages: --id ID (repeatable) or --all")
    accepted, refused = retry_invalid(None if all_ else ids, app=enqueue_change.app)
    for message_id, why in refused.items():
        click.echo(f"{message_id}  still kept: {why}")
    click.echo(f"{accepted} message(s) accepted.")
    if refused:
        raise OneLineError(f"{len(refused)} message(s) still kept (listed above)")


@invalid.command("discard")
@click.option("--id", "ids", multiple=True, required=True, help="a kept message's id (repeatable)")
@click.option("--yes", "-y", is_flag=True, help="do not ask for confirmation")
def invalid_discard(ids: tuple[str, ...], yes: bool) -> None:
    """Delete kept messages for good (asks first)."""
    from syncqueue_tasks.celery.invalid_messages import discard_invalid

    if not yes:
        click.confirm(f"Delete {len(ids)} kept message(s) for good?", abort=True)
    click.echo(f"Deleted {discard_invalid(ids)} kept message(s).")


def _wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM."""
    stop = threading.Event()
    previous = {
        sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _payload_text(raw: str) -> str:
    """``--payload``: the JSON itself, ``@path`` (that file's text) or ``-`` (standard input)."""
    if raw == "-":
        return sys.stdin.read()
    if not raw.startswith("@"):
        return raw
    path = Path(raw[1:])
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValidationError("payload", f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ValidationError("payload", f"{path} is not UTF-8 text") from None


def _json_object(raw: str) -> Any:
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationError(
            "payload", f"not valid JSON ({exc.msg} at column {exc.colno})"
        ) from None


def _nudge() -> None:
    """Ask a worker to process the queue now; best effort (beat does it on its schedule)."""
    try:
        from syncqueue_tasks.celery import tasks

        tasks.kick()
    except Exception as exc:
        log.debug("no worker nudged: %s", sanitize_error(exc))


def _age(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60}m"


def _revs(revisions: tuple[str, ...]) -> str:
    return ", ".join(revisions) or "empty"


main.add_command(__import__("syncqueue_tasks.dashboard.command", fromlist=["_"]).dashboard)
main.add_command(__import__("syncqueue_tasks.ops.verify_cli", fromlist=["_"]).verify)
__import__("syncqueue_tasks.capture.cli", fromlist=["cli"]).register(main)

if __name__ == "__main__":
    main(prog_name="syncqueue")
