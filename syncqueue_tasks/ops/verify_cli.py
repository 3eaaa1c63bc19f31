"""``syncqueue verify [--model M] [--repair] [--json]`` (``cli`` registers it)."""

from __future__ import annotations

import json

import click

from syncqueue_tasks.celery.verify import verify as run_verify

_SHOWN = 20  # findings listed per model


@click.command()
@click.option("--model", help="only this model (default: every SYNCQUEUE_MODELS)")
@click.option("--repair", is_flag=True, help="rewrite what differs (within the quota)")
@click.option("--json", "as_json", is_flag=True, help="one JSON object, for scripts")
def verify(model: str | None, repair: bool, as_json: bool) -> None:
    """Compare each model's rows at the destination with what was last written.

    Reports records missing from the sheet, rows with no record, ids in more than one row,
    owned cells that differ (a person edited them) and tombstones that should be live (or the
    reverse). --repair rewrites what differs; rows without an id and columns the package does
    not own are never touched. Exits 1 when something is left.
    """
    result = run_verify(model, repair=repair)
    if as_json:
        click.echo(json.dumps(result.to_json(), sort_keys=True))
    else:
        for report in result.reports:
            counts = ", ".join(f"{n} {k}" for k, n in report.counts().items() if n)
            click.echo(
                f"{report.model} ({report.destination}): {report.rows} row(s), "
                f"{report.records} record(s), {counts or 'no findings'}"
                + (f"; {report.in_flight} being written, skipped" if report.in_flight else "")
                + (f"; repaired {report.repaired}" if repair else "")
                + f" [{report.reads} read(s), {report.writes} write(s), {report.seconds:.1f}s]"
            )
            for finding in report.findings[:_SHOWN]:
                click.echo(f"    {finding.describe()}")
            if len(report.findings) > _SHOWN:
                click.echo(f"    ... and {len(report.findings) - _SHOWN} more (--json lists all)")
    if result.unresolved:
        hint = "" if repair else "; run with --repair to rewrite them"
        raise click.ClickException(f"{result.unresolved} difference(s) left{hint}")
