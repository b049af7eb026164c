"""A bundle run's settings are checked before anything runs: a misspelled key, an unknown method,
preset or classifier, a missing dataset folder and a positive class that is not a class each stop
the run with one message naming the key, the value and the fix (exit 2 under ``monai.bundle run``)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from monai.bundle import run

from medaug.bundle_errors import user_error
from medaug.pipelines.validate import check_dataset_dir, named_choices, target_accepts
from medaug.settings import SettingsError
from tests.conftest import BUNDLE, REPO

CONFIGS = [str(BUNDLE / "configs" / "train.json"), str(BUNDLE / "configs" / "smoke.json")]


def test_named_settings_are_checked_against_the_registries_with_a_suggestion():
    named_choices({"classifier": "efficientnet_b0", "oversample#method": "gan", "augment#preset": "ultrasound"})
    named_choices({"augment#preset": "my_preset.yaml", "seed": 3})  # a preset file, and a key with no names
    with pytest.raises(SettingsError, match=r"^augment#preset = 'ultrasond': .*; did you mean 'ultrasound'\?$"):
        named_choices({"augment#preset": "ultrasond"})
    with pytest.raises(SettingsError, match=r"^oversample#hybrid#generator = 'vea': .*did you mean 'vae'\?$"):
        named_choices({"oversample#hybrid#generator": "vea"})
    with pytest.raises(SettingsError, match=r"^pretrain#method = 'simclrr': not one of none, simclr; did you mean"):
        named_choices({"pretrain#method": "simclrr"})


def test_a_missing_dataset_dir_names_the_key_and_what_it_may_be(tmp_path):
    check_dataset_dir(tmp_path)
    with pytest.raises(SettingsError, match=r"^dataset_dir = '.*nope': no such file or folder; set --dataset_dir"):
        check_dataset_dir(tmp_path / "nope")


def test_a_new_keyword_is_accepted_where_the_component_takes_it():
    component = {"_target_": "medaug.io.build_study_data", "dataset_dir": "x"}
    assert target_accepts(component, "progress") and not target_accepts(component, "progres")
    assert target_accepts({"_target_": "no.such.module.Thing"}, "anything")  # MONAI reports that itself


BAD_SETTINGS = {  # override -> (key named, text of the fix)
    "max_epoch": (1, "max_epoch", "did you mean --max_epochs?"),
    "oversample#method": ("gann", "oversample#method", "did you mean 'gan'?"),
    "positive_class": ("Malignant", "positive_class", "did you mean 'malignant'?"),
    "dataset_dir": ("/no/such/folder", "dataset_dir", "set --dataset_dir to"),
    "evaluate#robustness#corruptions": (["jpg"], "evaluate#robustness#corruptions", "did you mean 'jpeg'?"),
}


@pytest.mark.slow
@pytest.mark.parametrize("override", sorted(BAD_SETTINGS))
def test_a_bad_setting_stops_the_bundle_in_its_initialize_before_mlflow_or_training(override, tmp_path):
    value, key, fix = BAD_SETTINGS[override]
    with pytest.raises(Exception) as info:
        run(
            config_file=CONFIGS,
            bundle_root=str(BUNDLE),
            output_dir=str(tmp_path),
            logging_file=False,
            **{override: value},
        )
    mistake = user_error(info.value)
    assert isinstance(mistake, SettingsError) and mistake.key == key and fix in str(mistake)
    assert not (tmp_path / "mlflow.db").exists() and not list(tmp_path.rglob("model.pt"))


@pytest.mark.slow
def test_under_monai_bundle_run_a_misspelled_key_is_one_short_message_and_exit_2(tmp_path):
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIGS)]
    cmd += ["--bundle_root", str(BUNDLE), "--output_dir", str(tmp_path), "--max_epoch", "1"]
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stderr[-3000:]
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) < 15 and "Traceback" not in result.stderr
    assert "medaug: max_epoch = 1: not a key of this bundle's config; did you mean --max_epochs?" in lines
    log = Path(lines[-1].split("full traceback in ", 1)[1].rstrip(")"))
    assert log.parent == tmp_path and "Traceback" in log.read_text() and "SettingsError" in log.read_text()
