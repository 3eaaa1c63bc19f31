"""PostgreSQL: the statements (``sql``), engine, schema, queue operations, synced state."""
