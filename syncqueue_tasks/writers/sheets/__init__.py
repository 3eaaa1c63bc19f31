"""The Google Sheets writer (``syncqueue_tasks.writers.sheets:create_writer``).

Modules: ``writer`` (rounds: lock, limiter, read, write, check, repair), ``plan`` (records ->
one batchUpdate and its check), ``layout`` (a tab's header and ids), ``cells`` (typed values),
``tabs`` (tabs by sheetId, grid sizes), ``api`` (transport and error triage), ``verify``
(compare a tab with the synced states, repair).
"""

from syncqueue_tasks.writers.sheets.writer import GoogleSheetsWriter, SheetsTuning, create_writer

__all__ = ["GoogleSheetsWriter", "SheetsTuning", "create_writer"]
