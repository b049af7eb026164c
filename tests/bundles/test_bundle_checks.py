"""What the MONAI model-zoo CI checks of a bundle, for every bundle here: required files, version in
the changelog, metadata against the (local copy of the) schema, network in/out shapes against
``network_data_format``, and TorchScript export of a checkpoint."""

import json
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser, ckpt_export, verify_metadata, verify_net_in_out

from tests.conftest import REPO

BUNDLES = sorted(p for p in (REPO / "bundles").iterdir() if (p / "configs" / "metadata.json").is_file())
SCHEMA = REPO / "tests" / "data" / "meta_schema_20240725.json"


def test_there_is_a_default_bundle():
    assert REPO / "bundles" / "imbalance_baselines" in BUNDLES


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_multi_gpu_overlay_overrides_sections_that_train_json_has(bundle):
    """Model-zoo convention: multi_gpu_train.json only overrides what DDP changes, so every key it
    sets sits in a section of train.json (a renamed section would silently train without DDP)."""
    train = json.loads((bundle / "configs" / "train.json").read_text())
    overlay = json.loads((bundle / "configs" / "multi_gpu_train.json").read_text())
    for key in overlay:
        node = train
        for part in key.split("#")[:-1]:
            assert isinstance(node, dict) and part in node, (
                f"{bundle.name}: multi_gpu_train.json sets {key!r}, but train.json has no {part!r}"
            )
            node = node[part]
    for key in (
        "network",
        "train#sampler",
        "validate#sampler",
        "train#trainer#train_handlers",
        "validate#evaluator#val_handlers",
        "initialize",
        "run",
        "finalize",
    ):
        assert key in overlay, f"{bundle.name}: multi_gpu_train.json lacks {key}"


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_bundle_layout_and_changelog(bundle):
    for required in (
        "configs/metadata.json",
        "configs/inference.json",
        "configs/train.json",
        "configs/smoke.json",
        "configs/evaluate.json",
        "configs/multi_gpu_train.json",
        "configs/logging.conf",
        "docs/README.md",
        "LICENSE",
    ):
        assert (bundle / required).is_file(), f"{bundle.name} lacks {required}"
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["version"] in meta["changelog"]
    train = json.loads((bundle / "configs" / "train.json").read_text())
    for key in ("bundle_root", "device", "dataset_dir", "output_dir", "seed", "network_def", "val_interval"):
        assert key in train, f"{bundle.name}/configs/train.json lacks {key}"
    for section, key in (("train", "trainer"), ("train", "dataset"), ("train", "handlers"), ("validate", "evaluator")):
        assert key in train[section]
    assert "data" in train["train"]["dataset"]


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_verify_metadata_against_the_local_schema(bundle):
    # monai.bundle's own verify_metadata, called in-process (a subprocess per bundle costs seconds);
    # it raises jsonschema's ValidationError on a bad field. The CLI form is tested below.
    verify_metadata(meta_file=str(bundle / "configs" / "metadata.json"), filepath=str(SCHEMA))


def test_verify_metadata_names_a_missing_field(tmp_path):
    meta = json.loads((BUNDLES[0] / "configs" / "metadata.json").read_text())
    del meta["task"]
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "monai.bundle",
            "verify_metadata",
            "--meta_file",
            str(tmp_path / "metadata.json"),
            "--filepath",
            str(SCHEMA),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0 and "'task' is a required property" in result.stdout + result.stderr


@pytest.mark.parametrize("bundle", BUNDLES, ids=lambda p: p.name)
def test_network_in_out_and_torchscript_export(bundle, tmp_path):
    common = {
        "meta_file": str(bundle / "configs" / "metadata.json"),
        "config_file": str(bundle / "configs" / "inference.json"),
        "bundle_root": str(bundle),
    }
    verify_net_in_out("network_def", **common)  # raises on a shape that disagrees with the metadata
    parser = ConfigParser()
    parser.read_config(bundle / "configs" / "inference.json")
    parser["bundle_root"] = str(bundle)
    net = parser.get_parsed_content("network_def").eval()
    torch.save({"model": net.state_dict()}, tmp_path / "model.pt")
    ckpt_export(
        "network_def",
        filepath=str(tmp_path / "model.ts"),
        ckpt_file=str(tmp_path / "model.pt"),
        key_in_ckpt="model",
        **common,
    )
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    image = meta["network_data_format"]["inputs"]["image"]
    x = torch.rand(2, image["num_channels"], *image["spatial_shape"])
    scripted = torch.jit.load(tmp_path / "model.ts")
    torch.testing.assert_close(scripted(x), net(x))
