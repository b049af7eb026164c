"""Screenshot of the MLflow UI comparing two runs of the default bundle, for the docs.

Starts a local ``mlflow server`` (SQLite, temporary folder, 127.0.0.1, a free port), runs the
default bundle's smoke config twice against it (``rebalance#method`` class_weight and
oversample), opens MLflow's compare-runs page on the two runs in headless Chromium, turns on
"Show diff only" (what differs between the runs: the strategy and the settings it decides, the
metrics) and saves the screenshot. Chromium comes from the system (Debian: ``apt-get install
chromium``); the page is driven through Chromium's DevTools protocol on a pipe, so nothing else is
needed.

    .venv/bin/python scripts/mlflow_ui_screenshot.py --output docs/mlflow_compare_runs.png
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medaug.pipelines.tracking.server import LocalMlflowServer  # noqa: E402

BUNDLE = REPO / "bundles" / "imbalance_baselines"
STRATEGIES = ("class_weight", "oversample")


def smoke_run(server_uri: str, out: Path, method: str, max_epochs: int) -> None:
    configs = str([str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "smoke.json")])
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "--config_file",
        configs,
        "--bundle_root",
        str(BUNDLE),
        "--output_dir",
        str(out),
        "--rebalance#method",
        method,
        "--max_epochs",
        str(max_epochs),
    ]
    env = {**os.environ, "MLFLOW_TRACKING_URI": server_uri, "PYTHONHASHSEED": "0"}
    print(f"training: smoke run, rebalance {method}, {max_epochs} epochs", flush=True)
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"bundle run failed:\n{result.stderr[-4000:]}")


def compare_url(server: LocalMlflowServer, experiment_id: str, run_ids: list[str]) -> str:
    """MLflow's compare-runs page: run details, parameters and metrics side by side."""
    query = urllib.parse.urlencode({"runs": json.dumps(run_ids), "experiments": json.dumps([experiment_id])})
    return f"{server.uri}/#/compare-runs?{query}"


class DevTools:
    """Chromium's DevTools protocol over ``--remote-debugging-pipe`` (commands on fd 3, answers on
    fd 4, JSON messages ending in a NUL byte): enough to wait for the page, press the UI's
    "Show diff only" switches and capture the screen, without a WebSocket client."""

    def __init__(self, chromium: str, url: str, size: str, profile: str) -> None:
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def wire_pipes() -> None:  # in the child, before exec: the pipe ends become fds 3 and 4
            os.dup2(to_chrome_r, 3)
            os.dup2(from_chrome_w, 4)

        cmd = [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={size}",
            "--remote-debugging-pipe",
            url,
        ]
        self.process = subprocess.Popen(
            cmd, pass_fds=(3, 4), preexec_fn=wire_pipes, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer, self._next_id, self.session = b"", 0, None

    def send(self, method: str, params: dict | None = None, session: bool = True) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session and self.session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        while True:
            while b"\0" not in self._buffer:
                chunk = os.read(self._from_chrome, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def attach_to_page(self) -> None:
        targets = self.send("Target.getTargets", session=False)["targetInfos"]
        page = next(t for t in targets if t["type"] == "page")
        self.session = self.send(
            "Target.attachToTarget", {"targetId": page["targetId"], "flatten": True}, session=False
        )["sessionId"]

    def evaluate(self, expression: str):
        result = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        return result.get("result", {}).get("value")

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        os.close(self._to_chrome)
        os.close(self._from_chrome)


# Page scripts: MLflow's compare page has a "Show diff only" switch per section (parameters,
# metrics, tags); turning them on leaves what differs between the runs, which is the comparison.
PAGE_READY = "document.body.innerText.includes('Run details') && document.body.innerText.includes('Metrics')"
SHOW_DIFF_ONLY = """(() => {
  const switches = [...document.querySelectorAll('[role=switch]')]
    .filter(el => (el.closest('label, div') || el).parentElement.innerText.includes('Show diff only'));
  switches.forEach(el => { if (el.getAttribute('aria-checked') !== 'true') el.click(); });
  return switches.length;
})()"""
CLOSE_ASSISTANT = """(() => {
  const closers = [...document.querySelectorAll('button[aria-label]')]
    .filter(b => /close/i.test(b.getAttribute('aria-label'))
              && b.getBoundingClientRect().left > window.innerWidth * 0.6);
  closers.forEach(b => b.click());
  return closers.length;
})()"""


def screenshot(chromium: str, url: str, output: Path, size: str, wait_s: float) -> None:
    with tempfile.TemporaryDirectory() as profile:
        browser = DevTools(chromium, url, size, profile)
        try:
            browser.attach_to_page()
            deadline = time.monotonic() + wait_s
            while not browser.evaluate(PAGE_READY):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the compare page did not render within {wait_s:.0f} s")
                time.sleep(1)
            time.sleep(2)  # let the tables settle
            browser.evaluate(CLOSE_ASSISTANT)
            switched = browser.evaluate(SHOW_DIFF_ONLY)
            time.sleep(2)
            image = browser.send("Page.captureScreenshot", {"format": "png"})["data"]
            output.write_bytes(base64.b64decode(image))
            print(f"'Show diff only' switched on in {switched} section(s)")
        finally:
            browser.close()
    if not output.is_file() or output.stat().st_size < 10_000:
        raise RuntimeError(f"chromium wrote no usable screenshot to {output}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=REPO / "docs" / "mlflow_compare_runs.png")
    parser.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    parser.add_argument("--max-epochs", type=int, default=4)
    parser.add_argument("--window-size", default="1600,2300")
    parser.add_argument("--wait", type=float, default=120, help="seconds to wait for the page to render")
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
        screenshot(args.chromium, url, args.output.resolve(), args.window_size, args.wait)
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
