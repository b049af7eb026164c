"""The Docker image for DICOM-folder inference: the Dockerfile checked statically and its entrypoint
run outside Docker as the same command. The image itself is built and run for real by
``make docker-test`` (``docker/test_image.py``, podman), which is too slow and too machine-bound for
``make test``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import DICOM_DIR, REPO
from tests.pipelines.test_predict import make_bundle, read_csv, tree_state

DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKER_README = REPO / "docker" / "README.md"


def instructions() -> list[tuple[str, str]]:
    """``(INSTRUCTION, arguments)`` with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def build_args() -> dict[str, str]:
    return dict(arg.split("=", 1) for word, arg in instructions() if word == "ARG" and "=" in arg)


def expand(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: values.get(m.group(1), m.group(0)), text)


def entrypoint() -> list[str]:
    entries = [json.loads(rest) for word, rest in instructions() if word == "ENTRYPOINT"]
    assert entries, "ENTRYPOINT missing"
    return entries[-1]


def image_env() -> dict[str, str]:
    env = {}
    for word, rest in instructions():
        if word == "ENV":
            env.update(dict(part.split("=", 1) for part in shlex.split(rest)))
    return env


def test_dockerfile_static_checks():
    steps = instructions()
    args = build_args()
    assert args.get("BASE_IMAGE") == "python:3.11-slim"
    assert [rest for word, rest in steps if word == "FROM"] == ["${BASE_IMAGE}"]
    runs = " ".join(rest for word, rest in steps if word == "RUN")
    # CPU torch from PyTorch's CPU index by default, or from a wheel folder given as a build argument
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/cpu" and "TORCH_FIND_LINKS" in args
    assert "torch==${TORCH_VERSION}+cpu" in runs and "torch.version.cuda is None" in runs
    assert "python3 -m venv" in runs, "both bases have python3; Debian's system pip refuses installs"
    assert args["TORCH_VERSION"] == "2.13.0"
    assert "-c constraints.txt" in runs and "ckpt_export" in runs
    users = [rest for word, rest in steps if word == "USER"]
    assert users and users[-1] not in ("root", "0", "0:0"), "the image must run as a non-root user"
    assert entrypoint() == ["medaug", "predict", "--input", "/input", "--output", "/output"]
    assert image_env()["MEDAUG_BUNDLE"] == "/opt/medaug/bundle"
    assert image_env()["MEDAUG_BUNDLE_ONLY"] == "1", "the image predicts with its baked bundle only"
    for word, rest in steps:
        if word == "COPY":
            *sources, _ = [expand(part, args) for part in shlex.split(rest) if not part.startswith("--")]
            for source in sources:
                assert (REPO / source).exists(), f"COPY source {source} does not exist"
    readme = DOCKER_README.read_text()
    for part in ("docker build", "docker run", "--network none", "/input:ro", "/output", "--user"):
        assert part in readme, part
    ignored = (REPO / ".dockerignore").read_text()
    assert ".venv" in ignored and "models" not in ignored, "checkpoints under models/ must reach the build"


def test_entrypoint_runs_outside_docker_as_the_same_command(tmp_path):
    bundle = make_bundle(tmp_path, export=True)
    source = tmp_path / "input"
    shutil.copytree(DICOM_DIR, source)
    before = tree_state(source)
    out = tmp_path / "output"
    command = [{"/input": str(source), "/output": str(out)}.get(a, a) for a in entrypoint()]
    assert command[0] == "medaug"
    command = [sys.executable, "-m", "medaug.cli", *command[1:], "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MEDAUG_BUNDLE": str(bundle)}
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 3, result.stderr[-3000:]  # ATTRIBUTION.md is not an image
    assert len(read_csv(out / "predictions.csv")) == len(list(DICOM_DIR.glob("*.dcm")))
    assert "model.ts" in result.stderr, "the image's default model is the TorchScript export"
    assert tree_state(source) == before


def test_the_image_predicts_with_its_baked_bundle_only(tmp_path, monkeypatch, capsys):
    """In the image (MEDAUG_BUNDLE_ONLY=1) a caller cannot swap in another bundle, e.g. one mounted
    at run time whose config could run code, nor switch the config check off."""
    from medaug.cli import main

    baked = make_bundle(tmp_path / "baked", export=True)
    other = Path(shutil.copytree(baked, tmp_path / "other"))
    monkeypatch.setenv("MEDAUG_BUNDLE", str(baked))
    monkeypatch.setenv("MEDAUG_BUNDLE_ONLY", "1")

    def run(output: str, *extra) -> int:
        return main(["predict", "--input", str(DICOM_DIR), "--output", str(tmp_path / output), "--no-progress", *extra])

    assert run("out1", "--bundle", str(other)) == 2
    assert "--bundle:" in capsys.readouterr().err
    assert run("out2", "--trust-bundle") == 2
    assert "--trust-bundle:" in capsys.readouterr().err
    assert not (tmp_path / "out1").exists() and not (tmp_path / "out2").exists(), "refused before any work"
    assert run("out3", "--bundle", str(baked)) == 3  # the baked bundle by its own name: fine
