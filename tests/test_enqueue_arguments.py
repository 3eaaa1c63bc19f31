"""The caller's arguments are checked before anything is stored or published (no services)."""

from __future__ import annotations

import pytest

from syncqueue_tasks.celery.tasks import enqueue_change, enqueue_changes
from syncqueue_tasks.core.errors import ValidationError
from syncqueue_tasks.core.ids import new_id
from syncqueue_tasks.store.queue import assign_ids

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("item_ids", [new_id(), {"a": new_id()}, b"x", 7])
def test_item_ids_must_be_a_list_of_ids(item_ids: object) -> None:
    with pytest.raises(ValidationError, match=r"^item_ids: must be a list of ids$"):
        assign_ids(1, item_ids)


def test_item_ids_are_one_per_change_and_unique() -> None:
    one = new_id()
    assert assign_ids(1, [one]) == [one] and len(set(assign_ids(3, None))) == 3
    with pytest.raises(ValidationError, match="unique, one per change"):
        assign_ids(2, [one, one])


@pytest.mark.parametrize(
    ("args", "kwargs"), [("CREATE", None), (None, [("action", "CREATE")]), (7, None)]
)
def test_apply_async_refuses_arguments_that_are_not_a_list_and_a_mapping(
    args: object, kwargs: object
) -> None:
    for task in (enqueue_change, enqueue_changes):
        name = task.name.rsplit(".", 1)[-1]
        with pytest.raises(TypeError, match=rf"^{name}\(\): args must be a list and kwargs"):
            task.apply_async(args, kwargs)
