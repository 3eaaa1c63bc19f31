"""Every environment variable the package reads (except Celery's own, in ``celery_config``).

Read once per process through :func:`get_settings`; tests call ``get_settings.cache_clear()``
after changing the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TypeVar

from syncqueue_tasks.core.errors import ConfigurationError

DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@localhost:5432/postgres"


def normalize_database_url(url: str) -> str:
    """Name the psycopg 3 driver in a plain ``postgresql://`` / ``postgres://`` URL."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    return url


def _int(name: str, default: int, low: int, high: int) -> int:
    return _number(name, default, low, high, int, "an integer")


def _float(name: str, default: float, low: float, high: float) -> float:
    return _number(name, default, low, high, float, "a number")


_Number = TypeVar("_Number", int, float)


def _number(
    name: str,
    default: _Number,
    low: _Number,
    high: _Number,
    parse: Callable[[str], _Number],
    kind: str,
) -> _Number:
    """The variable ``name`` parsed, within ``low``..``high``; ``default`` when unset."""
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        raise ConfigurationError(f"{name} must be {kind}, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigurationError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = os.environ.get(name, "").strip().lower() or default
    if value not in choices:
        raise ConfigurationError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _mapping(name: str) -> dict[str, str]:
    """Parse ``A=x,B=y`` into ``{"A": "x", "B": "y"}``."""
    result: dict[str, str] = {}
    for part in os.environ.get(name, "").split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigurationError(f"{name} must look like Model=Tab,Other=Tab2; got {part!r}")
        result[key.strip()] = value.strip()
    return result


def _lists(name: str) -> dict[str, tuple[str, ...]]:
    """Parse ``A=x,y;B=z`` into ``{"A": ("x", "y"), "B": ("z",)}``."""
    result: dict[str, tuple[str, ...]] = {}
    for part in os.environ.get(name, "").split(";"):
        if not part.strip():
            continue
        key, sep, values = part.partition("=")
        items = tuple(v.strip() for v in values.split(",") if v.strip())
        if not sep or not key.strip() or not items:
            raise ConfigurationError(
                f"{name} must look like Model=field1,field2;Other=field3; got {part!r}"
            )
        result[key.strip()] = items
    return result


@dataclass(frozen=True)
class Settings:
    """Typed view of the environment. See the README's configuration table."""

    database_url: str
    db_pool_size: int
    models: frozenset[str]
    max_record_id_length: int
    max_payload_bytes: int
    default_max_retries: int
    backoff_base_seconds: float
    backoff_max_seconds: float
    batch_size: int
    cleanup_chunk_size: int
    batch_time_budget: float
    enqueue_mode: str
    enqueue_timeout_ms: int
    kick_delay: float
    claim_max_changes: int
    writer: str
    jsonl_path: str
    data_dir: Path
    workbook_path: Path
    sheets_spreadsheet_id: str
    sheets_credentials_file: str
    sheets_api_url: str
    sheets_tabs: dict[str, str]
    id_column: str
    unknown_fields: str
    update_missing: str
    delete_mode: str
    sheets_max_request_bytes: int
    sheets_batch_records: int
    sheets_conflicts: str
    sheets_long_cells: str
    sheets_columns: dict[str, tuple[str, ...]]
    sheets_max_cells: int
    sheets_read_quota: int
    sheets_write_quota: int
    sheets_quota_margin: float
    sheets_quota_burst: int
    redis_url: str
    redis_prefix: str
    dashboard_port: int
    dashboard_password: str = field(repr=False)
    dashboard_secure_cookies: bool
    dashboard_refresh_seconds: int

    @classmethod
    def from_env(cls) -> Settings:
        """Build settings from ``os.environ``; raise ``ConfigurationError`` on bad values."""
        env = os.environ.get
        models = frozenset(
            m.strip() for m in env("SYNCQUEUE_MODELS", "Request,Operator,Revenue").split(",")
        ) - {""}
        if not models:
            raise ConfigurationError("SYNCQUEUE_MODELS must name at least one model")
        data_dir = Path(env("SYNCQUEUE_DATA_DIR", "") or ".syncqueue")
        return cls(
            database_url=normalize_database_url(env("DATABASE_URL", "") or DEFAULT_DATABASE_URL),
            db_pool_size=_int("SYNCQUEUE_DB_POOL_SIZE", 5, 1, 100),
            models=models,
            max_record_id_length=_int("SYNCQUEUE_MAX_RECORD_ID_LENGTH", 255, 1, 255),
            max_payload_bytes=_int("SYNCQUEUE_MAX_PAYLOAD_BYTES", 65536, 16, 16 * 1024 * 1024),
            default_max_retries=_int("SYNCQUEUE_MAX_RETRIES", 3, 0, 100),
            backoff_base_seconds=_float("SYNCQUEUE_BACKOFF_BASE_SECONDS", 2.0, 0.0, 3600.0),
            backoff_max_seconds=_float("SYNCQUEUE_BACKOFF_MAX_SECONDS", 600.0, 0.0, 86400.0),
            batch_size=_int("SYNCQUEUE_BATCH_SIZE", 25, 1, 1000),
            cleanup_chunk_size=_int("SYNCQUEUE_CLEANUP_CHUNK_SIZE", 5000, 1, 100000),
            batch_time_budget=_float("SYNCQUEUE_BATCH_TIME_BUDGET", 60.0, 0.0, 3600.0),
            enqueue_mode=_choice("SYNCQUEUE_ENQUEUE_MODE", "direct", ("direct", "broker")),
            enqueue_timeout_ms=_int("SYNCQUEUE_ENQUEUE_TIMEOUT_MS", 200, 10, 60_000),
            kick_delay=_float("SYNCQUEUE_KICK_DELAY", 0.2, 0.0, 60.0),
            claim_max_changes=_int("SYNCQUEUE_CLAIM_MAX_CHANGES", 1000, 1, 100_000),
            writer=env("SYNCQUEUE_WRITER", "").strip(),
            jsonl_path=env("SYNCQUEUE_JSONL_PATH", "").strip(),
            data_dir=data_dir,
            workbook_path=Path(env("SYNCQUEUE_WORKBOOK_PATH", "") or data_dir / "workbook.xlsx"),
            sheets_spreadsheet_id=env("SYNCQUEUE_SHEETS_SPREADSHEET_ID", "").strip(),
            sheets_credentials_file=(
                env("SYNCQUEUE_SHEETS_CREDENTIALS_FILE", "")
                or env("GOOGLE_APPLICATION_CREDENTIALS", "")
            ).strip(),
            sheets_api_url=(
                env("SYNCQUEUE_SHEETS_API_URL", "") or "https://sheets.googleapis.com"
            ).rstrip("/"),
            sheets_tabs=_mapping("SYNCQUEUE_SHEETS_TABS"),
            id_column=env("SYNCQUEUE_ID_COLUMN", "").strip() or "id",
            unknown_fields=_choice(
                "SYNCQUEUE_UNKNOWN_FIELDS", "add_column", ("add_column", "fail")
            ),
            update_missing=_choice("SYNCQUEUE_UPDATE_MISSING", "create", ("create", "fail")),
            delete_mode=_choice("SYNCQUEUE_DELETE_MODE", "tombstone", ("tombstone", "remove")),
            # One write request per batch: as many records as fit this many bytes.
            sheets_max_request_bytes=_int(
                "SYNCQUEUE_SHEETS_MAX_REQUEST_BYTES", 1_000_000, 10_000, 10_000_000
            ),
            sheets_batch_records=_int("SYNCQUEUE_SHEETS_BATCH_RECORDS", 5000, 1, 100_000),
            sheets_conflicts=_choice(
                "SYNCQUEUE_SHEETS_CONFLICTS", "overwrite", ("overwrite", "keep")
            ),
            sheets_long_cells=_choice("SYNCQUEUE_SHEETS_LONG_CELLS", "fail", ("fail", "truncate")),
            sheets_columns=_lists("SYNCQUEUE_SHEETS_COLUMNS"),
            sheets_max_cells=_int("SYNCQUEUE_SHEETS_MAX_CELLS", 10_000_000, 1, 10_000_000),
            # Google's per-user quota per minute (a service account is one user), per kind.
            sheets_read_quota=_int("SYNCQUEUE_SHEETS_READ_QUOTA", 60, 1, 100_000),
            sheets_write_quota=_int("SYNCQUEUE_SHEETS_WRITE_QUOTA", 60, 1, 100_000),
            # Seconds added to the 60 s window when pacing (covers network jitter).
            sheets_quota_margin=_float("SYNCQUEUE_SHEETS_QUOTA_MARGIN", 2.0, 0.0, 60.0),
            # Requests that may go at once: a round's tabs read, ids read and rows read.
            sheets_quota_burst=_int("SYNCQUEUE_SHEETS_QUOTA_BURST", 3, 1, 60),
            redis_url=(
                env("SYNCQUEUE_REDIS_URL", "")
                or env("CELERY_BROKER_URL", "")
                or "redis://localhost:6379/0"
            ),
            # Redis keys (kick debounce, metrics) are namespaced by the Celery queue's name.
            redis_prefix=env("CELERY_QUEUE", "").strip() or "syncqueue",
            dashboard_port=_int("SYNCQUEUE_DASHBOARD_PORT", 8085, 1, 65535),
            dashboard_password=env("SYNCQUEUE_DASHBOARD_PASSWORD", ""),
            # Behind a TLS-terminating proxy: mark the session cookie Secure.
            dashboard_secure_cookies=_choice(
                "SYNCQUEUE_DASHBOARD_SECURE_COOKIES", "false", ("true", "false")
            )
            == "true",
            dashboard_refresh_seconds=_int("SYNCQUEUE_DASHBOARD_REFRESH_SECONDS", 5, 1, 3600),
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read from the environment on first use."""
    return Settings.from_env()
