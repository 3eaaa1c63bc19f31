"""The test tiers (tests/conftest.py): every test has exactly one, and unit runs need no service.

conftest.py runs as a plugin of a real pytest process, over a test file of the test's own.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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


def test_a_test_without_exactly_one_tier_fails_collection_even_when_deselected(
    tmp_path: Path,
) -> None:
    source = (
        SAMPLE
        + """
def test_untiered():
    pass

@pytest.mark.unit
@pytest.mark.system
def test_two_tiers():
    pass
"""
    )
    result = _pytest(tmp_path, source, "-m", "unit")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout
    assert "every test needs exactly one tier marker" in result.stderr
    assert "test_sample.py::test_untiered: tier markers none" in result.stderr
    assert "test_sample.py::test_two_tiers: tier markers unit, system" in result.stderr
    assert "test_sample.py::test_unit" not in result.stderr


def test_a_run_of_unit_tests_touches_no_service(tmp_path: Path) -> None:
    """The integration test would need the (unreachable) database; deselected, it is not made."""
    unit = _pytest(tmp_path, SAMPLE, "-m", "unit")
    assert unit.returncode == 0, unit.stdout + unit.stderr
    assert "1 passed, 1 deselected" in unit.stdout
