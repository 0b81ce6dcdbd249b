"""Zero padding beyond the image border: no foreground frame on real data, tiled equals whole, and
never silent (the CLI and the Segment widget say what it costs a model trained with mirrored
borders). Issue 14: silent wrong results."""

from __future__ import annotations

import numpy as np

from napari_unet.core.predict.predict2d import predict_image
from napari_unet.core.segment import segment_image


def _frame(sem: np.ndarray, k: int = 8) -> list[float]:
    return [float((e == 1).mean()) for e in (sem[:k], sem[-k:], sem[:, :k], sem[:, -k:])]


def test_zero_padding_puts_no_foreground_frame_on_the_dsb_sample(nuclei_model, nuclei_image):
    """Exact zeros beyond the border (the 1st percentile, flat) were answered by the shipped model
    with a foreground frame ~8 px wide: 93 nuclei instead of 117, the border ones merged."""
    mirror = segment_image(nuclei_image, nuclei_model, output="semantic", device="cpu")
    zero = segment_image(nuclei_image, nuclei_model, output="semantic", padding="zero", device="cpu")
    # foreground in the 8-px frame along each border: 0.93-0.99 before, 0.00-0.18 with mirroring
    assert max(_frame(zero)) < 0.3, (_frame(mirror), _frame(zero))
    n_mirror = segment_image(nuclei_image, nuclei_model, device="cpu").max()
    n_zero = segment_image(nuclei_image, nuclei_model, padding="zero", device="cpu").max()
    assert abs(int(n_zero) - int(n_mirror)) <= 5, (n_mirror, n_zero)


def test_zero_padding_tiled_equals_whole_image_on_real_data(nuclei_model, nuclei_image):
    img = nuclei_image[:240, :200]
    whole = predict_image(img, nuclei_model, padding="zero", tile_size=1024, device="cpu")
    tiled = predict_image(img, nuclei_model, padding="zero", tile_size=300, device="cpu")  # 6 tiles
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_zero_padding_is_not_silent(tmp_path, capsys, make_napari_viewer, qtbot, tiny_model_path,
                                    nuclei_image, notifications):
    """Every model trained here saw mirrored borders: zero padding says what it costs (CLI stderr,
    a widget warning), mirror padding says nothing; a model trained with zero context would not."""
    import tifffile

    from napari_unet.cli.main import main
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.predict.padding import zero_padding_note

    src = tmp_path / "img.tif"
    tifffile.imwrite(src, nuclei_image[:128, :128])
    assert main(["segment", str(src), "--model", str(tiny_model_path), "--padding", "zero",
                 "--output", str(tmp_path / "z.tif"), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    assert "warning: zero padding gives this model a context it never saw" in err
    assert main(["segment", str(src), "--model", str(tiny_model_path), "--output",
                 str(tmp_path / "m.tif"), "--device", "cpu"]) == 0
    assert "zero padding" not in capsys.readouterr().err
    m = load_model(tiny_model_path)
    assert str(m.config.halo) in zero_padding_note(m)
    m.provenance = {**(m.provenance or {}), "context": "zero"}
    assert zero_padding_note(m) is None

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image[:128, :128], name="nuclei")
    _d, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    assert seg.load_model_file(str(tiny_model_path)) is not None
    seg.images.value = ["nuclei"]
    seg.padding.value = "zero"
    seg.device.value = "cpu"
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=120_000)
    warned = [str(n.message) for n in notifications if "zero padding" in str(n.message)]
    assert warned and "mirror padding" in warned[0]
