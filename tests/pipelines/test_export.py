"""A checkpoint knows its network: training writes model.json beside runs/<run>/model.pt, ``medaug
predict`` and ``configs/inference.json`` read it (so any run predicts with no file edited), and
``medaug export`` fills the bundle's models/ with the checkpoint, its record and a TorchScript whose
metadata is true to the run. The runs here are built the way training writes them (the same writer)
with an untrained network, not trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from monai.data import load_net_with_metadata

from medaug.cli import main
from medaug.io import ModelRecordError, build_model_record, read_model_record, write_model_record
from medaug.models import build_classifier
from medaug.pipelines.predict import CheckpointMismatchError, model_settings
from medaug.transforms.presets import AugmentationPlan
from tests.conftest import BUNDLE, DICOM_DIR

CLASSES = ["benign", "malignant", "normal"]


def make_run(bundle: Path, name: str = "small_cnn-run", *, seed: int = 0, preset: str = "ultrasound") -> Path:
    """``<bundle>/runs/<name>/`` as training leaves it: model.pt of a small_cnn at 32 px for 3 classes,
    and model.json written by the bundle's writer."""
    run = bundle / "runs" / name
    run.mkdir(parents=True)
    torch.manual_seed(seed)
    net = build_classifier("small_cnn", 1, len(CLASSES), (32, 32))
    torch.save({"model": net.state_dict()}, run / "model.pt")
    record = build_model_record(
        classifier="small_cnn",
        image_size=[32, 32],
        channels=1,
        class_names=CLASSES,
        positive_class=1,
        augmentation_plan=AugmentationPlan(preset, image_size=[32, 32]),
        bundle_root=bundle,
        run_name=name,
    )
    write_model_record(run / "model.pt", record)
    return run


@pytest.fixture
def bundle(tmp_path) -> Path:
    """The default bundle, copied as it ships: no file of it is edited."""
    return Path(shutil.copytree(BUNDLE, tmp_path / "bundle", ignore=shutil.ignore_patterns("runs", "models")))


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    """A CT, an MR and an ultrasound file of the shipped samples."""
    folder = tmp_path_factory.mktemp("scans")
    for name in ("CT_small.dcm", "MR_small.dcm", "US1_UNCR.dcm"):
        shutil.copyfile(DICOM_DIR / name, folder / name)
    return folder


def predict(bundle: Path, scans: Path, out: Path, *extra: str) -> int:
    argv = ["predict", "--bundle", str(bundle), "--input", str(scans), "--output", str(out)]
    return main([*argv, "--no-progress", "--parallel", "thread", "--workers", "2", *extra])


def rows(path: Path) -> list[dict]:
    return json.loads(path.read_text())


def skipped(out: Path) -> dict[str, str]:
    import csv

    with open(out / "skipped.csv", newline="") as handle:
        return {r["path"]: r["reason"] for r in csv.DictReader(handle)}


def test_the_record_says_what_inference_needs():
    record = build_model_record(
        classifier="small_cnn",
        image_size=(32, 32),
        channels=1,
        class_names=CLASSES,
        positive_class=1,
        augmentation_plan=AugmentationPlan("ultrasound", image_size=[32, 32]),
        bundle_root=BUNDLE,
    )
    assert record["class_names"] == CLASSES and record["num_classes"] == 3
    assert record["positive_class"] == "malignant", "an index is recorded as the class it names"
    assert record["modalities"] == ["US"] and record["preset"] == "ultrasound"
    assert record["preprocessing"]["resize"] == {"spatial_size": [32, 32], "mode": "area"}
    assert record["bundle"]["version"] == json.loads((BUNDLE / "configs" / "metadata.json").read_text())["version"]
    generic = build_model_record(
        classifier="resnet18",
        image_size=[64, 64],
        channels=1,
        class_names=CLASSES,
        positive_class=None,
        augmentation_plan=AugmentationPlan("generic"),
    )
    assert generic["modalities"] is None and generic["positive_class"] is None, "no modality assumed: any"


def test_settings_take_the_given_value_then_the_record_then_the_fallback(tmp_path):
    fallback = {"classifier": "resnet18", "image_size": [64, 64], "channels": 1, "class_names": ["a", "b"]}
    nothing = dict.fromkeys(("classifier", "image_size", "channels", "class_names", "modalities"))
    legacy = tmp_path / "legacy.pt"
    legacy.write_bytes(b"weights")
    assert model_settings(legacy, nothing, fallback)["classifier"] == "resnet18"
    assert model_settings(legacy, nothing, fallback)["modalities"] is None, "no record, no modality filter"
    assert model_settings(legacy, {**nothing, "classifier": "small_cnn"}, fallback)["classifier"] == "small_cnn"

    run = make_run(tmp_path)
    recorded = model_settings(run / "model.pt", nothing, fallback)
    assert (recorded["classifier"], recorded["image_size"], recorded["class_names"]) == ("small_cnn", [32, 32], CLASSES)
    assert recorded["modalities"] == ["US"] and recorded["source"] == str(run / "model.json")
    renamed = model_settings(run / "model.pt", {**nothing, "class_names": ["x", "y", "z"], "modalities": "any"}, {})
    assert renamed["class_names"] == ["x", "y", "z"] and renamed["modalities"] is None
    with pytest.raises(CheckpointMismatchError, match=r"trained with image_size \[32, 32\]"):
        model_settings(run / "model.pt", {**nothing, "image_size": [64, 64]}, fallback)
    with pytest.raises(CheckpointMismatchError, match="trained with class_names"):
        model_settings(run / "model.pt", {**nothing, "class_names": ["a", "b"]}, fallback)

    (run / "model.json").write_text("{not json")
    with pytest.raises(ModelRecordError, match="model.json: not valid JSON"):
        read_model_record(run / "model.pt")


def test_a_small_cnn_run_at_32px_with_3_classes_predicts_with_no_file_edited(bundle, scans, tmp_path, capsys):
    run = make_run(bundle)
    out = tmp_path / "out"
    assert predict(bundle, scans, out, "--checkpoint", str(run / "model.pt")) == 3
    predicted = rows(out / "predictions.json")
    assert predicted and {r["predicted"] for r in predicted} <= set(CLASSES)
    assert all(f"prob_{name}" in predicted[0] for name in CLASSES)
    assert "network: small_cnn, 32x32 px, 1 channel(s); modalities: US" in capsys.readouterr().err
    # an ultrasound model: CT and MR files are skipped with the reason, ultrasound ones predicted
    reasons = skipped(out)
    assert reasons["CT_small.dcm"] == "wrong modality for this model (CT; the model takes US)"
    assert reasons["MR_small.dcm"] == "wrong modality for this model (MR; the model takes US)"
    assert "US1_UNCR.dcm" in {r["path"] for r in predicted}

    assert predict(bundle, scans, tmp_path / "any", "--checkpoint", str(run / "model.pt"), "--modalities", "any") == 0
    assert "CT_small.dcm" in {r["path"] for r in rows(tmp_path / "any" / "predictions.json")}


def test_overrides_are_config_keys_and_a_shape_the_checkpoint_was_not_trained_with_is_exit_2(
    bundle, scans, tmp_path, capsys
):
    run = make_run(bundle)
    checkpoint = ["--checkpoint", str(run / "model.pt")]
    assert predict(bundle, scans, tmp_path / "o", *checkpoint, "--image_size", "[64,64]") == 2
    err = capsys.readouterr().err
    assert "error: --checkpoint: image_size [64, 64] does not fit model.pt" in err
    assert "trained with image_size [32, 32]" in err
    assert predict(bundle, scans, tmp_path / "o", *checkpoint, "--imag_size", "[32,32]") == 2
    assert "--imag_size: not a key of the bundle's configs/inference.json; did you mean --image_size?" in (
        capsys.readouterr().err
    )
    assert predict(bundle, scans, tmp_path / "o", *checkpoint, "--ckpt_path", "x.pt") == 2
    assert "--ckpt_path: set by --checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o" / "predictions.csv").exists(), "refused before any prediction"

    legacy = tmp_path / "legacy"  # a checkpoint without a record: the overrides say its network
    legacy.mkdir()
    shutil.copyfile(run / "model.pt", legacy / "model.pt")
    argv = ["--checkpoint", str(legacy / "model.pt"), "--modalities", "US"]
    assert predict(bundle, scans, tmp_path / "l1", *argv) == 2, "the fallback resnet18 does not fit"
    assert "error: --checkpoint:" in capsys.readouterr().err
    names = "['benign','malignant','normal']"
    overrides = ["--classifier", "small_cnn", "--image_size", "[32,32]", "--class_names", names]
    assert predict(bundle, scans, tmp_path / "l2", *argv, *overrides) == 3  # the CT and MR files skipped
    assert {f"prob_{n}" for n in CLASSES} <= set(rows(tmp_path / "l2" / "predictions.json")[0])


def test_export_fills_models_with_a_torchscript_true_to_the_run_and_keeps_a_different_model(
    bundle, scans, tmp_path, capsys
):
    run = make_run(bundle)
    assert main(["export", str(run)]) == 0, capsys.readouterr().err
    models = bundle / "models"
    assert (models / "model.pt").read_bytes() == (run / "model.pt").read_bytes()
    record = json.loads((models / "model.json").read_text())
    assert record["classifier"] == "small_cnn" and record["exported_from"] == str((run / "model.pt").resolve())

    extra = {"model.json": "", "inference": ""}
    net, meta, files = load_net_with_metadata(str(models / "model.ts"), more_extra_files=tuple(extra))
    image = meta["network_data_format"]["inputs"]["image"]
    assert image["spatial_shape"] == [32, 32] and image["num_channels"] == 1 and image["modality"] == "US"
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {
        "0": "benign",
        "1": "malignant",
        "2": "normal",
    }
    assert json.loads(files["model.json"])["image_size"] == [32, 32]
    assert json.loads(files["inference"])["image_size"] == [32, 32]
    assert net(torch.rand(2, 1, 32, 32)).shape == (2, 3)

    out = tmp_path / "out"  # the bundle's default checkpoint is now that TorchScript: no flag, no edit
    assert predict(bundle, scans, out) == 3
    assert "model.ts" in capsys.readouterr().err
    assert skipped(out)["CT_small.dcm"].startswith("wrong modality for this model (CT")

    other = make_run(bundle, "other-run", seed=1)
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    assert main(["export", str(other)]) == 2
    err = capsys.readouterr().err
    assert "error: --force:" in err and "holds a different model" in err and "pass --force" in err
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before, "nothing replaced"
    assert main(["export", str(other), "--force"]) == 0
    assert (models / "model.pt").read_bytes() == (other / "model.pt").read_bytes()
    assert sorted(p.name for p in models.iterdir()) == ["model.json", "model.pt", "model.ts"], "no temporary left"


def test_export_of_a_run_without_a_record_says_how_to_predict_it(bundle, tmp_path, capsys):
    run = make_run(bundle)
    (run / "model.json").unlink()
    assert main(["export", str(run)]) == 2
    assert "has no model.json beside it" in capsys.readouterr().err and not (bundle / "models").exists()
    assert main(["export", str(tmp_path / "nope")]) == 2


def test_help_tells_where_the_network_comes_from_and_how_to_export(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for part in ("model.json", '--image_size "[32,32]"', "--modalities any", "medaug export"):
        assert part in text, part
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    assert "--force" in capsys.readouterr().out


def test_the_settings_lookups_pass_the_untrusted_bundle_check_and_nothing_more_does():
    from medaug.bundle_trust import _harmless_expression

    assert _harmless_expression("$@settings['image_size']")
    assert not _harmless_expression("$@settings['image_size'].__class__")
    assert not _harmless_expression("$@settings[__import__('os').getcwd()]")
