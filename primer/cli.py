"""The ``primer`` command line: one entry point for every step of the loop.

Each subcommand lives in its own module of this package; this one assembles them and
owns the one error style: a :class:`~contract.errors.PrimerError` (or a click error
that is not about usage) is printed as a single ``error: ...`` line and exits with
the error's code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import click

from contract.errors import PrimerError
from contract.settings import quiet_mlflow


class PrimerGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except PrimerError as exc:
            fail(str(exc), exc.exit_code)
        except click.UsageError:
            raise  # click prints the usage line with it
        except click.ClickException as exc:
            fail(exc.format_message(), exc.exit_code)


def fail(message: str, code: int = 1) -> None:
    """Print ``error: message`` on stderr and exit with ``code``."""
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(cls=PrimerGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """MLOps primer: train, track, promote through git, serve.

    Configuration comes from environment variables: MLFLOW_TRACKING_URI and
    PRIMER_* (docs/configuration.md). Run `primer COMMAND --help` for each step.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # MLflow and friends are chatty at INFO; keep the pipeline's own progress readable.
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "git"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    quiet_mlflow()


def _register() -> None:
    """Attach subcommands (imported here so `primer --help` lists them all)."""
    from primer.backtest_command import backtest
    from primer.data_command import data_group
    from primer.promotion_commands import COMMANDS as promotion_commands
    from primer.serve_command import serve
    from primer.train_command import train_command
    from primer.up import down_command, up_command

    for command in (*promotion_commands, train_command, backtest, up_command, down_command, serve, data_group):
        main.add_command(command)


_register()
