"""The Alembic migration, on fresh throwaway databases: what it builds, that it undoes itself,
that it matches the ORM model, and that the claim query uses its partial index.

Each test makes its own database (dropped in ``finally``), so nothing here touches the session
database that conftest migrated for the other tests.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from dbutil import ROOT, alembic_config, create_database, drop_database
from sqlalchemy import Column, Connection, Engine, Integer, MetaData, create_engine, text
from sqlalchemy.pool import NullPool

from syncqueue_tasks.store import sql
from syncqueue_tasks.store.models import Base

pytestmark = pytest.mark.integration

# Partial index -> (key columns, predicate) as PostgreSQL prints them in pg_indexes.indexdef.
PARTIAL_INDEXES = {
    "ix_sync_queue_completed": ("(processed_at)", "WHERE (status = 'COMPLETED'::queue_status)"),
    "ix_sync_queue_failed": ("(model, id)", "WHERE (status = 'FAILED'::queue_status)"),
    "ix_sync_record_pending": ("(available_at, waiting_id)", "WHERE (pending > 0)"),
    "ix_sync_record_claimed": ("(claimed_at)", "WHERE (claim_token IS NOT NULL)"),
}
# The functions every path that stores changes shares (migration 0004).
FUNCTIONS = [
    "syncqueue_changes_deleted",
    "syncqueue_changes_truncated",
    "syncqueue_enqueue",
    "syncqueue_mark_waiting",
    "syncqueue_new_id",
]
TRIGGERS = ["syncqueue_changes_deleted", "syncqueue_changes_truncated"]
ENUMS = {
    "sync_action": ["CREATE", "UPDATE", "DELETE"],
    "queue_status": ["PENDING", "PROCESSING", "COMPLETED", "FAILED"],
}


@contextmanager
def _throwaway_database() -> Iterator[tuple[str, Engine]]:
    name = f"syncqueue_mig_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    url = create_database(name)
    engine = create_engine(url, poolclass=NullPool)
    try:
        yield url, engine
    finally:
        engine.dispose()
        drop_database(name)


def _alembic(url: str, *args: str) -> None:
    """Run the ``alembic`` command line from the repository root, as an operator would."""
    result = subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, f"alembic {' '.join(args)} failed:\n{result.stderr}"


def _upgrade_in_process(engine: Engine) -> None:
    config = alembic_config()
    with engine.begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")


def _schema(engine: Engine) -> dict[str, Any]:
    """The parts of the schema the migration is responsible for, as plain data."""
    with engine.connect() as conn:
        return {
            "table": conn.execute(
                text("SELECT to_regclass('public.sync_queue') IS NOT NULL")
            ).scalar_one(),
            "records": conn.execute(
                text("SELECT to_regclass('public.sync_record') IS NOT NULL")
            ).scalar_one(),
            "functions": list(
                conn.execute(
                    text("SELECT proname FROM pg_proc WHERE proname LIKE 'syncqueue%' ORDER BY 1")
                ).scalars()
            ),
            "triggers": list(
                conn.execute(
                    text(
                        "SELECT tgname FROM pg_trigger"
                        " WHERE tgrelid = to_regclass('sync_queue') AND NOT tgisinternal"
                        " ORDER BY 1"
                    )
                ).scalars()
            ),
            "enums": {
                name: labels
                for name, labels in conn.execute(
                    text(
                        """SELECT t.typname, array_agg(e.enumlabel ORDER BY e.enumsortorder)
                           FROM pg_type t JOIN pg_enum e ON e.enumtypid = t.oid
                           GROUP BY t.typname"""
                    )
                )
            },
            "indexes": dict(
                conn.execute(
                    text(
                        "SELECT indexname, indexdef FROM pg_indexes"
                        " WHERE tablename IN ('sync_queue', 'sync_record')"
                    )
                ).all()
            ),
            "columns": [
                tuple(row)
                for row in conn.execute(
                    text(
                        """SELECT column_name, data_type, udt_name, character_maximum_length,
                                  collation_name, is_nullable, column_default
                           FROM information_schema.columns
                           WHERE table_schema = 'public'
                             AND table_name IN ('sync_queue', 'sync_record')
                           ORDER BY table_name, ordinal_position"""
                    )
                )
            ],
        }


def _index_columns(conn: Connection) -> dict[str, tuple[list[str], bool]]:
    """Index name -> (key columns, is partial), from the catalog rather than from text."""
    rows = conn.execute(
        text(
            """SELECT i.relname,
                      array_agg(a.attname ORDER BY k.ord),
                      x.indpred IS NOT NULL
               FROM pg_index x
               JOIN pg_class i ON i.oid = x.indexrelid
               CROSS JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
               WHERE x.indrelid IN ('sync_queue'::regclass, 'sync_record'::regclass)
               GROUP BY i.relname, x.indpred"""
        )
    )
    return {name: (list(columns), partial) for name, columns, partial in rows}


def test_upgrade_builds_everything_downgrade_removes_it_and_upgrade_works_again() -> None:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    with _throwaway_database() as (url, engine):
        _alembic(url, "upgrade", "head")
        built = _schema(engine)
        assert built["table"] is True and built["records"] is True
        assert built["enums"] == ENUMS
        assert built["functions"] == FUNCTIONS
        assert built["triggers"] == TRIGGERS
        # One full index besides the keys: a record's changes by status and id.
        assert set(built["indexes"]) == {
            "sync_queue_pkey",
            "sync_record_pkey",
            "ix_sync_queue_record",
            *PARTIAL_INDEXES,
        }
        for name, (columns, predicate) in PARTIAL_INDEXES.items():
            indexdef = built["indexes"][name]
            assert f"USING btree {columns} {predicate}" in indexdef, indexdef
        with engine.connect() as conn:
            indexes = _index_columns(conn)
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == head
            reloptions = conn.execute(
                text("SELECT reloptions FROM pg_class WHERE oid = 'sync_queue'::regclass")
            ).scalar_one()
        assert indexes.pop("sync_queue_pkey") == (["id"], False)
        assert indexes.pop("sync_record_pkey") == (["model", "record_id"], False)
        assert indexes.pop("ix_sync_queue_record") == (
            ["model", "record_id", "status", "id"],
            False,
        )
        assert all(partial for _, partial in indexes.values())
        assert not any(columns == ["status"] for columns, _ in indexes.values())
        assert "autovacuum_analyze_scale_factor=0.02" in reloptions

        _alembic(url, "downgrade", "base")
        gone = _schema(engine)
        assert gone["table"] is False and gone["records"] is False
        assert gone["enums"] == {} and gone["functions"] == []
        assert gone["indexes"] == {} and gone["columns"] == []
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 0

        _alembic(url, "upgrade", "head")
        assert _schema(engine) == built


def test_autogenerate_finds_no_difference_between_migration_and_model() -> None:
    with _throwaway_database() as (_, engine):
        _upgrade_in_process(engine)
        with engine.connect() as conn:
            assert compare_metadata(MigrationContext.configure(conn), Base.metadata) == []
            strict = MigrationContext.configure(
                conn, opts={"compare_type": True, "compare_server_default": True}
            )
            assert compare_metadata(strict, Base.metadata) == []

            # Not vacuous: a model that differs from the migration is reported.
            changed = MetaData()
            Base.metadata.tables["sync_record"].to_metadata(changed)
            table = Base.metadata.tables["sync_queue"].to_metadata(changed)
            table.append_column(Column("extra", Integer))
            table.indexes.discard(
                next(i for i in table.indexes if i.name == "ix_sync_queue_failed")
            )
            diff = compare_metadata(MigrationContext.configure(conn), changed)
            kinds = sorted(d[0] if isinstance(d, tuple) else d[0][0] for d in diff)
            assert kinds == ["add_column", "remove_index"], diff


def test_migration_builds_the_same_schema_as_the_model() -> None:
    """What autogenerate does not compare: partial index predicates (``postgresql_where`` is
    not part of Alembic's index comparison), collations and server defaults as PostgreSQL
    stores them. Build the schema both ways and compare the catalogs."""
    with _throwaway_database() as (_, migrated), _throwaway_database() as (_, created):
        _upgrade_in_process(migrated)
        Base.metadata.create_all(created)
        from_migration, from_model = _schema(migrated), _schema(created)
        assert from_migration["enums"] == from_model["enums"] == ENUMS
        assert from_migration["indexes"] == from_model["indexes"]
        assert from_migration["columns"] == from_model["columns"]
        assert ("id", "character varying", "varchar", 26, "C", "NO", None) in from_model["columns"]


def test_the_claim_reads_the_records_index_not_the_history() -> None:
    """200,000 COMPLETED changes over 5,000 records, 5 waiting: the claim finds the waiting
    records on ix_sync_record_pending and their changes on ix_sync_queue_record, no scan."""
    with _throwaway_database() as (_, engine):
        _upgrade_in_process(engine)
        with engine.connect() as conn:
            transaction = conn.begin()
            try:
                conn.execute(
                    text(
                        """INSERT INTO sync_queue
                               (id, action, model, record_id, payload, status, processed_at)
                           SELECT lpad(g::text, 26, '0'), 'UPDATE', 'Request',
                                  (g % 5000)::text, '{}'::jsonb,
                                  CASE WHEN g > 200000 THEN 'PENDING' ELSE 'COMPLETED' END
                                      ::queue_status,
                                  CASE WHEN g > 200000 THEN NULL ELSE now() END
                           FROM generate_series(1, 200005) AS g"""
                    )
                )
                conn.execute(
                    text(
                        """INSERT INTO sync_record (model, record_id, pending, waiting_id)
                           SELECT 'Request', (g % 5000)::text,
                                  CASE WHEN g <= 5 THEN 1 ELSE 0 END, NULL
                           FROM generate_series(1, 5000) AS g"""
                    )
                )
                conn.execute(text("ANALYZE sync_queue; ANALYZE sync_record"))
                params = {"max_records": 25, "max_changes": 1000, "token": uuid.uuid4()}
                plan = "\n".join(conn.execute(text(f"EXPLAIN {sql.CLAIM.text}"), params).scalars())
                claimed = conn.execute(sql.CLAIM, params).all()
            finally:
                transaction.rollback()
    assert "Seq Scan on sync_queue" not in plan, plan
    assert "ix_sync_record_pending" in plan and "ix_sync_queue_record" in plan, plan
    assert sorted(r.id for r in claimed) == [f"{g:026d}" for g in range(200001, 200006)]


def test_upgrade_to_records_converts_the_queue_of_0003() -> None:
    """0003 -> 0004: claims in flight go back to PENDING, replayed copies go, each record's
    waiting count and synced state (from its COMPLETED changes, by the change they applied)."""
    rows = [  # id, origin_id, action, record, payload, status
        ("A1", "A1", "CREATE", "a", {"name": "Ann", "n": 1}, "COMPLETED"),
        ("A2", "A2", "UPDATE", "a", {"n": 2}, "COMPLETED"),
        ("A3", "A3", "UPDATE", "a", {"n": 3}, "PENDING"),
        ("A4", "A2", "UPDATE", "a", {"n": 2}, "PENDING"),  # a replayed copy of A2
        ("B1", "B1", "CREATE", "b", {"x": 1}, "COMPLETED"),
        ("B2", "B2", "DELETE", "b", {}, "COMPLETED"),
        ("B3", "B3", "UPDATE", "b", {"y": 2}, "PROCESSING"),
        ("C1", "C1", "UPDATE", "c", {"z": 1}, "FAILED"),
    ]
    with _throwaway_database() as (url, engine):
        _alembic(url, "upgrade", "0003")
        with engine.begin() as conn:
            for rid, origin, action, record, payload, status in rows:
                conn.execute(
                    text(
                        """INSERT INTO sync_queue (id, origin_id, position, action, model,
                               record_id, payload, status, claim_token, claimed_at)
                           VALUES (:i, :o, :i, CAST(:a AS sync_action), 'Request', :r,
                                   CAST(:p AS jsonb), CAST(:s AS queue_status),
                                   CASE WHEN :s = 'PROCESSING' THEN gen_random_uuid() END,
                                   CASE WHEN :s = 'PROCESSING' THEN now() END)"""
                    ),
                    {
                        "i": f"{rid:0>26}",
                        "o": f"{origin:0>26}",
                        "a": action,
                        "r": record,
                        "p": json.dumps(payload),
                        "s": status,
                    },
                )
        _alembic(url, "upgrade", "head")
        with engine.connect() as conn:
            records = {
                r.record_id: r
                for r in conn.execute(
                    text("SELECT * FROM sync_record ORDER BY record_id")
                ).mappings()
            }
            statuses = dict(conn.execute(text("SELECT id, status::text FROM sync_queue")).all())
    assert set(statuses) == {f"{i:0>26}" for i in ("A1", "A2", "A3", "B1", "B2", "B3", "C1")}
    assert statuses[f"{'B3':0>26}"] == "PENDING"  # the claim in flight was given back
    a, b, c = records["a"], records["b"], records["c"]
    assert (a["fields"], a["pending"], a["claim_token"]) == ({"name": "Ann", "n": 2}, 1, None)
    assert a["versions"] == {"name": f"{'A1':0>26}", "n": f"{'A2':0>26}"}
    assert (b["fields"], b["deleted_id"], b["pending"]) == ({}, f"{'B2':0>26}", 1)
    assert (c["fields"], c["pending"], c["touched_id"]) == ({}, 0, None)


def test_capture_triggers_installed_by_a_migration_are_what_the_package_generates() -> None:
    """An application's migration captures its tables (``op.capture_table``, or ``op.execute``
    of ``install_sql``): what the database holds then is exactly what the package generates
    (function bodies and settings, triggers, helpers, version). Not vacuous: a column whose
    type changes makes the installed function differ, and a later migration upgrades it."""
    from alembic.operations import Operations

    import syncqueue_tasks.capture.alembic_ops  # noqa: F401  (registers op.capture_table)
    from syncqueue_tasks.capture import triggers

    with _throwaway_database() as (_, engine):
        _upgrade_in_process(engine)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE app_item (id serial PRIMARY KEY, price numeric(8, 2))"))
            conn.execute(text("CREATE TABLE app_note (code text PRIMARY KEY, body text)"))
            op = Operations(MigrationContext.configure(conn))
            op.capture_table("public.app_item", model="Request")
            op.execute(triggers.install_sql(conn, "app_note", "Operator"))
        found = [(i.name, i.version, i.problems) for i in triggers.installed(engine)]
        assert found == [("public.app_item", 1, ()), ("public.app_note", 1, ())]

        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE app_item ALTER COLUMN price TYPE double precision"))
        assert triggers.installed(engine)[0].problems == (
            "its function differs from what this package generates (edited, or the table's "
            "columns changed)",
        )
        with engine.begin() as conn:
            op = Operations(MigrationContext.configure(conn))
            op.capture_table("app_item", model="Request")
            op.remove_capture("app_note")
        assert [(i.name, i.problems) for i in triggers.installed(engine)] == [
            ("public.app_item", ())
        ]
