"""Every setting the project reads from the environment, and the only module that reads it.

One typed settings object per entry point, read once at the start and passed down:

=========================  ===============================================================
``TrainSettings``          ``primer train`` (and the CronJob that runs it), ``primer backtest``
``PromotionSettings``      ``primer promote | rollback | pin check``,
                           ``primer registry sync | prune`` (the PostSync hook, the prune CronJob)
``DataSettings``           ``primer data fetch`` (the training Job's init container)
``ServingSettings``        the BentoML service (``primer serve``, the Deployment)
``MonitorSettings``        ``primer monitor`` (the training CronJob's first step, ``primer up``)
``StatusSettings``         ``primer status``
``LocalSettings``          ``primer up`` / ``primer down``
=========================  ===============================================================

Variables are ``PRIMER_<FIELD>`` except the standard ``MLFLOW_TRACKING_URI``. An empty
value counts as unset (a manifest may set ``""``). A bad value is a :class:`SettingsError`
naming the variable. ``docs/configuration.md`` is generated from these classes
(:func:`reference_markdown`; a test keeps it current).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, ClassVar, Literal, Self

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from contract.errors import SettingsError
from contract.names import DEFAULT_TRACKING_URI, MONITORING_PATH, PIN_PATH, POLICY_PATH

TRACKING_URI_VAR = "MLFLOW_TRACKING_URI"
ENV_PREFIX = "PRIMER_"

# What a failed check of a variable means, in words an operator can act on.
_PHRASES = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "float_parsing": "must be a number",
    "finite_number": "must be a finite number",
    "greater_than": "must be > 0",
    "bool_parsing": "must be true or false",
    "date_from_datetime_parsing": "is not a date (YYYY-MM-DD)",
    "date_parsing": "is not a date (YYYY-MM-DD)",
    "datetime_from_date_parsing": "is not an ISO timestamp (e.g. 2026-01-01T00:00:00Z)",
    "datetime_parsing": "is not an ISO timestamp (e.g. 2026-01-01T00:00:00Z)",
}


class _Settings(BaseSettings):
    """Common behaviour: PRIMER_ prefix, empty = unset, frozen, errors that name the variable."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_ignore_empty=True, extra="ignore", frozen=True, populate_by_name=True,
    )
    # Shown in the generated reference: which entry point this object configures.
    entry_point: ClassVar[str] = ""
    # Fields a command-line option can also set: errors name both.
    cli_options: ClassVar[dict[str, str]] = {}

    @classmethod
    def load(cls, **overrides: Any) -> Self:
        """Read the environment once; ``overrides`` (command-line options, None = not given) win."""
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            raise SettingsError("; ".join(_describe(cls, e, given) for e in exc.errors())) from None

    @classmethod
    def env_name(cls, field: str) -> str:
        alias = cls.model_fields[field].validation_alias
        if isinstance(alias, str):
            return alias
        if isinstance(alias, AliasChoices):
            return str(alias.choices[0])
        return ENV_PREFIX + field.upper()


def _describe(cls: type[_Settings], error: Mapping[str, Any], given: Mapping[str, Any]) -> str:
    """``<VARIABLE> <what is wrong>, got <value>``; a value from the command line names its option first."""
    field = str(error["loc"][0]) if error.get("loc") else "?"
    name = cls.env_name(field) if field in cls.model_fields else field
    if field in given and field in cls.cli_options:
        name = f"{cls.cli_options[field]} ({name})"
    kind, ctx = str(error.get("type")), error.get("ctx") or {}
    if kind == "value_error":
        phrase = str(ctx.get("error", "is invalid"))
    elif kind == "literal_error":
        phrase = f"must be {ctx.get('expected', 'one of the allowed values')}"
    else:
        phrase = _PHRASES.get(kind, str(error.get("msg", "is invalid")).lower())
    return f"{name} {phrase}, got {error.get('input')!r}"


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


class RepoSettings(_Settings):
    """Where the repository, the pin and MLflow are: every entry point needs these."""

    tracking_uri: str = Field(
        DEFAULT_TRACKING_URI, validation_alias=TRACKING_URI_VAR,
        description="MLflow tracking server (runs, registry, artifacts). The standard MLflow variable.",
    )
    repo_dir: Path | None = Field(
        None, description="The git repository the CLI works on. Default: the git top level of the current directory.",
    )
    pin_file: Path | None = Field(
        None, description=f"The pin file. Default: `<repo>/{PIN_PATH}` (in the cluster: the mounted ConfigMap).",
    )

    def repo_root(self) -> Path:
        """``repo_dir``, else the git top level of the current directory, else the current directory."""
        if self.repo_dir is not None:
            return self.repo_dir.resolve()
        here = Path.cwd().resolve()
        for candidate in (here, *here.parents):
            if (candidate / ".git").exists():
                return candidate
        return here

    def pin_path(self) -> Path:
        return self.pin_file if self.pin_file is not None else self.repo_root() / PIN_PATH


class StateSettings(RepoSettings):
    """The local state folder (``primer up``'s servers; the training's fold cache)."""

    state_dir: Path | None = Field(
        None,
        description="Where `primer up` keeps MLflow's database, artifacts, logs and state, and `primer train` its "
                    "walk-forward fold cache (`fold-cache/`). Default: `<repo>/.primer`.",
    )

    def state_path(self) -> Path:
        return self.state_dir if self.state_dir is not None else self.repo_root() / ".primer"


class DataSettings(_Settings):
    """Where market data comes from (training and serving)."""

    entry_point: ClassVar[str] = "primer data fetch (the training Job's init container)"

    data_source: str = Field(
        "yfinance",
        description="Market data: `yfinance`, `csv:PATH`, `synthetic`, `synthetic:SEED` or "
                    "`synthetic:SEED:SIGNAL` (a planted signal of known strength, for tests).",
    )
    synthetic_seed: int = Field(42, description="Seed of `synthetic` data when the spec names none.")

    def data_spec(self) -> str:
        """``data_source`` with the seed made explicit (``synthetic`` -> ``synthetic:<seed>``)."""
        if self.data_source.strip().lower() == "synthetic":
            return f"synthetic:{self.synthetic_seed}"
        return self.data_source


class ReplaySettings(_Settings):
    """The replay clock: compressed time for a lab (see ``ml.replay``)."""

    mode: Literal["live", "replay"] = Field(
        "live", description="`live` anchors training at today; `replay` at the replay clock.",
    )
    replay_start: date | None = Field(None, description="Replay: the first anchor date (YYYY-MM-DD).")
    replay_epoch: datetime | None = Field(
        None, description="Replay: when the clock started (ISO timestamp, e.g. 2026-01-01T00:00:00Z).",
    )
    replay_interval_seconds: float = Field(
        300.0, gt=0, description="Replay: wall-clock seconds per simulated trading day.",
    )

    @field_validator("mode", mode="before")
    @classmethod
    def _mode_case(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("replay_interval_seconds")
    @classmethod
    def _interval_finite(cls, value: float) -> float:
        return _finite(value)

    @field_validator("replay_epoch")
    @classmethod
    def _epoch_utc(cls, value: datetime | None) -> datetime | None:
        return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


class PromotionSettings(RepoSettings):
    """The gate's policy file, git and the forge API (Gitea or GitHub)."""

    entry_point: ClassVar[str] = ("primer promote / rollback / pin check / registry sync / registry prune; "
                                  "primer train")

    policy_file: Path | None = Field(
        None, description=f"The gate policy. Default: `<repo>/{POLICY_PATH}`, else the packaged copy.",
    )
    git_remote: str | None = Field(
        None, description="Where promotion branches are pushed (a remote name or URL). Default: the local repository.",
    )
    git_branch: str | None = Field(
        None, description="The branch the pin lives on. Default: the checked-out branch locally, else `main`.",
    )
    forge: str = Field("none", description="Pull requests through `gitea`, `github` or `none` (branches only).")
    forge_url: str | None = Field(
        None, description="Forge web or API URL. Default: `http://gitea:3000` / GitHub's API.",
    )
    forge_repo: str = Field("", description="`owner/name` of the repository on the forge.")
    forge_token: SecretStr | None = Field(
        None, description="Forge API and git-over-HTTP token (a Kubernetes Secret in the cluster; never in git).",
    )
    service_url: str | None = Field(None, description="`primer status`: the service to ask what it serves.")

    def token(self) -> str | None:
        return self.forge_token.get_secret_value() if self.forge_token is not None else None

    def policy_path(self) -> Path:
        if self.policy_file is not None:
            return self.policy_file
        in_repo = self.repo_root() / POLICY_PATH
        return in_repo if in_repo.exists() else Path(__file__).resolve().parent.parent / POLICY_PATH


class TrainingWindowSettings(_Settings):
    """How many years of rows a model is fitted on (training; the monitor's climatology fallback)."""

    train_years: float = Field(10.0, description="Training window cap in years (> 0), per fold and for the final fit.")

    @field_validator("train_years")
    @classmethod
    def _years_positive(cls, value: float) -> float:
        if not (math.isfinite(value) and value > 0):  # "nan" and "inf" parse as floats
            raise ValueError("must be a positive number")
        return value


class TrainSettings(PromotionSettings, StateSettings, DataSettings, ReplaySettings, TrainingWindowSettings):
    """``primer train``: the pipeline, then the promotion step."""

    entry_point: ClassVar[str] = "primer train (the training CronJob), primer backtest"
    cli_options: ClassVar[dict[str, str]] = {
        "data_source": "--source", "eval_days": "--eval-days", "train_years": "--train-years",
        "candidates_file": "--candidates",
    }

    eval_days: int = Field(
        1000, description="Walk-forward comparison: at least this many out-of-sample trading days (>= 60).",
    )
    candidates_file: Path | None = Field(
        None, description="Candidate grid YAML. Default: the packaged `ml/candidates.yaml`.",
    )

    def fold_cache_path(self) -> Path:
        """Forecasts of completed walk-forward folds, reused by the next run (in the cluster:
        ``PRIMER_STATE_DIR`` on a volume the CronJob mounts, else each pod starts cold)."""
        return self.state_path() / "fold-cache"



class PredictionLogSettings(_Settings):
    """The prediction log: written by the service, read (and its live reports written) by the monitor."""

    prediction_log: str = Field(
        "", description="Where every published answer is recorded once per (model version, as_of), and where "
                        "`primer monitor` writes its live reports: a SQLAlchemy URL, `sqlite:///PATH` or "
                        "`postgresql://...`. Empty: not recorded. `primer up` sets "
                        "`sqlite:///<state dir>/predictions.db`.",
    )


class ServingSettings(RepoSettings, DataSettings, ReplaySettings, PredictionLogSettings):
    """The BentoML service."""

    entry_point: ClassVar[str] = "the service (primer serve, the serving Deployment)"

    pin_watch: bool = Field(
        True, description="Follow pin changes without a restart. The cluster sets `false`: a new pin rolls the pods.",
    )
    pin_poll_seconds: float = Field(2.0, gt=0, description="How often the pin file is re-read.")
    feature_ttl_seconds: float = Field(
        3600.0, gt=0, description="How long a fetched feature row counts as fresh (a new UTC day always refetches).",
    )
    live_refresh_seconds: float = Field(
        30.0, gt=0, description="How often the service re-reads the monitor's live report of the served version "
                                "(for `/metrics`).",
    )
    bentoml_home: Path | None = Field(
        None, validation_alias="BENTOML_HOME",
        description="BentoML's home (its Prometheus folder lives there). Default for `primer serve`: one per port "
                    "in the temp folder, so two services on one host never share (and wipe) each other's metrics.",
    )

    def service_home(self, port: int) -> Path:
        """``BENTOML_HOME`` if set, else a folder of this user's for this port alone."""
        if self.bentoml_home is not None:
            return self.bentoml_home
        return Path(tempfile.gettempdir()) / f"primer-bentoml-{os.getuid()}-{port}"

    @field_validator("pin_poll_seconds", "feature_ttl_seconds", "live_refresh_seconds")
    @classmethod
    def _seconds_finite(cls, value: float) -> float:
        return _finite(value)


class MonitorSettings(PromotionSettings, DataSettings, ReplaySettings, PredictionLogSettings, TrainingWindowSettings):
    """``primer monitor``: score the logged answers, watch drift, propose a demotion."""

    entry_point: ClassVar[str] = "primer monitor (the training CronJob's first step, primer up)"

    monitoring_file: Path | None = Field(
        None, description=f"The monitor's thresholds. Default: `<repo>/{MONITORING_PATH}`, else the packaged copy.",
    )

    def monitoring_path(self) -> Path:
        if self.monitoring_file is not None:
            return self.monitoring_file
        in_repo = self.repo_root() / MONITORING_PATH
        return in_repo if in_repo.exists() else Path(__file__).resolve().parent.parent / MONITORING_PATH


class StatusSettings(PromotionSettings, PredictionLogSettings):
    """``primer status``: the promotion settings and where the monitor's live reports are."""

    entry_point: ClassVar[str] = "primer status"


class LocalSettings(StateSettings, DataSettings):
    """``primer up`` / ``primer down``."""

    entry_point: ClassVar[str] = "primer up / primer down"


ENTRY_POINTS: tuple[type[_Settings], ...] = (TrainSettings, PromotionSettings, DataSettings, ServingSettings,
                                             MonitorSettings, StatusSettings, LocalSettings)


def child_env(**extra: str) -> dict[str, str]:
    """The environment for a child process (git, a server, a ``primer`` subcommand), plus ``extra``."""
    return {**os.environ, **extra}


@contextmanager
def env_restored(name: str) -> Iterator[None]:
    """Put ``name`` back as it was afterwards: MLflow's own URI scope unsets MLFLOW_TRACKING_URI on exit."""
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def quiet_mlflow(*, fail_fast: bool = False, bounded: bool = False) -> None:
    """MLflow defaults this project changes, set once per process (a value the user set wins).

    No telemetry and no "View run at ..." lines. MLflow's own HTTP retries (7, doubling, 120 s
    timeouts) hide a dead server for over ten minutes: ``fail_fast`` (serving, whose own loop
    retries with backoff) turns them off; ``bounded`` (training) keeps a few short ones, so a
    server killed mid-run ends ``primer train`` within about a minute.
    """
    defaults = {"MLFLOW_DISABLE_TELEMETRY": "true", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
    if fail_fast:
        defaults |= {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
    elif bounded:
        defaults |= {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                     "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
    for name, value in defaults.items():
        os.environ.setdefault(name, value)


def reference_markdown() -> str:
    """The configuration reference: every variable, its default, who reads it (docs/configuration.md)."""
    rows: dict[str, tuple[str, str, list[str]]] = {}
    for cls in ENTRY_POINTS:
        for field, info in cls.model_fields.items():
            name = cls.env_name(field)
            default = "" if info.default is None else f"`{info.default!s}`" if info.default != "" else '`""`'
            rows.setdefault(name, (default, info.description or "", []))[2].append(cls.__name__)
    lines = [
        "# Configuration",
        "",
        "<!-- Generated by `python -m contract.settings` from contract/settings.py; "
        "tests/test_architecture.py keeps it current. Edit the settings, not this file. -->",
        "",
        "Everything is configured by environment variables (an empty value counts as unset) and by",
        "two files in git: `promotion/policy.yaml` (the gate) and `ml/candidates.yaml` (the candidate grid).",
        "No credential is ever read from a file in git.",
        "",
        "| settings object | read by |",
        "|---|---|",
        *[f"| `{cls.__name__}` | {cls.entry_point} |" for cls in ENTRY_POINTS],
        "",
        "| variable | default | meaning | read by |",
        "|---|---|---|---|",
    ]
    for name in sorted(rows, key=lambda n: (n != TRACKING_URI_VAR, n)):
        default, meaning, readers = rows[name]
        lines.append(f"| `{name}` | {default} | {meaning} | {', '.join(readers)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover - `python -m contract.settings > docs/configuration.md`
    print(reference_markdown(), end="")
