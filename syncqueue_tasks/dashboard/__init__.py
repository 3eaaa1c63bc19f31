"""The queue dashboard."""
