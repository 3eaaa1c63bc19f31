"""The test tiers (tests/conftest.py): every test has exactly one, and unit runs need no service.

The second runs conftest.py as a plugin of a real pytest process, over a test file of its own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import conftest
import pytest
from processes import ROOT, TESTS

pytestmark = pytest.mark.unit

CLOSED = "127.0.0.1:1"  # nothing listens there
SAMPLE = """
import pytest

@pytest.mark.unit
def test_unit():
    pass

@pytest.mark.integration
def test_integration():
    pass
"""


def _pytest(tmp_path: Path, source: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run pytest with conftest.py as a plugin over ``source``, with services unreachable."""
    (tmp_path / "test_sample.py").write_text(source)
    env = os.environ | {
        "PYTHONPATH": str(TESTS),
        "SYNCQUEUE_TEST_ADMIN_URL": f"postgresql://postgres@{CLOSED}/postgres",
        "SYNCQUEUE_TEST_REDIS_URL": f"redis://{CLOSED}/0",
    }
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), "-p", "conftest", "-q", *args, "test_sample.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@dataclass
class _Item:
    """What the tier check reads of a collected test."""

    nodeid: str
    tiers: tuple[str, ...]

    def get_closest_marker(self, name: str) -> pytest.Mark | None:
        return getattr(pytest.mark, name).mark if name in self.tiers else None


def test_a_test_without_exactly_one_tier_fails_collection_naming_it() -> None:
    items = [_Item("t.py::one", ("unit",)), _Item("t.py::none", ()),
             _Item("t.py::two", ("unit", "system"))]  # fmt: skip
    with pytest.raises(pytest.UsageError) as error:
        conftest.pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    message = str(error.value)
    assert message.startswith("every test needs exactly one tier marker (unit, integration, ")
    assert message.endswith(
        "\n  t.py::none: tier markers none\n  t.py::two: tier markers unit, system"
    )
    # It runs before ``-m`` deselects, so an untiered test fails even a run that skips it.
    assert conftest.pytest_collection_modifyitems.pytest_impl["tryfirst"]  # type: ignore[attr-defined]


def test_a_run_of_unit_tests_touches_no_service(tmp_path: Path) -> None:
    """The integration test would need the (unreachable) database; deselected, it is not made."""
    unit = _pytest(tmp_path, SAMPLE, "-m", "unit")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "1 passed, 1 deselected" in unit.stdout
