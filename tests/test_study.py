"""Study grids: how a grid file expands into child runs, what a bad grid is told, what the config
hash covers, and how a launcher makes a bundle run a child of the study's parent run."""

import json
import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
import yaml

from medaug.pipelines.study import GridError, StudyRunner, config_hash, expand_grid, load_grid, parse_grid
from medaug.pipelines.tracking import RunTracker, environment_tags
from tests.conftest import BUNDLE


def test_the_default_bundle_grid_is_three_baselines_times_five_seeds():
    grid = load_grid(BUNDLE / "configs" / "grid.yaml")
    children = expand_grid(grid)
    assert grid.strategy_key == "rebalance#method" and grid.baseline == "none"
    assert len(children) == 15 and [c.seed for c in children[:3]] == [0, 0, 0]  # seed-major: all strategies first
    assert {c.strategy for c in children} == {"none", "class_weight", "oversample"}
    assert children[0].overrides == {"rebalance#method": "none", "classifier": "resnet18", "seed": 0}
    assert children[0].cell == "none (classifier=resnet18)"
    assert len({c.name for c in children}) == 15
    assert len(expand_grid(load_grid(BUNDLE / "configs" / "grid.yaml", seeds=2))) == 6  # --seeds 2


def test_named_strategies_fix_their_keys_so_the_baseline_is_not_swept_over_amounts():
    grid = parse_grid({
        "strategies": {"none": {"oversample#method": "none", "oversample#amount": 0},
                       "gan": {"oversample#method": "gan", "oversample#target": "multiplier"}},
        "axes": {"oversample#amount": [0.5, 1.0, 2.0], "classifier": ["vgg16", "inception_v3"]},
        "seeds": [0, 7], "baseline": "none", "amount_key": "oversample#amount"})  # fmt: skip
    children = expand_grid(grid)
    none = [c for c in children if c.strategy == "none"]
    gan = [c for c in children if c.strategy == "gan"]
    assert len(none) == 2 * 2 and len(gan) == 3 * 2 * 2  # none: classifiers x seeds only
    assert none[0].axes == {"classifier": "vgg16"} and none[0].overrides["oversample#amount"] == 0
    assert gan[0].cell == "gan (oversample#amount=0.5, classifier=vgg16)"
    assert {c.seed for c in children} == {0, 7}


@pytest.mark.parametrize("data, message", [
    ({"axes": {"seed": [0, 1]}}, "the seed key 'seed' is set by 'seeds'"),
    ({"axes": {"classifier": []}}, "axis 'classifier' must be a non-empty list"),
    ({"axes": {"a": [1]}, "stratgy_key": "a"}, "unknown grid field(s) ['stratgy_key']"),
    ({"axes": {"a": [1]}, "strategy_key": "b"}, "strategy_key 'b' is not one of the axes"),
    ({"axes": {"a": [1]}, "baseline": "zero"}, "baseline 'zero' is none of the strategies"),
    ({"axes": {"a": [1]}, "seeds": 0}, "'seeds' must be at least 1"),
    ({"axes": {"a": [1]}, "amount_key": "amount"}, "amount_key 'amount' is not one of the axes"),
    ({}, "needs 'axes' or 'strategies'"),
])  # fmt: skip
def test_bad_grids_are_told_what_is_wrong(data, message):
    with pytest.raises(GridError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")):
        parse_grid(data, "grid.yaml")


def test_grid_keys_missing_from_the_bundle_config_are_named(bundle_copy, tmp_path):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({"axes": {"rebalance#methd": ["none"], "classifer": ["resnet18"]}}))
    with pytest.raises(GridError, match=r"\['classifer', 'rebalance#methd'\] are not in the bundle's config"):
        StudyRunner(bundle_copy, load_grid(path), output_dir=tmp_path / "out")


def test_the_config_hash_covers_the_configs_and_the_overrides_not_the_output_folder(bundle_copy, tmp_path):
    grid = load_grid(BUNDLE / "configs" / "grid.yaml")
    a = StudyRunner(bundle_copy, grid, output_dir=tmp_path / "a")
    b = StudyRunner(bundle_copy, grid, output_dir=tmp_path / "b")
    smoke = StudyRunner(bundle_copy, grid, overlays=[bundle_copy / "configs" / "smoke.json"], output_dir=tmp_path / "a")
    assert a.hashes == b.hashes and a.study_key == b.study_key
    assert set(a.hashes.values()).isdisjoint(smoke.hashes.values()) and a.study_key != smoke.study_key
    more_seeds = StudyRunner(bundle_copy, load_grid(BUNDLE / "configs" / "grid.yaml", seeds=7), output_dir=tmp_path / "a")
    assert more_seeds.study_key == a.study_key, "--seeds 7 after 5 continues the same study"
    assert set(a.hashes.values()) < set(more_seeds.hashes.values())
    assert config_hash([{"x": 1}], {"seed": 0}) != config_hash([{"x": 1}], {"seed": 1})


def test_a_launcher_makes_the_bundle_run_a_tagged_child_of_the_parent(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    parent = RunTracker("unit", tmp_path, "study")
    parent.start()
    monkeypatch.setenv("MEDAUG_PARENT_RUN_ID", parent.run_id)
    monkeypatch.setenv("MEDAUG_RUN_TAGS", json.dumps({"medaug.config_hash": "abc123", "medaug.seed": 2}))
    child = RunTracker("unit", tmp_path, "child", tags={"strategy": "none"})
    child.start()
    tags = mlflow.MlflowClient(child.tracking_uri).get_run(child.run_id).data.tags
    assert tags["mlflow.parentRunId"] == parent.run_id
    assert tags["medaug.config_hash"] == "abc123" and tags["medaug.seed"] == "2" and tags["strategy"] == "none"
    monkeypatch.setenv("MEDAUG_RUN_TAGS", "[1, 2]")
    with pytest.raises(ValueError, match="MEDAUG_RUN_TAGS must be a JSON object"):
        environment_tags()


def _study_cli(bundle, out, launcher, *extra):
    return [sys.executable, "-m", "medaug.cli", "study", "run", str(bundle), "--output-dir", str(out), "--no-progress",
            "--seeds", "1", "--launcher", launcher, *extra]  # fmt: skip


def _parent(out):
    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("imbalance_baselines")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`medaug.role` = 'study'")
    return parent


@pytest.mark.slow
def test_a_failing_child_is_reported_and_sigterm_stops_a_running_one(bundle_copy, tmp_path):
    """Real subprocesses with stand-in children: one that fails at once, one that would sleep two minutes."""
    out = tmp_path / "out"
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    failing = '{python} -c "import sys; print(sys.argv[1:3]); sys.exit(3)"'
    result = subprocess.run(_study_cli(bundle_copy, out, failing, "--max-children", "1"), capture_output=True,
                            text=True, timeout=300, env=env)  # fmt: skip
    assert result.returncode == 1, result.stderr[-2000:]
    assert "0 finished now, 1 failed, 2 not started" in result.stdout
    assert "failed (exit code 3)" in result.stderr and "--config_file" in result.stderr  # the child's log tail
    assert _parent(out).info.status == "FAILED"

    sleeping = '{python} -c "import time; time.sleep(120)"'
    runner = subprocess.Popen(_study_cli(bundle_copy, out, sleeping), env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)  # fmt: skip
    logs = next(out.glob("study-*")) / "logs"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the failed child runs again, now as the sleeping one
        if any("time.sleep(120)" in p.read_text() for p in logs.glob("*.log")):
            break
        time.sleep(0.3)
    time.sleep(1.0)
    started = time.monotonic()
    runner.send_signal(signal.SIGTERM)
    _, stderr = runner.communicate(timeout=60)
    assert time.monotonic() - started < 30, "the runner did not wait for the two-minute child"
    assert runner.returncode == 1 and "study interrupted" in stderr and "Run the same command again" in stderr
    assert _parent(out).info.status == "KILLED", "the same study (parent run) as the first attempt, now KILLED"
