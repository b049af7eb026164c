"""``medaug show-corruptions``: a preset's robustness suite drawn on one image, one row per corruption
and one column per severity (0 = clean .. 5), each cell labelled with its physical parameter."""

import torch
from monai.data import MetaTensor

from medaug.cli import main
from medaug.pipelines.train import corruption_rows
from medaug.transforms.corruptions import Corruptd, suite_for
from tests.conftest import BREAST_64


def test_the_grid_has_a_row_per_corruption_and_a_column_per_severity_labelled_with_its_parameter():
    suite = suite_for("ultrasound", ["jpeg", "gamma"])
    image = MetaTensor(torch.linspace(0, 1, 32 * 32).reshape(1, 32, 32), meta={"filename_or_obj": "a/b.png"})
    rows = corruption_rows(suite, image)
    assert [name for name, _ in rows] == ["jpeg", "gamma"]
    for (name, cells), corruption in zip(rows, suite):
        assert [label for label, _ in cells] == [f"s{k}: {corruption.describe(k)}" for k in range(6)]
        assert cells[0][0] == "s0: clean" and (cells[0][1] == image[0].numpy()).all()
        # each cell is the image as the evaluation corrupts it (seeded by its reference)
        scored = Corruptd("image", name, 3)({"image": image.clone()})["image"]
        assert (cells[3][1] == scored[0].numpy()).all() and not (cells[3][1] == image[0].numpy()).all()


def test_show_corruptions_writes_the_grid_of_a_preset_suite_from_an_npz_image(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(
        ["show-corruptions", "--preset", "ultrasound", "--image", str(BREAST_64), "--index", "3"]
        + ["--corruptions", "jpeg", "speckle", "--size", "32", "32", "--out", str(out)]
    )
    assert code == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert "2 corruptions of preset 'ultrasound'" in capsys.readouterr().out
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"], "written atomically, no temporary left"


def test_an_unknown_corruption_is_a_usage_error_listing_the_valid_ones(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code = main(["show-corruptions", "--image", str(BREAST_64), "--corruptions", "jpeg", "jpg", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--corruptions: unknown corruption 'jpg'" in err
    assert "defocus_blur" in err and "xray_dose" in err  # the known names are listed
    assert not out.exists()
