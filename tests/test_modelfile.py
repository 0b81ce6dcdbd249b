"""Model files: atomic saving, safe loading, clear errors for corrupt or foreign files."""

import json
import os

import numpy as np
import pytest
import torch
from helpers import tiny_model

from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import (
    ModelFileError,
    Postprocessing,
    UNetModel,
    read_header,
    save_model,
)
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNet, UNetConfig


def _model(**kw):
    torch.manual_seed(1)
    return UNetModel(UNet(UNetConfig(depth=2, base_channels=4, num_classes=3,
                                     class_names=("bg", "edge", "cell"), **kw)),
                     normalization=Normalization("percentile", 2.0, 99.0),
                     postprocessing=Postprocessing((2,), (1,), 5, "watershed"),
                     name="tiny", provenance={"steps": 12, "data": ["a.tif"]})


def test_round_trip_gives_identical_output(tmp_path):
    m = _model()
    path = save_model(m, tmp_path / "m")
    assert path.name == "m.safetensors"
    m2 = load_model(path)
    x = torch.randn(1, 1, 44, 44)
    m.net.eval()
    with torch.no_grad():
        assert torch.equal(m.net(x), m2.net(x))
    assert m2.config == m.config
    assert m2.normalization == m.normalization
    assert m2.postprocessing == m.postprocessing
    assert m2.provenance == {"steps": 12, "data": ["a.tif"]}
    assert m2.name == "tiny" and m2.source == str(path)
    assert not m2.net.training


def test_save_is_atomic_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = save_model(_model(), tmp_path / "m.safetensors")
    before = path.read_bytes()
    import safetensors.torch

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        save_model(_model(), path)
    assert path.read_bytes() == before  # the old file is intact
    assert os.listdir(tmp_path) == ["m.safetensors"]


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="no model file"):
        load_model(tmp_path / "nope.safetensors")


def test_corrupt_file_error_names_file(tmp_path):
    p = tmp_path / "bad.safetensors"
    path = save_model(_model(), p)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFileError, match="bad.safetensors"):
        load_model(path)
    p2 = tmp_path / "garbage.safetensors"
    p2.write_bytes(b"\x00\x01not a model at all")
    with pytest.raises(ModelFileError, match="garbage.safetensors"):
        load_model(p2)


def test_foreign_files_are_rejected_without_unpickling(tmp_path):
    # a pickle-based torch checkpoint: must not be unpickled, must give a clear error
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    p = tmp_path / "evil.pt"
    torch.save({"x": Evil()}, p)
    with pytest.raises(ModelFileError, match="evil.pt"):
        load_model(p)
    assert not marker.exists()
    # a safetensors file that is not ours
    from safetensors.torch import save_file

    q = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(q))
    with pytest.raises(ModelFileError, match="not a napari-unet model"):
        load_model(q)


def test_newer_format_and_mismatched_weights(tmp_path):
    from safetensors.torch import save_file

    m = _model()
    header = m.header()
    header["format_version"] = 99
    p = tmp_path / "future.safetensors"
    save_file({k: v.contiguous() for k, v in m.net.state_dict().items()}, str(p),
              metadata={"napari_unet": json.dumps(header)})
    with pytest.raises(ModelFileError, match="update napari-unet"):
        load_model(p)
    header["format_version"] = 1
    header["architecture"]["base_channels"] = 8
    q = tmp_path / "mismatch.safetensors"
    save_file({k: v.contiguous() for k, v in m.net.state_dict().items()}, str(q),
              metadata={"napari_unet": json.dumps(header)})
    with pytest.raises(ModelFileError, match="do not match"):
        load_model(q)


def test_read_header_without_weights(tmp_path):
    path = save_model(_model(), tmp_path / "m")
    h = read_header(path)
    assert h["architecture"]["num_classes"] == 3
    assert h["format"] == "napari-unet"


def test_copy_is_independent():
    m = _model()
    c = m.copy()
    with torch.no_grad():
        next(c.net.parameters()).add_(1.0)
    assert not torch.equal(next(c.net.parameters()), next(m.net.parameters()))
    assert np.isfinite(next(m.net.parameters()).detach().numpy()).all()


def test_a_model_file_with_nan_weights_is_refused_at_load(tmp_path):
    m = tiny_model(eval_mode=True)
    with torch.no_grad():
        m.net.head.weight[0, 0] = float("nan")
    path = save_model(m, tmp_path / "nan.safetensors")
    with pytest.raises(ModelFileError, match="NaN or infinite.*head.weight"):
        load_model(path)
