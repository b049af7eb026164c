"""One MLflow store for the unit tests of tracking: creating MLflow's tables takes seconds, so the
tests share a store and keep apart by experiment and run names."""

import pytest


@pytest.fixture(scope="session")
def shared_store(tmp_path_factory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


@pytest.fixture
def tracking_uri(shared_store, monkeypatch) -> str:
    """Runs of RunTracker (and MONAI's handlers) in this test go to the shared store."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", shared_store)
    return shared_store
