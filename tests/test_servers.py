"""The test infrastructure itself: both MLflow backends answer and keep data."""

import mlflow
from mlflow import MlflowClient


def test_mlflow_backends_store_and_return_a_registered_model(any_mlflow_server):
    client = MlflowClient(tracking_uri=any_mlflow_server.uri, registry_uri=any_mlflow_server.uri)
    name = f"smoke-{any_mlflow_server.backend}"
    client.create_registered_model(name)
    assert client.get_registered_model(name).name == name
    mlflow.set_tracking_uri(any_mlflow_server.uri)
