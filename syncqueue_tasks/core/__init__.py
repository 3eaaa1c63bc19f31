"""Core: items and enums, change validation, the record fold, outcomes, ids, errors."""
