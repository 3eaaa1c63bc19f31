"""Records: claims by record, per-record synced state, changes applied by version.

Before: a record's changes were kept in order by moving and copying queue rows (``position``,
``origin_id``) under hashed advisory locks. Now ``sync_record`` holds, per record, the claim
(a row lock taken with SKIP LOCKED, then a token), the number of waiting changes, the backoff,
and what was last written (field values, the change id that set each field, the newest
DELETE / CREATE / CREATE-or-UPDATE). Changes are applied by version (records.py), so neither
order nor copies are needed.

Functions shared by every path that stores changes (the queue module, the trigger capture):
``syncqueue_new_id()`` makes an id in SQL that sorts with the ids made in Python
(milliseconds, then microseconds, then random bits; increasing within a session);
``syncqueue_enqueue(...)`` stores changes and marks their records as waiting with
``syncqueue_mark_waiting(...)``, which retrying dead letters uses too. Two statement triggers
keep the records' counts when changes are deleted by hand (``DELETE`` or ``TRUNCATE`` of
``sync_queue``).

Data: claims in flight go back to PENDING (stop the workers first: their late outcomes are
refused and the changes written again); replayed copies are dropped (the change they re-apply
is applied by version); each record's state is computed from its COMPLETED changes (those
cleanup has not deleted yet). Downgrade rebuilds the position columns from the ids; the states
are lost.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

NEW_ID = r"""
CREATE FUNCTION syncqueue_new_id() RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
-- 26 Crockford base32 characters: 10 for the Unix time in milliseconds, 2 for the
-- microseconds within it, 14 random (the layout of syncqueue_tasks.core.ids.new_id). Ids made in
-- one session increase: one not above the session's previous id is that id plus one.
DECLARE
    alphabet constant text := '0123456789ABCDEFGHJKMNPQRSTVWXYZ';
    micros bigint := floor(extract(epoch FROM clock_timestamp()) * 1000000);
    millis bigint := micros / 1000;
    sub integer := micros % 1000;
    result text := '';
    previous text := current_setting('syncqueue.last_id', true);
    i integer;
    pos integer;
BEGIN
    FOR i IN REVERSE 9..0 LOOP
        result := result || substr(alphabet, ((millis >> (5 * i)) & 31)::integer + 1, 1);
    END LOOP;
    result := result || substr(alphabet, (sub >> 5) + 1, 1) || substr(alphabet, (sub & 31) + 1, 1);
    FOR i IN 1..14 LOOP
        result := result || substr(alphabet, floor(random() * 32)::integer + 1, 1);
    END LOOP;
    IF previous IS NOT NULL AND previous <> '' AND result COLLATE "C" <= previous COLLATE "C" THEN
        result := previous;
        pos := 26;
        WHILE pos > 0 AND substr(result, pos, 1) = 'Z' LOOP
            result := overlay(result placing '0' from pos for 1);
            pos := pos - 1;
        END LOOP;
        result := overlay(result placing
            substr(alphabet, strpos(alphabet, substr(result, pos, 1)) + 1, 1) from pos for 1);
    END IF;
    PERFORM set_config('syncqueue.last_id', result, false);
    RETURN result;
END
$$;
"""

MARK_WAITING = r"""
CREATE FUNCTION syncqueue_mark_waiting(
    p_models text[], p_record_ids text[], p_counts integer[], p_first_ids text[]
) RETURNS void
LANGUAGE plpgsql AS $$
-- Records gain waiting (PENDING) changes (p_counts of them, the oldest p_first_ids): insert
-- each record's row or add to its count, in key order, so two callers never deadlock. The
-- row lock this takes is what makes a claim skip the record until the caller commits, and
-- the count is row arithmetic on the locked row, so a claim or an outcome committing
-- meanwhile never makes it miss a change. A record that starts waiting is claimable from
-- now (or from the end of its backoff), after the records that waited before it.
BEGIN
    INSERT INTO sync_record AS r (model, record_id, pending, waiting_id)
    SELECT w.model, w.record_id, sum(w.n), min(w.first_id)
    FROM unnest(p_models, p_record_ids, p_counts, p_first_ids) AS w(model, record_id, n, first_id)
    GROUP BY w.model, w.record_id
    ORDER BY w.model, w.record_id
    ON CONFLICT (model, record_id) DO UPDATE
    SET pending = r.pending + excluded.pending,
        available_at = CASE WHEN r.pending = 0 THEN greatest(r.available_at, now())
                            ELSE r.available_at END,
        waiting_id = CASE WHEN r.pending = 0 THEN excluded.waiting_id
                          ELSE least(r.waiting_id, excluded.waiting_id) END;
END
$$;
"""

ENQUEUE = r"""
CREATE FUNCTION syncqueue_enqueue(
    p_ids text[], p_actions sync_action[], p_models text[], p_record_ids text[],
    p_row_hints integer[], p_payloads jsonb[], p_max_retries integer[]
) RETURNS integer
LANGUAGE plpgsql AS $$
-- Store changes (a change whose id is already stored, a redelivered message, is skipped) and
-- mark their records as waiting; return how many were stored. max_retries NULL: 3.
DECLARE
    stored integer;
    models text[];
    record_ids text[];
    counts integer[];
    first_ids text[];
BEGIN
    WITH inserted AS (
        INSERT INTO sync_queue AS q (id, action, model, record_id, sheet_row_index, payload,
                                     max_retries)
        SELECT c.id, c.action, c.model, c.record_id, c.row_hint, c.payload,
               coalesce(c.max_retries, 3)
        FROM unnest(p_ids, p_actions, p_models, p_record_ids, p_row_hints, p_payloads,
                    p_max_retries) AS c(id, action, model, record_id, row_hint, payload,
                                        max_retries)
        ON CONFLICT (id) DO NOTHING
        RETURNING q.id, q.model, q.record_id
    ),
    per_record AS (
        SELECT i.model, i.record_id, count(*)::integer AS n, min(i.id) AS first_id
        FROM inserted AS i
        GROUP BY i.model, i.record_id
    )
    SELECT coalesce(sum(p.n), 0), array_agg(p.model), array_agg(p.record_id), array_agg(p.n),
           array_agg(p.first_id)
    INTO stored, models, record_ids, counts, first_ids
    FROM per_record AS p;
    IF stored > 0 THEN
        PERFORM syncqueue_mark_waiting(models, record_ids, counts, first_ids);
    END IF;
    RETURN stored;
END
$$;
"""


# A record's counts follow its changes whoever deletes them: cleanup and discard delete only
# COMPLETED and FAILED changes (which count nowhere), but an operator's own DELETE or TRUNCATE
# of sync_queue would otherwise leave records waiting for changes that are gone, and claims
# would pick those records first, forever.
CHANGES_GONE = r"""
CREATE FUNCTION syncqueue_changes_deleted() RETURNS trigger
LANGUAGE plpgsql AS $$
-- Deleted PENDING changes stop counting as waiting; deleted PROCESSING changes leave their
-- claim, which ends when none is left. Records are locked in key order first (as every
-- other statement that locks several records does), so this never deadlocks with them.
BEGIN
    PERFORM 1 FROM sync_record AS r
    WHERE (r.model, r.record_id) IN (
        SELECT g.model, g.record_id FROM gone AS g WHERE g.status IN ('PENDING', 'PROCESSING'))
    ORDER BY r.model, r.record_id
    FOR UPDATE;
    UPDATE sync_record AS r
    SET pending = greatest(r.pending - d.waiting, 0),
        in_flight = greatest(r.in_flight - d.held, 0),
        claim_token = CASE WHEN r.in_flight - d.held > 0 THEN r.claim_token END,
        claimed_at = CASE WHEN r.in_flight - d.held > 0 THEN r.claimed_at END
    FROM (
        SELECT g.model, g.record_id,
               count(*) FILTER (WHERE g.status = 'PENDING') AS waiting,
               count(*) FILTER (WHERE g.status = 'PROCESSING') AS held
        FROM gone AS g
        WHERE g.status IN ('PENDING', 'PROCESSING')
        GROUP BY g.model, g.record_id
    ) AS d
    WHERE r.model = d.model AND r.record_id = d.record_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER syncqueue_changes_deleted AFTER DELETE ON sync_queue
    REFERENCING OLD TABLE AS gone
    FOR EACH STATEMENT EXECUTE FUNCTION syncqueue_changes_deleted();

CREATE FUNCTION syncqueue_changes_truncated() RETURNS trigger
LANGUAGE plpgsql AS $$
-- No change is left: no record waits, no claim holds anything. The synced states stay.
BEGIN
    UPDATE sync_record
    SET pending = 0, in_flight = 0, claim_token = NULL, claimed_at = NULL
    WHERE pending <> 0 OR claim_token IS NOT NULL;
    RETURN NULL;
END
$$;
CREATE TRIGGER syncqueue_changes_truncated AFTER TRUNCATE ON sync_queue
    FOR EACH STATEMENT EXECUTE FUNCTION syncqueue_changes_truncated();
"""


def upgrade() -> None:
    op.create_table(
        "sync_record",
        sa.Column("model", sa.String(64), primary_key=True),
        sa.Column("record_id", sa.String(255), primary_key=True),
        sa.Column("pending", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "available_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("waiting_id", sa.String(26, collation="C"), nullable=True),
        sa.Column("claim_token", postgresql.UUID(as_uuid=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("in_flight", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "fields", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column(
            "versions", postgresql.JSONB(), server_default=sa.text("'{}'::jsonb"), nullable=False
        ),
        sa.Column("deleted_id", sa.String(26, collation="C"), nullable=True),
        sa.Column("created_id", sa.String(26, collation="C"), nullable=True),
        sa.Column("touched_id", sa.String(26, collation="C"), nullable=True),
        sa.Column("synced_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("pending >= 0", name="ck_sync_record_pending"),
        sa.CheckConstraint(
            "(claim_token IS NULL) = (claimed_at IS NULL)"
            " AND (claim_token IS NULL) = (in_flight = 0)",
            name="ck_sync_record_claim",
        ),
    )
    op.execute(
        "ALTER TABLE sync_record SET (autovacuum_vacuum_scale_factor = 0.02,"
        " autovacuum_analyze_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0)"
    )

    # --- data: claims back to PENDING, copies dropped, states from the COMPLETED history ---
    op.execute(
        "UPDATE sync_queue SET status = 'PENDING', claim_token = NULL, claimed_at = NULL"
        " WHERE status = 'PROCESSING'"
    )
    op.execute("""
        WITH done AS (  -- one row per change written (a copy counts for its original)
            SELECT DISTINCT ON (origin_id) origin_id AS version, action, model, record_id,
                   payload
            FROM sync_queue WHERE status = 'COMPLETED'
            ORDER BY origin_id
        ),
        marks AS (
            SELECT model, record_id,
                   max(version) FILTER (WHERE action = 'DELETE') AS deleted_id,
                   max(version) FILTER (WHERE action = 'CREATE') AS created_id,
                   max(version) FILTER (WHERE action <> 'DELETE') AS touched_id
            FROM done GROUP BY model, record_id
        ),
        latest AS (  -- per field, the newest change that set it after the newest DELETE
            SELECT DISTINCT ON (d.model, d.record_id, e.key)
                   d.model, d.record_id, e.key, e.value, d.version
            FROM done AS d
            JOIN marks AS m USING (model, record_id)
            CROSS JOIN LATERAL jsonb_each(d.payload) AS e
            WHERE d.action <> 'DELETE' AND (m.deleted_id IS NULL OR d.version > m.deleted_id)
            ORDER BY d.model, d.record_id, e.key, d.version DESC
        ),
        states AS (
            SELECT model, record_id, jsonb_object_agg(key, value) AS fields,
                   jsonb_object_agg(key, to_jsonb(version)) AS versions
            FROM latest GROUP BY model, record_id
        )
        INSERT INTO sync_record (model, record_id, fields, versions, deleted_id, created_id,
                                 touched_id, synced_at)
        SELECT m.model, m.record_id, coalesce(s.fields, '{}'), coalesce(s.versions, '{}'),
               m.deleted_id, m.created_id, m.touched_id, now()
        FROM marks AS m LEFT JOIN states AS s USING (model, record_id)
    """)
    op.execute("DELETE FROM sync_queue WHERE id <> origin_id")
    op.execute("""
        INSERT INTO sync_record AS r (model, record_id, pending, available_at, waiting_id)
        SELECT model, record_id, count(*), max(available_at), min(id) FROM sync_queue
        WHERE status = 'PENDING' GROUP BY model, record_id
        ON CONFLICT (model, record_id) DO UPDATE
        SET pending = excluded.pending, available_at = excluded.available_at,
            waiting_id = excluded.waiting_id
    """)
    op.execute("""
        INSERT INTO sync_record (model, record_id)
        SELECT DISTINCT model, record_id FROM sync_queue
        ON CONFLICT (model, record_id) DO NOTHING
    """)

    # --- schema: the order machinery goes -------------------------------------------------
    for index in (
        "ix_sync_queue_pending",
        "ix_sync_queue_record_pending",
        "ix_sync_queue_record",
        "ix_sync_queue_processing",
        "ix_sync_queue_backoff",
    ):
        op.drop_index(index, table_name="sync_queue")
    op.drop_column("sync_queue", "position")
    op.drop_column("sync_queue", "origin_id")
    op.drop_column("sync_queue", "available_at")
    op.create_index("ix_sync_queue_record", "sync_queue", ["model", "record_id", "status", "id"])
    op.create_index(
        "ix_sync_record_pending",
        "sync_record",
        ["available_at", "waiting_id"],
        postgresql_where=sa.text("pending > 0"),
    )
    op.create_index(
        "ix_sync_record_claimed",
        "sync_record",
        ["claimed_at"],
        postgresql_where=sa.text("claim_token IS NOT NULL"),
    )
    op.execute(NEW_ID)
    op.execute(MARK_WAITING)
    op.execute(ENQUEUE)
    op.execute(CHANGES_GONE)


def downgrade() -> None:
    op.execute("DROP TRIGGER syncqueue_changes_truncated ON sync_queue")
    op.execute("DROP TRIGGER syncqueue_changes_deleted ON sync_queue")
    op.execute("DROP FUNCTION syncqueue_changes_truncated()")
    op.execute("DROP FUNCTION syncqueue_changes_deleted()")
    op.execute(
        "DROP FUNCTION syncqueue_enqueue(text[], sync_action[], text[], text[], integer[],"
        " jsonb[], integer[])"
    )
    op.execute("DROP FUNCTION syncqueue_mark_waiting(text[], text[], integer[], text[])")
    op.execute("DROP FUNCTION syncqueue_new_id()")
    op.drop_index("ix_sync_queue_record", table_name="sync_queue")
    op.execute(
        "UPDATE sync_queue SET status = 'PENDING', claim_token = NULL, claimed_at = NULL"
        " WHERE status = 'PROCESSING'"
    )
    op.add_column(
        "sync_queue",
        sa.Column(
            "available_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
    )
    op.add_column("sync_queue", sa.Column("position", sa.String(255, collation="C")))
    op.add_column("sync_queue", sa.Column("origin_id", sa.String(26, collation="C")))
    op.execute("UPDATE sync_queue SET position = id, origin_id = id")
    op.alter_column("sync_queue", "position", nullable=False)
    op.alter_column("sync_queue", "origin_id", nullable=False)
    op.execute("""
        UPDATE sync_queue AS q SET available_at = r.available_at
        FROM sync_record AS r
        WHERE q.status = 'PENDING' AND r.model = q.model AND r.record_id = q.record_id
    """)
    op.drop_table("sync_record")
    op.create_index(
        "ix_sync_queue_pending",
        "sync_queue",
        ["position"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_index(
        "ix_sync_queue_record_pending",
        "sync_queue",
        ["model", "record_id", "position"],
        postgresql_where=sa.text("status = 'PENDING'"),
    )
    op.create_index("ix_sync_queue_record", "sync_queue", ["model", "record_id", "origin_id"])
    op.create_index(
        "ix_sync_queue_processing",
        "sync_queue",
        ["model", "record_id"],
        postgresql_where=sa.text("status = 'PROCESSING'"),
    )
    op.create_index(
        "ix_sync_queue_backoff",
        "sync_queue",
        ["available_at"],
        postgresql_where=sa.text("status = 'PENDING' AND available_at > created_at"),
    )
