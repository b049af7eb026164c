"""A wrong setting is named with its value and the fix: close matches are suggested, never applied."""

import pytest

from medaug.settings import SettingsError, check_choice, did_you_mean, unknown_keys


def test_a_name_differing_only_in_case_is_the_suggestion_before_any_closer_spelling():
    assert did_you_mean("Malignant", ["malignant", "normal_benign"]) == "malignant"
    assert did_you_mean("gann", ["none", "random", "gan", "vae"]) == "gan"
    assert did_you_mean("ultrasond", ["ct", "mri", "ultrasound"]) == "ultrasound"
    assert did_you_mean("xyz", ["gan", "vae"]) is None


def test_check_choice_keeps_a_known_name_and_rejects_another_naming_key_value_and_fix():
    assert check_choice("oversample#method", "gan", ["none", "gan"]) == "gan"
    with pytest.raises(SettingsError) as info:
        check_choice("classifier", "resnet19", ["resnet18", "resnet50", "small_cnn"])
    err = info.value
    assert (err.key, err.value) == ("classifier", "resnet19")
    assert str(err) == "classifier = 'resnet19': not one of resnet18, resnet50, small_cnn; did you mean 'resnet18'?"
    with pytest.raises(SettingsError, match="set rebalance#method to one of them$"):
        check_choice("rebalance#method", "zzz", ["none", "class_weight"])
    # a folded comparison (case, "_" / "-") accepts spellings the registry itself accepts
    assert check_choice("classifier", "Small-CNN", ["small_cnn"], normalize=lambda s: s.lower().replace("-", "_"))


CONFIG = {
    "max_epochs": 40,
    "rebalance": {"method": "class_weight"},
    "oversample": {"_target_": "Stage", "method": "none", "ldm": {"ae_iterations": 800, "ddim_steps": 50}},
    "train": {"handlers": [{"_target_": "A"}, {"_target_": "B"}]},
}


def test_an_unknown_key_gets_the_nearest_key_of_the_same_section():
    assert unknown_keys(["max_epoch", "rebalance#mehtod", "oversample#ldm#ddim_step", "seeed"], CONFIG) == {
        "max_epoch": "max_epochs",
        "rebalance#mehtod": "rebalance#method",
        "oversample#ldm#ddim_step": "oversample#ldm#ddim_steps",
        "seeed": None,
    }
    assert unknown_keys(["nosuch#deeper"], CONFIG) == {"nosuch#deeper": None}


def test_keys_the_config_has_or_takes_are_not_unknown():
    known = ["max_epochs", "oversample#ldm#ae_iterations", "train#handlers#1", "train#handlers#1#_target_"]
    assert unknown_keys(known, CONFIG) == {}
    # a new keyword of a _target_ component counts when the target takes it
    accepts = lambda section, name: name == "progress"  # noqa: E731
    assert unknown_keys(["oversample#progress", "oversample#colour"], CONFIG, accepts_new=accepts) == {
        "oversample#colour": None
    }
    # a generator section takes settings its defaults do not spell out; only a near miss is a typo
    assert unknown_keys(["oversample#ldm#num_train_timesteps"], CONFIG) == {}
