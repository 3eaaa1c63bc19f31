"""The servers ``syncqueue run`` starts: embedded PostgreSQL, Redis; supervision."""
