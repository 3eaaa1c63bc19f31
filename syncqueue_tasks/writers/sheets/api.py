"""Transport for the Google Sheets writer: gspread's HTTP client, rebased, the calls it makes,
and error triage.

gspread hard-codes ``https://sheets.googleapis.com`` (``gspread.urls``); a
:class:`RebaseAdapter` mounted on the session rewrites that prefix to the configured base URL
(``SYNCQUEUE_SHEETS_API_URL``), so the same code talks to Google or to a local fake.
"""

from __future__ import annotations

import enum
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import gspread
import requests
from google.auth.credentials import AnonymousCredentials, Credentials
from google.auth.exceptions import RefreshError, TransportError
from gspread.exceptions import APIError
from gspread.http_client import HTTPClient
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies

from syncqueue_tasks import counters
from syncqueue_tasks.core.errors import ConfigurationError, sanitize_error

GOOGLE_SHEETS_URL = "https://sheets.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)
# google.auth's AnonymousCredentials is not annotated: it is made through this typed name.
_anonymous_credentials: Callable[[], Credentials] = AnonymousCredentials


class RebaseAdapter(HTTPAdapter):
    """Sends requests for ``https://sheets.googleapis.com/...`` to ``base_url/...`` instead."""

    def __init__(self, base_url: str, prefix: str = GOOGLE_SHEETS_URL) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")
        self.prefix = prefix.rstrip("/")

    def send(
        self, request: requests.PreparedRequest, *args: Any, **kwargs: Any
    ) -> requests.Response:
        """Rewrite the URL, then send as usual (proxies are resolved for the new host)."""
        url = request.url or ""
        if url.startswith(self.prefix):
            request.url = self.base_url + url[len(self.prefix) :]
            kwargs["proxies"] = get_environ_proxies(request.url)
        return super().send(request, *args, **kwargs)


def rebase(session: requests.Session, base_url: str) -> requests.Session:
    """Mount a :class:`RebaseAdapter` on ``session`` unless ``base_url`` is Google's own."""
    if base_url.rstrip("/") != GOOGLE_SHEETS_URL:
        session.mount(GOOGLE_SHEETS_URL + "/", RebaseAdapter(base_url))
    return session


def make_http_client(
    base_url: str, credentials_file: str, timeout: float | tuple[float, float]
) -> tuple[HTTPClient, str]:
    """Build gspread's HTTP client; return it and the account name (for shared rate limits).

    With a credentials file: a service account, through ``gspread.service_account``. Without
    one: no authentication at all (for a local fake server).
    """
    if credentials_file:
        try:
            client = gspread.service_account(filename=credentials_file, scopes=list(SCOPES))
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigurationError(
                f"cannot load Sheets credentials from {credentials_file!r}: {sanitize_error(exc)}"
            ) from None
        account = str(getattr(client.http_client.auth, "service_account_email", "service-account"))
    else:
        client = gspread.Client(auth=_anonymous_credentials(), session=requests.Session())
        account = "anonymous"
    rebase(client.http_client.session, base_url)
    client.set_timeout(timeout)
    return client.http_client, account


# The parts of a batchUpdate's answer the writer reads: the tabs' properties and grid data.
_RESPONSE_FIELDS = (
    "replies,updatedSpreadsheet.sheets(properties(sheetId,title,gridProperties),"
    "data(startRow,startColumn,rowData.values.effectiveValue))"
)


class SheetsApi:
    """The three calls the writer makes on one spreadsheet (typed values, never parsed)."""

    def __init__(self, http: HTTPClient, spreadsheet_id: str) -> None:
        self.http = http
        self.spreadsheet_id = spreadsheet_id
        self.sent: Counter[str] = Counter()  # requests sent, per quota kind (read / write)

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API request, counted in the queue's metrics (and its 429 answers)."""
        counters.count("writer_requests")
        self.sent["read" if method == "get" or "batchGet" in path else "write"] += 1
        url = f"{GOOGLE_SHEETS_URL}/v4/spreadsheets/{quote(self.spreadsheet_id, safe='')}{path}"
        try:
            return self.http.request(method, url, **kwargs).json()
        except APIError as exc:
            if getattr(exc.response, "status_code", None) == 429:
                counters.count("writer_throttled")
            raise

    def metadata(self) -> Any:
        """spreadsheets.get: every tab's properties (ids, titles, grid sizes), no cells."""
        return self._call("get", "", params={"fields": "sheets.properties"})

    def read(self, filters: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """values:batchGetByDataFilter, unformatted, by rows: one ValueRange per filter, in
        order. Filters are grid ranges by sheetId, so a renamed tab is still found."""
        body = {
            "dataFilters": list(filters),
            "majorDimension": "ROWS",
            "valueRenderOption": "UNFORMATTED_VALUE",
        }
        answer = self._call("post", "/values:batchGetByDataFilter", json=body)
        ranges = [m.get("valueRange", {}) for m in answer.get("valueRanges", [])]
        if len(ranges) != len(filters):
            raise ValueError(f"read returned {len(ranges)} ranges for {len(filters)} filters")
        return ranges

    def batch_update(
        self, requests_: list[dict[str, Any]], response_ranges: Sequence[str] = ()
    ) -> Any:
        """spreadsheets.batchUpdate (atomic, in order); with ``response_ranges``, the answer
        holds those ranges as they are right after the update (``updatedSpreadsheet``)."""
        body: dict[str, Any] = {"requests": requests_}
        params: dict[str, Any] = {}
        if response_ranges:
            body |= {
                "includeSpreadsheetInResponse": True,
                "responseRanges": list(response_ranges),
                "responseIncludeGridData": True,
            }
            params["fields"] = _RESPONSE_FIELDS
        return self._call("post", ":batchUpdate", json=body, params=params)


class FailureKind(enum.StrEnum):
    """How a failed call should be handled."""

    QUOTA = "quota"  # 429: not applied; retry later without using up an attempt
    TRANSIENT = "transient"  # 5xx, timeout, connection: maybe applied; retry later
    STALE = "stale"  # 400 because our view is out of date (tab, grid): read again, retry
    INVALID = "invalid"  # 400/413, protected cells: the content is bad; split to find it
    REJECTED = "rejected"  # 401/403/404...: the whole call is refused, whatever it holds


@dataclass(frozen=True)
class ApiFailure:
    """A classified failure, with a sanitized message."""

    kind: FailureKind
    message: str
    status: int | None = None
    retry_after: float | None = None


def classify(exc: BaseException) -> ApiFailure:
    """Classify an exception raised by a call; re-raise anything that isn't an API failure."""
    if isinstance(exc, APIError):
        return _classify_api_error(exc)
    if isinstance(exc, requests.RequestException | TransportError | ValueError):
        return ApiFailure(FailureKind.TRANSIENT, sanitize_error(exc))
    if isinstance(exc, RefreshError):
        return ApiFailure(FailureKind.REJECTED, sanitize_error(exc))
    raise exc


# 400 answers that mean the spreadsheet changed under the request (a tab renamed or deleted,
# rows or columns removed), not that a record's content is bad.
_STALE_MARKERS = (
    "unable to parse range",
    "exceeds grid limits",
    "no grid with id",
    "invalid dimension range",
    "already exists",
)


def _classify_api_error(exc: APIError) -> ApiFailure:
    response = exc.response
    code = exc.code if isinstance(exc.code, int) and exc.code > 0 else response.status_code
    error = exc.error if isinstance(exc.error, dict) else {}
    status = str(error.get("status", ""))
    message = sanitize_error(f"Sheets API {code} {status}: {error.get('message', '')}".strip())
    retry_after = parse_retry_after(response.headers.get("Retry-After"))
    lowered = message.lower()
    if code == 429 or (code == 403 and ("rate limit" in lowered or "quota" in lowered)):
        kind = FailureKind.QUOTA
    elif code in (401, 408) or code >= 500:
        kind = FailureKind.TRANSIENT
    elif code == 400 and any(marker in lowered for marker in _STALE_MARKERS):
        kind = FailureKind.STALE
    elif code in (400, 413) or (code == 403 and "protected" in lowered):
        kind = FailureKind.INVALID
    else:
        kind = FailureKind.REJECTED
    return ApiFailure(kind, message, code, retry_after)


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None
