"""The record fold: a record's changes, applied by version, in any order and any batches.

Per record the queue keeps what was last written (``RecordState``): the value of each field,
the id of the change that set it, and the ids of the newest DELETE, CREATE and CREATE/UPDATE.
A change is applied only where it is newer (a last-writer-wins map with tombstones):

- field f ends with the value of the newest change (by id) that set f after the newest DELETE;
- a DELETE clears the record; a CREATE after it starts from an empty record; changes older
  than the newest DELETE set nothing;
- a CREATE of a record that exists updates it (CREATE and UPDATE set fields alike; they differ
  only where the destination has no row for the record, see ``RecordWrite.action``).

The result equals applying all of a record's changes one by one in id order, whatever order
they arrive in and wherever batches are cut (``tests/test_records.py`` states it as a property
test). Every writer and the queue use this one definition.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from syncqueue_tasks.core.items import SyncAction


class RecordKey(NamedTuple):
    """A record: its model and its id."""

    model: str
    record_id: str


class Change(Protocol):
    """What the fold reads of a change (``QueueItem`` has it)."""

    @property
    def id(self) -> str: ...

    @property
    def action(self) -> SyncAction: ...

    @property
    def payload(self) -> Mapping[str, Any]: ...


def _newer(a: str | None, b: str | None) -> str | None:
    """The larger of two optional ids."""
    if a is None:
        return b
    if b is None:
        return a
    return max(a, b)


@dataclass(frozen=True, slots=True)
class RecordState:
    """What was last written for one record (``sync_record``'s state columns)."""

    fields: Mapping[str, Any] = field(default_factory=dict)
    versions: Mapping[str, str] = field(default_factory=dict)
    deleted: str | None = None  # id of the newest DELETE
    created: str | None = None  # id of the newest CREATE
    touched: str | None = None  # id of the newest CREATE or UPDATE

    @property
    def live(self) -> bool:
        """Whether the record exists: a CREATE or UPDATE is newer than the newest DELETE."""
        return self.touched is not None and (self.deleted is None or self.touched > self.deleted)

    @property
    def created_live(self) -> bool:
        """Whether the record's current life began with a CREATE (not only UPDATEs)."""
        return self.created is not None and (self.deleted is None or self.created > self.deleted)

    def apply(self, change: Change) -> RecordState:
        """This state with ``change`` applied where it is newer; see the module docstring."""
        cid = change.id
        if change.action is SyncAction.DELETE:
            if self.deleted is not None and cid <= self.deleted:
                return self
            kept = {f: v for f, v in self.versions.items() if v > cid}
            return RecordState(
                {f: self.fields[f] for f in kept}, kept, cid, self.created, self.touched
            )
        created = _newer(self.created, cid) if change.action is SyncAction.CREATE else self.created
        touched = _newer(self.touched, cid)
        if self.deleted is not None and cid < self.deleted:  # before the newest DELETE
            return RecordState(self.fields, self.versions, self.deleted, created, touched)
        fields = dict(self.fields)
        versions = dict(self.versions)
        for name, value in change.payload.items():
            if versions.get(name, "") < cid:
                fields[name] = value
                versions[name] = cid
        return RecordState(fields, versions, self.deleted, created, touched)


def fold(state: RecordState, changes: Iterable[Change]) -> RecordState:
    """``state`` with every change applied (the order of ``changes`` does not matter)."""
    for change in changes:
        state = state.apply(change)
    return state


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """What a writer must do for one record: its claimed changes folded onto what was written.

    - ``action``: DELETE when the record ends deleted; CREATE when its current life began with
      a CREATE; UPDATE otherwise (only UPDATEs since it was created or deleted, or since the
      queue has known it: a destination without its row applies ``SYNCQUEUE_UPDATE_MISSING``).
    - ``cells``: the fields to write, name -> value; ``None`` blanks a cell. For a live record:
      the fields these changes set, and blanks for fields a DELETE among them cleared. For
      DELETE: blanks for every field the record had.
    - ``state``: the whole record after this write; ``base``: what was written before.
    - ``restarted``: a DELETE newer than ``base`` came in, so a row written before holds the
      record's previous life: write ``state`` whole, with ``cells``' blanks.
    """

    key: RecordKey
    action: SyncAction
    cells: Mapping[str, Any]
    state: RecordState
    base: RecordState
    change_ids: tuple[str, ...]
    row_hint: int | None = None

    @property
    def model(self) -> str:
        """The record's model."""
        return self.key.model

    @property
    def record_id(self) -> str:
        """The record's id."""
        return self.key.record_id

    @property
    def restarted(self) -> bool:
        """A DELETE newer than what was last written is among the changes."""
        return self.state.deleted != self.base.deleted

    @property
    def leaves_row(self) -> bool:
        """For a DELETE: whether applying the changes in order would have written the record
        at some point (so a tombstone row stands for it even where the destination has none)."""
        return self.state.touched is not None


def record_write(
    key: RecordKey,
    base: RecordState,
    changes: Iterable[Change],
    row_hint: int | None = None,
) -> RecordWrite:
    """Fold ``changes`` onto ``base`` and describe the write that brings a row there."""
    changes = list(changes)
    state = fold(base, changes)
    if not state.live:
        action = SyncAction.DELETE
    elif state.created_live:
        action = SyncAction.CREATE
    else:
        action = SyncAction.UPDATE
    known = set(base.fields).union(
        *(c.payload for c in changes if c.action is not SyncAction.DELETE)
    )
    cells: dict[str, Any] = {
        name: value
        for name, value in state.fields.items()
        if state.versions[name] != base.versions.get(name)
    }
    cells.update((name, None) for name in known if name not in state.fields)
    return RecordWrite(
        key,
        action,
        cells,
        state,
        base,
        tuple(sorted(c.id for c in changes)),
        row_hint,
    )


@dataclass(frozen=True, slots=True)
class SyncedRecord:
    """A record's synced state, and whether a claim holds it right now (``verify`` skips it)."""

    state: RecordState
    claimed: bool


#: The synced states of some records of a model: ``(model, record_ids) -> {record_id: state}``
#: (records the queue never wrote are absent). The store provides it (``store.synced``);
#: a writer is given it (``writers.base.WriterContext``).
SyncedStates = Callable[[str, Sequence[str]], Mapping[str, RecordState]]
