"""The default bundle under ``torchrun`` on CPU: two Gloo processes, the model-zoo
``multi_gpu_train.json`` overlay, the smoke config. Each rank trains on its own half of the data,
rank 0 alone writes the checkpoint, the MLflow run, the augmentation grid and the reports, and its
test metrics are those a single process gets from the same checkpoint."""

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest

from tests.bundles.test_bundle_e2e import run_bundle
from tests.conftest import REPO

pytestmark = pytest.mark.slow
DDP_CONFIGS = ("configs/train.json", "configs/smoke.json", "configs/multi_gpu_train.json")


def run_torchrun(bundle: Path, out: Path, *configs: str) -> subprocess.CompletedProcess:
    config_files = str([str(bundle / c) for c in DDP_CONFIGS] + list(configs))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        config_files,
        "--bundle_root",
        str(bundle),
        "--output_dir",
        str(out),
    ]
    env = {
        **os.environ,
        "PYTHONHASHSEED": "0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
        "CUDA_VISIBLE_DEVICES": "",
        "OMP_NUM_THREADS": "1",
    }
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return result


def test_torchrun_two_cpu_ranks_train_disjoint_halves_of_the_oversampled_train_and_rank0_alone_reports(
    bundle_copy, tmp_path
):
    """One torchrun run (minutes on 2 CPUs) checks it all: rank 0 alone oversamples, tracks, draws and
    saves; both ranks train on disjoint halves of the real and synthetic train images."""
    out = tmp_path / "out"
    # records what each rank trained on, next to the bundle's own handlers, and which ranks drew the grid
    probe = tmp_path / "probe.json"
    probe.write_text(
        json.dumps(
            {
                "oversample#method": "vae_interp",
                "probe": {"_target_": "tests.pipelines.ddp_workers.SeenImages", "out_dir": str(tmp_path / "seen")},
                "train#trainer#train_handlers": (
                    "$medaug.pipelines.distributed.rank0_handlers(@train#handlers) + [@probe]"
                ),
                "augment#grid#_target_": "tests.pipelines.ddp_workers.GridDrawnBy",
                "augment#grid#probe_dir": str(tmp_path / "grid"),
            }
        )
    )
    result = run_torchrun(bundle_copy, out, str(probe))

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("imbalance_baselines").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED", "one MLflow run, from rank 0"
    run = runs[0]
    checkpoints = [p for p in out.rglob("model.pt") if "mlruns" not in p.parts]
    assert [p.parent.name for p in checkpoints] == [run.info.run_name], "one checkpoint, in rank 0's run folder"
    assert result.stdout.count("test metrics on 155 real test images") == 1
    assert len(client.get_metric_history(run.info.run_id, "val_balanced_accuracy")) == 2

    run_dir = out / run.info.run_name
    drawn = {p.name: Path(json.loads(p.read_text())).resolve() for p in (tmp_path / "grid").glob("grid-rank*.json")}
    assert drawn == {"grid-rank0.json": run_dir.resolve()}, "the augmentation grid is drawn once, by rank 0"
    for name in ("augmentation_grid.png", "augmentation.yaml"):
        written = [p for p in out.rglob(name) if "mlruns" not in p.parts]
        assert written == [run_dir / name]
        assert name in {a.path for a in client.list_artifacts(run.info.run_id)}

    logs = result.stdout + result.stderr
    assert logs.count("oversample vae_interp:") == 1, "the stage runs on rank 0 only"
    manifests = [p for p in out.rglob("manifest.csv") if "mlruns" not in p.parts]  # the MLflow artifact aside
    assert len(manifests) == 1
    synthetic = {str(manifests[0].parent / row.split(",")[3]) for row in manifests[0].read_text().splitlines()[1:]}
    assert synthetic
    seen = [json.loads((tmp_path / "seen" / f"seen-rank{r}.json").read_text()) for r in (0, 1)]
    real_train = {
        e["image"] for e in json.loads((out / run.info.run_name / "datalist.json").read_text()) if e["split"] == "train"
    }
    train = real_train | synthetic
    for epoch in ("1", "2"):
        first, second = set(seen[0][epoch]), set(seen[1][epoch])
        assert len(first) == len(second) == len(train) // 2
        assert first.isdisjoint(second) and first | second == train, f"epoch {epoch}: disjoint halves of train"
    assert set(seen[0]["1"]) != set(seen[0]["2"]), "shards reshuffled every epoch"
    assert set(seen[0]["1"]) - synthetic and set(seen[1]["1"]) - synthetic, "both ranks also train on real images"

    # the same checkpoint scored by one ordinary process (evaluate.json) gives the same test metrics
    checkpoint = checkpoints[0]
    run_bundle(
        bundle_copy,
        out,
        "--ckpt_path",
        str(checkpoint),
        configs=("configs/train.json", "configs/smoke.json", "configs/evaluate.json"),
    )
    runs = client.search_runs([run.info.experiment_id])
    evaluated = next(r for r in runs if r.data.tags.get("stage") == "evaluate")
    ddp_test = {k: v for k, v in run.data.metrics.items() if k.startswith("test_")}
    single = {k: v for k, v in evaluated.data.metrics.items() if k.startswith("test_")}
    assert ddp_test and ddp_test == pytest.approx(single)
