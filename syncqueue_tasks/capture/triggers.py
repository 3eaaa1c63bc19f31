"""PostgreSQL trigger capture: install, upgrade, list and remove the triggers of a table.

``install(bind, "public.requests", "Request", key="id", columns=[...])`` reads the table's
columns and types from the catalog, checks them against the value table, and installs (or
replaces: that is the upgrade) the statement-level triggers that ``trigger_sql`` generates,
in one transaction. ``install_sql`` gives the same statements as text, for an Alembic
migration (``op.execute(install_sql(op.get_bind(), ...))``, or ``alembic_ops``).
``installed(bind)`` lists what is installed, each compared with what this package generates
now (its version, its function, its triggers, the shared helpers): ``current`` or not, and
why. ``bind``: an engine (a transaction of its own) or a connection (the caller's).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine

from syncqueue_tasks.capture import trigger_sql
from syncqueue_tasks.capture.errors import CaptureError
from syncqueue_tasks.capture.registry import Tracked, check_model
from syncqueue_tasks.capture.sqlvalues import ColumnType
from syncqueue_tasks.capture.tables import table_source
from syncqueue_tasks.capture.trigger_sql import TRIGGERS, VERSION, TriggerSpec
from syncqueue_tasks.core.errors import SyncQueueError


@dataclass(frozen=True)
class Installed:
    """One captured table as the database has it. ``version``: the package version that
    generated it; ``problems``: how it differs from what this package generates now (empty:
    current)."""

    schema: str
    table: str
    model: str
    key: str
    columns: tuple[str, ...]
    version: int
    problems: tuple[str, ...]

    @property
    def current(self) -> bool:
        """Whether it is exactly what this package generates."""
        return not self.problems

    @property
    def name(self) -> str:
        """``schema.table``."""
        return f"{self.schema}.{self.table}"


def spec(
    bind: Engine | Connection,
    table: str,
    model: str,
    *,
    key: str | None = None,
    columns: Sequence[str] | None = None,
) -> TriggerSpec:
    """What ``install`` would install, checked against the catalog and the value table:
    ``CaptureError`` or ``ValidationError`` before anything is written."""
    check_model(model)
    with _connection(bind) as conn:
        found = conn.execute(trigger_sql.FIND_TABLE, {"table": table}).one_or_none()
        if found is None:
            raise CaptureError(f"table {table!r} does not exist")
        if found.relkind != "r":
            raise CaptureError(f"{table!r} is not a plain table (partitioned, a view, ...)")
        qualified = f"{trigger_sql.quote(found.schema)}.{trigger_sql.quote(found.name)}"
        types = {
            row.name: ColumnType(row.type, row.builtin, row.enum, row.element, row.shown)
            for row in conn.execute(trigger_sql.TABLE_COLUMNS, {"table": qualified})
        }
        unique = conn.execute(trigger_sql.UNIQUE_COLUMNS, {"table": qualified}).all()
        queue_schema = conn.execute(trigger_sql.QUEUE_SCHEMA).scalar()
    if queue_schema is None:
        raise CaptureError(
            "the queue's tables and functions (migration 0004) are not in this database; "
            "run `syncqueue migrate` first"
        )
    if key is None:
        primary = [row.attname for row in unique if row.indisprimary]
        if not primary:
            raise CaptureError(f"table {table!r} has no one-column primary key; pass key=")
        key = primary[0]
    _require(table, types, [key])
    if key not in {row.attname for row in unique}:
        raise CaptureError(
            f"column {key!r} of {table!r} is not its primary key and has no unique index of "
            "its own: it must identify one row, or old and new rows cannot be paired"
        )
    chosen = tuple(c for c in types if c != key) if columns is None else tuple(columns)
    if not chosen or len(set(chosen)) != len(chosen):
        raise CaptureError("columns must name at least one column, each once")
    _require(table, types, chosen)
    result = TriggerSpec(
        model,
        found.schema,
        found.name,
        key,
        chosen,
        {c: types[c] for c in (key, *chosen)},
        queue_schema,
    )
    trigger_sql.function_body(result)  # refuses a column type the value table cannot convert
    return result


def install_sql(
    bind: Engine | Connection,
    table: str,
    model: str,
    *,
    key: str | None = None,
    columns: Sequence[str] | None = None,
) -> str:
    """The SQL that installs (or upgrades) the capture of ``table``, for a migration."""
    statements = trigger_sql.install_statements(spec(bind, table, model, key=key, columns=columns))
    return ";\n\n".join(statements) + ";\n"


def install(
    bind: Engine | Connection,
    table: str,
    model: str,
    *,
    key: str | None = None,
    columns: Sequence[str] | None = None,
) -> TriggerSpec:
    """Install (or upgrade) the capture of ``table`` as changes of ``model``; one transaction."""
    with _connection(bind) as conn:
        result = spec(conn, table, model, key=key, columns=columns)
        _run(conn, trigger_sql.install_statements(result))
    return result


def remove_sql(bind: Engine | Connection, table: str) -> str:
    """The SQL that removes the capture of ``table`` (triggers and function)."""
    with _connection(bind) as conn:
        found = _find(conn, table)
    if found is None:
        raise CaptureError(f"table {table!r} is not captured by triggers")
    statements = trigger_sql.remove_statements(found.schema, found.table, _function(found))
    return ";\n".join(statements) + ";\n"


def remove(bind: Engine | Connection, table: str) -> Installed:
    """Remove the capture of ``table``; return what was installed."""
    with _connection(bind) as conn:
        found = _find(conn, table)
        if found is None:
            raise CaptureError(f"table {table!r} is not captured by triggers")
        _run(conn, trigger_sql.remove_statements(found.schema, found.table, _function(found)))
    return found


def installed(bind: Engine | Connection) -> list[Installed]:
    """Every table captured by triggers, compared with what this package generates now."""
    with _connection(bind) as conn:
        return [_compare(conn, row) for row in conn.execute(trigger_sql.INSTALLED_FUNCTIONS).all()]


def upgrade(bind: Engine | Connection) -> list[Installed]:
    """Reinstall every captured table that is not current, as it was; return them."""
    with _connection(bind) as conn:
        stale = [i for i in installed(conn) if not i.current]
        for found in stale:
            install(conn, found.name, found.model, key=found.key, columns=found.columns)
    return stale


def tracked(bind: Engine | Connection, model: str) -> Tracked | None:
    """The ``Tracked`` of the table whose triggers capture ``model`` (for a backfill), or
    None."""
    engine = bind if isinstance(bind, Engine) else bind.engine
    for found in installed(bind):
        if found.model == model:
            return table_source(engine, model, found.name, key=found.key, columns=found.columns)
    return None


@contextlib.contextmanager
def _connection(bind: Engine | Connection) -> Iterator[Connection]:
    if isinstance(bind, Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn


def _run(conn: Connection, statements: Sequence[str]) -> None:
    """Run generated statements in the connection's transaction, as they are (no bind
    parameters: a ``%`` is doubled for psycopg, which reads ``%%`` as one)."""
    for statement in statements:
        conn.exec_driver_sql(statement.replace("%", "%%"))


def _require(table: str, types: dict[str, ColumnType], names: Sequence[str]) -> None:
    missing = [n for n in names if n not in types]
    if missing:
        raise CaptureError(f"table {table!r} has no column(s) {', '.join(missing)}")


def _find(conn: Connection, table: str) -> Installed | None:
    found = conn.execute(trigger_sql.FIND_TABLE, {"table": table}).one_or_none()
    if found is None:
        return None
    return next(
        (i for i in installed(conn) if (i.schema, i.table) == (found.schema, found.name)), None
    )


def _function(found: Installed) -> str:
    return TriggerSpec(
        found.model, found.schema, found.table, found.key, found.columns, {}
    ).function


def _compare(conn: Connection, row: Any) -> Installed:
    """An installed function and its triggers, against what this package generates."""
    version_text, _, stored = row.comment.removeprefix(trigger_sql.COMMENT_PREFIX).partition(" ")
    saved = json.loads(stored)
    found = Installed(
        saved["schema"],
        saved["table"],
        saved["model"],
        saved["key"],
        tuple(saved["columns"]),
        int(version_text),
        (),
    )
    problems = []
    if found.version != VERSION:
        problems.append(f"generated by capture v{found.version}, this package makes v{VERSION}")
    try:
        wanted = spec(conn, found.name, found.model, key=found.key, columns=found.columns)
    except SyncQueueError as exc:  # a column dropped, a type the table refuses, ...
        problems.append(f"cannot be generated again: {exc}")
        return _with(found, problems)
    schema = conn.execute(trigger_sql.QUOTE_IDENT, {"s": wanted.queue_schema}).scalar_one()
    if (row.prosrc, row.proconfig) != (
        trigger_sql.function_body(wanted),
        trigger_sql.settings(wanted.function, schema),
    ):
        problems.append(
            "its function differs from what this package generates (edited, or the table's "
            "columns changed)"
        )
    if row.function != wanted.function:
        problems.append(f"its function is named {row.function}, not {wanted.function}")
    problems += _trigger_problems(conn, row, wanted)
    problems += _helper_problems(conn, wanted.queue_schema, schema)
    return _with(found, problems)


def _with(found: Installed, problems: list[str]) -> Installed:
    return Installed(
        found.schema,
        found.table,
        found.model,
        found.key,
        found.columns,
        found.version,
        tuple(problems),
    )


def _trigger_problems(conn: Connection, row: Any, wanted: TriggerSpec) -> list[str]:
    actual = {
        t.tgname: t
        for t in conn.execute(
            trigger_sql.FUNCTION_TRIGGERS, {"function": row.oid, "table": wanted.qualified}
        )
    }
    problems = []
    for name, (bits, old, new, _) in TRIGGERS.items():
        trigger = actual.pop(name, None)
        if trigger is None or not trigger.on_table:
            problems.append(f"trigger {name} is missing")
        elif (trigger.tgtype, trigger.tgoldtable, trigger.tgnewtable) != (bits, old, new):
            problems.append(f"trigger {name} differs from what this package generates")
        elif trigger.tgenabled == "D":
            problems.append(f"trigger {name} is disabled")
    problems += [f"trigger {name} is not one this package makes" for name in actual]
    return problems


def _helper_problems(conn: Connection, queue_schema: str, quoted: str) -> list[str]:
    """The shared helpers that are missing or differ (``quoted``: the schema as PostgreSQL
    quotes it)."""
    helpers = trigger_sql.helper_functions(trigger_sql.quote(queue_schema))
    rows = conn.execute(
        trigger_sql.INSTALLED_HELPERS, {"schema": queue_schema, "names": list(helpers)}
    )
    actual = {r.proname: (r.prosrc, r.proconfig) for r in rows}
    return [
        f"helper function {name} is missing or differs from what this package generates"
        for name, statement in helpers.items()
        if actual.get(name)
        != (trigger_sql.helper_body(statement), trigger_sql.settings(name, quoted))
    ]
