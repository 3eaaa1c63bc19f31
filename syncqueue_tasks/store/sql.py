"""Every SQL statement of the queue, in one place, each named and described.

Plain SQL on purpose: the locking and index use are the point, and they should be readable.
Arrays (``unnest``) carry whole batches in one round trip.

The record is the unit of work: ``sync_record`` holds one row per record with its claim (a
row lock taken with SKIP LOCKED, then a token), how many of its changes wait (``pending``),
its backoff (``available_at``) and what was last written (the state ``records.fold`` reads
and writes). Storing changes follows the database functions ``syncqueue_enqueue`` and
``syncqueue_mark_waiting`` (migration 0004), which the trigger capture calls.

Nothing here waits for a record another transaction holds, except storing changes: claims,
outcomes and ``reset_stuck`` lock records with SKIP LOCKED, so a worker never waits while
holding locks, and an application's open transaction cannot deadlock against it.
"""

from sqlalchemy import text

# Store changes (one or many) and mark their records as waiting: one statement, one round
# trip. The changes travel as one JSON array of objects (one parameter, parsed once; arrays
# of payload strings cost the client an escape pass per element). A change whose id is
# already stored (a redelivered message) is skipped. The rules of the database functions
# ``syncqueue_enqueue`` / ``syncqueue_mark_waiting`` (migration 0004, which the trigger
# capture calls), written inline: calling them costs a quarter of the server's time of a
# single change (tests/test_queue.py checks that both store alike). Records are marked in
# key order, after the changes are inserted, as there.
ENQUEUE = text("""
    WITH c AS MATERIALIZED (
        SELECT * FROM jsonb_to_recordset(CAST(:changes AS jsonb))
            AS c(id text, action sync_action, model text, record_id text, row_hint integer,
                 payload jsonb, max_retries integer)
    ),
    inserted AS (
        INSERT INTO sync_queue AS q (id, action, model, record_id, sheet_row_index, payload,
                                     max_retries)
        SELECT c.id, c.action, c.model, c.record_id, c.row_hint, c.payload,
               coalesce(c.max_retries, 3)
        FROM c
        ON CONFLICT (id) DO NOTHING
        RETURNING q.id, q.model, q.record_id
    ),
    marked AS (
        INSERT INTO sync_record AS r (model, record_id, pending, waiting_id)
        SELECT i.model, i.record_id, count(*), min(i.id)
        FROM inserted AS i
        GROUP BY i.model, i.record_id
        ORDER BY i.model, i.record_id
        ON CONFLICT (model, record_id) DO UPDATE
        SET pending = r.pending + excluded.pending,
            available_at = CASE WHEN r.pending = 0 THEN greatest(r.available_at, now())
                                ELSE r.available_at END,
            waiting_id = CASE WHEN r.pending = 0 THEN excluded.waiting_id
                              ELSE least(r.waiting_id, excluded.waiting_id) END
        RETURNING 1
    )
    SELECT count(*) FROM inserted
""")

# Claim a batch of records with their waiting changes, in one statement.
# - picked: records with waiting changes, claimable now and not held by a claim, in the order
#   they became claimable, then by their oldest waiting change (ix_sync_record_pending: its
#   size is the records with work, so one hot record's backlog is one entry). FOR UPDATE SKIP
#   LOCKED: claimers never wait for each other, nor for a transaction storing a change of
#   the record.
# - wanted: each record's oldest PENDING changes, read on ix_sync_queue_record (one range per
#   record, whatever its history), at most :max_changes in all. Which of a record's changes a
#   claim takes does not matter: they are applied by version. (= ANY(ARRAY(...)): by primary
#   key, whatever the planner guesses of wanted's size; a join let it scan the table.)
# - claimed: the records get the token, and lose from ``pending`` exactly the changes taken.
#   (A change committed after this statement's snapshot is not taken, and stays counted.) A
#   picked record that got no change is not claimed.
# A record's rows come together, oldest change first; only that first row carries the record's
# synced fields and versions (the rest: NULL), so they are sent and decoded once per record.
CLAIM = text("""
    WITH picked AS (
        SELECT r.model, r.record_id FROM sync_record AS r
        WHERE r.pending > 0 AND r.available_at <= now() AND r.claim_token IS NULL
        ORDER BY r.available_at, r.waiting_id
        LIMIT :max_records
        FOR UPDATE SKIP LOCKED
    ),
    wanted AS (
        SELECT e.id FROM picked AS p
        CROSS JOIN LATERAL (
            SELECT q.id FROM sync_queue AS q
            WHERE q.model = p.model AND q.record_id = p.record_id AND q.status = 'PENDING'
            ORDER BY q.id
            LIMIT :max_changes
        ) AS e
        LIMIT :max_changes
    ),
    taken AS (
        UPDATE sync_queue AS q
        SET status = 'PROCESSING', claim_token = :token, claimed_at = now()
        WHERE q.id = ANY(ARRAY(SELECT w.id FROM wanted AS w)) AND q.status = 'PENDING'
        RETURNING q.id, q.action, q.model, q.record_id, q.sheet_row_index, q.payload,
                  q.retries, q.max_retries, q.created_at
    ),
    claimed AS (
        UPDATE sync_record AS r
        SET claim_token = :token, claimed_at = now(), pending = r.pending - t.n, in_flight = t.n
        FROM (SELECT model, record_id, count(*) AS n FROM taken GROUP BY model, record_id) AS t
        WHERE r.model = t.model AND r.record_id = t.record_id
        RETURNING r.model, r.record_id, r.fields, r.versions, r.deleted_id, r.created_id,
                  r.touched_id
    )
    SELECT c.model, c.record_id, t.id, t.action, t.sheet_row_index, t.payload, t.retries,
           t.max_retries, t.created_at,
           CASE WHEN row_number() OVER w = 1 THEN c.fields END AS fields,
           CASE WHEN row_number() OVER w = 1 THEN c.versions END AS versions,
           c.deleted_id, c.created_id, c.touched_id
    FROM claimed AS c JOIN taken AS t USING (model, record_id)
    WINDOW w AS (PARTITION BY c.model, c.record_id ORDER BY t.id)
    ORDER BY c.model, c.record_id, t.id
""")

# Record outcomes, in one statement. One row per record (a JSON array of objects, one
# parameter: no array of strings to escape): its claim's token, the changes the outcome covers
# (a JSON array of ids; null: every change the claim holds of the record), the outcome, and
# for a done record its new synced state. Compare-and-set on the token
# throughout: a claim that reset_stuck took away matches nothing.
# Every step starts from the given rows (or the locked ones) and looks rows up by an index,
# never joins two computed lists: the planner guesses one row for such lists, and a join of
# two of them compares every pair (a batch of a thousand records: a million comparisons).
# - locked: the given records still held by those claims, locked in key order with SKIP
#   LOCKED. A record another transaction holds right now (an application storing a change of
#   it) is skipped: the caller records it again on its own (RECORDS_HELD tells which), so a
#   worker never waits holding locks and cannot deadlock.
# - changed: the covered changes (ix_sync_queue_record, per record): done -> COMPLETED; fail
#   -> FAILED; retry -> PENDING, or FAILED once max_retries attempts failed (count_attempt =
#   false, a quota answer, leaves retries alone).
# - the record (counting its covered changes as they were before this statement): those back
#   to PENDING count as waiting again; a retry sets the record's backoff, retry_after
#   (seconds) or min(cap, base * 2^(retries - 1)) with equal jitter, so all its changes wait
#   together; a done record takes its new state; ``in_flight`` (how many of its changes the
#   claim still holds) goes down, and at 0 the claim ends.
FINISH = text("""
    WITH locked AS MATERIALIZED (
        SELECT g.* FROM jsonb_to_recordset(CAST(:rows AS jsonb))
            AS g(model text, record_id text, token uuid, ids jsonb, kind text, error text,
                 retry_after float8, count_attempt boolean, state jsonb)
        JOIN sync_record AS r
          ON r.model = g.model AND r.record_id = g.record_id AND r.claim_token = g.token
        ORDER BY g.model, g.record_id
        FOR UPDATE OF r SKIP LOCKED
    ),
    changed AS (
        UPDATE sync_queue AS q SET
            status = CASE
                WHEN l.kind = 'done' THEN 'COMPLETED'::queue_status
                WHEN l.kind = 'fail' OR (l.count_attempt AND q.retries + 1 >= q.max_retries)
                THEN 'FAILED'::queue_status
                ELSE 'PENDING'::queue_status END,
            retries = q.retries + CASE WHEN l.kind <> 'done' AND l.count_attempt THEN 1 ELSE 0 END,
            processed_at = CASE
                WHEN l.kind <> 'retry' OR (l.count_attempt AND q.retries + 1 >= q.max_retries)
                THEN now() END,
            last_error = CASE WHEN l.kind = 'done' THEN q.last_error ELSE l.error END,
            claim_token = NULL,
            claimed_at = NULL
        FROM locked AS l
        WHERE q.model = l.model AND q.record_id = l.record_id AND q.status = 'PROCESSING'
          AND q.claim_token = l.token AND (l.ids IS NULL OR l.ids ? q.id)
        RETURNING q.id, q.model, q.record_id, q.status
    ),
    records AS (
        UPDATE sync_record AS r SET
            pending = r.pending + c.back,
            available_at = CASE WHEN c.back = 0 THEN r.available_at
                ELSE now() + make_interval(secs => coalesce(l.retry_after,
                    least(:backoff_max, :backoff_base * power(2, greatest(c.retries - 1, 0)))
                    * (0.5 + random() / 2))) END,
            fields = CASE WHEN l.state IS NULL THEN r.fields ELSE l.state -> 'fields' END,
            versions = CASE WHEN l.state IS NULL THEN r.versions ELSE l.state -> 'versions' END,
            deleted_id = CASE WHEN l.state IS NULL THEN r.deleted_id
                              ELSE l.state ->> 'deleted' END,
            created_id = CASE WHEN l.state IS NULL THEN r.created_id
                              ELSE l.state ->> 'created' END,
            touched_id = CASE WHEN l.state IS NULL THEN r.touched_id
                              ELSE l.state ->> 'touched' END,
            synced_at = CASE WHEN l.state IS NULL THEN r.synced_at ELSE now() END,
            in_flight = r.in_flight - c.n,
            claim_token = CASE WHEN r.in_flight = c.n THEN NULL ELSE r.claim_token END,
            claimed_at = CASE WHEN r.in_flight = c.n THEN NULL ELSE r.claimed_at END
        FROM locked AS l
        CROSS JOIN LATERAL (
            SELECT count(*) AS n,
                   count(*) FILTER (WHERE l.kind = 'retry'
                       AND NOT (l.count_attempt AND q.retries + 1 >= q.max_retries)) AS back,
                   max(q.retries + CASE WHEN l.count_attempt THEN 1 ELSE 0 END) AS retries
            FROM sync_queue AS q
            WHERE q.model = l.model AND q.record_id = l.record_id AND q.status = 'PROCESSING'
              AND q.claim_token = l.token AND (l.ids IS NULL OR l.ids ? q.id)
        ) AS c
        WHERE r.model = l.model AND r.record_id = l.record_id AND c.n > 0
        RETURNING r.model
    )
    SELECT c.id, c.model, c.record_id, c.status FROM changed AS c
""")

# Which of these records (model, record_id, token) do the given claims still hold? After a
# FINISH skipped some, this tells held-by-someone-else (record again) from lost (done).
RECORDS_HELD = text("""
    SELECT r.model, r.record_id FROM sync_record AS r
    WHERE (r.model, r.record_id, r.claim_token) IN (
        SELECT * FROM unnest(CAST(:models AS text[]), CAST(:record_ids AS text[]),
                             CAST(:tokens AS uuid[])))
""")

# Take a record's lock, waiting (under the caller's lock_timeout), before a FINISH of that one
# record: the fallback for a record FINISH skipped. One record per transaction, so the wait
# holds no other lock.
LOCK_RECORD = text("""
    SELECT 1 FROM sync_record
    WHERE model = :model AND record_id = :record_id AND claim_token = :token
    FOR UPDATE
""")

# Changes still PROCESSING, by id, with their tokens (marks given only ids and tokens).
CLAIMED_CHANGES = text("""
    SELECT id, model, record_id, claim_token, action, payload FROM sync_queue
    WHERE id = ANY(CAST(:ids AS text[])) AND status = 'PROCESSING'
""")

# This transaction's lock_timeout (the wait of LOCK_RECORD).
SET_LOCK_TIMEOUT = text("SELECT set_config('lock_timeout', :ms, true)")

# This transaction's statement and lock timeouts: a worker's store of an enqueue message gives
# up on a slow database or a held record, and tries again (celery.publishing).
SET_STORE_TIMEOUTS = text(
    "SELECT set_config('statement_timeout', :ms, true), set_config('lock_timeout', :ms, true)"
)

# The state of records these claims hold (mark_complete_many folds completed changes onto it).
CLAIMED_STATES = text("""
    SELECT r.model, r.record_id, r.claim_token, r.fields, r.versions, r.deleted_id,
           r.created_id, r.touched_id
    FROM sync_record AS r
    WHERE (r.model, r.record_id, r.claim_token) IN (
        SELECT * FROM unnest(CAST(:models AS text[]), CAST(:record_ids AS text[]),
                             CAST(:tokens AS uuid[])))
""")

# Claims held longer than the threshold (their worker died or hung) end: their changes go back
# to PENDING and count as waiting again. Measures time since the claim, not the change's age.
# SKIP LOCKED: a record locked right now is reset by the next run.
RESET_STUCK = text("""
    WITH stuck AS (
        SELECT r.model, r.record_id, r.claim_token FROM sync_record AS r
        WHERE r.claim_token IS NOT NULL
          AND r.claimed_at < now() - make_interval(secs => :seconds)
        ORDER BY r.model, r.record_id
        FOR UPDATE SKIP LOCKED
    ),
    back AS (
        UPDATE sync_queue AS q
        SET status = 'PENDING', claim_token = NULL, claimed_at = NULL, last_error = :reason
        FROM stuck AS s
        WHERE q.model = s.model AND q.record_id = s.record_id AND q.status = 'PROCESSING'
          AND q.claim_token = s.claim_token
        RETURNING q.model, q.record_id
    ),
    records AS (
        UPDATE sync_record AS r
        SET claim_token = NULL, claimed_at = NULL, in_flight = 0,
            pending = r.pending + coalesce(b.n, 0)
        FROM stuck AS s
        LEFT JOIN (SELECT model, record_id, count(*) AS n FROM back GROUP BY model, record_id)
            AS b USING (model, record_id)
        WHERE r.model = s.model AND r.record_id = s.record_id
        RETURNING r.model
    )
    SELECT count(*) FROM back
""")

# One bounded chunk of old COMPLETED rows (ix_sync_queue_completed); the caller loops, each
# chunk in its own short transaction. SKIP LOCKED lets two cleanups run side by side. The
# records keep their state: nothing a later change needs is deleted.
DELETE_COMPLETED_CHUNK = text("""
    DELETE FROM sync_queue
    WHERE id IN (
        SELECT id FROM sync_queue
        WHERE status = 'COMPLETED' AND processed_at < now() - make_interval(secs => :seconds)
        ORDER BY processed_at
        LIMIT :chunk
        FOR UPDATE SKIP LOCKED)
""")

# Dead letters an operator chose (filters optional, NULL = any; ix_sync_queue_failed) go back
# to PENDING with a fresh retry budget, and their records count them as waiting. A retried
# change is applied by version: it sets only the fields no newer change has set.
RETRY_FAILED = text("""
    WITH retried AS (
        UPDATE sync_queue
        SET status = 'PENDING', retries = 0, processed_at = NULL
        WHERE status = 'FAILED'
          AND (CAST(:ids AS text[]) IS NULL OR id = ANY(CAST(:ids AS text[])))
          AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
        RETURNING id, model, record_id
    ),
    per_record AS (
        SELECT model, record_id, count(*)::integer AS n, min(id) AS first_id
        FROM retried GROUP BY model, record_id
    )
    SELECT coalesce(sum(n), 0) AS retried,
           syncqueue_mark_waiting(array_agg(model), array_agg(record_id), array_agg(n),
                                  array_agg(first_id))
    FROM per_record
""")

# Delete dead letters for good (operators, after confirmation). ix_sync_queue_failed.
DISCARD_FAILED = text("""
    DELETE FROM sync_queue
    WHERE status = 'FAILED'
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(CAST(:ids AS text[])))
      AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
    RETURNING id
""")

# How many dead letters a retry or discard would touch (same filters; the CLI asks first).
COUNT_FAILED = text("""
    SELECT count(*) FROM sync_queue
    WHERE status = 'FAILED'
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(CAST(:ids AS text[])))
      AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
""")

# Dead letters with their last error, newest first. ix_sync_queue_failed.
LIST_FAILED = text("""
    SELECT id, action, model, record_id, retries, last_error, processed_at
    FROM sync_queue
    WHERE status = 'FAILED' AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
    ORDER BY id DESC
    LIMIT :limit
""")

# Queue health in one round trip, each figure from an index that holds only what it counts:
# waiting changes and their age from the records with work (ix_sync_record_pending), changes
# in flight from the claimed records (ix_sync_record_claimed, then ix_sync_queue_record),
# COMPLETED and FAILED from their partial indexes.
STATS = text("""
    SELECT
        (SELECT coalesce(sum(pending), 0) FROM sync_record WHERE pending > 0) AS pending,
        (SELECT count(*) FROM sync_record AS r JOIN sync_queue AS q
           ON q.model = r.model AND q.record_id = r.record_id AND q.status = 'PROCESSING'
          WHERE r.claim_token IS NOT NULL) AS processing,
        (SELECT count(*) FROM sync_queue WHERE status = 'COMPLETED') AS completed,
        (SELECT count(*) FROM sync_queue WHERE status = 'FAILED') AS failed,
        (SELECT EXTRACT(EPOCH FROM now() - min(available_at))::float8 FROM sync_record
          WHERE pending > 0) AS oldest_pending_age_seconds,
        (SELECT count(*) FROM sync_record WHERE pending > 0 AND available_at > now())
          AS records_in_backoff,
        (SELECT count(*) FROM sync_queue
          WHERE status = 'FAILED' AND processed_at > now() - interval '24 hours')
          AS failed_last_24h,
        (SELECT count(*) FROM sync_queue
          WHERE status = 'COMPLETED' AND processed_at > now() - interval '1 hour')
          AS completed_last_hour
""")

# One record: its claim, its waiting count and its synced state (primary key).
RECORD = text("""
    SELECT model, record_id, pending, available_at, claim_token, claimed_at, fields, versions,
           deleted_id, created_id, touched_id, synced_at
    FROM sync_record WHERE model = :model AND record_id = :record_id
""")

# One record's changes still in the queue, in id (= version) order (ix_sync_queue_record).
RECORD_CHANGES = text("""
    SELECT id, action, status, payload, retries, max_retries, last_error, created_at,
           claimed_at, processed_at
    FROM sync_queue WHERE model = :model AND record_id = :record_id
    ORDER BY id
    LIMIT :limit
""")

# The synced state of a model's records (all, or those of :record_ids), by record id (primary
# key), with whether a claim holds the record now (its row may be mid-write): ``verify``
# compares a tab with them, the Sheets writer repairs rows from them.
SYNCED_RECORDS = text("""
    SELECT record_id, fields, versions, deleted_id, created_id, touched_id,
           claim_token IS NOT NULL AS claimed, synced_at
    FROM sync_record
    WHERE model = :model
      AND (CAST(:record_ids AS text[]) IS NULL OR record_id = ANY(CAST(:record_ids AS text[])))
    ORDER BY record_id
""")

# The written state of a model's records among :record_ids with no change waiting and none in
# a claim (primary key): ``capture.backfill`` skips rows the destination already has.
SETTLED_RECORDS = text("""
    SELECT record_id, fields, versions, deleted_id, created_id, touched_id FROM sync_record
    WHERE model = :model AND record_id = ANY(:record_ids) AND pending = 0
      AND claim_token IS NULL
""")

# How many of the given changes are in each status (``syncqueue demo`` follows its changes).
STATUS_COUNTS = text("""
    SELECT status::text AS status, count(*) AS n FROM sync_queue
    WHERE id = ANY(CAST(:ids AS text[])) GROUP BY status
""")

# The server's version (``syncqueue doctor``).
SERVER_VERSION = text("SHOW server_version")

# Whether a database exists, for psycopg (``%s``: its name): the embedded stack creates it.
DATABASE_EXISTS = "SELECT 1 FROM pg_database WHERE datname = %s"


# ---------------------------------------------------------------------------- the dashboard

# Per model: waiting changes (sync_record.pending, on ix_sync_record_pending) and when its
# oldest waiting change was stored (each waiting record's oldest change, by primary key);
# changes in flight (claimed records' PROCESSING rows, on ix_sync_record_claimed); dead
# letters (ix_sync_queue_failed). Never the COMPLETED history: this runs every few seconds.
ITEMS_BY_MODEL = text("""
    SELECT model, sum(pending)::integer AS pending, sum(processing)::integer AS processing,
           sum(failed)::integer AS failed, min(stored_at) AS oldest_pending_at
    FROM (
        SELECT r.model, r.pending, 0 AS processing, 0 AS failed, q.created_at AS stored_at
        FROM sync_record AS r LEFT JOIN sync_queue AS q ON q.id = r.waiting_id
        WHERE r.pending > 0
        UNION ALL
        SELECT q.model, 0, 1, 0, NULL
        FROM sync_record AS r
        JOIN sync_queue AS q
          ON q.model = r.model AND q.record_id = r.record_id AND q.status = 'PROCESSING'
        WHERE r.claim_token IS NOT NULL
        UNION ALL
        SELECT model, 0, 0, 1, NULL FROM sync_queue WHERE status = 'FAILED'
    ) AS live
    GROUP BY model
    ORDER BY model
""")

# Items written in the last hour (a range of ix_sync_queue_completed), and the records waiting
# out a backoff: waiting records not claimable before a time still to come
# (ix_sync_record_pending).
ACTIVITY = text("""
    SELECT (SELECT count(*) FROM sync_queue
             WHERE status = 'COMPLETED' AND processed_at > now() - interval '1 hour')
             AS completed_last_hour,
           count(*) AS records_in_backoff,
           min(available_at) AS next_retry_at
    FROM sync_record
    WHERE pending > 0 AND available_at > now()
""")

# The FAILED items an operator picked (ids and/or model; NULL = any), oldest first, with how
# many match in all (a window count, computed before the LIMIT). ix_sync_queue_failed.
FAILED_CHOICE = text("""
    SELECT id, action, model, record_id, count(*) OVER () AS total
    FROM sync_queue
    WHERE status = 'FAILED'
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(CAST(:ids AS text[])))
      AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
    ORDER BY id
    LIMIT :limit
""")
