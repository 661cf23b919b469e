"""``primer data fetch``: the market history saved once as a CSV file.

The lab's replay walks a fixed history one simulated day at a time; downloading it again
on every 5-minute run (288 times a day) only invites Yahoo's throttling. The training
CronJob runs this as an init container with ``--if-missing`` on a volume, then trains from
the file (``PRIMER_DATA_SOURCE=csv:PATH``).
"""

from __future__ import annotations

from pathlib import Path

import click

from contract.settings import DataSettings


@click.group("data")
def data_group() -> None:
    """Market data."""


@data_group.command("fetch")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The CSV file to write (date, open, high, low, close, volume).")
@click.option("--if-missing", is_flag=True, help="Keep OUT when it exists already (a cache).")
def data_fetch(out: Path, if_missing: bool) -> None:
    """Save the whole daily history of PRIMER_DATA_SOURCE (default yfinance) to OUT."""
    from ml.data import DataSourceError, load_prices  # pandas and yfinance: imported on use

    if if_missing and out.is_file() and out.stat().st_size > 0:
        click.echo(f"{out} exists: kept (delete it to fetch again)")
        return
    settings = DataSettings.load()
    frame = load_prices(settings.data_spec(), seed=settings.synthetic_seed)
    if frame.empty or "date" not in frame.columns:
        raise DataSourceError(f"{settings.data_spec()} returned no daily bars; {out} not written")
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".part")  # never a half-written cache
    frame.to_csv(partial, index=False, date_format="%Y-%m-%d")
    partial.replace(out)
    first, last = frame["date"].min().date(), frame["date"].max().date()
    click.echo(f"{len(frame)} daily bars {first}..{last} from {settings.data_spec()} -> {out}")
