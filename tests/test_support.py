"""The test infrastructure itself: both MLflow backends answer and keep data."""

from mlflow import MlflowClient


def test_mlflow_backends_store_and_return_a_registered_model(any_mlflow_server):
    client = MlflowClient(tracking_uri=any_mlflow_server.uri, registry_uri=any_mlflow_server.uri)
    name = f"smoke-{any_mlflow_server.backend}"
    client.create_registered_model(name)
    assert client.get_registered_model(name).name == name


def test_free_ports_are_distinct_bindable_and_outside_the_ephemeral_range():
    # BentoML takes its internal control ports with bind(0), from the ephemeral range;
    # a port we hand a server must not be one of those (a CI run failed on exactly that).
    import socket

    from tests.support import _ephemeral_range_start, free_port

    ports = [free_port() for _ in range(50)]
    assert len(set(ports)) == len(ports)
    assert all(1024 <= p < _ephemeral_range_start() for p in ports)
    with socket.socket() as s:
        s.bind(("127.0.0.1", ports[-1]))
