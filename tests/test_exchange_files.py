"""TorchScript and ONNX files of our network reproduce its logits; onnxruntime as an inference backend
stays exact through our tiler."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core.exchange.opening import load_model
from napari_unet.core.network.unet import UNet, UNetConfig


@pytest.fixture(scope="module")
def real_tile(nuclei_image):
    """A normalised 380 x 380 tile of the real nuclei image (a valid input size)."""
    m = load_model("nuclei")
    stats = m.normalization.stats(nuclei_image)
    t = m.normalization.apply(nuclei_image[None, 40:420, 60:440], stats)
    return torch.from_numpy(np.ascontiguousarray(t))[None]


def _ours(net: UNet, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return net.eval()(x).numpy()


def test_torchscript_file_reproduces_logits(nuclei_model, real_tile, tmp_path):
    from napari_unet.core.exchange.portable import export_torchscript

    path = export_torchscript(nuclei_model, tmp_path / "nuclei.pt")
    loaded = torch.jit.load(str(path))
    with torch.no_grad():
        got = loaded(real_tile).numpy()
        # sizes are not frozen: another valid size and a batch of two
        other = torch.randn(2, 1, 444, 316)
        assert loaded(other).shape == nuclei_model.net(other).shape
    assert np.abs(got - _ours(nuclei_model.net, real_tile)).max() <= 1e-4


def test_onnx_file_reproduces_logits(nuclei_model, real_tile, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_unet.core.exchange.portable import export_onnx
    from napari_unet.core.exchange.runtime import onnx_session

    path = export_onnx(nuclei_model, tmp_path / "nuclei.onnx")
    sess = onnx_session(str(path))
    got = sess.run(None, {"input": real_tile.numpy()})[0]
    diff = np.abs(got - _ours(nuclei_model.net, real_tile)).max()
    assert diff <= 1e-4, diff
    other = np.random.default_rng(0).normal(size=(2, 1, 444, 316)).astype(np.float32)
    assert sess.run(None, {"input": other})[0].shape == (2, 2, 260, 132)


def test_same_padded_net_exports_too(tmp_path):
    from napari_unet.core.exchange.portable import export_torchscript

    torch.manual_seed(1)
    net = UNet(UNetConfig(depth=2, base_channels=4, padding="same")).eval()
    loaded = torch.jit.load(str(export_torchscript(net, tmp_path / "same.pt")))
    x = torch.randn(1, 1, 64, 96)
    with torch.no_grad():
        assert torch.allclose(loaded(x), net(x), atol=1e-5)


def test_export_leaves_the_model_as_it_was(nuclei_model, tmp_path):
    from napari_unet.core.exchange.portable import export_torchscript

    net = nuclei_model.net.train()
    try:
        export_torchscript(nuclei_model, tmp_path / "m.pt")
        assert net.training  # the caller's module is not switched to eval behind its back
    finally:
        net.eval()


def test_onnxruntime_backend_through_the_tiler_equals_torch(nuclei_model, nuclei_image):
    pytest.importorskip("onnxruntime")
    from napari_unet.core.exchange.runtime import onnxruntime_model
    from napari_unet.core.predict.predict2d import predict_image
    from napari_unet.core.segment import segment_image

    onnx_model = onnxruntime_model(nuclei_model)
    img = nuclei_image[:200, :260]
    p_torch = predict_image(img, nuclei_model, device="cpu", tile_size=316)  # 2 x 3 tiles
    p_onnx = predict_image(img, onnx_model, device="cpu", tile_size=316)
    assert np.abs(p_onnx - p_torch).max() <= 1e-4
    # onnxruntime on one large tile equals it on six small ones (the tiler keeps it exact)
    p_big = predict_image(img, onnx_model, device="cpu", tile_size=572)
    assert np.abs(p_big - p_onnx).max() <= 1e-5
    labels = segment_image(img, onnx_model, device="cpu", tile_size=572)
    assert labels.max() > 5
