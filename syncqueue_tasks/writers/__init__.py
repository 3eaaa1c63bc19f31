"""Destinations for queued changes. See ``base`` for the interface."""

from syncqueue_tasks.writers.base import Outcome, OutcomeKind, Writer

__all__ = ["Outcome", "OutcomeKind", "Writer"]
