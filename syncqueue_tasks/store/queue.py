"""The queue: store changes, claim records with their changes, record outcomes, operate.

The record is the unit of work (see ``sql.py``). A claim holds a record exclusively, with all
the changes of it that it took; a writer gets each record's changes folded onto what was last
written (``records.record_write``); the outcome moves the changes to COMPLETED / PENDING /
FAILED and, when done, the record's synced state on, in one statement guarded by the token.

Per-record order holds by construction: changes are applied by version (their id), so a late
change, a redelivered one or a retried dead letter sets only what no newer change has set,
whatever order changes arrive in and however they are split into claims.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Concatenate, NamedTuple, ParamSpec, TypedDict, TypeVar, cast

from sqlalchemy import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session

from syncqueue_tasks.core.errors import ValidationError, sanitize_error
from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.core.items import QueueItem, QueueStatus, SyncAction
from syncqueue_tasks.core.outcomes import Outcome, OutcomeKind
from syncqueue_tasks.core.records import RecordKey, RecordState, fold
from syncqueue_tasks.core.validation import (
    Change,
    Limits,
    validate_age,
    validate_batch_size,
    validate_change,
    validate_changes,
    validate_item_id,
    validate_limit,
)
from syncqueue_tasks.settings import QueueConfig, Settings, get_settings
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.db import Database, fetch, get_database, is_disconnect, scalar
from syncqueue_tasks.store.synced import state_of

log = logging.getLogger(__name__)

# A record another transaction holds when its outcome is recorded (an application storing a
# change of it in an open transaction) is recorded again on its own, waiting this long at most;
# after that the claim is left to reset_stuck (the changes are written again later).
_RECORD_LOCK_WAIT_SECONDS = 5.0

# Enum members by value, for rows (faster than calling the enum).
_ACTIONS = {a.value: a for a in SyncAction}
_STATUSES = {s.value: s for s in QueueStatus}


class Claim(NamedTuple):
    """An item id plus the claim token ``dequeue`` gave for it."""

    id: str
    claim_token: uuid.UUID


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed item for ``mark_failed_many``."""

    item: QueueItem | Claim
    error: BaseException | str
    retryable: bool = True
    retry_after: float | None = None
    count_attempt: bool = True


@dataclass(frozen=True, slots=True)
class ClaimedRecord:
    """A record a claim holds: what was last written, and the changes the claim took."""

    key: RecordKey
    base: RecordState
    changes: tuple[QueueItem, ...]

    @property
    def row_hint(self) -> int | None:
        """The newest ``sheet_row_index`` hint among the changes."""
        hints = [c.sheet_row_index for c in self.changes if c.sheet_row_index is not None]
        return hints[-1] if hints else None


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """What one claim holds."""

    token: uuid.UUID
    records: tuple[ClaimedRecord, ...] = ()

    @property
    def items(self) -> list[QueueItem]:
        """Every claimed change, oldest first."""
        return sorted((c for r in self.records for c in r.changes), key=lambda c: c.id)


@dataclass
class FinishReport:
    """What recording the outcomes of a batch did, counted in changes."""

    completed: int = 0
    retried: int = 0
    failed: int = 0
    not_owned: int = 0


class QueueStats(TypedDict):
    """What ``get_queue_stats`` returns (JSON-ready: ``syncqueue stats --json`` prints it)."""

    pending: int  # changes waiting (not in flight)
    processing: int  # changes a claim holds
    completed: int  # COMPLETED changes still kept
    failed: int  # dead letters
    oldest_pending_age_seconds: float  # since the oldest waiting record became due; 0.0: none
    records_in_backoff: int  # records whose waiting changes wait out a retry backoff
    failed_last_24h: int
    completed_last_hour: int


class FailedItem(TypedDict):
    """One dead letter as ``list_failed`` returns it."""

    id: str
    action: str  # CREATE, UPDATE or DELETE
    model: str
    record_id: str
    retries: int
    last_error: str | None
    processed_at: datetime | None  # when it failed for good


class RecordChange(TypedDict):
    """One change of a record as ``get_record`` returns it (``RecordView.changes``)."""

    id: str
    action: str  # CREATE, UPDATE or DELETE
    status: str  # PENDING, PROCESSING, COMPLETED or FAILED
    payload: dict[str, Any]
    retries: int
    max_retries: int
    last_error: str | None
    created_at: datetime
    claimed_at: datetime | None
    processed_at: datetime | None


@dataclass(frozen=True, slots=True)
class RecordView:
    """One record as the queue knows it: its claim, waiting count, synced state, changes."""

    key: RecordKey
    pending: int
    available_at: datetime
    claimed_at: datetime | None
    state: RecordState
    synced_at: datetime | None
    changes: list[RecordChange] = field(default_factory=list)


# ---------------------------------------------------------------------------- helpers


def assign_ids(count: int, item_ids: object) -> list[str]:
    """Fresh ids for ``count`` changes, or the given ones: a list of valid ids, one per change,
    unique."""
    if item_ids is None:
        return [new_id() for _ in range(count)]
    if isinstance(item_ids, Mapping | str | bytes) or not isinstance(item_ids, Iterable):
        raise ValidationError("item_ids", "must be a list of ids")
    ids = [validate_item_id(i) for i in item_ids]
    if len(ids) != count or len(set(ids)) != len(ids):
        raise ValidationError("item_ids", "must be unique, one per change")
    return ids


def changes_json(changes: Sequence[Change], ids: Sequence[str]) -> str:
    """``sql.ENQUEUE``'s parameter: the changes as one JSON array (payloads as serialized).

    The validated integers need no escaping; texts do.
    """
    dumps = json.dumps
    return (
        "["
        + ",".join(
            f'{{"id":{dumps(i)},"action":"{c.action.value}","model":{dumps(c.model)},'
            f'"record_id":{dumps(c.record_id)},'
            f'"row_hint":{"null" if c.sheet_row_index is None else c.sheet_row_index},'
            f'"payload":{c.payload_json},"max_retries":{c.max_retries}}}'
            for c, i in zip(changes, ids, strict=True)
        )
        + "]"
    )


def _claim(item: QueueItem | Claim) -> Claim:
    if isinstance(item, Claim):
        return item
    return Claim(item.id, item.claim_token)


class _Claimed(NamedTuple):
    """A claimed change as the outcome statements need it."""

    id: str
    model: str
    record_id: str
    claim_token: uuid.UUID
    action: SyncAction
    payload: dict[str, Any]


class _Ending(NamedTuple):
    """One record's outcome, for the changes a claim holds of it (``ids``; None: all)."""

    key: RecordKey
    token: uuid.UUID
    ids: tuple[str, ...] | None
    outcome: Outcome
    state: RecordState | None  # the record's new synced state, for a done outcome


def _rounds(endings: Sequence[_Ending]) -> list[list[_Ending]]:
    """Split ``endings`` so that no round names a record twice."""
    rounds: list[tuple[list[_Ending], set[RecordKey]]] = []
    for ending in endings:
        for round_, keys in rounds:
            if ending.key not in keys:
                round_.append(ending)
                keys.add(ending.key)
                break
        else:
            rounds.append(([ending], {ending.key}))
    return [round_ for round_, _ in rounds]


def finish_params(endings: Sequence[_Ending], config: QueueConfig) -> dict[str, Any]:
    """``sql.FINISH``'s parameters: one JSON object per record (see the statement)."""
    rows = [
        {
            "model": e.key.model,
            "record_id": e.key.record_id,
            "token": str(e.token),
            "ids": e.ids,
            "kind": e.outcome.kind.value,
            "error": e.outcome.error or None,
            "retry_after": None
            if e.outcome.retry_after is None
            else max(0.0, e.outcome.retry_after),
            "count_attempt": e.outcome.count_attempt,
            "state": None
            if e.state is None
            else {
                "fields": e.state.fields,
                "versions": e.state.versions,
                "deleted": e.state.deleted,
                "created": e.state.created,
                "touched": e.state.touched,
            },
        }
        for e in endings
    ]
    return {
        "rows": json.dumps(rows),
        "backoff_base": config.backoff_base_seconds,
        "backoff_max": config.backoff_max_seconds,
    }


def _report(ids: Sequence[str], statuses: Mapping[str, QueueStatus]) -> FinishReport:
    """What happened to the changes ``ids``, counted."""
    report = FinishReport()
    for change_id in ids:
        status = statuses.get(change_id)
        if status is None:
            report.not_owned += 1
        elif status is QueueStatus.COMPLETED:
            report.completed += 1
        elif status is QueueStatus.PENDING:
            report.retried += 1
        else:
            report.failed += 1
    return report


# Recording outcomes survives a short database outage (a PostgreSQL restart): without it the
# changes stay PROCESSING until reset_stuck and are written a second time. FINISH is safe to
# repeat: a change already recorded is no longer PROCESSING and matches nothing.
_RECORD_RETRY_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


# ---------------------------------------------------------------------------- the queue


class QueueStore:
    """The queue's operations on one database, with the limits and config passed in.

    ``QueueStore(Database.connect(DatabaseConfig(url=...)), limits=Limits(...))`` is a queue
    that reads no environment; the module's functions (``queue.enqueue`` & co.) are the
    methods of :func:`default_queue`, the process's queue made from the environment.
    """

    def __init__(
        self,
        database: Database,
        *,
        limits: Limits | None = None,
        config: QueueConfig | None = None,
    ) -> None:
        self.database = database
        self.limits = limits or Limits()
        self.config = config or QueueConfig()

    def enqueue(
        self,
        action: SyncAction | str,
        model: str,
        record_id: str | int,
        payload: dict[str, Any],
        *,
        sheet_row_index: int | None = None,
        max_retries: int | None = None,
        session: Session | None = None,
        item_id: str | None = None,
        fail_fast: bool = False,
    ) -> str:
        """Validate and store one change; return its id.

        With ``session`` the row joins the caller's transaction (transactional outbox); without,
        it commits on its own. ``item_id`` lets a caller choose the id up front (then a second
        call with the same id is a no-op): the Celery task uses it to make redelivery harmless.
        ``fail_fast``: raise rather than wait for a record held by an open transaction or a slow
        database (see :func:`store`), for callers with somewhere else to send the change.
        """
        change = validate_change(
            action, model, record_id, payload, sheet_row_index, max_retries, limits=self.limits
        )
        item_id = new_id() if item_id is None else validate_item_id(item_id)
        self.store([change], [item_id], session=session, fail_fast=fail_fast)
        return item_id

    def enqueue_many(
        self,
        changes: Iterable[Any],
        *,
        session: Session | None = None,
        item_ids: Sequence[str] | None = None,
        fail_fast: bool = False,
    ) -> list[str]:
        """Validate all ``changes`` first, then store them in one statement; all or nothing.

        Each change is a mapping (or object) with ``enqueue``'s keys: ``action``, ``model``,
        ``record_id``, ``payload`` and optionally ``sheet_row_index``, ``max_retries``. An error
        names the element: ``changes[3].payload: ...``. ``fail_fast``: as for :func:`enqueue`.
        """
        validated = validate_changes(changes, self.limits)
        ids = assign_ids(len(validated), item_ids)
        if validated:
            self.store(validated, ids, session=session, fail_fast=fail_fast)
        return ids

    def store(
        self,
        changes: Sequence[Change],
        ids: Sequence[str],
        *,
        session: Session | None = None,
        connection: Connection | None = None,
        fail_fast: bool = False,
    ) -> int:
        """Store validated changes in one statement (``sql.ENQUEUE``); return how many were new.

        In ``session``'s or ``connection``'s transaction when given; otherwise in a transaction
        of its own, committed before this returns. ``fail_fast`` (``.delay()``'s direct store,
        which has the broker to fall back on): one round trip on the enqueue engine, whose
        ``lock_timeout`` and ``statement_timeout`` make a record held by an open transaction, or a
        slow database, raise within ``SYNCQUEUE_ENQUEUE_TIMEOUT_MS``; a connection that died is
        retried once on a fresh one.
        """
        params = {"changes": changes_json(changes, ids)}
        if session is not None:
            return int(session.execute(sql.ENQUEUE, params).scalar_one())
        if connection is not None:
            return int(connection.execute(sql.ENQUEUE, params).scalar_one())
        if fail_fast:
            try:
                return int(scalar(self.database.enqueue, sql.ENQUEUE, params))
            except DBAPIError as exc:
                if not is_disconnect(exc):
                    raise
            return int(scalar(self.database.enqueue, sql.ENQUEUE, params))  # the pool dropped them
        return int(scalar(self.database.autocommit, sql.ENQUEUE, params))

    def claim_records(
        self, max_records: int = 25, *, max_changes: int | None = None
    ) -> RecordBatch:
        """Claim up to ``max_records`` records that have waiting changes, with those changes.

        Oldest first (by when each record became claimable). A record with more than
        ``max_changes`` waiting changes (default ``QueueConfig.claim_max_changes``) gives that many;
        the rest wait for its next claim. The claim is committed before this returns; only its
        token can record the records' outcomes (``finish_records``).
        """
        max_records = validate_batch_size(max_records)
        if max_changes is None:
            max_changes = self.config.claim_max_changes
        max_changes = validate_limit("max_changes", max_changes, 100_000)
        token = uuid.uuid4()
        params = {"max_records": max_records, "max_changes": max_changes, "token": token}
        records: dict[RecordKey, tuple[RecordState, list[QueueItem]]] = {}
        for r in fetch(self.database.autocommit, sql.CLAIM, params):
            key = RecordKey(r.model, r.record_id)
            if key not in records:  # its first row: the only one with its state (see sql.CLAIM)
                records[key] = (state_of(r), [])
            records[key][1].append(
                QueueItem(
                    id=r.id,
                    action=_ACTIONS[r.action],
                    model=r.model,
                    record_id=r.record_id,
                    sheet_row_index=r.sheet_row_index,
                    payload=r.payload,
                    retries=r.retries,
                    max_retries=r.max_retries,
                    created_at=r.created_at,
                    claim_token=token,
                )
            )
        claimed = sorted(
            (ClaimedRecord(key, state, tuple(items)) for key, (state, items) in records.items()),
            key=lambda c: c.changes[0].id,
        )
        return RecordBatch(token, tuple(claimed))

    def finish_records(
        self,
        batch: RecordBatch,
        outcomes: Mapping[RecordKey, Outcome],
        states: Mapping[RecordKey, RecordState],
    ) -> FinishReport:
        """Record one outcome per claimed record, for all of its claimed changes.

        ``states[key]`` is the record's new synced state, required where the outcome is done.
        A record without an outcome is retried. Returns what happened, counted in changes.
        """
        endings = []
        for record in batch.records:
            outcome = outcomes.get(record.key) or Outcome.retry("the writer gave no outcome")
            state = states.get(record.key) if outcome.kind is OutcomeKind.DONE else None
            if outcome.kind is OutcomeKind.DONE and state is None:
                raise ValueError(f"no new state for the done record {record.key}")
            endings.append(_Ending(record.key, batch.token, None, outcome, state))
        return _report([c.id for r in batch.records for c in r.changes], self._finish(endings))

    def dequeue(self, batch_size: int = 25) -> list[QueueItem]:
        """Claim up to ``batch_size`` changes (of at most ``batch_size`` records); oldest first.

        A record is in one claim at a time, with the changes of it the claim took. Record the
        outcome of each change with ``mark_complete_many`` / ``mark_failed_many``, in any order:
        changes are applied by version, so completing a later change before an earlier one is
        retried is correct. The claim is committed before this returns.
        """
        batch_size = validate_batch_size(batch_size)
        return self.claim_records(batch_size, max_changes=batch_size).items

    def mark_complete(self, item: QueueItem | Claim) -> bool:
        """PROCESSING -> COMPLETED if the caller still owns the claim; False otherwise."""
        return self.mark_complete_many([item]) == 1

    def mark_complete_many(self, items: Iterable[QueueItem | Claim]) -> int:
        """Complete every change the caller still owns; return how many.

        Each record's synced state takes the completed changes (folded by version), in the same
        statement that completes them.
        """
        claims = [(_claim(i), i) for i in items]
        changes = self._changes_of(claims)
        if not changes:
            return 0
        groups: dict[tuple[RecordKey, uuid.UUID], list[_Claimed]] = {}
        for change in changes.values():
            key = RecordKey(change.model, change.record_id)
            groups.setdefault((key, change.claim_token), []).append(change)
        bases = self._claimed_states({(k.model, k.record_id, t) for k, t in groups})
        endings = [
            _Ending(key, token, tuple(c.id for c in group), Outcome.done(), fold(base, group))
            for (key, token), group in groups.items()
            if (base := bases.get((key.model, key.record_id, token))) is not None
        ]
        return _report(list(changes), self._finish(endings)).completed

    def mark_failed(
        self,
        item: QueueItem | Claim,
        error: BaseException | str,
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        count_attempt: bool = True,
    ) -> QueueStatus | None:
        """Record a failed attempt in one atomic statement; return the new status.

        Increments ``retries``; back to PENDING (the record waits out a backoff) while
        ``retries < max_retries``, else FAILED. ``retryable=False`` goes straight to FAILED.
        None: not owned (or unknown).
        """
        result = self.mark_failed_many(
            [Failure(item, error, retryable, retry_after, count_attempt)]
        )
        return next(iter(result.values()), None)

    def mark_failed_many(self, failures: Iterable[Failure]) -> dict[str, QueueStatus]:
        """Record many failures in one statement; return the new status of each owned item."""
        failures = list(failures)
        changes = self._changes_of([(_claim(f.item), f.item) for f in failures])
        groups: dict[tuple[RecordKey, uuid.UUID, Outcome], list[str]] = {}
        for f in failures:
            change = changes.get(_claim(f.item).id)
            if change is None:
                continue
            error = sanitize_error(f.error)
            outcome = (
                Outcome.retry(error, f.retry_after, count_attempt=f.count_attempt)
                if f.retryable
                else Outcome.fail(error)
            )
            key = RecordKey(change.model, change.record_id)
            groups.setdefault((key, change.claim_token, outcome), []).append(change.id)
        return self._finish(
            [
                _Ending(key, token, tuple(ids), outcome, None)
                for (key, token, outcome), ids in groups.items()
            ]
        )

    def _changes_of(self, claims: Sequence[tuple[Claim, QueueItem | Claim]]) -> dict[str, _Claimed]:
        """The claimed changes behind ``claims`` that their tokens still own, by id."""
        known = {c.id: i for c, i in claims if isinstance(i, QueueItem)}
        tokens = {c.id: c.claim_token for c, _ in claims}
        missing = [c.id for c, _ in claims if c.id not in known]
        result: dict[str, _Claimed] = {
            i.id: _Claimed(i.id, i.model, i.record_id, i.claim_token, i.action, i.payload)
            for i in known.values()
        }
        if missing:
            with self.database.autocommit.connect() as conn:
                for r in conn.execute(sql.CLAIMED_CHANGES, {"ids": missing}):
                    if r.claim_token == tokens[r.id]:
                        result[r.id] = _Claimed(
                            r.id,
                            r.model,
                            r.record_id,
                            r.claim_token,
                            SyncAction(r.action),
                            r.payload,
                        )
        return result

    def _claimed_states(
        self,
        keys: set[tuple[str, str, uuid.UUID]],
    ) -> dict[tuple[str, str, uuid.UUID], RecordState]:
        """The synced state of records still held by the given claims."""
        if not keys:
            return {}
        models, record_ids, tokens = (list(c) for c in zip(*keys, strict=True))
        with self.database.autocommit.connect() as conn:
            rows = conn.execute(
                sql.CLAIMED_STATES, {"models": models, "record_ids": record_ids, "tokens": tokens}
            ).all()
        return {(r.model, r.record_id, r.claim_token): state_of(r) for r in rows}

    def _finish(self, endings: Sequence[_Ending]) -> dict[str, QueueStatus]:
        """Record ``endings``; return the new status of each change they covered.

        One statement per round (a round names each record once): everything it can lock at
        once; records held by another transaction right now are then recorded one at a time,
        waiting a little for each.
        """
        result: dict[str, QueueStatus] = {}
        for round_ in _rounds(endings):
            recorded = self._with_retries(round_, None)
            covered = {key for key, _ in recorded.values()}
            left = [e for e in round_ if e.key not in covered]
            for ending in self._still_held(left):
                try:
                    recorded.update(self._with_retries([ending], ending))
                except OperationalError as exc:  # lock_timeout: reset_stuck hands it out again
                    log.warning(
                        "could not record the outcome of %s %r (held by another transaction): %s",
                        ending.key.model,
                        ending.key.record_id,
                        sanitize_error(exc),
                    )
            result.update((change_id, status) for change_id, (_, status) in recorded.items())
        return result

    def _finish_once(
        self, endings: Sequence[_Ending], waiting_for: _Ending | None
    ) -> dict[str, tuple[RecordKey, QueueStatus]]:
        """One FINISH; ``waiting_for``: first wait (lock_timeout) for that one record's lock."""
        params = finish_params(endings, self.config)
        rows: Sequence[Any]
        if waiting_for is None:
            rows = fetch(self.database.autocommit, sql.FINISH, params)
        else:
            key, token = waiting_for.key, waiting_for.token
            with self.database.engine.begin() as conn:
                ms = f"{int(_RECORD_LOCK_WAIT_SECONDS * 1000)}ms"
                conn.execute(sql.SET_LOCK_TIMEOUT, {"ms": ms})
                lock = {"model": key.model, "record_id": key.record_id, "token": token}
                conn.execute(sql.LOCK_RECORD, lock)
                rows = conn.execute(sql.FINISH, params).all()
        return {r.id: (RecordKey(r.model, r.record_id), _STATUSES[r.status]) for r in rows}

    def _still_held(self, endings: Sequence[_Ending]) -> list[_Ending]:
        """The ``endings`` whose records their claims still hold (FINISH skipped them: locked)."""
        if not endings:
            return []
        params = {
            "models": [e.key.model for e in endings],
            "record_ids": [e.key.record_id for e in endings],
            "tokens": [e.token for e in endings],
        }
        with self.database.autocommit.connect() as conn:
            held = {(r.model, r.record_id) for r in conn.execute(sql.RECORDS_HELD, params)}
        return [e for e in endings if (e.key.model, e.key.record_id) in held]

    def _with_retries(
        self, endings: Sequence[_Ending], waiting_for: _Ending | None
    ) -> dict[str, tuple[RecordKey, QueueStatus]]:
        """``_finish_once``, tried again through a short database outage."""
        for delay in _RECORD_RETRY_DELAYS:
            try:
                return self._finish_once(endings, waiting_for)
            except OperationalError as exc:
                if "lock timeout" in str(exc.orig):
                    raise
                log.warning(
                    "recording outcomes failed, retrying in %ss: %s", delay, sanitize_error(exc)
                )
                time.sleep(delay)
        return self._finish_once(endings, waiting_for)

    def reset_stuck(self, older_than_minutes: float = 10) -> int:
        """End claims taken more than ``older_than_minutes`` ago; return how many changes went
        back to PENDING.

        Choose a threshold longer than ``process_batch``'s hard time limit, or a live worker's
        claim may be taken away (its late outcomes are then ignored, not applied).
        """
        older_than_minutes = validate_age("older_than_minutes", older_than_minutes)
        reason = (
            f"reset_stuck: claim older than {older_than_minutes:g} minutes, returned to PENDING"
        )
        params = {"seconds": older_than_minutes * 60, "reason": reason}
        with self.database.autocommit.connect() as conn:
            count = int(conn.execute(sql.RESET_STUCK, params).scalar_one())
        if count:
            log.warning("reset_stuck returned %d item(s) to PENDING", count)
        return count

    def cleanup_completed(
        self, older_than_days: float = 7, *, chunk_size: int | None = None
    ) -> int:
        """Delete COMPLETED items processed more than ``older_than_days`` ago; return how many.

        Works in chunks of ``chunk_size`` rows (default ``QueueConfig.cleanup_chunk_size``), each in
        its own short transaction. FAILED items are never touched, and the records keep their
        synced state: a late or retried change is still applied by version.
        """
        older_than_days = validate_age("older_than_days", older_than_days)
        chunk = self.config.cleanup_chunk_size if chunk_size is None else chunk_size
        chunk = validate_limit("chunk_size", chunk, 1_000_000)
        total = 0
        while True:
            with self.database.autocommit.connect() as conn:
                deleted = conn.execute(
                    sql.DELETE_COMPLETED_CHUNK, {"seconds": older_than_days * 86400, "chunk": chunk}
                ).rowcount
            total += deleted
            if deleted < chunk:
                return total

    def retry_failed(
        self, item_ids: Iterable[str] | None = None, *, model: str | None = None
    ) -> int:
        """FAILED -> PENDING with retries reset, by ids and/or model (None: all); return how many.

        A retried change is applied by version: it sets only the fields that no newer change of
        its record has set, so the record still ends at its last change.
        """
        ids = None if item_ids is None else [validate_item_id(i) for i in item_ids]
        with self.database.autocommit.connect() as conn:
            return int(conn.execute(sql.RETRY_FAILED, {"ids": ids, "model": model}).scalar_one())

    def discard_failed(
        self, item_ids: Iterable[str] | None = None, *, model: str | None = None
    ) -> int:
        """Delete FAILED items for good, by ids and/or model (None: all); return how many."""
        ids = None if item_ids is None else [validate_item_id(i) for i in item_ids]
        with self.database.autocommit.connect() as conn:
            return len(conn.execute(sql.DISCARD_FAILED, {"ids": ids, "model": model}).all())

    def list_failed(self, *, model: str | None = None, limit: int = 100) -> list[FailedItem]:
        """The newest FAILED items with their last error, for operators."""
        limit = validate_limit("limit", limit, 100_000)
        with self.database.autocommit.connect() as conn:
            rows = conn.execute(sql.LIST_FAILED, {"model": model, "limit": limit}).mappings().all()
        return [cast(FailedItem, dict(r)) for r in rows]

    def get_queue_stats(self) -> QueueStats:
        """Counts per status, age of the oldest waiting record, records in backoff, recent
        failures and completions."""
        with self.database.autocommit.connect() as conn:
            row = conn.execute(sql.STATS).mappings().one()
        age = row["oldest_pending_age_seconds"]
        return QueueStats(
            pending=int(row["pending"]),
            processing=row["processing"],
            completed=row["completed"],
            failed=row["failed"],
            oldest_pending_age_seconds=0.0 if age is None else max(0.0, float(age)),
            records_in_backoff=row["records_in_backoff"],
            failed_last_24h=row["failed_last_24h"],
            completed_last_hour=row["completed_last_hour"],
        )

    def get_record(self, model: str, record_id: str, *, limit: int = 1000) -> RecordView | None:
        """One record: its waiting count, claim, synced state and its changes still in the queue
        (oldest first, at most ``limit``); None if the queue never had a change of it."""
        limit = validate_limit("limit", limit, 100_000)
        params = {"model": model, "record_id": record_id, "limit": limit}
        with self.database.autocommit.connect() as conn:
            row = conn.execute(sql.RECORD, params).one_or_none()
            if row is None:
                return None
            changes = [
                cast(RecordChange, dict(r))
                for r in conn.execute(sql.RECORD_CHANGES, params).mappings()
            ]
        return RecordView(
            RecordKey(row.model, row.record_id),
            row.pending,
            row.available_at,
            row.claimed_at,
            state_of(row),
            row.synced_at,
            changes,
        )


# ---------------------------------------------------------------------------- the process's queue

_default_lock = threading.Lock()
_default: tuple[Database, Settings, QueueStore] | None = None


def default_queue() -> QueueStore:
    """This process's queue: :func:`get_database` with the environment's limits and config
    (made again when either is: a forked child, ``get_settings.cache_clear()``)."""
    global _default
    database, settings = get_database(), get_settings()
    cached = _default
    if cached is not None and cached[0] is database and cached[1] is settings:
        return cached[2]
    with _default_lock:
        queue = QueueStore(database, limits=settings.limits, config=settings.queue)
        _default = (database, settings, queue)
        return queue


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _on_default_queue(method: Callable[Concatenate[QueueStore, _P], _R]) -> Callable[_P, _R]:
    """``method`` as a function of the module, called on :func:`default_queue`."""

    @functools.wraps(method)
    def call(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        return method(default_queue(), *args, **kwargs)

    call.__qualname__ = method.__name__
    return call


enqueue = _on_default_queue(QueueStore.enqueue)
enqueue_many = _on_default_queue(QueueStore.enqueue_many)
store = _on_default_queue(QueueStore.store)
claim_records = _on_default_queue(QueueStore.claim_records)
finish_records = _on_default_queue(QueueStore.finish_records)
dequeue = _on_default_queue(QueueStore.dequeue)
mark_complete = _on_default_queue(QueueStore.mark_complete)
mark_complete_many = _on_default_queue(QueueStore.mark_complete_many)
mark_failed = _on_default_queue(QueueStore.mark_failed)
mark_failed_many = _on_default_queue(QueueStore.mark_failed_many)
reset_stuck = _on_default_queue(QueueStore.reset_stuck)
cleanup_completed = _on_default_queue(QueueStore.cleanup_completed)
retry_failed = _on_default_queue(QueueStore.retry_failed)
discard_failed = _on_default_queue(QueueStore.discard_failed)
list_failed = _on_default_queue(QueueStore.list_failed)
get_queue_stats = _on_default_queue(QueueStore.get_queue_stats)
get_record = _on_default_queue(QueueStore.get_record)


__all__ = [
    "Claim",
    "ClaimedRecord",
    "Database",
    "FailedItem",
    "Failure",
    "FinishReport",
    "Limits",
    "QueueConfig",
    "QueueStats",
    "QueueStore",
    "RecordBatch",
    "RecordChange",
    "RecordView",
    "claim_records",
    "cleanup_completed",
    "default_queue",
    "dequeue",
    "discard_failed",
    "enqueue",
    "enqueue_many",
    "finish_records",
    "get_queue_stats",
    "get_record",
    "list_failed",
    "mark_complete",
    "mark_complete_many",
    "mark_failed",
    "mark_failed_many",
    "reset_stuck",
    "retry_failed",
    "store",
]
