"""Every SQL statement of the queue, in one place, each named and described.

Plain SQL on purpose: the locking and index use are the point, and they should be readable.
Arrays (``unnest``) carry whole batches in one round trip.
"""

from sqlalchemy import text

# Serialize stores against claims, per record: a transaction storing changes first takes an
# exclusive advisory lock per record (in key order, so two stores cannot deadlock), in a
# statement of its own so that INSERT's snapshot sees everything committed before the lock.
# A claim takes the record's shared lock with a try (never waits), so while a change of a
# record is being stored, no claim takes that record, and a claim in progress finishes first
# (a store that committed just before the claim took the lock: RELEASE_OVERTAKEN).
# Records hash into 1,024 lock keys, so one transaction holds at most that many advisory locks
# (PostgreSQL's shared lock table is sized by max_locks_per_transaction); records sharing a
# key only wait for each other a little.
LOCK_RECORDS = text("""
    SELECT pg_advisory_xact_lock(key)
    FROM (SELECT DISTINCT hashtextextended(m || '/' || r, 0) & 1023 AS key
          FROM unnest(CAST(:models AS text[]), CAST(:record_ids AS text[])) AS c(m, r)
          ORDER BY key) AS keys
""")

# Store changes (one or many) in one statement. The id is made by the caller and may arrive
# twice (a redelivered Celery message): ON CONFLICT makes the second insert a no-op.
# position (the order in which a record's changes are applied) starts as the id: enqueue order.
# A change normally arrives after every earlier one; one whose message was delayed or
# redelivered can arrive after a later change of its record was already claimed or written.
# The rows returned (per record, the changes enqueued after the first one just stored, by
# origin_id, via ix_sync_queue_record; usually none) let the caller detect that: a row that
# is not PENDING, or that was moved by an earlier replay (position <> id), means the record's
# suffix must be replayed (LATER_CHANGES, REPOSITION_LATER, COPY_LATER).
INSERT = text("""
    WITH inserted AS (
        INSERT INTO sync_queue (id, origin_id, position, action, model, record_id,
                                sheet_row_index, payload, max_retries)
        SELECT id, id, id, action, model, record_id, sheet_row_index, payload, max_retries
        FROM unnest(CAST(:ids AS text[]), CAST(:actions AS sync_action[]),
                    CAST(:models AS text[]), CAST(:record_ids AS text[]),
                    CAST(:sheet_row_indexes AS integer[]),
                    CAST(CAST(:payloads AS text[]) AS jsonb[]), CAST(:max_retries AS integer[]))
             AS c(id, action, model, record_id, sheet_row_index, payload, max_retries)
        ON CONFLICT (id) DO NOTHING
        RETURNING id, model, record_id
    ),
    arrived AS (
        SELECT model, record_id, min(id) AS first_id FROM inserted GROUP BY model, record_id
    )
    SELECT a.model, a.record_id, a.first_id AS arrived_id, s.id, s.status, s.position
    FROM arrived AS a
    JOIN sync_queue AS s
      ON s.model = a.model AND s.record_id = a.record_id AND s.origin_id > a.first_id
    WHERE s.status IN ('PENDING', 'PROCESSING', 'COMPLETED')
    ORDER BY s.model, s.record_id, s.origin_id, s.position
""")

# Replay, part 0: the rows of each record that must follow its anchor (a late change just
# stored, or a dead letter retried), in enqueue order (origin_id): the record's later changes
# and the anchor change's other rows (copies), in the order they would be applied. Run after
# INSERT / RETRY_FAILED in the same transaction, so it also sees the other changes of the
# record just stored or retried. Rows with an earlier origin_id are never positioned after the
# anchor: a position is the row's id or "<an earlier anchor's position>.n" (see RETRY_FAILED).
LATER_CHANGES = text("""
    SELECT l.anchor_id, l.anchor_origin, l.anchor_position, s.id, s.origin_id, s.status
    FROM unnest(CAST(:models AS text[]), CAST(:record_ids AS text[]), CAST(:anchor_ids AS text[]),
                CAST(:anchor_origins AS text[]), CAST(:anchor_positions AS text[]))
         AS l(model, record_id, anchor_id, anchor_origin, anchor_position)
    JOIN sync_queue AS s
      ON s.model = l.model AND s.record_id = l.record_id
     AND s.origin_id >= l.anchor_origin AND s.id <> l.anchor_id
    WHERE s.status IN ('PENDING', 'PROCESSING', 'COMPLETED')
    ORDER BY l.anchor_id, s.origin_id, s.position
""")

# Replay, part 1: the rows LATER_CHANGES found PENDING or claimed move to the positions right
# after the anchor (an anchor at position X gives X.000001, X.000002, ...: after X, before
# anything that followed X). The caller holds the records' exclusive locks; marks of claimed
# rows wait for them (LOCK_CLAIMED_RECORDS).
REPOSITION_LATER = text("""
    UPDATE sync_queue AS s SET position = r.position
    FROM unnest(CAST(:ids AS text[]), CAST(:positions AS text[])) AS r(id, position)
    WHERE s.id = r.id
""")

# Replay, part 2: a later change with no PENDING row (being or already written) is written
# again after the anchor, as a new PENDING copy (origin_id names the change it applies).
COPY_LATER = text("""
    INSERT INTO sync_queue (id, origin_id, position, action, model, record_id,
                            sheet_row_index, payload, max_retries)
    SELECT r.id, o.origin_id, r.position, o.action, o.model, o.record_id, o.sheet_row_index,
           o.payload, o.max_retries
    FROM unnest(CAST(:ids AS text[]), CAST(:positions AS text[]), CAST(:originals AS text[]))
         AS r(id, position, original)
    JOIN sync_queue AS o ON o.id = r.original
""")

# Claim a batch. One statement: pick, lock and mark in the same snapshot.
# - blocked: records that cannot give a change now: one is in flight (PROCESSING, read from
#   ix_sync_queue_processing) or waits out a backoff (ix_sync_queue_backoff holds only PENDING
#   rows sent back with a delay). Computed once, then probed as a hash per candidate, so the
#   changes queued behind such records cost a hash lookup each instead of index probes.
# - heads: the oldest PENDING change of each record that is not blocked, walked in position
#   (= enqueue) order on ix_sync_queue_pending (partial: only PENDING rows, so the cost follows
#   the backlog, not the history). The min() is a scalar subquery, probed once per candidate
#   on ix_sync_queue_record_pending whatever the statistics say. FAILED changes do not block.
# - The CASE makes sure the record's shared advisory lock (see LOCK_RECORDS) is only tried
#   for real heads: a record whose changes are being stored right now is skipped.
# - FOR UPDATE SKIP LOCKED: concurrent claimers skip heads another claimer is taking instead of
#   waiting; a head whose status changed meanwhile is re-checked and skipped.
# - batch: each head with the PENDING changes of its record that follow it, oldest first, up
#   to :batch_size rows, so one writer gets a record's queued changes together (and merges
#   them). No other claimer can take those followers: while the head is PENDING it is the
#   record's oldest change, and once it is PROCESSING the record is in flight. LATERAL: at
#   most :batch_size rows per head, read on ix_sync_queue_record_pending (a plain join let
#   the planner walk the whole backlog when one record held most of it).
CLAIM = text("""
    WITH blocked AS MATERIALIZED (
        SELECT p.model, p.record_id FROM sync_queue AS p WHERE p.status = 'PROCESSING'
        UNION
        SELECT b.model, b.record_id FROM sync_queue AS b
        WHERE b.status = 'PENDING' AND b.available_at > b.created_at AND b.available_at > now()
    ),
    heads AS (
        SELECT q.id, q.model, q.record_id, q.position
        FROM sync_queue AS q
        WHERE q.status = 'PENDING'
          AND q.available_at <= now()
          AND (q.model, q.record_id) NOT IN (SELECT x.model, x.record_id FROM blocked AS x)
          AND CASE
              WHEN q.position = (
                       SELECT min(e.position) FROM sync_queue AS e
                       WHERE e.model = q.model AND e.record_id = q.record_id
                         AND e.status = 'PENDING')
              THEN pg_try_advisory_xact_lock_shared(
                       hashtextextended(q.model || '/' || q.record_id, 0) & 1023)
              ELSE false
          END
        ORDER BY q.position
        LIMIT :batch_size
        FOR UPDATE SKIP LOCKED
    ),
    batch AS (
        SELECT f.id
        FROM heads AS h
        CROSS JOIN LATERAL (
            SELECT e.id, e.position FROM sync_queue AS e
            WHERE e.model = h.model AND e.record_id = h.record_id
              AND e.status = 'PENDING' AND e.position >= h.position
            ORDER BY e.position
            LIMIT :batch_size
        ) AS f
        ORDER BY f.position
        LIMIT :batch_size
    )
    UPDATE sync_queue AS s
    SET status = 'PROCESSING', claimed_at = now(), claim_token = :token
    FROM batch
    WHERE s.id = batch.id AND s.status = 'PENDING'
    RETURNING s.id, s.position, s.action, s.model, s.record_id, s.sheet_row_index, s.payload,
              s.retries, s.max_retries, s.created_at, s.claim_token
""")

# Claim, part 2, in the same transaction: give back what a late change overtook. CLAIM reads
# one snapshot, taken before it tries a record's advisory lock; a store that committed in
# between (its lock already released) is invisible to it, so it may have claimed changes
# that now come after a change just stored (a late arrival, or a replay's new positions).
# This statement runs with a fresh snapshot while the claim holds those records' shared
# locks (no store can commit for them until the claim commits), and returns to PENDING, as
# if never claimed, every claimed row positioned after a PENDING change of its record. It only
# touches rows this transaction locked (by id), so it never waits; usually it changes nothing.
RELEASE_OVERTAKEN = text("""
    UPDATE sync_queue AS s
    SET status = 'PENDING', claim_token = NULL, claimed_at = NULL
    WHERE s.id = ANY(CAST(:ids AS text[])) AND s.status = 'PROCESSING'
      AND s.position > (
          SELECT min(e.position) FROM sync_queue AS e
          WHERE e.model = s.model AND e.record_id = s.record_id AND e.status = 'PENDING')
    RETURNING s.id
""")

# Completing, failing or resetting claimed rows first takes their records' shared advisory
# locks (see LOCK_RECORDS), in key order, waiting. A store that replays a record moves that
# record's claimed rows too (queue._replay); without this, a store and a mark updating claimed
# rows of two records in opposite orders deadlock. Shared: marks do not wait for each other.
LOCK_CLAIMED_RECORDS = text("""
    SELECT pg_advisory_xact_lock_shared(key)
    FROM (SELECT DISTINCT hashtextextended(model || '/' || record_id, 0) & 1023 AS key
          FROM sync_queue WHERE id = ANY(CAST(:ids AS text[]))
          ORDER BY key) AS keys
""")

# PROCESSING -> COMPLETED, compare-and-set on (id, claim_token): a worker whose claim was
# taken away (reset_stuck, then another claim) matches nothing.
COMPLETE = text("""
    UPDATE sync_queue AS q
    SET status = 'COMPLETED', processed_at = now(), claim_token = NULL
    FROM unnest(CAST(:ids AS text[]), CAST(:tokens AS uuid[])) AS c(id, token)
    WHERE q.id = c.id AND q.claim_token = c.token AND q.status = 'PROCESSING'
    RETURNING q.id
""")

# PROCESSING -> PENDING (with backoff) or FAILED, atomically and compare-and-set, in bulk.
# retries counts failed attempts; once retries reaches max_retries the item is FAILED.
# count_attempt = false (a quota answer) leaves retries alone. retry_after (seconds), when
# given, replaces the exponential backoff min(cap, base * 2^retries) with equal jitter.
FAIL = text("""
    UPDATE sync_queue AS q
    SET retries = q.retries + CASE WHEN f.count_attempt THEN 1 ELSE 0 END,
        status = CASE
            WHEN NOT f.retryable OR (f.count_attempt AND q.retries + 1 >= q.max_retries)
            THEN 'FAILED'::queue_status ELSE 'PENDING'::queue_status END,
        available_at = now() + make_interval(secs => COALESCE(
            f.retry_after,
            LEAST(:backoff_max, :backoff_base * power(2, q.retries)) * (0.5 + random() / 2))),
        processed_at = CASE
            WHEN NOT f.retryable OR (f.count_attempt AND q.retries + 1 >= q.max_retries)
            THEN now() END,
        last_error = f.error,
        claim_token = NULL,
        claimed_at = NULL
    FROM unnest(CAST(:ids AS text[]), CAST(:tokens AS uuid[]), CAST(:errors AS text[]),
                CAST(:retryable AS boolean[]), CAST(:retry_after AS float8[]),
                CAST(:count_attempt AS boolean[]))
         AS f(id, token, error, retryable, retry_after, count_attempt)
    WHERE q.id = f.id AND q.claim_token = f.token AND q.status = 'PROCESSING'
    RETURNING q.id, q.status
""")

# Claims older than the threshold (their worker died or hung): chosen first, so that their
# records can be locked (LOCK_CLAIMED_RECORDS), then returned to PENDING by RESET_STUCK.
# Measures time since the claim (claimed_at), not the item's age. ix_sync_queue_processing.
STUCK = text("""
    SELECT id FROM sync_queue
    WHERE status = 'PROCESSING' AND claimed_at < now() - make_interval(secs => :seconds)
""")

RESET_STUCK = text("""
    UPDATE sync_queue
    SET status = 'PENDING', claim_token = NULL, claimed_at = NULL, available_at = now(),
        last_error = :reason
    WHERE id = ANY(CAST(:ids AS text[])) AND status = 'PROCESSING'
      AND claimed_at < now() - make_interval(secs => :seconds)
    RETURNING id
""")

# One bounded chunk of old COMPLETED rows (ix_sync_queue_completed); the caller loops, each
# chunk in its own short transaction. SKIP LOCKED lets two cleanups run side by side.
DELETE_COMPLETED_CHUNK = text("""
    DELETE FROM sync_queue
    WHERE id IN (
        SELECT id FROM sync_queue
        WHERE status = 'COMPLETED' AND processed_at < now() - make_interval(secs => :seconds)
        ORDER BY processed_at
        LIMIT :chunk
        FOR UPDATE SKIP LOCKED)
""")

# Dead letters an operator chose (filters optional, NULL = any; ix_sync_queue_failed): the
# caller locks their records (LOCK_RECORDS) before RETRY_FAILED changes them.
CHOOSE_FAILED = text("""
    SELECT id, model, record_id FROM sync_queue
    WHERE status = 'FAILED'
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(CAST(:ids AS text[])))
      AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
""")

# FAILED -> PENDING with a fresh retry budget. The rows returned anchor a replay: the record's
# later changes, already written while this one was parked, are applied again after it. A
# parked row keeps its position, which a later replay may have left behind older changes
# still waiting: then it moves right after the last of them ("<its position>.000000").
RETRY_FAILED = text("""
    UPDATE sync_queue AS s
    SET status = 'PENDING', retries = 0, available_at = now(), processed_at = NULL,
        position = greatest(s.position, (
            SELECT max(e.position) || '.000000' FROM sync_queue AS e
            WHERE e.model = s.model AND e.record_id = s.record_id
              AND e.origin_id < s.origin_id AND e.status IN ('PENDING', 'PROCESSING')))
    WHERE s.status = 'FAILED' AND s.id = ANY(CAST(:ids AS text[]))
    RETURNING s.id, s.model, s.record_id, s.origin_id, s.position
""")

# Delete dead letters for good (operators, after confirmation). ix_sync_queue_failed.
DISCARD_FAILED = text("""
    DELETE FROM sync_queue
    WHERE status = 'FAILED'
      AND (CAST(:ids AS text[]) IS NULL OR id = ANY(CAST(:ids AS text[])))
      AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
    RETURNING id
""")

# Dead letters with their last error, newest first. ix_sync_queue_failed.
LIST_FAILED = text("""
    SELECT id, action, model, record_id, retries, last_error, processed_at
    FROM sync_queue
    WHERE status = 'FAILED' AND (CAST(:model AS text) IS NULL OR model = CAST(:model AS text))
    ORDER BY id DESC
    LIMIT :limit
""")

# Queue health in one round trip. Each count uses its status's partial index, so the cost
# follows the rows of that status, not the table.
STATS = text("""
    SELECT
        (SELECT count(*) FROM sync_queue WHERE status = 'PENDING') AS pending,
        (SELECT count(*) FROM sync_queue WHERE status = 'PROCESSING') AS processing,
        (SELECT count(*) FROM sync_queue WHERE status = 'COMPLETED') AS completed,
        (SELECT count(*) FROM sync_queue WHERE status = 'FAILED') AS failed,
        (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM sync_queue
          WHERE status = 'PENDING' ORDER BY position LIMIT 1) AS oldest_pending_age_seconds,
        (SELECT count(*) FROM sync_queue
          WHERE status = 'FAILED' AND processed_at > now() - interval '24 hours')
          AS failed_last_24h,
        (SELECT count(*) FROM sync_queue
          WHERE status = 'COMPLETED' AND processed_at > now() - interval '1 hour')
          AS completed_last_hour
""")
