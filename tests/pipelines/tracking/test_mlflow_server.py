"""The team setup on one machine: a real ``mlflow server`` (SQLite backend, artifacts served from a
temporary folder, 127.0.0.1, a free port), the smoke bundle logging to it through
``MLFLOW_TRACKING_URI``, and the run read back over MLflow's REST API as any other client would."""

import pytest

from medaug.pipelines.tracking.server import LocalMlflowServer
from tests.bundles.test_bundle_e2e import CONFIGS, EXPECTED_ARTIFACTS, run_bundle

pytestmark = pytest.mark.slow


def listed_artifacts(server, run_id, path=""):
    found = set()
    for item in server.api("artifacts/list", {"run_id": run_id, "path": path} if path else {"run_id": run_id}).get(
        "files", []
    ):
        found |= listed_artifacts(server, run_id, item["path"]) if item["is_dir"] else {item["path"]}
    return found


def test_smoke_bundle_logs_to_a_local_mlflow_server_and_reads_back_over_rest(bundle_copy, tmp_path):
    with LocalMlflowServer(tmp_path / "server") as server:
        out = tmp_path / "out"
        run_bundle(bundle_copy, out, "--max_epochs", "1", configs=CONFIGS, tracking_uri=server.uri)
        assert not (out / "mlflow.db").exists(), "nothing in the embedded store"

        experiment = server.api("experiments/get-by-name", {"experiment_name": "imbalance_baselines"})["experiment"]
        runs = server.api("runs/search", body={"experiment_ids": [experiment["experiment_id"]]})["runs"]
        assert len(runs) == 1
        run = runs[0]
        assert run["info"]["status"] == "FINISHED"
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
        assert params["rebalance.method"] == "class_weight" and params["max_epochs"] == "1"
        assert metrics["test_auc_ci_low"] <= metrics["test_auc"] <= metrics["test_auc_ci_high"]
        history = server.api("metrics/get-history", {"run_id": run["info"]["run_id"], "metric_key": "val_auc"})
        assert len(history["metrics"]) == 1
        assert EXPECTED_ARTIFACTS <= listed_artifacts(server, run["info"]["run_id"])
        assert list((tmp_path / "server" / "artifacts").rglob("model.pt")), "artifacts stored by the server"
    assert server.process.poll() is not None, "server stopped"
