"""Fixtures for the serving tests: real MLflow, models from the real pipeline, real ``bentoml serve``.

One service is started per module and driven through its pin file; tests that need
a different configuration start their own short-lived service with
:func:`tests.support.start_service`.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.support import Service, register_tiny_version, start_service, train_version, write_pin_text


@dataclass
class Registered:
    uri: str
    first: int
    second: int


@pytest.fixture(scope="module")
def registered(mlflow_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Registered:
    """Two versions of spy-direction trained by the pipeline on different synthetic markets."""
    pin = write_pin_text(tmp_path_factory.mktemp("train") / "model-version.yaml", None)
    first = train_version(mlflow_server.uri, pin, "synthetic:11")
    second = train_version(mlflow_server.uri, pin, "synthetic:23")
    assert second > first
    return Registered(uri=mlflow_server.uri, first=first, second=second)


@pytest.fixture(scope="module")
def tiny_versions(mlflow_server: Any, request: pytest.FixtureRequest) -> tuple[str, int, int]:
    """(MLflow URI, first, second): two tiny real versions registered in seconds, in an experiment
    named after the test module (for tests about logging and metrics, not model quality)."""
    from ml.tracking import Tracker

    experiment = Tracker(mlflow_server.uri).experiment_id(request.module.__name__.rsplit(".", 1)[-1])
    first, _ = register_tiny_version(mlflow_server.uri, experiment)
    second, _ = register_tiny_version(mlflow_server.uri, experiment)
    return mlflow_server.uri, first, second


@pytest.fixture(scope="module")
def service(registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """The module's one service; it starts with nothing pinned (tests pin through the file)."""
    with start_service(tmp_path_factory.mktemp("serve"), registered.uri, None) as svc:
        yield svc


@pytest.fixture(scope="module")
def local_model(registered: Registered) -> Any:
    """The first version loaded in the test process, to check the service's numbers independently."""
    from ml.tracking import Tracker

    return Tracker(registered.uri).load_version(registered.first)
