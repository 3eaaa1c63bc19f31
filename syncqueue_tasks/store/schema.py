"""Alembic from code: find the migrations, upgrade to head, compare the database with head.

The repository's ``alembic.ini`` (beside the package directory) is used when it is there; a
checkout or an editable install. Otherwise an Alembic ``Config`` is built in code around the
first ``migrations`` directory found (inside the package, then beside it).
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from syncqueue_tasks.core.errors import ConfigurationError
from syncqueue_tasks.store.db import get_engine

PACKAGE_DIR = Path(__file__).resolve().parent.parent  # syncqueue_tasks/
REPO_ROOT = PACKAGE_DIR.parent


def alembic_config() -> Config:
    """The project's Alembic configuration (the database always comes from DATABASE_URL)."""
    ini = REPO_ROOT / "alembic.ini"
    if ini.is_file() and (REPO_ROOT / "migrations" / "env.py").is_file():
        config = Config(str(ini))
    else:
        config = Config()
        config.set_main_option("script_location", str(_script_location()))
    config.attributes["configure_logger"] = False  # keep the caller's logging as it is
    return config


def _script_location() -> Path:
    for candidate in (PACKAGE_DIR / "migrations", REPO_ROOT / "migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise ConfigurationError(
        "the Alembic migrations are not installed with this package; "
        "run from a checkout (pip install -e .) or see the README"
    )


def head_revisions() -> tuple[str, ...]:
    """The revision(s) the code expects."""
    return tuple(sorted(ScriptDirectory.from_config(alembic_config()).get_heads()))


def current_revisions() -> tuple[str, ...]:
    """The revision(s) the database is at (empty: never migrated)."""
    with get_engine().connect() as conn:
        return tuple(sorted(MigrationContext.configure(conn).get_current_heads()))


def upgrade_head() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Apply every pending migration; return the revisions before and after."""
    before = current_revisions()
    config = alembic_config()
    with get_engine().begin() as conn:
        config.attributes["connection"] = conn
        command.upgrade(config, "head")
    return before, current_revisions()
