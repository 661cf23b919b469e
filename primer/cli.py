"""The ``primer`` command line: one entry point for every step of the loop.

Each subcommand lives in its own module of this package; this one assembles them and
owns the one error style: a :class:`~contract.errors.PrimerError` (or a click error
that is not about usage) is printed as a single ``error: ...`` line and exits with
the error's code. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from contract.errors import PrimerError
from contract.settings import quiet_mlflow

# Each subcommand's module, imported only when the command runs (or for `primer --help`):
# `primer serve` must not pay for pandas, MLflow and git before it execs BentoML.
SUBCOMMANDS = {
    "pin": "primer.promotion_commands:pin_group",
    "promote": "primer.promotion_commands:promote",
    "rollback": "primer.promotion_commands:rollback",
    "registry": "primer.promotion_commands:registry_group",
    "status": "primer.promotion_commands:status",
    "train": "primer.train_command:train_command",
    "backtest": "primer.backtest_command:backtest",
    "up": "primer.up:up_command",
    "down": "primer.up:down_command",
    "serve": "primer.serve_command:serve",
    "data": "primer.data_command:data_group",
    "monitor": "primer.monitor_command:monitor",
}


class PrimerGroup(click.Group):
    """Lazy subcommands (click's documented pattern) and the one error style."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module, name = target.split(":")
        command = getattr(importlib.import_module(module), name)
        assert isinstance(command, click.Command) and command.name == cmd_name, target
        return command

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
