"""Celery: the app, tasks, enqueue path, the worker's batch, consumer, broker guard."""
