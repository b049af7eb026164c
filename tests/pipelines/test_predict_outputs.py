"""Output safety of ``medaug predict``: an unwritable or busy ``--output`` is refused before any work,
a run replaces the previous set of four files only as a whole (a failed or killed run leaves it as it
was), ``summary.json`` names the run, CSV cells cannot run as spreadsheet formulas, and process-mode
decoders die with their parent."""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

import medaug.io.output_set as output_set
import medaug.pipelines.predict as P
from medaug.cli import main
from medaug.io.output_set import OutputFolderBusy, OutputFolderError, OutputSet, spreadsheet_safe
from tests.conftest import DICOM_DIR
from tests.pipelines.test_predict import make_bundle, read_csv

FILES = ("predictions.csv", "predictions.json", "skipped.csv", "summary.json")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    return make_bundle(tmp_path_factory.mktemp("outputs_bundle"))


@pytest.fixture
def small_input(tmp_path) -> Path:
    """Two good DICOMs and one that is not an image: every output file has rows."""
    source = tmp_path / "in"
    source.mkdir()
    for name in ("CT_small.dcm", "MR_small.dcm"):
        shutil.copyfile(DICOM_DIR / name, source / name)
    (source / "notes.txt").write_text("not an image\n")
    return source


def predict(bundle: Path, source: Path, out: Path, *extra: str) -> int:
    return main(
        ["predict", "--bundle", str(bundle), "--input", str(source), "--output", str(out), "--no-progress", *extra]
    )


def snapshot(out: Path) -> dict[str, bytes]:
    return {name: (out / name).read_bytes() for name in FILES}


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


# ------------------------------------------------------------------------------ unwritable output


def _below_a_file(tmp_path: Path) -> Path:
    (tmp_path / "a_file").write_text("x")
    return tmp_path / "a_file" / "out"


def _read_only_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "read_only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder / "out"


def _output_file_name_taken_by_a_folder(tmp_path: Path) -> Path:
    (tmp_path / "out" / "summary.json").mkdir(parents=True)
    return tmp_path / "out"


UNWRITABLE = {
    "below a regular file": _below_a_file,
    "read-only folder": _read_only_folder,
    "in /sys": lambda _: Path("/sys/medaug-predict-out"),
    "in /proc": lambda _: Path("/proc/medaug-predict-out"),
    "an output name taken by a folder": _output_file_name_taken_by_a_folder,
}


@pytest.mark.parametrize("case", UNWRITABLE)
def test_unwritable_output_exits_2_naming_it_before_the_model_is_loaded(
    case, bundle, small_input, tmp_path, monkeypatch, capsys
):
    if case == "read-only folder" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    if case == "in /sys" and not Path("/sys").is_dir():
        pytest.skip("no /sys on this system")
    target = UNWRITABLE[case](tmp_path)

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the output folder was checked")

    monkeypatch.setattr(P, "load_model", no_work)
    monkeypatch.setattr(P, "predict_folder", no_work)
    assert predict(bundle, small_input, target) == 2
    err = capsys.readouterr().err
    assert "medaug: error: --output: " in err and str(target) in err, err
    assert "unexpected failure" not in err


def test_unwritable_output_in_the_library_fails_before_any_image_is_read(small_input, tmp_path):
    calls = []

    def recording_preprocessing(item):
        calls.append(item)
        raise AssertionError("an image was read")

    with pytest.raises(OutputFolderError, match="cannot be written"):
        P.predict_folder(
            small_input,
            _below_a_file(tmp_path),
            model=torch.nn.Identity(),
            preprocessing=recording_preprocessing,
            class_names=["a", "b"],
            progress=False,
        )
    assert calls == []


# ---------------------------------------------------------------------------------- the lock


def test_second_predict_into_a_busy_folder_is_refused_and_a_dead_holder_blocks_nothing(
    bundle, small_input, tmp_path, capsys
):
    out = tmp_path / "out"
    assert predict(bundle, small_input, out) == 3
    before = snapshot(out)
    capsys.readouterr()

    with P.prediction_outputs(out) as holder:  # what a live run holds, from start to end
        assert predict(bundle, small_input, out) == 2
        err = capsys.readouterr().err
        assert "error: --output: another 'medaug predict' is writing to" in err, err
        assert f"pid {os.getpid()}" in err and holder.run_id in err, "the refusal names the live run"
        with pytest.raises(OutputFolderBusy):
            P.prediction_outputs(out).open()
    assert snapshot(out) == before, "the refused run wrote nothing"

    # a lock file left by a process that died (flock is released with it) does not block
    (out / ".predict.lock").write_text(
        json.dumps({"pid": 999999999, "host": "gone", "run_id": "x", "started_at": "2000-01-01T00:00:00Z"})
    )
    assert predict(bundle, small_input, out) == 3
    assert json.loads((out / "summary.json").read_text())["run_id"] != json.loads(before["summary.json"])["run_id"]
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES), "no lock or temporary folder left after a run"


# -------------------------------------------------------------------------- a set, swapped whole


def test_summary_names_the_run_and_lists_the_files_of_its_set(bundle, small_input, tmp_path, capsys):
    out = tmp_path / "out"
    assert predict(bundle, small_input, out) == 3
    summary = json.loads((out / "summary.json").read_text())
    assert str(uuid.UUID(summary["run_id"])) == summary["run_id"]
    started = datetime.datetime.fromisoformat(summary["started_at"].replace("Z", "+00:00"))
    finished = datetime.datetime.fromisoformat(summary["finished_at"].replace("Z", "+00:00"))
    assert finished.utcoffset() == datetime.timedelta(0) and started <= finished
    assert summary["run_id"] in capsys.readouterr().out
    assert set(summary["files"]) == set(FILES) - {"summary.json"}
    for name, info in summary["files"].items():
        data = (out / name).read_bytes()
        assert info == {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}, name


def test_a_run_that_fails_midway_leaves_the_previous_set_byte_identical(
    bundle, small_input, tmp_path, monkeypatch, capsys
):
    out = tmp_path / "out"
    assert predict(bundle, small_input, out) == 3
    before = snapshot(out)

    class Exploding(torch.nn.Module):
        def forward(self, batch):
            raise RuntimeError("model exploded")

    monkeypatch.setattr(P, "load_model", lambda *args, **kwargs: Exploding())
    assert predict(bundle, small_input, out) == 1
    assert "unexpected failure (RuntimeError)" in capsys.readouterr().err
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES), "its temporary folder and lock are removed"


def _hang(*args, **kwargs):
    time.sleep(600)


class _HangingModel(torch.nn.Module):
    """Says it was reached (a file) and hangs: the run is killed from outside while predicting."""

    def __init__(self, marker: Path) -> None:
        super().__init__()
        self.marker = marker

    def forward(self, batch):
        self.marker.write_text("predicting")
        _hang()


def _run_with_hanging_model(marker: Path, argv: list[str]) -> None:
    P.load_model = lambda *args, **kwargs: _HangingModel(marker)  # in the child only
    sys.exit(main(argv))


def start_child(target, *args) -> multiprocessing.Process:
    """``target(*args)`` in a forked copy of this process (no second start of Python and torch), to be
    killed with SIGKILL as an operator or the OOM killer would."""
    child = multiprocessing.get_context("fork").Process(target=target, args=args)
    child.start()
    return child


def test_a_killed_run_leaves_the_previous_set_and_the_next_run_replaces_it(bundle, small_input, tmp_path):
    out = tmp_path / "out"
    assert predict(bundle, small_input, out) == 3
    before = snapshot(out)
    old_run = json.loads(before["summary.json"])["run_id"]

    marker = tmp_path / "predicting"
    argv = ["predict", "--bundle", str(bundle), "--input", str(small_input), "--output", str(out), "--no-progress"]
    child = start_child(_run_with_hanging_model, marker, argv)
    try:
        wait_for(lambda: marker.exists() or not child.is_alive(), 60, "the second run to reach its model")
        assert child.is_alive(), f"the second run ended (exit code {child.exitcode}) before its model"
        leftovers = [p.name for p in out.iterdir() if p.name not in FILES]
        assert ".predict.lock" in leftovers and any(n.startswith(".predict-") for n in leftovers), leftovers
    finally:
        child.kill()
        child.join(30)
    assert snapshot(out) == before, "the killed run changed none of the four files"
    assert json.loads((out / "summary.json").read_text())["run_id"] == old_run

    assert predict(bundle, small_input, out) == 3, "the dead run's lock does not block"
    assert json.loads((out / "summary.json").read_text())["run_id"] != old_run
    assert sorted(p.name for p in out.iterdir()) == sorted(FILES), "the dead run's temporary folder is removed"


def test_killed_during_the_swap_the_set_has_no_summary(tmp_path, monkeypatch):
    """The only moment of a run whose end a reader can see as a mix: between the renames of the swap.
    The old summary.json is removed before them and the new one renamed after them, so a folder
    without summary.json holds no complete set; with summary.json, every file is the one it lists."""
    folder = tmp_path / "out"

    def write_set(text: str) -> OutputSet:
        output = OutputSet(folder, ["a.csv", "summary.json"], marker="summary.json").open()
        output.write_csv("a.csv", [{"x": text}], ["x"])
        output.write_json("summary.json", {"run_id": output.run_id, "files": output.digests()})
        return output

    with write_set("old") as old:
        old.commit()
    real_replace, calls = os.replace, []

    def replace_then_die(src, dst):
        calls.append(dst)
        real_replace(src, dst)
        if len(calls) == 1:
            raise KeyboardInterrupt("killed between two renames")

    monkeypatch.setattr(output_set.os, "replace", replace_then_die)
    with pytest.raises(KeyboardInterrupt), write_set("new") as new:
        new.commit()
    assert not (folder / "summary.json").exists(), "no summary.json: not a complete set"
    assert read_csv(folder / "a.csv") == [{"x": "new"}]
    monkeypatch.setattr(output_set.os, "replace", real_replace)
    with write_set("newer") as newer:
        newer.commit()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["run_id"] == newer.run_id
    assert summary["files"]["a.csv"]["sha256"] == hashlib.sha256((folder / "a.csv").read_bytes()).hexdigest()


# ------------------------------------------------------------------------------ CSV formulas


def test_spreadsheet_safe_escapes_only_text_that_starts_a_formula():
    for text in ('=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "\tcmd", "\rcmd"):
        assert spreadsheet_safe(text) == "'" + text
    for value in ("name=1.dcm", "a-b", "", "'=already", 0.5, -1, 3):
        assert spreadsheet_safe(value) == value


def test_file_names_that_start_a_formula_are_escaped_in_csv_and_raw_in_json(bundle, tmp_path):
    source = tmp_path / "in"
    source.mkdir()
    for name in ("=cmd.dcm", "+plus.dcm", "-minus.dcm", "@at.dcm", "plain.dcm"):
        shutil.copyfile(DICOM_DIR / "CT_small.dcm", source / name)
    (source / "=broken.dcm").write_bytes(b"")
    out = tmp_path / "out"
    assert predict(bundle, source, out) == 3
    csv_paths = sorted(r["path"] for r in read_csv(out / "predictions.csv"))
    assert csv_paths == ["'+plus.dcm", "'-minus.dcm", "'=cmd.dcm", "'@at.dcm", "plain.dcm"]
    json_paths = sorted(r["path"] for r in json.loads((out / "predictions.json").read_text()))
    assert json_paths == ["+plus.dcm", "-minus.dcm", "=cmd.dcm", "@at.dcm", "plain.dcm"]
    with open(out / "skipped.csv", newline="") as handle:
        assert [r["path"] for r in csv.DictReader(handle)] == ["'=broken.dcm"]
    for row in read_csv(out / "predictions.csv"):  # numbers stay numbers
        assert 0 <= float(row["prob_malignant"]) <= 1


# ------------------------------------------------------------------- process workers and parent


def _record_pid_and_hang(pids_dir: Path, item):
    (pids_dir / str(os.getpid())).touch()
    _hang()


def _predict_in_processes(source: Path, out: Path, pids_dir: Path) -> None:
    P.predict_folder(
        source,
        out,
        model=torch.nn.Identity(),
        preprocessing=functools.partial(_record_pid_and_hang, pids_dir),
        class_names=["a", "b"],
        parallel="process",
        workers=2,
        progress=False,
    )


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting for a reaper that may never come in a container) is not."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_process_workers_die_when_their_parent_is_killed(small_input, tmp_path):
    pids_dir = tmp_path / "pids"
    pids_dir.mkdir()
    child = start_child(_predict_in_processes, small_input, tmp_path / "out", pids_dir)
    workers: list[int] = []
    try:
        wait_for(lambda: len(list(pids_dir.iterdir())) >= 2 or not child.is_alive(), 60, "two decoding workers")
        assert child.is_alive(), f"the run ended (exit code {child.exitcode}) before its workers decoded"
        workers = [int(p.name) for p in pids_dir.iterdir()]
        assert child.pid not in workers and all(_alive(pid) for pid in workers)
        os.kill(child.pid, signal.SIGKILL)
        child.join(30)
        wait_for(lambda: not any(_alive(pid) for pid in workers), 20, f"workers {workers} to exit with their parent")
    finally:
        child.kill()
        child.join(30)
        for pid in workers:  # only if the test failed: leave no orphan behind
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_help_documents_the_output_set_the_lock_and_the_csv_escaping(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in (
        "run_id",
        "finished_at",
        ".predict-<run_id>.tmp/",
        "summary.json last",
        ".predict.lock",
        "refused (exit 2)",
        "= + - @",
        "JSON files keep the raw values",
    ):
        assert part in text, part
