"""Operators: the CLI, ``syncqueue run``'s stack, doctor, demo, the metrics export."""
