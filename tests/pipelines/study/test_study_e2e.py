"""A study grid run the way users run it (``medaug study run``), killed half-way and started again:
every child run ends FINISHED exactly once under one parent run, and ``medaug report`` on it
writes both reports with confidence intervals and paired p-values, logged to the parent run."""

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import mlflow
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.slow
GRID = """
strategy_key: rebalance#method
baseline: none
axes:
  rebalance#method: [none, class_weight]
seeds: 2
"""
FAST = {"max_epochs": 1, "n_bootstrap": 200}  # on top of smoke.json: one epoch per child


def _env():
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _children(out):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imbalance_baselines")
    if experiment is None:
        return client, [], []
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if r.data.tags.get("medaug.role") == "study"]
    return client, parents, [r for r in runs if "mlflow.parentRunId" in r.data.tags]


def test_a_killed_study_resumes_with_each_child_finished_once_and_the_report_tests_it(bundle_copy, tmp_path):
    grid, fast, out = tmp_path / "grid.yaml", tmp_path / "fast.json", tmp_path / "out"
    grid.write_text(GRID)
    fast.write_text(json.dumps(FAST))
    cmd = [
        sys.executable,
        "-m",
        "medaug.cli",
        "study",
        "run",
        str(bundle_copy),
        "--grid",
        str(grid),
        "--config",
        "smoke.json",
        "--config",
        str(fast),
        "--output-dir",
        str(out),
        "--no-progress",
    ]

    # First attempt: killed hard (runner and its child, as a scheduler or OOM killer would) while
    # the second child is training.
    first = subprocess.Popen(
        cmd, cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 400
    while time.monotonic() < deadline:
        time.sleep(1.0)
        assert first.poll() is None, first.stdout.read().decode()[-3000:]
        if list(out.glob("study-*/logs/*.log")):  # the runner has set up its MLflow store
            _, _, children = _children(out)
            states = Counter(r.info.status for r in children)
            if states["FINISHED"] >= 1 and states["RUNNING"] >= 1:
                break
    else:
        pytest.fail("the study did not reach its second child in time")
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    _, _, children = _children(out)
    before = Counter(r.info.status for r in children)
    assert before["RUNNING"] == 1 and before["FINISHED"] in (1, 2) and len(children) == before["FINISHED"] + 1

    # Second attempt: the same command finishes the rest.
    second = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert f"{before['FINISHED']} of 4 child runs already finished" in second.stderr
    client, parents, children = _children(out)
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    parent_id = parents[0].info.run_id
    assert all(r.data.tags["mlflow.parentRunId"] == parent_id for r in children)
    finished = [r for r in children if r.info.status == "FINISHED"]
    hashes = Counter(r.data.tags["medaug.config_hash"] for r in finished)
    assert len(hashes) == 4 and set(hashes.values()) == {1}, "each child exactly once FINISHED"
    assert Counter(r.info.status for r in children) == {"FINISHED": 4, "KILLED": 1}
    assert sorted((r.data.tags["medaug.strategy"], r.data.tags["medaug.seed"]) for r in finished) == [
        ("class_weight", "0"),
        ("class_weight", "1"),
        ("none", "0"),
        ("none", "1"),
    ]
    assert all(r.data.params["max_epochs"] == "1" for r in finished)

    # A third run has nothing left to do.
    third = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert third.returncode == 0 and "4 skipped" in third.stdout, third.stdout + third.stderr[-2000:]

    report_dir = tmp_path / "report"
    rep = subprocess.run(
        [
            sys.executable,
            "-m",
            "medaug.cli",
            "report",
            "--experiment",
            "imbalance_baselines",
            "--runs-dir",
            str(out),
            "--out",
            str(report_dir),
            "--n-bootstrap",
            "500",
        ],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert rep.returncode == 0, rep.stdout + rep.stderr[-3000:]
    data = json.loads((report_dir / "report.json").read_text())
    assert data["parent_run_id"] == parent_id and data["baseline"] == "none"
    (comparison,) = data["comparisons"]
    assert comparison["cell"] == "class_weight" and comparison["baseline_cell"] == "none"
    result = comparison["result"]
    assert result["seeds"] == [0, 1] and result["images"] == 155 and result["shared_images"]
    for test in ("balanced_accuracy", "youden", "auc", "mcnemar"):
        assert 0.0 <= result[test]["p"] <= 1.0 and result[test]["p_holm"] >= result[test]["p"]
    ba = data["summary"]["class_weight"]["test_balanced_accuracy"]
    assert ba["n"] == 2 and ba["ci_low"] <= ba["mean"] <= ba["ci_high"]
    md = (report_dir / "report.md").read_text()
    assert "Paired comparisons against 'none'" in md and "[95% CI]" in md and "metrics_by_strategy.png" in md
    # What the runner and the runs recorded makes this a smoke study: the report says so and gives no verdict.
    assert comparison["flags"]["verdict"] is False
    assert comparison["flags"]["reasons"][:2] == ["smoke runs (1 epoch)", "2 seeds < 5"]
    assert "✗ not an answer: smoke runs (1 epoch); 2 seeds < 5" in md
    assert "1 of 1 comparisons are not an answer" in rep.stdout
    page = (report_dir / "report.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # metrics plot + two confusion matrices, embedded
    logged = {a.path for a in client.list_artifacts(parent_id, "report")}
    assert {"report/report.html", "report/report.md", "report/report.json"} <= logged
