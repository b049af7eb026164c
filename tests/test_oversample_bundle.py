"""The oversample stage in the default bundle, run the way users run it: ``--oversample#method
vae_interp`` on the smoke overlay balances the malignant class with synthetic images, logs them to
MLflow, and an identical second run takes them from the cache."""

import csv
import json

import pytest

from tests.test_bundle_e2e import artifact_paths, finished_runs, run_bundle

pytestmark = pytest.mark.slow


def test_vae_interp_balances_the_train_split_and_an_identical_rerun_hits_the_cache(bundle_copy, tmp_path):
    out = tmp_path / "out"
    for _ in range(2):
        run_bundle(bundle_copy, out, "--oversample#method", "vae_interp", "--max_epochs", "1")
    client, runs = finished_runs(out)
    first, second = sorted(runs, key=lambda r: r.info.start_time)
    for run in (first, second):
        m = run.data.metrics
        assert run.info.status == "FINISHED" and "test_balanced_accuracy" in m
        # BreastMNIST 64 px train: 147 malignant, 399 benign -> 252 new malignant images.
        assert m["oversample_synthetic_malignant"] == 252 and m["oversample_synthetic_normal_benign"] == 0
        assert m["oversample_fit_seconds"] > 0 and m["oversample_fit_peak_memory_mb"] > 0
        assert "synthetic_fid" in m and "synthetic_near_copies" in m
        assert run.data.params["oversample.method"] == "vae_interp"
        assert {"oversample/manifest.csv", "oversample/summary.json",
                "oversample/quality/quality.json"} <= artifact_paths(client, run.info.run_id)  # fmt: skip
    assert first.data.metrics["oversample_cache_hit"] == 0 and second.data.metrics["oversample_cache_hit"] == 1
    assert first.data.tags["oversample_cache_key"] == second.data.tags["oversample_cache_key"]

    manifest = client.download_artifacts(second.info.run_id, "oversample/manifest.csv", str(tmp_path))
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 252 and {r["class"] for r in rows} == {"malignant"}
    assert all(len(r["parent_ids"].split()) == 2 and "#train/" in r["parent_ids"] for r in rows)
    summary = json.loads((out / second.info.run_name / "oversample.json").read_text())
    assert summary["cache_hit"] is True and summary["added"] == {"malignant": 252, "normal_benign": 0}
