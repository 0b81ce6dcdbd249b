"""``napari-unet export``, run in-process through ``napari_unet.cli.main.main``."""

from __future__ import annotations

import socket
import zipfile

import numpy as np
import pytest
import torch

from napari_unet.cli.main import main


def test_export_torchscript_of_a_shipped_model(tmp_path, capsys):
    assert main(["export", "nuclei", "--format", "torchscript", "--output", str(tmp_path / "nuclei")]) == 0
    path = tmp_path / "nuclei.pt"  # suffix added
    assert f"wrote {path}" in capsys.readouterr().out
    from napari_unet.core.exchange.opening import load_model

    x = torch.randn(1, 1, 188, 188)
    with torch.no_grad():
        # 1e-4: the export issue's tolerance (TorchScript and ONNX reproduce our logits to 1e-4)
        assert torch.allclose(torch.jit.load(str(path))(x), load_model("nuclei").net(x), atol=1e-4,
                              rtol=0)


def test_export_onnx_of_a_model_file(tiny_model_path, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.exchange.runtime import onnx_session

    out = tmp_path / "tiny.onnx"
    assert main(["export", str(tiny_model_path), "--format", "onnx", "-o", str(out), "-q"]) == 0
    net = load_model(tiny_model_path).net
    n = net.config.input_size(40)
    x = np.random.default_rng(0).normal(size=(1, 1, n, n)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
    # 1e-4, the export issue's tolerance: onnxruntime's kernels sum in another order than torch's
    # (9.5e-6 to 1.05e-5 on an AVX-512 CPU, 1.14e-5 seen on an AVX2 one: 1e-5 failed at random)
    assert np.abs(onnx_session(str(out)).run(None, {"input": x})[0] - ref).max() <= 1e-4


def test_export_bioimageio_package_offline(tiny_model_path, tmp_path, monkeypatch):
    pytest.importorskip("bioimageio.spec")
    pytest.importorskip("onnx")

    def refuse(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    out = tmp_path / "tiny.zip"
    assert main(["export", str(tiny_model_path), "--output", str(out), "--author", "A. Biologist", "-q"]) == 0
    with zipfile.ZipFile(out) as z:
        names = set(z.namelist())
    assert {"rdf.yaml", "weights.pt", "weights.onnx", "weights_torchscript.pt", "unet_architecture.py",
            "test_input.npy", "test_output.npy", "cover.png", "README.md", "tiny.safetensors"} <= names
    from napari_unet.core.exchange.opening import load_model

    back = load_model(out)
    orig = load_model(tiny_model_path)
    assert all(torch.equal(t, back.net.state_dict()[k]) for k, t in orig.net.state_dict().items())


def test_export_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "no-such-model", "--format", "torchscript", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "napari-unet export: error:" in err and "no-such-model" in err
    (tmp_path / "bad.tif").write_bytes(b"not a tiff")
    pytest.importorskip("bioimageio.spec")
    assert main(["export", "nuclei", "-o", str(tmp_path / "p"), "--sample", str(tmp_path / "bad.tif")]) == 2
    assert "sample image" in capsys.readouterr().err


def test_segment_with_the_onnxruntime_backend_equals_torch(tmp_path, nuclei_image):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import tifffile

    src = tmp_path / "crop.tif"
    tifffile.imwrite(src, nuclei_image[:200, :240])
    outs = {}
    for backend in ("torch", "onnxruntime"):
        out = tmp_path / f"{backend}.tif"
        assert main(["segment", str(src), "-o", str(out), "--output-type", "probabilities", "--device", "cpu",
                     "--backend", backend, "-q"]) == 0
        outs[backend] = tifffile.imread(out)
    assert np.abs(outs["torch"] - outs["onnxruntime"]).max() <= 1e-4


def test_onnxruntime_backend_refuses_other_devices_and_clusters(tmp_path, capsys, nuclei_image):
    import tifffile

    src = tmp_path / "crop.tif"
    tifffile.imwrite(src, nuclei_image[:64, :64])
    assert main(["segment", str(src), "-o", str(tmp_path / "o"), "--backend", "onnxruntime",
                 "--device", "cpu", "--workers", "2", "-q"]) == 2
    assert "--workers" in capsys.readouterr().err
