"""Messages about the painting name the user's inputs (issue 29): by the names the caller gives
(layer or file names), else by their place ("image 2 of 3", never "image 0"), and never speak of a
region where none was given (the whole frame)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

from napari_unet.cli.main import main
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNetConfig
from napari_unet.core.train import prepare_data
from napari_unet.core.train.annotations import AnnotationError, labels_to_target

CFG = UNetConfig(depth=2, base_channels=4)
IMG = np.random.default_rng(0).integers(0, 200, (32, 32)).astype(np.uint8)


def painted() -> np.ndarray:
    lab = np.zeros((32, 32), np.int32)
    lab[4:10, 4:10] = 1
    return lab


def _prepare(images, labels, masks=None, **kw):
    return prepare_data(images, labels, masks, config=CFG, normalization=Normalization(),
                        mode="binary", **kw)


def _message(images, labels, masks=None, **kw) -> str:
    with pytest.raises(AnnotationError) as info:
        _prepare(images, labels, masks, **kw)
    return str(info.value)


def test_messages_name_the_pair_by_the_callers_names_else_by_its_place():
    empty = np.zeros((32, 32), np.int32)
    three = ([IMG] * 3, [painted(), empty, painted()])
    msg = _message(*three)
    assert msg.startswith("image 2 of 3: the labels have no painted pixel"), msg
    msg = _message(*three, names=["'a' on 'A'", "'cells labels' on 'cells'", "'c' on 'C'"])
    assert msg.startswith("'cells labels' on 'cells': the labels have no painted pixel"), msg
    # one image is not numbered: no "image 0"
    msg = _message(IMG, empty)
    assert "image 0" not in msg and "image 1" not in msg and msg.startswith("the labels have")
    # a wrong channel count, on a named pair of a stack plane
    rgb = np.stack([IMG] * 3)
    msg = _message([IMG, rgb], [painted(), painted()], channel_axis=None, names=["x", "colour.tif"])
    assert "image" not in msg.split(":")[0] and "colour.tif" in msg, msg
    # a stack: the plane is said with the pair
    stack_lab = np.zeros((2, 32, 32), np.int32)
    stack_lab[1] = -painted()
    msg = _message(np.stack([IMG, IMG]), stack_lab, names=["'nuclei labels' on 'nuclei'"])
    assert msg.startswith("'nuclei labels' on 'nuclei', plane 1: labels have negative values"), msg
    # the names go with the error wherever it is re-raised or pickled
    err = AnnotationError("the labels have no painted pixel", pair=1, pairs=2)
    assert str(err.named(["a.tif", "b.tif"])) == "b.tif: the labels have no painted pixel"
    assert str(pickle.loads(pickle.dumps(err))) == str(err) == "image 2 of 2: the labels have no painted pixel"


def test_the_whole_frame_is_never_called_a_region():
    empty = np.zeros((32, 32), np.int32)
    # scribbles on the whole frame (a background label, no mask) and nothing painted
    for kw in ({"background_label": 9}, {}):
        msg = _message(IMG, empty, **kw)
        assert "region" not in msg and "mask" not in msg and "no painted pixel" in msg, msg
    msg = _message(IMG, painted(), background_label=9)  # objects, no background scribble
    assert "no background" in msg and "region" not in msg and "mask" not in msg and "9" in msg, msg
    whole = np.ones((32, 32), np.int32)
    msg = _message(IMG, whole)
    assert "only one class" in msg and "region" not in msg and "mask" not in msg, msg
    # with a region given, an empty one is said to be the region
    msg = _message(IMG, empty, np.zeros((32, 32), bool))
    assert "region" in msg and "empty" in msg, msg
    with pytest.raises(AnnotationError, match="region") as info:
        labels_to_target(empty, np.zeros((32, 32), bool))
    assert "mask" not in str(info.value)


def test_the_cli_names_the_files(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "cells.tif", IMG)
    tifffile.imwrite(tmp_path / "cells_painted.tif", np.zeros((32, 32), np.uint16))
    tifffile.imwrite(tmp_path / "other.tif", IMG)
    tifffile.imwrite(tmp_path / "other_painted.tif", painted().astype(np.uint16))
    argv = ["train", "--images", str(tmp_path / "other.tif"), str(tmp_path / "cells.tif"),
            "--labels", str(tmp_path / "other_painted.tif"), str(tmp_path / "cells_painted.tif"),
            "--base-model", "none", "--device", "cpu", "-q", "-o", str(tmp_path / "m.safetensors")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'cells_painted.tif'} (labels of {tmp_path / 'cells.tif'}): " in err, err
    assert "no painted pixel" in err and "image 2" not in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()
