"""Developer metadata and DataFilters for the fake Sheets API.

Row/column metadata follows its row when rows are inserted, deleted, moved or sorted (the last
two by option) and is deleted with its row or sheet, as the DeveloperMetadata reference says.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from fake_sheets_model import ApiError, Book, Meta, Options, Tab, parse_range

GridBox = tuple[Tab, int, int, int, int]  # tab, row0, col0, row1, col1 (0-based, half open)
_VISIBILITIES = ("DOCUMENT", "PROJECT")
_LOCATION_TYPES = ("ROW", "COLUMN", "SHEET", "SPREADSHEET")


def remap(
    book: Book, sheet_id: int, dimension: str, new_index: Callable[[int], int | None]
) -> None:
    """Move (or delete) the metadata on ``dimension`` of a sheet after rows/columns moved."""
    for meta in list(book.metadata.values()):
        if meta.sheet_id != sheet_id or meta.dimension != dimension:
            continue
        kept = [i for i in map(new_index, range(meta.start, meta.end)) if i is not None]
        if not kept:
            del book.metadata[meta.metadata_id]
        else:
            meta.start, meta.end = min(kept), max(kept) + 1


def drop_sheet(book: Book, sheet_id: int) -> None:
    """Delete every metadata entry located on the sheet."""
    for meta in list(book.metadata.values()):
        if meta.sheet_id == sheet_id:
            del book.metadata[meta.metadata_id]


def _location(book: Book, spec: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Meta location fields from a DeveloperMetadataLocation."""
    if spec.get("spreadsheet"):
        return {"sheet_id": None, "dimension": None}
    if "sheetId" in spec:
        return {"sheet_id": book.by_id(spec["sheetId"], where).sheet_id, "dimension": None}
    rng = spec.get("dimensionRange")
    if not isinstance(rng, Mapping):
        raise ApiError(400, f"{where}: location must be a spreadsheet, a sheet or a dimension")
    tab = book.by_id(rng.get("sheetId"), where)
    dimension = rng.get("dimension")
    if dimension not in ("ROWS", "COLUMNS"):
        raise ApiError(400, f"{where}: dimensionRange.dimension must be ROWS or COLUMNS")
    start, end = int(rng.get("startIndex", 0)), int(rng.get("endIndex", 0))
    limit = tab.row_count if dimension == "ROWS" else tab.col_count
    if not 0 <= start < end <= limit:
        raise ApiError(400, f"{where}: Invalid dimensionRange [{start}, {end}) (limit {limit})")
    return {"sheet_id": tab.sheet_id, "dimension": dimension, "start": start, "end": end}


def check_limits(book: Book, options: Options, where: str) -> None:
    """Refuse (400) when the metadata exceeds a configured limit."""
    metas = list(book.metadata.values())
    if options.metadata_max_entries is not None and len(metas) > options.metadata_max_entries:
        raise ApiError(400, f"{where}: Too many developer metadata entries in the spreadsheet")
    total = sum(m.chars() for m in metas)
    if (
        options.metadata_chars_per_spreadsheet is not None
        and total > options.metadata_chars_per_spreadsheet
    ):
        raise ApiError(400, f"{where}: Developer metadata exceeds the spreadsheet's size limit")
    if options.metadata_chars_per_sheet is not None:
        per_sheet: dict[int, int] = {}
        for m in metas:
            if m.sheet_id is not None:
                per_sheet[m.sheet_id] = per_sheet.get(m.sheet_id, 0) + m.chars()
        if any(n > options.metadata_chars_per_sheet for n in per_sheet.values()):
            raise ApiError(400, f"{where}: Developer metadata exceeds the sheet's size limit")


def create(book: Book, spec: Mapping[str, Any], where: str, rng: random.Random) -> Meta:
    """createDeveloperMetadata (limits are checked by the caller once the batch is applied)."""
    body = spec.get("developerMetadata") or {}
    key = body.get("metadataKey")
    if not isinstance(key, str) or not key:
        raise ApiError(400, f"{where}: Developer metadata must always have a key specified")
    visibility = body.get("visibility")
    if visibility not in _VISIBILITIES:
        raise ApiError(400, f"{where}: Developer metadata must always have a visibility specified")
    metadata_id = body.get("metadataId")
    if metadata_id is None:
        metadata_id = rng.randrange(1, 2**31)
        while metadata_id in book.metadata:
            metadata_id = rng.randrange(1, 2**31)
    elif not isinstance(metadata_id, int) or not 0 < metadata_id < 2**31:
        raise ApiError(400, f"{where}: metadataId must be a positive 32-bit integer")
    elif metadata_id in book.metadata:
        raise ApiError(400, f"{where}: Developer metadata with ID {metadata_id} already exists")
    value = body.get("metadataValue")
    meta = Meta(
        metadata_id,
        key,
        None if value is None else str(value),
        visibility,
        **_location(book, body.get("location") or {}, where),
    )
    book.metadata[metadata_id] = meta
    return meta


def _overlaps(meta: Meta, loc: Mapping[str, Any], exact: bool) -> bool:
    if exact:
        return all(getattr(meta, k) == v for k, v in loc.items()) and (
            loc.get("dimension") is not None or meta.dimension is None
        )
    if loc["sheet_id"] is None:
        return True
    if meta.sheet_id != loc["sheet_id"]:
        return False
    if loc["dimension"] is None or meta.dimension is None:
        return True
    return (
        meta.dimension == loc["dimension"] and meta.start < loc["end"] and loc["start"] < meta.end
    )


def lookup(book: Book, spec: Mapping[str, Any], where: str) -> list[Meta]:
    """The metadata a DeveloperMetadataLookup selects (the intersection of its fields)."""
    found = list(book.metadata.values())
    if "metadataId" in spec:
        found = [m for m in found if m.metadata_id == spec["metadataId"]]
    if "metadataKey" in spec:
        found = [m for m in found if m.key == spec["metadataKey"]]
    if "metadataValue" in spec:
        found = [m for m in found if m.value == spec["metadataValue"]]
    if "visibility" in spec:
        found = [m for m in found if m.visibility == spec["visibility"]]
    if "locationType" in spec:
        if spec["locationType"] not in _LOCATION_TYPES:
            raise ApiError(400, f"{where}: Invalid locationType {spec['locationType']!r}")
        found = [m for m in found if m.location_type() == spec["locationType"]]
    strategy = spec.get("locationMatchingStrategy")
    if "metadataLocation" in spec:
        loc = _location(book, spec["metadataLocation"], where)
        loc.setdefault("start", 0)
        loc.setdefault("end", 0)
        found = [m for m in found if _overlaps(m, loc, strategy == "EXACT_LOCATION")]
    elif strategy is not None:
        raise ApiError(400, f"{where}: locationMatchingStrategy needs a metadataLocation")
    return sorted(found, key=lambda m: m.metadata_id)


def _box(book: Book, meta: Meta) -> GridBox | None:
    if meta.sheet_id is None:
        return None
    tab = book.by_id(meta.sheet_id, "metadata")
    if meta.dimension == "ROWS":
        return tab, meta.start, 0, meta.end, tab.col_count
    if meta.dimension == "COLUMNS":
        return tab, 0, meta.start, tab.row_count, meta.end
    return tab, 0, 0, tab.row_count, tab.col_count


def filter_boxes(book: Book, data_filter: Mapping[str, Any], where: str) -> list[GridBox]:
    """The grid ranges a DataFilter selects (a metadata lookup can select several)."""
    kinds = [k for k in ("developerMetadataLookup", "a1Range", "gridRange") if k in data_filter]
    if len(kinds) != 1:
        raise ApiError(400, f"{where}: a DataFilter sets exactly one of its filter fields")
    if kinds[0] == "developerMetadataLookup":
        boxes = [_box(book, m) for m in lookup(book, data_filter[kinds[0]], where)]
        return [b for b in boxes if b is not None]
    if kinds[0] == "a1Range":
        first = next(iter(book.tabs), "")
        rng = parse_range(str(data_filter["a1Range"]), first)
        if rng.title not in book.tabs:
            raise ApiError(400, f"Unable to parse range: {data_filter['a1Range']}")
        tab = book.tabs[rng.title]
        r2 = rng.r2 if rng.r2 is not None else tab.row_count
        c2 = rng.c2 if rng.c2 is not None else tab.col_count
        return [(tab, (rng.r1 or 1) - 1, (rng.c1 or 1) - 1, r2, c2)]
    return [grid_box(book, data_filter["gridRange"], where)]


def grid_box(book: Book, grid: Mapping[str, Any], where: str) -> GridBox:
    """A GridRange as (tab, row0, col0, row1, col1); missing indexes are unbounded."""
    tab = book.by_id(grid.get("sheetId", 0), where)
    r0, r1 = int(grid.get("startRowIndex", 0)), int(grid.get("endRowIndex", tab.row_count))
    c0, c1 = int(grid.get("startColumnIndex", 0)), int(grid.get("endColumnIndex", tab.col_count))
    if not (0 <= r0 <= r1 <= tab.row_count and 0 <= c0 <= c1 <= tab.col_count):
        raise ApiError(
            400,
            f"{where}: Range ({tab.title}) exceeds grid limits. Max rows: {tab.row_count}, "
            f"max columns: {tab.col_count}",
        )
    return tab, r0, c0, r1, c1


def _unmatched(options: Options, where: str) -> None:
    if options.unmatched_filter == "error":
        raise ApiError(400, f"{where}: No developer metadata matches the data filter")


def update(book: Book, spec: Mapping[str, Any], where: str, options: Options) -> list[Meta]:
    """updateDeveloperMetadata: set the masked fields on every entry the filters select."""
    fields = {f.strip() for f in str(spec.get("fields") or "").split(",") if f.strip()}
    if not fields:
        raise ApiError(400, f"{where}: At least one field must be specified in 'fields'")
    new = spec.get("developerMetadata") or {}
    selected: dict[int, Meta] = {}
    for data_filter in spec.get("dataFilters") or []:
        lookup_spec = data_filter.get("developerMetadataLookup")
        if lookup_spec is None:
            raise ApiError(400, f"{where}: dataFilters must be developer metadata lookups")
        matched = lookup(book, lookup_spec, where)
        if not matched:
            _unmatched(options, where)
        selected.update((m.metadata_id, m) for m in matched)
    for meta in selected.values():
        if "*" in fields or "metadataKey" in fields:
            meta.key = str(new.get("metadataKey") or meta.key)
        if "*" in fields or "metadataValue" in fields:
            value = new.get("metadataValue")
            meta.value = None if value is None else str(value)
        if "*" in fields or "visibility" in fields:
            meta.visibility = new.get("visibility", meta.visibility)
        if "*" in fields or "location" in fields:
            for k, v in _location(book, new.get("location") or {}, where).items():
                setattr(meta, k, v)
    return list(selected.values())


def delete(book: Book, spec: Mapping[str, Any], where: str, options: Options) -> list[Meta]:
    """deleteDeveloperMetadata: remove every entry the filter selects."""
    lookup_spec = (spec.get("dataFilter") or {}).get("developerMetadataLookup")
    if lookup_spec is None:
        raise ApiError(400, f"{where}: dataFilter must be a developer metadata lookup")
    matched = lookup(book, lookup_spec, where)
    if not matched:
        _unmatched(options, where)
    for meta in matched:
        del book.metadata[meta.metadata_id]
    return matched


def search(book: Book, body: Mapping[str, Any]) -> dict[str, Any]:
    """developerMetadata:search: every entry any filter selects, with the filters it matched."""
    hits: dict[int, tuple[Meta, list[Any]]] = {}
    for i, data_filter in enumerate(body.get("dataFilters") or []):
        where = f"Invalid dataFilters[{i}]"
        if "developerMetadataLookup" in data_filter:
            metas = lookup(book, data_filter["developerMetadataLookup"], where)
        else:
            boxes = filter_boxes(book, data_filter, where)
            metas = [m for m in book.metadata.values() if any(_in_box(m, b) for b in boxes)]
        for meta in metas:
            hits.setdefault(meta.metadata_id, (meta, []))[1].append(data_filter)
    if not hits:
        return {}
    return {
        "matchedDeveloperMetadata": [
            {"developerMetadata": meta.to_json(), "dataFilters": filters}
            for meta, filters in hits.values()
        ]
    }


def _in_box(meta: Meta, box: GridBox) -> bool:
    tab, r0, c0, r1, c1 = box
    if meta.sheet_id != tab.sheet_id:
        return False
    if meta.dimension == "ROWS":
        return meta.start < r1 and r0 < meta.end
    if meta.dimension == "COLUMNS":
        return meta.start < c1 and c0 < meta.end
    return True
