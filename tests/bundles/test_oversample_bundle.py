"""The oversample stage in the default bundle, run the way users run it: ``--oversample#method
vae_interp`` on the smoke overlay balances the malignant class with synthetic images, logs them to
MLflow, and an identical second run takes them from the cache."""

import csv
import json

import pytest
from PIL import Image

from tests.bundles.test_bundle_e2e import artifact_paths, finished_runs, run_bundle

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
        # BreastMNIST 64 px train (146 malignant after the conflicting copy, 399 benign) cut to smoke.json's 200 images:
        # 54 malignant, 146 benign -> 92 new malignant images.
        assert m["oversample_synthetic_malignant"] == 92 and m["oversample_synthetic_normal_benign"] == 0
        assert m["oversample_fit_seconds"] > 0 and m["oversample_fit_peak_memory_mb"] > 0
        assert "synthetic_fid" in m and "synthetic_near_copies" in m
        assert run.data.params["oversample.method"] == "vae_interp"
        assert {
            "oversample/manifest.csv",
            "oversample/summary.json",
            "oversample/quality/quality.json",
        } <= artifact_paths(client, run.info.run_id)
    assert first.data.metrics["oversample_cache_hit"] == 0 and second.data.metrics["oversample_cache_hit"] == 1
    assert first.data.tags["oversample_cache_key"] == second.data.tags["oversample_cache_key"]

    manifest = client.download_artifacts(second.info.run_id, "oversample/manifest.csv", str(tmp_path))
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 92 and {r["class"] for r in rows} == {"malignant"}
    assert all(len(r["parent_ids"].split()) == 2 and "#train/" in r["parent_ids"] for r in rows)
    summary = json.loads((out / second.info.run_name / "oversample.json").read_text())
    assert summary["cache_hit"] is True and summary["added"] == {"malignant": 92, "normal_benign": 0}


MANIFEST_COLUMNS = {
    "id",
    "class",
    "label",
    "file",
    "generator",
    "generator_checkpoint_sha256",
    "seed",
    "parent_ids",
    "nearest_real_id",
    "nearest_real_distance",
    "near_copy",
    "kept",
}


def check_manifest(client, run, out, tmp_path, minority: str, expected: int, generators: set) -> list[dict]:
    """The run's oversample manifest: ``expected`` rows of the minority class from ``generators``, every
    column filled, one grey PNG per row at least at training size, parents from the train split only."""
    manifest = client.download_artifacts(run.info.run_id, "oversample/manifest.csv", str(tmp_path))
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == expected and set(rows[0]) == MANIFEST_COLUMNS
    assert {r["class"] for r in rows} == {minority} and {r["generator"] for r in rows} <= generators
    (sample_dir,) = {p.parent for p in out.rglob("manifest.csv") if "mlruns" not in p.parts}
    for row in rows:
        assert all(row[c] != "" for c in ("id", "file", "seed", "nearest_real_id", "nearest_real_distance"))
        with Image.open(sample_dir / row["file"]) as image:
            assert image.mode == "L" and min(image.size) >= 16, "one grey channel, at least the training size"
        assert "#train/" in row["nearest_real_id"]
        assert all("#train/" in parent for parent in row["parent_ids"].split())
    return rows


# gan, ldm_img2img and hybrid run through the study bundles' smoke tests (tests/bundles/test_study_bundles.py).
@pytest.mark.parametrize(
    "method,target,expected",
    [
        # the 54 malignant of smoke.json's 200 train images -> 108
        ("random", ["--oversample#target", "multiplier", "--oversample#multiplier", "2"], 54),
        ("ldm", ["--oversample#target", "count", "--oversample#count", "12"], 12),
    ],
)
def test_every_method_through_the_bundle_adds_the_requested_minority_images(
    bundle_copy, tmp_path, method, target, expected
):
    """Each method as users run it (``--oversample#method``), one epoch of training: exactly the requested
    number of malignant images, right class, shape and provenance, never a val/test parent."""
    out = tmp_path / "out"
    run_bundle(
        bundle_copy,
        out,
        "--oversample#method",
        method,
        "--max_epochs",
        "1",
        "--oversample#classes",
        "['malignant']",
        *target,
    )
    client, runs = finished_runs(out)
    (run,) = runs
    assert run.data.metrics["oversample_synthetic_malignant"] == expected
    assert run.data.metrics["oversample_synthetic_normal_benign"] == 0
    check_manifest(client, run, out, tmp_path, "malignant", expected, {method})
