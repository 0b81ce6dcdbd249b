"""What ``napari-unet train`` starts from (issue 29): the shipped 2D ``nuclei`` model unless told
``--base-model none`` (training from nothing scored F1 0.00 where the nuclei start reached 0.83);
``--volume`` keeps its new 3D U-Net as the default (tests/test_volume_train.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import tifffile
from helpers import DATA

from napari_unet.cli.main import main
from napari_unet.cli.train import DEFAULT_BASE, add_train, base_model_name
from napari_unet.core.exchange.opening import load_model

HUH7 = DATA / "touching-cells-huh7"

pytestmark = pytest.mark.usefixtures("one_thread")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-unet")
    add_train(p.add_subparsers(dest="command"))
    return p


def test_the_default_start_is_nuclei_for_2d_and_a_new_network_for_volumes(capsys):
    args = _parser().parse_args(["train", "--images", "a.tif", "--labels", "b.tif", "-o", "m.safetensors"])
    assert args.base_model is None
    assert DEFAULT_BASE == "nuclei" and base_model_name(args.base_model) == "nuclei"
    assert base_model_name(args.base_model, volume=True) is None  # a new 3D U-Net from --spacing
    for none in ("none", "None", " NONE "):
        assert base_model_name(none) is None and base_model_name(none, volume=True) is None
    assert base_model_name("nuclei3d", volume=True) == "nuclei3d"
    assert base_model_name("my.safetensors") == "my.safetensors"
    with pytest.raises(SystemExit):
        _parser().parse_args(["train", "--help"])
    helptext = " ".join(capsys.readouterr().out.split())  # argparse wraps the lines
    assert "(default: nuclei, the shipped 2D nuclei model" in helptext
    assert "'none': train a new network from scratch" in helptext


@pytest.fixture(scope="module")
def painted(tmp_path_factory):
    d = tmp_path_factory.mktemp("painted")
    img = tifffile.imread(HUH7 / "t20_image.tif")[250:378, 290:418]
    lab = tifffile.imread(HUH7 / "t20_labels.tif")[250:378, 290:418]
    tifffile.imwrite(d / "a.tif", img)
    tifffile.imwrite(d / "a_labels.tif", lab.astype(np.uint16))
    return d


def _train(d: Path, out: Path, *extra: str) -> int:
    return main(["train", "--images", str(d / "a.tif"), "--labels", str(d / "a_labels.tif"),
                 "--steps", "1", "--patch-size", "32", "--batch-size", "1", "--val-fraction", "0",
                 "--device", "cpu", "--seed", "0", "-o", str(out), *extra])


def test_a_training_without_base_model_starts_from_nuclei(painted, tmp_path, capsys):
    out = tmp_path / "default.safetensors"
    assert _train(painted, out) == 0
    assert "fine-tuning the shipped model 'nuclei' (the default" in capsys.readouterr().err
    m = load_model(out)
    assert m.provenance["base_model"]["name"] == "nuclei"
    assert m.config.depth == load_model("nuclei").config.depth

    scratch = tmp_path / "scratch.safetensors"
    assert _train(painted, scratch, "--base-model", "none", "-q") == 0
    assert load_model(scratch).provenance["base_model"] is None


def test_fine_tuning_keeps_the_contracting_path_unless_train_encoder(painted, tmp_path):
    """The recipe for the steps a CPU gives: the base's contracting path is kept (half the step);
    --train-encoder trains it too."""
    base = load_model("nuclei").net.state_dict()
    for extra, changes in (((), False), (("--train-encoder",), True)):
        out = tmp_path / f"m{len(extra)}.safetensors"
        assert _train(painted, out, "-q", *extra) == 0
        m = load_model(out)
        sd = m.net.state_dict()
        down = [k for k in sd if k.startswith("down.")]
        assert down and any(k.startswith("up.") and not np.array_equal(sd[k], base[k]) for k in sd
                            if sd[k].shape == base[k].shape)  # the expanding path learnt
        assert any(not np.array_equal(sd[k], base[k]) for k in down) == changes
        assert m.provenance["training"]["freeze_encoder"] is not changes
