"""Modality presets: each shipped preset builds and runs, anatomy rules reject what a scanner never
produces (naming the key and the rule), overrides and user preset files work, and the
``medaug show-augmentations`` command draws the grid."""

import subprocess
import sys

import pytest
import torch
import yaml
from monai.data import MetaTensor
from monai.transforms import Compose

from medaug.cli import main
from medaug.transforms.presets import (
    AnatomyRuleError,
    AugmentationPlan,
    PresetError,
    available_presets,
    build_augmentation,
)
from tests.conftest import DICOM_DIR, REPO

PRESETS = ("chest_xray", "ct", "mri", "ultrasound", "generic")
VERTICAL_FLIP = {"vflip": {"_target_": "RandFlipd", "prob": 0.5, "spatial_axis": 0}}


def test_the_five_modality_presets_ship_with_the_package():
    assert set(PRESETS) <= set(available_presets())


@pytest.mark.parametrize("preset", PRESETS)
def test_each_preset_composes_with_monai_and_runs_on_a_2d_image(preset):
    chain = Compose(build_augmentation(preset, image_size=(32, 32)))
    chain.set_random_state(0)
    image = MetaTensor(torch.rand(1, 32, 32), meta={"filename_or_obj": "x"})
    outputs = [chain({"image": image.clone(), "label": 1}) for _ in range(4)]
    for out in outputs:
        assert out["image"].shape == (1, 32, 32) and out["label"] == 1 and torch.isfinite(out["image"]).all()
    assert any(not torch.allclose(o["image"], image) for o in outputs)
    steps = AugmentationPlan(preset, image_size=(32, 32)).steps()
    assert all(t.prob == 1.0 for _, t in steps if hasattr(t, "prob")), "grid rows show each transform for sure"


def test_preset_none_is_no_augmentation_the_reference_row_of_a_study():
    assert "none" in available_presets()
    assert AugmentationPlan("none", image_size=(32, 32)).transforms() == []
    assert build_augmentation("none", image_size=(32, 32)) == []


def test_a_vertical_flip_on_chest_xray_is_rejected_naming_the_key_and_the_rule():
    with pytest.raises(AnatomyRuleError) as err:
        AugmentationPlan("chest_xray", overrides=VERTICAL_FLIP)
    message = str(err.value)
    assert message.startswith("augment#overrides#vflip#spatial_axis:")
    assert "vertical_flip: never" in message and "chest_xray" in message and "apices" in message


def test_a_flip_of_all_axes_counts_as_a_vertical_flip():
    with pytest.raises(AnatomyRuleError, match="augment#overrides#flip: RandFlipd flips spatial axis 0"):
        AugmentationPlan("ultrasound", overrides={"flip": {"_target_": "RandFlipd", "prob": 0.5}})


def test_left_right_flip_on_chest_xray_only_when_explicitly_allowed():
    lr_flip = {"lr": {"_target_": "RandFlipd", "prob": 0.5, "spatial_axis": 1}}
    with pytest.raises(AnatomyRuleError, match="left_right_flip: if_allowed"):
        AugmentationPlan("chest_xray", overrides=lr_flip)
    plan = AugmentationPlan("chest_xray", overrides=lr_flip, allow=["left_right_flip"])
    assert "lr" in plan.config["transforms"]
    with pytest.raises(AnatomyRuleError, match="augment#allow: rule 'vertical_flip' .* cannot be lifted"):
        AugmentationPlan("chest_xray", allow=["vertical_flip"])


def test_rotations_beyond_the_preset_limit_are_rejected_in_degrees():
    with pytest.raises(
        AnatomyRuleError, match=r"augment#overrides#affine#rotate_range: RandAffined rotates by up to 28.6"
    ):
        AugmentationPlan("chest_xray", overrides={"affine": {"rotate_range": 0.5}})
    with pytest.raises(AnatomyRuleError, match="rotate90: never"):
        AugmentationPlan("ultrasound", overrides={"r90": {"_target_": "RandRotate90d", "prob": 0.5}})


def test_a_preset_file_that_breaks_its_own_rule_is_rejected_naming_the_file_key(tmp_path):
    preset = yaml.safe_load((REPO / "medaug/transforms/presets/chest_xray.yaml").read_text())
    preset["transforms"]["upside_down"] = {"_target_": "RandFlipd", "prob": 0.1, "spatial_axis": [0, 1]}
    path = tmp_path / "my_cxr.yaml"
    path.write_text(yaml.safe_dump(preset))
    with pytest.raises(AnatomyRuleError, match=r"my_cxr.yaml: transforms#upside_down#spatial_axis: .*vertical_flip"):
        AugmentationPlan(str(path))


def test_a_user_preset_file_with_nested_one_of_and_expressions(tmp_path):
    path = tmp_path / "dermoscopy.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "name": "dermoscopy",
                "anatomy": {"max_rotation_deg": {"rule": 180, "why": "a skin lesion has no up"}},
                "transforms": {
                    "rotate": {"_target_": "RandRotated", "prob": 0.5, "range_x": 3.14},
                    "flips": {
                        "_target_": "OneOf",
                        "transforms": [
                            {"_target_": "RandFlipd", "prob": 1.0, "spatial_axis": 0},
                            {"_target_": "RandFlipd", "prob": 1.0, "spatial_axis": 1},
                        ],
                    },
                    "shift": {
                        "_target_": "RandAffined",
                        "prob": 0.5,
                        "translate_range": "$[s // 8 for s in @image_size]",
                    },
                },
            },
            sort_keys=False,
        )
    )
    plan = AugmentationPlan(str(path), image_size=(40, 40))
    assert [label for label, _ in plan.steps()] == [
        "rotate: RandRotated",
        "flips[0]: RandFlipd",
        "flips[1]: RandFlipd",
        "shift: RandAffined",
    ]
    out = Compose(plan.transforms())({"image": torch.rand(1, 40, 40)})
    assert out["image"].shape == (1, 40, 40)


def test_overrides_change_remove_and_add_transforms():
    plan = AugmentationPlan(
        "ultrasound",
        overrides={"speckle": {"prob": 0.9}, "gain": None, "blur": {"_target_": "RandGaussianSmoothd", "prob": 0.1}},
    )
    transforms = plan.config["transforms"]
    assert transforms["speckle"]["prob"] == 0.9 and transforms["speckle"]["nakagami_m"] == [2.0, 8.0]
    assert "gain" not in transforms and list(transforms)[-1] == "blur"
    applied = yaml.safe_load(plan.to_yaml())
    assert applied["overrides"]["speckle"] == {"prob": 0.9} and applied["transforms"]["speckle"]["keys"] == "@keys"
    assert applied["source"].endswith("ultrasound.yaml")


def test_bundle_overrides_name_new_transforms_with_transform_nested_ones_too():
    plan = AugmentationPlan(
        "mri",
        overrides={
            "kspace_artifact": {
                "transforms": [
                    {"transform": "medaug.transforms.RandKSpaceGhostingd", "prob": 0.5},
                    {"transform": "RandGibbsNoised", "prob": 0.5},
                ]
            },
            "blur": {"transform": "RandGaussianSmoothd", "prob": 0.2},
        },
    )
    members = plan.config["transforms"]["kspace_artifact"]["transforms"]
    assert [m["_target_"] for m in members] == ["medaug.transforms.RandKSpaceGhostingd", "RandGibbsNoised"]
    assert plan.config["transforms"]["blur"]["_target_"] == "RandGaussianSmoothd"
    assert len(plan.transforms()) == len(plan.config["transforms"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"preset": "dental"}, "augment#preset: 'dental' is neither a preset"),
        (
            {"preset": "ct", "overrides": {"nosuch": {"prob": 1}}},
            "augment#overrides#nosuch: preset 'ct' has no transform",
        ),
        (
            {"preset": "ct", "overrides": {"anatomy": {}}},
            "augment#overrides#anatomy: anatomy rules cannot be overridden",
        ),
        ({"preset": "mri", "allow": ["upside_down"]}, "augment#allow: preset 'mri' has no rule 'upside_down'"),
    ],
)
def test_bad_preset_choices_name_the_config_key(kwargs, message):
    with pytest.raises(PresetError, match=message):
        AugmentationPlan(**kwargs)


def test_show_augmentations_draws_a_grid_from_a_dicom_file(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(
        [
            "show-augmentations",
            "--preset",
            "mri",
            "--image",
            str(DICOM_DIR / "MR_small.dcm"),
            "--out",
            str(out),
            "--samples",
            "2",
            "--size",
            "32",
            "32",
        ]
    )
    assert code == 0 and out.stat().st_size > 10_000
    assert "preset 'mri'" in capsys.readouterr().out


def test_show_augmentations_reads_an_npz_index_and_rejects_an_anatomy_break(tmp_path, capsys):
    archive = REPO / "data" / "breastmnist_64.npz"
    out = tmp_path / "grid.png"
    assert (
        main(
            [
                "show-augmentations",
                "--preset",
                "ultrasound",
                "--image",
                str(archive),
                "--index",
                "3",
                "--out",
                str(out),
                "--samples",
                "1",
            ]
        )
        == 0
    )
    assert out.is_file()
    code = main(
        [
            "show-augmentations",
            "--preset",
            "chest_xray",
            "--image",
            str(archive),
            "--out",
            str(tmp_path / "x.png"),
            "--overrides",
            '{"vflip": {"_target_": "RandFlipd", "prob": 0.5, "spatial_axis": 0}}',
        ]
    )
    assert code == 2
    assert "--overrides#vflip#spatial_axis" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_show_augmentations_is_a_medaug_verb():
    result = subprocess.run(
        [sys.executable, "-m", "medaug.cli", "show-augmentations", "--help"], capture_output=True, text=True, cwd=REPO
    )
    assert result.returncode == 0 and "--preset" in result.stdout and "--image" in result.stdout
