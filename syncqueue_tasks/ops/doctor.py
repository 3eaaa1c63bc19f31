"""``syncqueue doctor``: is everything the queue needs there? Each check says what to do if not."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import make_url

from syncqueue_tasks.celery.batch import writer_context
from syncqueue_tasks.core.errors import sanitize_error
from syncqueue_tasks.local.runstate import cli_command, migrate_hint, using_default_database
from syncqueue_tasks.settings import get_settings
from syncqueue_tasks.store import sql
from syncqueue_tasks.store.db import get_engine
from syncqueue_tasks.writers.loading import SHEETS, load_writer, writer_spec


@dataclass(frozen=True)
class Check:
    """The outcome of one check; ``fix`` says what to do when it failed."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def run_checks() -> list[Check]:
    """Run every check (a failing database skips the migration check)."""
    fix_database = (
        f"start PostgreSQL or set DATABASE_URL; with nothing installed, "
        f"`{cli_command()} run` starts an embedded one (run commands from the same folder)"
    )
    database = _guarded("database", check_database, fix_database)
    checks = [database]
    if database.ok:
        checks.append(_guarded("migrations", check_migrations, migrate_hint()))
        checks.append(_guarded("capture triggers", check_capture_triggers, _fix_triggers()))
    else:
        checks.append(Check("migrations", False, "not checked: database unreachable", fix_database))
    fix_broker = (
        f"start Redis or set CELERY_BROKER_URL (`{cli_command()} run` starts an embedded one)"
    )
    checks.append(_guarded("broker", check_broker, fix_broker))
    checks.append(_guarded("writer", check_writer, FIX_WRITER))
    if writer_spec(get_settings()) == SHEETS:
        checks.append(_guarded("sheet", check_sheet, FIX_SHEET))
    return checks


FIX_WRITER = (
    "unset SYNCQUEUE_WRITER for the local workbook (SYNCQUEUE_WORKBOOK_PATH), set "
    "SYNCQUEUE_SHEETS_SPREADSHEET_ID and SYNCQUEUE_SHEETS_CREDENTIALS_FILE for Google Sheets, "
    "or SYNCQUEUE_WRITER=package.module:factory"
)


FIX_SHEET = (
    "share the spreadsheet with the service account and check SYNCQUEUE_SHEETS_SPREADSHEET_ID; "
    "when it is nearly full, delete unused rows, columns or tabs, or map models to another "
    "spreadsheet"
)
SHEET_FULL = 0.9  # fraction of the cell limit at which the check fails


def check_sheet() -> Check:
    """The spreadsheet answers (one read, within the quota), and how full its grids are."""
    from syncqueue_tasks.writers.sheets import create_writer

    writer = create_writer(writer_context())
    try:
        used, limit, tabs = writer.usage()
    finally:
        writer.close()
    detail = f"{used:,} of {limit:,} cells in use ({used / limit:.0%}) in {tabs} tab(s)"
    if used >= SHEET_FULL * limit:
        return Check("sheet", False, f"{detail}: new rows will soon be refused", FIX_SHEET)
    return Check("sheet", True, detail)


def check_database() -> Check:
    """PostgreSQL answers at DATABASE_URL."""
    url = make_url(get_settings().database.url).render_as_string(hide_password=True)
    with get_engine().connect() as conn:
        version = conn.execute(sql.SERVER_VERSION).scalar_one()
    default = (
        "; the default: no running stack, DATABASE_URL unset" if using_default_database() else ""
    )
    return Check("database", True, f"reachable at {url} (PostgreSQL {version}{default})")


def check_migrations() -> Check:
    """The database is at the code's head revision."""
    from syncqueue_tasks.store.schema import current_revisions, head_revisions

    current, head = current_revisions(), head_revisions()
    if current == head:
        return Check("migrations", True, f"at head {', '.join(head)}")
    at = ", ".join(current) or "no revision (never migrated)"
    return Check(
        "migrations", False, f"database at {at}, code at {', '.join(head)}", migrate_hint()
    )


def check_capture_triggers() -> Check:
    """Every table captured by triggers has the triggers this package generates (none is
    fine): an outdated trigger may convert values unlike the rest of the package."""
    from syncqueue_tasks.capture import triggers

    found = triggers.installed(get_engine())
    stale = [f for f in found if not f.current]
    if not found:
        return Check("capture triggers", True, "none installed")
    if not stale:
        return Check("capture triggers", True, f"{len(found)} table(s) captured, all current")
    detail = "; ".join(f"{f.name}: {f.problems[0]}" for f in stale)
    return Check(
        "capture triggers",
        False,
        f"{len(stale)} of {len(found)} outdated ({detail})",
        _fix_triggers(),
    )


def _fix_triggers() -> str:
    return f"`{cli_command()} capture upgrade` reinstalls them as this package generates them"


def check_broker(timeout: float = 3.0) -> Check:
    """The Celery broker accepts a connection."""
    from kombu.connection import Connection

    from syncqueue_tasks.celery import config as celery_config

    url = str(celery_config.broker_url)
    options = {"socket_connect_timeout": timeout, "socket_timeout": timeout, "max_retries": 0}
    # kombu's Connection is not annotated (an error under mypy --strict only)
    connection = Connection(url, connect_timeout=timeout, transport_options=options)  # type: ignore[no-untyped-call, unused-ignore]
    with connection as conn:
        conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    return Check("broker", True, f"answers at {sanitize_error(url)}")


def check_writer() -> Check:
    """The configured writer can be built, and a workbook's folder is writable."""
    from syncqueue_tasks.writers.workbook import LocalWorkbookWriter

    spec = writer_spec(get_settings())
    writer = load_writer(spec, writer_context())
    if not isinstance(writer, LocalWorkbookWriter):
        return Check("writer", True, f"{spec} built (destination not contacted)")
    path = writer.path.absolute()
    if path.exists():
        if not os.access(path, os.W_OK):
            return Check("writer", False, f"workbook {path} is not writable", FIX_WRITER)
        import openpyxl

        openpyxl.load_workbook(path, read_only=True).close()
        return Check("writer", True, f"workbook {path}")
    folder = _nearest_existing(path.parent)
    if not os.access(folder, os.W_OK | os.X_OK):
        return Check("writer", False, f"cannot create {path}: {folder} not writable", FIX_WRITER)
    return Check("writer", True, f"workbook {path} (created on the first write)")


def _nearest_existing(path: Path) -> Path:
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _guarded(name: str, check: Callable[[], Check], fix: str) -> Check:
    try:
        return check()
    except Exception as exc:
        orig = getattr(exc, "orig", None)
        return Check(name, False, sanitize_error(orig if isinstance(orig, Exception) else exc), fix)
