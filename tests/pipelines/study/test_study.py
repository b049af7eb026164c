"""Study grids: how a grid file expands into child runs, what a bad grid is told, what the config
hash covers, and how a launcher makes a bundle run a child of the study's parent run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import mlflow
import pytest
import yaml

from medaug.pipelines.study import GridError, StudyLocked, StudyLockLost, StudyRunner, load_grid
from medaug.pipelines.study import lock as study_lock
from medaug.pipelines.study.grid import config_hash, expand_grid, parse_grid
from medaug.pipelines.study.runner import smoke_override_warning, smoke_settings_overridden
from medaug.pipelines.tracking.tracker import RunTracker, environment_tags
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
    grid = parse_grid(
        {
            "strategies": {
                "none": {"oversample#method": "none", "oversample#amount": 0},
                "gan": {"oversample#method": "gan", "oversample#target": "multiplier"},
            },
            "axes": {"oversample#amount": [0.5, 1.0, 2.0], "classifier": ["vgg16", "inception_v3"]},
            "seeds": [0, 7],
            "baseline": "none",
            "amount_key": "oversample#amount",
        }
    )
    children = expand_grid(grid)
    none = [c for c in children if c.strategy == "none"]
    gan = [c for c in children if c.strategy == "gan"]
    assert len(none) == 2 * 2 and len(gan) == 3 * 2 * 2  # none: classifiers x seeds only
    assert none[0].axes == {"classifier": "vgg16"} and none[0].overrides["oversample#amount"] == 0
    assert gan[0].cell == "gan (oversample#amount=0.5, classifier=vgg16)"
    assert {c.seed for c in children} == {0, 7}


@pytest.mark.parametrize(
    "data, message",
    [
        ({"axes": {"seed": [0, 1]}}, "the seed key 'seed' is set by 'seeds'"),
        ({"axes": {"classifier": []}}, "axis 'classifier' must be a non-empty list"),
        ({"axes": {"a": [1]}, "stratgy_key": "a"}, "unknown grid field(s) ['stratgy_key']"),
        ({"axes": {"a": [1]}, "strategy_key": "b"}, "strategy_key 'b' is not one of the axes"),
        ({"axes": {"a": [1]}, "baseline": "zero"}, "baseline 'zero' is none of the strategies"),
        ({"axes": {"a": [1]}, "seeds": 0}, "'seeds' must be at least 1"),
        ({"axes": {"a": [1]}, "amount_key": "amount"}, "amount_key 'amount' is not one of the axes"),
        ({}, "needs 'axes' or 'strategies'"),
    ],
)
def test_bad_grids_are_told_what_is_wrong(data, message):
    with pytest.raises(
        GridError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[").replace("]", r"\]")
    ):
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
    more_seeds = StudyRunner(
        bundle_copy, load_grid(BUNDLE / "configs" / "grid.yaml", seeds=7), output_dir=tmp_path / "a"
    )
    assert more_seeds.study_key == a.study_key, "--seeds 7 after 5 continues the same study"
    assert set(a.hashes.values()) < set(more_seeds.hashes.values())
    assert config_hash([{"x": 1}], {"seed": 0}) != config_hash([{"x": 1}], {"seed": 1})


def test_grid_keys_that_override_the_smoke_overlay_are_found_with_the_smoke_keys_they_override():
    smoke = {
        "_generated_by": "the generator",
        "classifier": "small_cnn",
        "oversample#gan": {"iterations": 3},
        "augment#grid#samples": 1,
        "max_epochs": 2,
    }
    grid = parse_grid(
        {
            "strategies": {"none": {"oversample#method": "none"}, "gan": {"oversample::gan::iterations": 500}},
            "axes": {"classifier": ["resnet18", "small_cnn"], "augment#grid": [{}], "rebalance#method": ["none"]},
        },
        "grid.yaml",
    )
    assert smoke_settings_overridden(grid, smoke) == {
        "classifier": ["classifier"],
        "augment#grid": ["augment#grid#samples"],  # a section holding a smoke key
        "oversample::gan::iterations": ["oversample#gan"],  # a key inside a smoke section, either separator
    }
    warning = smoke_override_warning(grid, smoke, "configs/smoke.json")
    assert warning.startswith("the grid grid.yaml overrides 3 setting(s) of the smoke overlay configs/smoke.json")
    assert "classifier (smoke: classifier=small_cnn; grid: resnet18, small_cnn)" in warning
    assert "drop these axes" in warning
    assert smoke_override_warning(parse_grid({"axes": {"rebalance#method": ["none"]}}), smoke) is None


def test_the_runner_warns_before_it_starts_when_the_grid_overrides_smoke_json(bundle_copy, tmp_path, caplog):
    grid = load_grid(BUNDLE / "configs" / "grid.yaml")  # its classifier axis runs resnet18, not smoke's small_cnn
    runner = StudyRunner(bundle_copy, grid, overlays=[bundle_copy / "configs" / "smoke.json"], output_dir=tmp_path)
    assert StudyRunner(bundle_copy, grid, output_dir=tmp_path).smoke_warnings == [], "no smoke overlay, no warning"

    def no_tracking_yet():
        raise RuntimeError("the runner reached MLflow")

    runner._client = no_tracking_yet
    with caplog.at_level("WARNING", logger="medaug.study"), pytest.raises(RuntimeError, match="reached MLflow"):
        runner.run()
    (record,) = [r for r in caplog.records if "smoke overlay" in r.getMessage()]
    assert (
        record.levelname == "WARNING" and "classifier (smoke: classifier=small_cnn; grid: resnet18)" in record.message
    )
    assert not (tmp_path / f"study-{runner.study_key}").exists(), "warned before anything ran"


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
    return [
        sys.executable,
        "-m",
        "medaug.cli",
        "study",
        "run",
        str(bundle),
        "--output-dir",
        str(out),
        "--no-progress",
        "--seeds",
        "1",
        "--launcher",
        launcher,
        *extra,
    ]


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
    result = subprocess.run(
        _study_cli(bundle_copy, out, failing, "--max-children", "1"),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "0 finished now, 1 failed, 2 not started" in result.stdout
    assert "failed (exit code 3)" in result.stderr and "--config_file" in result.stderr  # the child's log tail
    assert _parent(out).info.status == "FAILED"

    sleeping = '{python} -c "import time; time.sleep(120)"'
    runner = subprocess.Popen(
        _study_cli(bundle_copy, out, sleeping), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
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


# ---------------------------------------------------------------- one runner per study on a shared store
class FakeChild:
    """Stands in for ``monai.bundle run``: makes the tagged MLflow child run the real one would make,
    and, when told, stays RUNNING until ``finish`` is set."""

    def __init__(self, runner, status="FINISHED", hold=False):
        self.runner, self.status = runner, status
        self.started, self.finish = threading.Event(), threading.Event()
        if not hold:
            self.finish.set()
        runner._launch = self

    def __call__(self, child, parent, log_path):
        client = mlflow.MlflowClient(self.runner.tracking_uri)
        experiment = client.get_experiment_by_name(self.runner.experiment).experiment_id
        run = client.create_run(
            experiment,
            tags={
                "mlflow.parentRunId": parent,
                "medaug.role": "child",
                "medaug.config_hash": self.runner.hashes[child.name],
            },
        )
        self.started.set()
        self.finish.wait(60)
        if self.status:
            client.set_terminated(run.info.run_id, self.status)
        return 0 if self.status == "FINISHED" else 1


def _runner(bundle, out, **kwargs):
    grid = load_grid(BUNDLE / "configs" / "grid.yaml", seeds=1)  # 3 children
    options = {
        "max_children": 1,
        "progress": False,
        "lock_heartbeat": 0.05,
        "lock_stale_after": 60.0,
        "lock_settle": 0.05,
    }
    return StudyRunner(bundle, grid, output_dir=out, **{**options, **kwargs})


def _in_thread(function):
    outcome = {}

    def target():
        try:
            outcome["result"] = function()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            outcome["error"] = err

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def _study_runs(runner):
    client = mlflow.MlflowClient(runner.tracking_uri)
    experiment = client.get_experiment_by_name(runner.experiment).experiment_id
    runs = client.search_runs([experiment])
    (parent,) = [r for r in runs if r.data.tags.get("medaug.role") == "study"]
    return parent, [r for r in runs if r.data.tags.get("medaug.role") == "child"]


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory):
    """An empty MLflow database: creating one (its schema migrations) takes seconds, copying it does not."""
    path = tmp_path_factory.mktemp("empty_store") / "mlflow.db"
    mlflow.MlflowClient(f"sqlite:///{path}").search_experiments()
    return path


@pytest.fixture
def shared_store(tmp_path, monkeypatch, empty_store):
    """MLFLOW_TRACKING_URI for every runner, as on a team's server (a SQLite file stands in for it)."""
    (tmp_path / "server").mkdir()
    shutil.copy(empty_store, tmp_path / "server" / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'server' / 'mlflow.db'}")


def test_a_second_runner_on_a_shared_store_is_refused_while_the_first_runs(bundle_copy, tmp_path, shared_store):
    alice = _runner(bundle_copy, tmp_path / "alice")
    alice_child = FakeChild(alice, hold=True)
    thread, outcome = _in_thread(alice.run)
    assert alice_child.started.wait(60), outcome
    bob = _runner(bundle_copy, tmp_path / "bob")  # another output folder (or machine), the same server
    FakeChild(bob)
    with pytest.raises(
        StudyLocked,
        match=rf"is being run by another runner .*host \S+, pid {os.getpid()}, since "
        rf".*running from {tmp_path / 'alice'}.*--take-over",
    ):
        bob.run()
    parent, children = _study_runs(alice)
    assert [c.info.status for c in children] == ["RUNNING"], "bob marked none of alice's children KILLED"
    assert parent.info.status == "RUNNING" and "medaug.study_lock" in parent.data.tags

    alice_child.finish.set()
    thread.join(60)
    assert outcome["result"].finished == 1
    parent, _ = _study_runs(alice)
    assert "medaug.study_lock" not in parent.data.tags, "released at the end"
    summary = bob.run()  # free now: continues the same study
    assert summary.parent_run_id == parent.info.run_id and summary.skipped == 1 and summary.finished == 1
    _, children = _study_runs(bob)
    assert sorted(c.info.status for c in children) == ["FINISHED", "FINISHED"]
    assert len({c.data.tags["medaug.config_hash"] for c in children}) == 2, "no child ran twice"


def test_a_runner_whose_heartbeat_went_stale_is_taken_over_and_then_touches_nothing(
    bundle_copy, tmp_path, shared_store, monkeypatch
):
    with monkeypatch.context() as elsewhere:  # alice runs on another machine
        elsewhere.setattr(study_lock.socket, "gethostname", lambda: "gpu-node-7")
        alice = _runner(bundle_copy, tmp_path / "alice")
        alice_child = FakeChild(alice, status=None, hold=True)
        thread, outcome = _in_thread(alice.run)
        assert alice_child.started.wait(60), outcome
    alice.study_lock.stop_heartbeat()  # her machine goes silent (frozen, cut off, killed)
    bob = _runner(bundle_copy, tmp_path / "bob", lock_stale_after=0.5, lock_heartbeat=0.1)
    FakeChild(bob)
    deadline = time.monotonic() + 30
    while True:  # until alice's heartbeat is older than bob's stale_after
        try:
            summary = bob.run()
            break
        except StudyLocked as err:
            assert "gpu-node-7" in str(err) and time.monotonic() < deadline, err
            time.sleep(0.1)
    assert summary.finished == 1
    parent, children = _study_runs(bob)
    assert sorted(c.info.status for c in children) == ["FINISHED", "KILLED"], "alice's stale child marked KILLED, rerun"

    alice_child.finish.set()  # alice wakes up: her child ends, she finds the lock gone
    thread.join(60)
    assert isinstance(outcome.get("error"), StudyLockLost), outcome
    after, children_after = _study_runs(bob)
    assert sorted(c.info.status for c in children_after) == ["FINISHED", "KILLED"]  # not FAILED by alice
    assert after.info.status == parent.info.status


def test_an_interrupted_runner_releases_the_lock(bundle_copy, tmp_path, shared_store):
    runner = _runner(bundle_copy, tmp_path / "out")
    runner._launch = lambda child, parent, log: (_ for _ in ()).throw(KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        runner.run()
    parent, _ = _study_runs(runner)
    assert parent.info.status == "KILLED" and "medaug.study_lock" not in parent.data.tags
