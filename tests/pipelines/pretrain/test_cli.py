"""``medaug pretrain FOLDER``: a checkpoint a bundle loads with ``pretrained_path``, the files that
cannot be read listed beside it, and a clear exit 2 for an empty folder or an unknown classifier."""

import csv

import numpy as np
from PIL import Image

from medaug.cli import EXIT_OK, EXIT_USAGE, main
from medaug.models import build_classifier, load_pretrained


def test_pretrain_a_folder_into_a_checkpoint_the_classifier_loads(tmp_path, capsys):
    folder = tmp_path / "scans"
    (folder / "day1").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48), dtype=np.uint8)).save(folder / "day1" / f"{i}.png")
    (folder / "broken.dcm").write_bytes(b"not a dicom")
    out = tmp_path / "models" / "pretrained.pt"
    args = ["pretrain", str(folder), "--out", str(out), "--classifier", "small_cnn", "--image-size", "16", "16"]
    assert main([*args, "--steps", "1", "--batch-size", "2", "--num-classes", "3", "--no-progress"]) == EXIT_OK
    assert "on 3 images" in capsys.readouterr().out
    report = load_pretrained(build_classifier("small_cnn", 1, 3, (16, 16)), out)
    assert report == {"missing": [], "unexpected": [], "mismatched": []}
    with open(out.with_name("pretrained_skipped.csv")) as handle:
        assert [row["path"] for row in csv.DictReader(handle)] == [str(folder / "broken.dcm")]
    assert out.with_suffix(".json").is_file() and sorted(p.name for p in out.parent.iterdir()) == [
        "pretrained.json",
        "pretrained.pt",
        "pretrained_skipped.csv",
    ]


def test_an_empty_folder_and_an_unknown_classifier_exit_2_saying_why(tmp_path, capsys):
    out = tmp_path / "pretrained.pt"
    assert main(["pretrain", str(tmp_path), "--out", str(out), "--no-progress"]) == EXIT_USAGE
    assert "0 usable image(s)" in capsys.readouterr().err
    assert main(["pretrain", str(tmp_path), "--out", str(out), "--classifier", "resnt18"]) == EXIT_USAGE
    assert "did you mean 'resnet18'?" in capsys.readouterr().err
    assert not out.exists()
