"""Screenshot of the MLflow UI comparing two runs of the default bundle, for the docs.

Starts a local ``mlflow server`` (SQLite, temporary folder, 127.0.0.1, a free port), runs the
default bundle's smoke config twice against it (``rebalance#method`` class_weight and
oversample), opens MLflow's compare-runs page on the two runs in headless Chromium and saves the
screenshot. Chromium comes from the system (Debian: ``apt-get install chromium``).

    .venv/bin/python scripts/mlflow_ui_screenshot.py --output docs/mlflow_compare_runs.png
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medaug.pipelines.mlflow_server import LocalMlflowServer  # noqa: E402

BUNDLE = REPO / "bundles" / "imbalance_baselines"
STRATEGIES = ("class_weight", "oversample")


def smoke_run(server_uri: str, out: Path, method: str, max_epochs: int) -> None:
    configs = str([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "smoke.json")])
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", configs, "--bundle_root", str(BUNDLE),
           "--output_dir", str(out), "--rebalance#method", method, "--max_epochs", str(max_epochs)]  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_uri, "PYTHONHASHSEED": "0"}
    print(f"training: smoke run, rebalance {method}, {max_epochs} epochs", flush=True)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bundle run failed:\n{result.stderr[-4000:]}")


def compare_url(server: LocalMlflowServer, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page: run details, parameters and metrics side by side."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return f"{server.uri}/#/compare-runs?{query}"


def chart_url(server: LocalMlflowServer, experiment_id: str) -> str:
    """The experiment's runs in chart mode: per-epoch curves and final metrics, one colour per run."""
    return f"{server.uri}/#/experiments/{experiment_id}?compareRunsMode=CHART"


def screenshot(chromium: str, url: str, output: Path, size: str, wait_ms: int) -> None:
    with tempfile.TemporaryDirectory() as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size}",
               f"--virtual-time-budget={wait_ms}", f"--screenshot={output}", url]  # fmt: skip
        subprocess.run(cmd, check=True, timeout=180, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not output.is_file() or output.stat().st_size < 10_000:
        raise RuntimeError(f"chromium wrote no usable screenshot to {output}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "mlflow_compare_runs.png")
    parser.add_argument("--charts-output", type=Path, default=None,
                        help="also save the experiment's chart view (metric curves of both runs) here")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--window-size", default="1600,1300")
    parser.add_argument("--wait-ms", type=int, default=20000, help="page rendering time given to Chromium")
    args = parser.parse_args(argv)
    if not args.chromium:
        parser.error("chromium not found (Debian: apt-get install chromium); or pass --chromium PATH")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as work, LocalMlflowServer(Path(work) / "server", workers=2) as server:
        print(f"mlflow server on {server.uri}", flush=True)
        for method in STRATEGIES:
            smoke_run(server.uri, Path(work) / "out", method, args.max_epochs)
        experiment = server.api("experiments/get-by-name", {"experiment_name": BUNDLE.name})["experiment"]
        runs = server.api("runs/search", body={"experiment_ids": [experiment["experiment_id"]]})["runs"]
        url = compare_url(server, experiment["experiment_id"], [r["info"]["run_id"] for r in runs])
        print(f"screenshot of {url}", flush=True)
        screenshot(args.chromium, url, args.output.resolve(), args.window_size, args.wait_ms)
        print(f"wrote {args.output}")
        if args.charts_output:
            args.charts_output.parent.mkdir(parents=True, exist_ok=True)
            screenshot(args.chromium, chart_url(server, experiment["experiment_id"]), args.charts_output.resolve(),
                       args.window_size, args.wait_ms)  # fmt: skip
            print(f"wrote {args.charts_output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
