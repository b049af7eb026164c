"""``make docker-test``: build the inference image of ``docker/Dockerfile`` for real with podman, run it
the way a hospital would (``--network none``, input read-only, non-root) on a messy DICOM folder, and
check what it promises. Not part of ``make test``: it installs system packages and takes minutes.

Steps (each printed, with the commands, so the log shows what ran):

1. podman, runc and debootstrap, installed from Debian's packages when missing (needs root and apt);
   podman runs with runc and a ``containers.conf`` without default ulimits (the recipe in
   ``shared/containers/README.md``: crun and raised ulimits fail in this kind of sandbox).
2. A Debian bookworm base with python3, built once with debootstrap and cached as a tarball (no
   registry is reachable here, so ``python:3.11-slim`` cannot be pulled); imported into podman.
3. A checkpoint trained by the bundle's smoke config (two epochs on the shipped BreastMNIST), with
   the network the bundle's ``configs/inference.json`` describes, so the bundle is baked unchanged.
4. ``podman build`` of ``docker/Dockerfile`` with the Debian base, the host trust store mounted (PyPI
   through this machine's TLS setup) and the CPU torch wheel from the local wheel folder.
5. ``podman run --rm --network none -v in:/input:ro -v out:/output`` on the DICOM samples of
   ``tests/data/dicom`` plus broken files, then the checks: exit code 3, one prediction per good file,
   every broken file in ``skipped.csv`` with a reason, no patient identifier of the input headers in
   any output or message, input unchanged, the container user not root, the image size.
6. The same ``medaug predict`` outside the container (repository code, this venv) with the model
   copied out of the image: same classes, probabilities within 1e-5.

Exit codes: 0 every check passed; 1 a check or a step failed; 2 this machine cannot build or run
containers (the message says why).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DICOM_SAMPLES = REPO / "tests" / "data" / "dicom"
BASE_TAG = "localhost/debian-python:bookworm"
PROB_TOLERANCE = 1e-5
EXIT_CANNOT_RUN_CONTAINERS = 2
# Debian's images set these; an image made by `podman import` has no environment of its own.
BASE_CHANGES = [
    "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "ENV LANG=C.UTF-8",
    'CMD ["/bin/bash"]',
]
# Header attributes that name or identify the patient (and the people and places around the study),
# from the PS3.15 Basic Profile list in medaug.io.phi. Dates and times alone are left out of the
# comparison: as digit runs they also occur inside the UIDs and numbers that outputs rightly hold.
PHI_KEYWORDS = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "PatientBirthDate",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "AccessionNumber",
    "MedicalRecordLocator",
    "InstitutionName",
    "InstitutionAddress",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "NameOfPhysiciansReadingStudy",
    "RequestingPhysician",
)


class CannotRunContainers(Exception):
    """This machine cannot build or run containers; the message says why."""


class StepFailed(Exception):
    """A build or run step failed; the message says which."""


class Log:
    """Everything printed also goes to the log file, so a run leaves its full record behind."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.handle = open(path, "w", encoding="utf-8")

    def __call__(self, text: str = "") -> None:
        print(text, flush=True)
        self.handle.write(text + "\n")
        self.handle.flush()

    def section(self, title: str) -> None:
        self(f"\n== {title} ==")


class Checks:
    """Named pass/fail results, printed as they come and summed up at the end."""

    def __init__(self, log: Log):
        self.log, self.results = log, []

    def __call__(self, name: str, ok: bool, detail: str = "") -> bool:
        self.results.append((name, bool(ok)))
        self.log(f"[{'PASS' if ok else 'FAIL'}] {name}" + (f": {detail}" if detail else ""))
        return bool(ok)

    @property
    def all_passed(self) -> bool:
        return bool(self.results) and all(ok for _, ok in self.results)


# ------------------------------------------------------------------------------------------ commands


def run(
    log: Log,
    cmd: list[str],
    *,
    check: bool = True,
    quiet: bool = False,
    timeout: float = 3600,
    env: dict | None = None,
    cwd: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run ``cmd``, its output streamed into the log line by line (unless ``quiet``), and return it
    with ``stdout`` holding the whole output (stderr merged)."""
    log("$ " + " ".join(_quote(c) for c in cmd))
    lines = []
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace", env=env, cwd=cwd
    ) as proc:
        deadline = time.monotonic() + timeout
        for line in proc.stdout:
            lines.append(line)
            if not quiet:
                log("  " + line.rstrip("\n"))
            if time.monotonic() > deadline:
                proc.kill()
                raise StepFailed(f"{cmd[0]} ran past {timeout:.0f} s")
        returncode = proc.wait()
    result = subprocess.CompletedProcess(cmd, returncode, "".join(lines), "")
    if check and returncode != 0:
        tail = "".join(lines[-15:]) if quiet else ""
        raise StepFailed(f"{' '.join(cmd[:3])} ... exited with {returncode}\n{tail}")
    return result


def _quote(text: str) -> str:
    return text if text and all(c.isalnum() or c in "-_./:=,+@%[]" for c in text) else repr(text)


class Podman:
    """podman with runc and the sandbox-friendly containers.conf."""

    def __init__(self, log: Log, cache: Path):
        self.log = log
        conf = cache / "containers.conf"
        conf.write_text("[containers]\ndefault_ulimits = []\n")
        self.env = {**os.environ, "CONTAINERS_CONF": str(conf)}
        self.prefix = ["podman", "--runtime", shutil.which("runc") or "runc"]

    def __call__(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return run(self.log, [*self.prefix, *args], env=self.env, **kwargs)


# ------------------------------------------------------------------------------------ machine setup


def ensure_tools(log: Log) -> None:
    """podman, runc and debootstrap, from Debian's packages if any is missing."""
    missing = [tool for tool in ("podman", "runc", "debootstrap") if shutil.which(tool) is None]
    if not missing:
        log("podman, runc and debootstrap are installed")
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise CannotRunContainers(
            f"{', '.join(missing)} missing, and installing them needs root and apt-get "
            "(Debian/Ubuntu): apt-get install podman runc debootstrap"
        )
    lock = ["-o", "DPkg::Lock::Timeout=600"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        run(log, ["apt-get", *lock, "update", "-qq"], env=env, quiet=True, timeout=900)
        run(
            log,
            ["apt-get", *lock, "install", "-y", "-qq", "podman", "runc", "debootstrap"],
            env=env,
            quiet=True,
            timeout=1800,
        )
    except StepFailed as err:
        raise CannotRunContainers(f"installing podman, runc and debootstrap with apt-get failed: {err}") from err


def ensure_base_image(log: Log, podman: Podman, cache: Path) -> None:
    """``localhost/debian-python:bookworm``: imported from the cached tarball, which debootstrap
    builds the first time (Debian bookworm minbase with python3, venv, pip and CA certificates)."""
    if podman("image", "exists", BASE_TAG, check=False, quiet=True).returncode == 0:
        log(f"base image {BASE_TAG} already in podman's store")
        return
    tarball = cache / "debian-python-bookworm.tar"
    if not tarball.is_file():
        rootfs, partial = cache / "rootfs.partial", cache / "debian-python-bookworm.tar.partial"
        shutil.rmtree(rootfs, ignore_errors=True)
        try:
            run(
                log,
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=python3,python3-venv,python3-pip,ca-certificates",
                    "bookworm",
                    str(rootfs),
                    "http://deb.debian.org/debian",
                ],
                quiet=True,
                timeout=1800,
            )
        except StepFailed as err:
            raise CannotRunContainers(f"debootstrap could not build the Debian base: {err}") from err
        run(log, ["tar", "-C", str(rootfs), "-cf", str(partial), "."], quiet=True)
        partial.replace(tarball)  # the cache holds a whole tarball or none
        shutil.rmtree(rootfs)
        log(f"Debian base cached at {tarball} ({tarball.stat().st_size / 1e6:.0f} MB)")
    changes = [arg for change in BASE_CHANGES for arg in ("--change", change)]
    podman("import", *changes, str(tarball), BASE_TAG, quiet=True)


def check_podman_works(podman: Podman) -> None:
    result = podman("info", "--format", "{{.Host.OCIRuntime.Name}} {{.Store.GraphDriverName}}", check=False)
    if result.returncode != 0:
        raise CannotRunContainers(
            f"podman does not work here (podman info exit {result.returncode}): {result.stdout.strip()[-1500:]}"
        )


def check_containers_run(podman: Podman) -> None:
    result = podman(
        "run", "--rm", "--network", "none", BASE_TAG, "python3", "-c", "print('container runs')", check=False
    )
    if result.returncode != 0:
        raise CannotRunContainers(
            f"podman cannot run a container here (exit {result.returncode}): {result.stdout.strip()[-1500:]}"
        )


def torch_wheel_folder(version: str) -> Path | None:
    """The local folder holding the CPU torch wheel: ``$MEDAUG_TORCH_WHEELS``, else pip's find-links."""
    candidates = [os.environ.get("MEDAUG_TORCH_WHEELS", "")]
    config = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True)
    for line in config.stdout.splitlines():
        key, _, value = line.partition("=")
        if key.endswith("find-links"):
            candidates += value.strip().strip("'\"").split()
    candidates += os.environ.get("PIP_FIND_LINKS", "").split()
    for folder in filter(None, candidates):
        path = Path(folder.removeprefix("file://"))
        if path.is_dir() and any(path.glob(f"torch-{version}+cpu-cp311-*.whl")):
            return path
    return None


# -------------------------------------------------------------------------------------- the image


def train_checkpoint(log: Log, bundle: Path, work: Path) -> Path:
    """A checkpoint from the bundle's smoke config, with its record (model.json) beside it: the record
    says the network, so the bundle needs no edit to describe it."""
    out = work / "train"
    configs = str([str(bundle / "configs" / "train.json"), str(bundle / "configs" / "smoke.json")])
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PYTHONHASHSEED": "0",
        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow.db'}",
    }
    result = run(
        log,
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "run",
            "--config_file",
            configs,
            "--bundle_root",
            str(bundle),
            "--output_dir",
            str(out),
        ],
        env=env,
        cwd=work,
        quiet=True,
        timeout=1800,
    )
    for line in result.stdout.splitlines():
        if "test metrics" in line or "balanced_accuracy" in line:
            log("  " + line.strip())
    found = sorted(out.glob("*/model.pt"))
    if len(found) != 1:
        raise StepFailed(f"the smoke training left {len(found)} model.pt files in {out}, expected 1")
    log(f"checkpoint: {found[0]}")
    return found[0]


def stage_context(bundle: Path, checkpoint: Path, context: Path) -> str:
    """The build context: what the Dockerfile copies (the project and one bundle with models/model.pt),
    without touching the repository's own bundle folder. Returns the BUNDLE build argument."""
    for name in ("pyproject.toml", "constraints.txt", "README.md", ".dockerignore"):
        shutil.copy2(REPO / name, context / name)
    shutil.copytree(REPO / "medaug", context / "medaug", ignore=shutil.ignore_patterns("__pycache__"))
    relative = bundle.resolve().relative_to(REPO)
    target = context / relative
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("runs", "models", "predictions", "__pycache__"))
    (target / "models").mkdir()
    shutil.copy2(checkpoint, target / "models" / "model.pt")
    if checkpoint.with_suffix(".json").is_file():  # the run's record: the Dockerfile exports with medaug export
        shutil.copy2(checkpoint.with_suffix(".json"), target / "models" / "model.json")
    return relative.as_posix()


def build_image(log: Log, podman: Podman, context: Path, bundle_arg: str, tag: str, torch_version: str) -> None:
    args = [
        "build",
        "-f",
        str(REPO / "docker" / "Dockerfile"),
        "--build-arg",
        f"BASE_IMAGE={BASE_TAG}",
        "--build-arg",
        f"BUNDLE={bundle_arg}",
        "--build-arg",
        f"TORCH_VERSION={torch_version}",
    ]
    if Path("/etc/ssl/certs").is_dir():  # PyPI through this machine's TLS setup
        args += ["-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    wheels = torch_wheel_folder(torch_version)
    if wheels:
        log(f"CPU torch {torch_version} from the local wheel folder {wheels}")
        args += ["-v", f"{wheels}:/wheels:ro", "--build-arg", "TORCH_FIND_LINKS=/wheels"]
    else:
        log("no local CPU torch wheel: torch from PyTorch's CPU index (the Dockerfile's default)")
    podman(*args, "-t", tag, str(context), timeout=3600)


def make_messy_input(root: Path) -> tuple[set[str], set[str]]:
    """The DICOM samples (some in a subfolder, one without extension) plus broken files; readable by
    any user, as an export share would be. Returns ``(good, broken)`` relative paths."""
    good, broken = set(), set()
    samples = sorted(DICOM_SAMPLES.glob("*.dcm"))
    for i, sample in enumerate(samples):
        relative = sample.name if i % 3 else f"series_{i}/{sample.stem}"  # nested, and without extension
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(sample, root / relative)
        good.add(relative)
    ct = (DICOM_SAMPLES / "CT_small.dcm").read_bytes()
    broken_files = {
        "broken/truncated.dcm": ct[: len(ct) // 2],  # the transfer stopped half-way through the pixels
        "broken/notes_renamed.dcm": b"Patient called back on Monday, see paper file.\n",  # text renamed .dcm
        "broken/empty.dcm": b"",
        "broken/report.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n",
        "ATTRIBUTION.md": (DICOM_SAMPLES / "ATTRIBUTION.md").read_bytes(),
    }
    for relative, data in broken_files.items():
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_bytes(data)
        broken.add(relative)
    for dirpath, _dirnames, filenames in os.walk(root):
        os.chmod(dirpath, 0o755)
        for name in filenames:
            os.chmod(Path(dirpath) / name, 0o644)
    return good, broken


def tree_state(root: Path) -> dict[str, tuple]:
    """Mode, mtime and content hash of every entry: all that a write into the input could change."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            info = path.lstat()
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            state[path.relative_to(root).as_posix()] = (info.st_mode, info.st_mtime_ns, info.st_size, digest)
    return state


def header_identifiers(root: Path, good: set[str]) -> tuple[set[str], set[str]]:
    """``(identifiers, uids)`` from the headers of the good files: the identifying values that must
    not reach any output, and the UIDs that predictions keep by design (removed before searching,
    since digit runs of dates and IDs may occur inside them)."""
    import pydicom

    from medaug.io.phi import UID_ATTRIBUTES

    values, uids = set(), set()
    for relative in good:
        ds = pydicom.dcmread(root / relative, stop_before_pixels=True, force=True)
        for keyword in PHI_KEYWORDS:
            value = ds.get(keyword)
            if value is None or isinstance(value, pydicom.Sequence):
                continue
            for item in value if isinstance(value, pydicom.multival.MultiValue) else [value]:
                text = str(item).strip()
                parts = [text] + ([p.strip() for p in text.split("^")] if "^" in text else [])
                values |= {p for p in parts if _distinctive(p)}
        for keyword in UID_ATTRIBUTES:
            if ds.get(keyword):
                uids.add(str(ds.get(keyword)))
    return values, uids


def _distinctive(text: str) -> bool:
    """Long enough not to occur by chance in numbers and words of the outputs: at least 4 characters,
    not one repeated character, and digit-only values from 8 digits up (a birth date, a long ID)."""
    if len(text) < 4 or len(set(text)) == 1:
        return False
    return not text.isdigit() or len(text) >= 8


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def container_user(podman: Podman, tag: str) -> tuple[str, int]:
    configured = podman("image", "inspect", "--format", "{{.Config.User}}", tag, quiet=True).stdout.strip()
    uid = podman("run", "--rm", "--network", "none", "--entrypoint", "id", tag, "-u").stdout.strip()
    return configured, int(uid)


def image_size(podman: Podman, tag: str) -> int:
    return int(podman("image", "inspect", "--format", "{{.Size}}", tag, quiet=True).stdout.strip())


def compare_predictions(checks: Checks, inside: list[dict], outside: list[dict]) -> None:
    key = lambda row: (row["path"], row["frame"])  # noqa: E731
    a, b = {key(r): r for r in inside}, {key(r): r for r in outside}
    checks(
        "same files and frames predicted inside and outside the container",
        a.keys() == b.keys(),
        f"{len(a)} inside, {len(b)} outside",
    )
    common = sorted(a.keys() & b.keys())
    classes = [k for k in common if a[k]["predicted"] != b[k]["predicted"]]
    checks(
        "same predicted class for every image",
        not classes and bool(common),
        f"differs for {classes}" if classes else f"{len(common)} images",
    )
    prob_columns = [c for c in inside[0] if c.startswith("prob_")] if inside else []
    diffs = [abs(float(a[k][c]) - float(b[k][c])) for k in common for c in prob_columns]
    worst = max(diffs, default=float("nan"))
    checks(
        f"probabilities within {PROB_TOLERANCE:g}",
        bool(diffs) and worst <= PROB_TOLERANCE,
        f"largest difference {worst:.3g} over {len(diffs)} values",
    )
    same_model = {r["checkpoint_sha256"] for r in inside} == {r["checkpoint_sha256"] for r in outside}
    checks("same model (checkpoint_sha256) inside and outside", same_model and bool(inside))


# -------------------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "imbalance_baselines"), help="bundle to bake")
    parser.add_argument("--tag", default="localhost/medaug-predict:docker-test", help="tag of the image built")
    parser.add_argument(
        "--cache",
        default=os.environ.get(
            "MEDAUG_DOCKER_CACHE", str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "medaug-docker")
        ),
        help="where the Debian base tarball, containers.conf and the log are kept "
        "(default: $MEDAUG_DOCKER_CACHE or ~/.cache/medaug-docker)",
    )
    parser.add_argument("--torch-version", default="2.13.0")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (inputs, outputs, context)")
    args = parser.parse_args(argv)
    cache = Path(args.cache)
    log = Log(cache / "docker-test.log")
    checks = Checks(log)
    work = Path(tempfile.mkdtemp(prefix="medaug-docker-test-"))
    started = time.monotonic()
    log(f"medaug docker-test: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; work folder {work}; log {log.path}")
    try:
        log.section("1. podman, runc, debootstrap")
        ensure_tools(log)
        podman = Podman(log, cache)
        podman("--version")
        check_podman_works(podman)
        log.section("2. Debian bookworm base (built once, cached)")
        ensure_base_image(log, podman, cache)
        check_containers_run(podman)

        log.section("3. checkpoint from the bundle's smoke config")
        bundle = Path(args.bundle).resolve()
        checkpoint = train_checkpoint(log, bundle, work)

        log.section("4. podman build")
        context = work / "context"
        context.mkdir()
        bundle_arg = stage_context(bundle, checkpoint, context)
        t0 = time.monotonic()
        build_image(log, podman, context, bundle_arg, args.tag, args.torch_version)
        log(f"built {args.tag} in {time.monotonic() - t0:.0f} s")
        size = image_size(podman, args.tag)
        checks("image size reported", size > 0, f"{size / 1e9:.2f} GB ({size:,} bytes)")
        configured, uid = container_user(podman, args.tag)
        checks(
            "container user is not root",
            uid != 0 and configured not in ("", "root", "0", "0:0"),
            f"USER {configured!r}, id -u in the container = {uid}",
        )

        log.section("5. podman run --network none on a messy folder")
        source, out = work / "input", work / "output"
        source.mkdir()
        out.mkdir(mode=0o777)
        os.chmod(out, 0o777)  # the container's own user writes here (a site would chown it instead)
        good, broken = make_messy_input(source)
        log(f"input: {len(good)} DICOM samples, {len(broken)} broken or non-image files: {sorted(broken)}")
        before = tree_state(source)
        no_net = podman(
            "run",
            "--rm",
            "--network",
            "none",
            "--entrypoint",
            "python",
            args.tag,
            "-c",
            "import socket; socket.create_connection(('pypi.org', 443), timeout=5)",
            check=False,
            quiet=True,
        )
        checks(
            "no network inside the container (--network none)",
            no_net.returncode != 0,
            no_net.stdout.strip().splitlines()[-1] if no_net.stdout.strip() else "",
        )
        t0 = time.monotonic()
        result = podman(
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{source}:/input:ro",
            "-v",
            f"{out}:/output",
            args.tag,
            "--no-progress",
            check=False,
            timeout=1200,
        )
        log(f"container finished in {time.monotonic() - t0:.0f} s with exit code {result.returncode}")
        checks("exit code 3 (finished, some files skipped)", result.returncode == 3, f"got {result.returncode}")

        predictions = read_rows(out / "predictions.csv") if (out / "predictions.csv").is_file() else []
        paths = [row["path"] for row in predictions]
        checks(
            "one prediction per good file",
            sorted(paths) == sorted(good),
            f"{len(paths)} predictions for {len(good)} good files",
        )
        skipped = (
            {row["path"]: row["reason"] for row in read_rows(out / "skipped.csv")}
            if (out / "skipped.csv").is_file()
            else {}
        )
        for relative in sorted(broken):
            reason = skipped.get(relative, "")
            checks(f"skipped.csv lists {relative} with a reason", bool(reason.strip()), reason)
        checks("no good file in skipped.csv", not (skipped.keys() & good), str(sorted(skipped.keys() & good)))

        identifiers, uids = header_identifiers(source, good)
        texts = {p.name: p.read_text(errors="replace") for p in sorted(out.iterdir()) if p.is_file()}
        texts["container stdout/stderr"] = result.stdout
        leaks = []
        for name, text in texts.items():
            for uid_value in sorted(uids, key=len, reverse=True):
                text = text.replace(uid_value, "")
            leaks += [f"{value!r} in {name}" for value in sorted(identifiers) if value in text]
        checks(
            "no patient identifier of the input headers in any output or message",
            not leaks and bool(identifiers),
            f"{len(identifiers)} identifying values searched in {sorted(texts)}"
            + (f"; found {leaks}" if leaks else ""),
        )
        owners = {p.stat().st_uid for p in out.iterdir()}
        checks("outputs written by a non-root user", bool(owners) and 0 not in owners, f"owner uids {sorted(owners)}")
        checks(
            "input folder unchanged (modes, times, sha256 of every file)",
            tree_state(source) == before,
            f"{len(before)} entries",
        )

        log.section("6. the same medaug predict outside the container")
        extracted = work / "image_bundle"
        name = f"medaug-docker-test-{os.getpid()}"
        podman("create", "--name", name, args.tag, quiet=True)
        try:
            podman("cp", f"{name}:/opt/medaug/bundle", str(extracted))
        finally:
            podman("rm", name, quiet=True, check=False)
        host_out = work / "output_outside"
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        host = run(
            log,
            [
                sys.executable,
                "-m",
                "medaug.cli",
                "predict",
                "--bundle",
                str(extracted),
                "--input",
                str(source),
                "--output",
                str(host_out),
                "--no-progress",
            ],
            env=env,
            check=False,
        )
        checks("outside run: exit code 3 too", host.returncode == 3, f"got {host.returncode}")
        outside = read_rows(host_out / "predictions.csv") if (host_out / "predictions.csv").is_file() else []
        compare_predictions(checks, predictions, outside)
        outside_skipped = (
            {row["path"] for row in read_rows(host_out / "skipped.csv")}
            if (host_out / "skipped.csv").is_file()
            else set()
        )
        checks("same files skipped inside and outside", outside_skipped == set(skipped), f"{len(skipped)} files")
    except CannotRunContainers as err:
        log(f"\ndocker-test: this machine cannot build or run containers: {err}")
        return EXIT_CANNOT_RUN_CONTAINERS
    except StepFailed as err:
        log(f"\ndocker-test: a step failed: {err}")
        return 1
    finally:
        if args.keep:
            log(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    log.section("summary")
    passed = sum(ok for _, ok in checks.results)
    log(
        f"{passed}/{len(checks.results)} checks passed in {time.monotonic() - started:.0f} s; image {args.tag}, "
        f"{size / 1e9:.2f} GB; log: {log.path}"
    )
    return 0 if checks.all_passed else 1


if __name__ == "__main__":
    sys.exit(main())
