"""A local ``mlflow server`` in a background process, for tests, the UI screenshot script and
trying the team setup on one machine.

It runs MLflow's own server (``mlflow server``: SQLite backend, artifacts served by the server
from a local folder, bound to 127.0.0.1 on a free port) and stops it with its worker processes.
MLflow offers the server only as a command, not as something to start and stop from Python, which
is all this adds. For a long-lived server use ``make mlflow-server`` or the README's team setup.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class LocalMlflowServer:
    """``with LocalMlflowServer(folder) as server: ... server.uri ...``

    Args:
        root: folder for ``mlflow.db`` and ``artifacts/`` (created).
        port: default a free one.
        workers: server worker processes.
        startup_timeout: seconds to wait for ``/health`` (a new database is migrated first).
    """

    def __init__(
        self, root: str | os.PathLike, port: int | None = None, workers: int = 1, startup_timeout: float = 120.0
    ) -> None:
        self.root = Path(root).resolve()
        self.host = "127.0.0.1"
        self.port = port or free_port(self.host)
        self.workers = workers
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"http://{self.host}:{self.port}"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--backend-store-uri",
            f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination",
            str(self.root / "artifacts"),
            "--serve-artifacts",
            "--workers",
            str(self.workers),
        ]

    def start(self) -> LocalMlflowServer:
        (self.root / "artifacts").mkdir(parents=True, exist_ok=True)
        self.log = open(self.root / "server.log", "ab")
        # a session of its own, so that stopping it also stops the workers it forks
        # MLflow's background job runner (GenAI evaluation jobs) is not needed for tracking runs and
        # costs a handful of processes
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        self.process = subprocess.Popen(
            self.command(), stdout=self.log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"mlflow server exited with code {self.process.returncode}; see {self.root / 'server.log'}"
                )
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"mlflow server on {self.uri} not up after {self.startup_timeout:.0f} s; see {self.root / 'server.log'}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:  # whatever of the server's session is left (workers that ignored SIGTERM)
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()
        if getattr(self, "log", None):
            self.log.close()

    def __enter__(self) -> LocalMlflowServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def api(self, endpoint: str, params: dict | None = None, body: dict | None = None) -> dict:
        """Call MLflow's REST API (``/api/2.0/mlflow/<endpoint>``): GET with ``params``, POST with ``body``."""
        url = f"{self.uri}/api/2.0/mlflow/{endpoint}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            url, data=data, headers={"Content-Type": "application/json"}, method="POST" if data is not None else "GET"
        )
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read() or b"{}")
