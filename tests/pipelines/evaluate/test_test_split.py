"""Which class the summary metrics score: the positive class must be a class of the data, exactly
spelled; with more than two classes the metrics are macro averages and the header says so."""

import json

import numpy as np
import pytest
from monai.bundle import ConfigParser

from medaug.pipelines.evaluate import compute_metrics, resolve_positive_class
from medaug.pipelines.evaluate.test_split import positive_class_label
from medaug.settings import SettingsError
from tests.conftest import BUNDLE

BREAST = ["malignant", "normal_benign"]
ULTRASOUND = ["benign", "malignant", "normal"]


def test_a_positive_class_is_a_name_or_index_of_the_classes():
    assert resolve_positive_class("malignant", BREAST) == 0
    assert resolve_positive_class(1, BREAST) == 1
    assert resolve_positive_class(None, BREAST) == 1  # scikit-learn's convention, named in the header
    assert resolve_positive_class("normal", ULTRASOUND) == 2


def test_a_name_off_by_case_is_an_error_that_suggests_the_class_not_a_silent_fallback():
    with pytest.raises(SettingsError) as info:
        resolve_positive_class("Malignant", BREAST)
    assert info.value.key == "positive_class"
    assert str(info.value) == (
        "positive_class = 'Malignant': not a class of this data (malignant, normal_benign); did you mean 'malignant'?"
    )
    with pytest.raises(SettingsError, match="set --positive_class to one of them; or null"):
        resolve_positive_class("tumour", ULTRASOUND)
    with pytest.raises(SettingsError, match="no class index"):
        resolve_positive_class(2, BREAST)


def test_more_than_two_classes_default_to_macro_metrics_and_the_header_says_so():
    assert resolve_positive_class(None, ULTRASOUND) is None
    assert positive_class_label(None, ULTRASOUND) == "macro over 3 classes"
    assert positive_class_label(1, ULTRASOUND) == "macro over 3 classes"  # a class named there picks nothing
    assert positive_class_label(0, BREAST) == "positive class: malignant"
    labels, probs = np.array([0, 1, 2, 2]), np.eye(3)[[0, 1, 2, 0]]
    assert compute_metrics(labels, probs, num_classes=3, positive_class=None)["sensitivity"] == pytest.approx(
        (1 + 1 + 0.5) / 3
    )


@pytest.mark.parametrize(("classes", "expected"), [(BREAST, "malignant"), (ULTRASOUND, None)])
def test_the_default_bundle_scores_malignant_on_two_classes_and_macro_on_more(classes, expected):
    config = json.loads((BUNDLE / "configs" / "train.json").read_text())
    parser = ConfigParser({"study_data": {"_target_": "types.SimpleNamespace", "class_names": classes}})
    parser["positive_class"] = config["positive_class"]
    assert parser.get_parsed_content("positive_class") == expected
