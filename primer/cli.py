"""The ``primer`` command line: one entry point for every step of the loop.

Each subcommand lives beside the code it drives; this module only assembles them.
"""

from __future__ import annotations

import logging
import os

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Show debug logs.")
def main(verbose: bool) -> None:
    """MLOps primer: train, track, promote through git, serve.

    Configuration comes from environment variables: MLFLOW_TRACKING_URI and
    PRIMER_* (see README). Run `primer COMMAND --help` for each step.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # MLflow and friends are chatty at INFO; keep the pipeline's own progress readable.
    for noisy in ("mlflow", "alembic", "urllib3", "httpx", "git"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if verbose else logging.WARNING)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _register() -> None:
    """Attach subcommands (imported here so `primer --help` lists them all)."""
    from primer.promotion_commands import COMMANDS as promotion_commands

    for command in promotion_commands:
        main.add_command(command)
    from primer.train_command import train_command

    main.add_command(train_command)
    from primer.up import down_command, up_command

    main.add_command(up_command)
    main.add_command(down_command)
    from primer.serve_command import serve

    main.add_command(serve)


_register()
