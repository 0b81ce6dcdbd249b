"""Export… next to Save in the Fine-tune widget, and Open model file with a .zip, in a real viewer."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
import torch

pytest.importorskip("napari_unet.core.train")

PLUGIN = "napari-unet"
TIMEOUT = 120_000  # ms


def test_export_button_writes_a_package_that_opens_again(make_napari_viewer, qtbot, tiny_model_path,
                                                         nuclei_image, tmp_path, notifications):
    pytest.importorskip("bioimageio.spec")
    pytest.importorskip("onnx")
    from napari_unet.core.exchange.opening import load_model

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    export = ft.export_control
    # next to Save, disabled until there is a fine-tuned model
    assert export.button.native.parent() is ft.save_button.native.parent()
    assert not export.button.enabled
    ft.image.value = "nuclei"
    assert export.export(str(tmp_path / "none.zip")) is None  # nothing fine-tuned yet: an error, no worker
    assert ft.status.text() == "Nothing to export yet: fine-tune a model first."  # and it stays there
    # as after a fine-tune (the training itself is tested in test_widgets_finetune.py)
    ft.model, ft.model_name = load_model(tiny_model_path), "tiny fine-tuned"
    ft.set_running(False)
    assert export.button.enabled and ft.save_button.enabled
    worker = export.export(str(tmp_path / "tiny-ft.zip"))
    assert not export.button.enabled
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    qtbot.waitUntil(lambda: export.worker is None, timeout=TIMEOUT)
    assert export.button.enabled
    path = tmp_path / "tiny-ft.zip"
    assert ft.status.text() == f"Exported 'tiny fine-tuned' to {path}"
    with zipfile.ZipFile(path) as z:
        test_input = np.load(z.open("test_input.npy"))
    # the test tensors come from the fine-tune image (its centre, mirrored out to the test size)
    from napari_unet.core.exchange.bioimageio import _test_crop

    assert np.array_equal(test_input[0], _test_crop(nuclei_image, 1, test_input.shape[-1]))
    assert any("Exported" in str(getattr(n, "message", n)) for n in notifications)
    # Open model file accepts the package; it comes back as the same network
    assert seg.load_model_file(str(path)) == "tiny-ft"
    back = load_model(path)
    assert all(torch.equal(t, back.net.state_dict()[k]) for k, t in ft.model.net.state_dict().items())

    # TorchScript from the same button (format from the suffix)
    worker = export.export(str(tmp_path / "tiny-ft.pt"))
    with qtbot.waitSignal(worker.finished, timeout=TIMEOUT):
        pass
    assert (tmp_path / "tiny-ft.pt").is_file()


def test_open_model_file_refuses_a_broken_package_with_a_message(make_napari_viewer, tmp_path, notifications):
    viewer = make_napari_viewer()
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    bad = tmp_path / "broken.zip"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    assert seg.load_model_file(str(bad)) is None
    assert any("zip" in str(getattr(n, "message", n)) for n in notifications)
    assert "broken" not in seg.model.choices


def test_a_network_from_another_program_is_not_fine_tuned():
    import threading

    from napari_unet._widgets._train_jobs import train_job
    from napari_unet.core.exchange.portable import scripted
    from napari_unet.core.exchange.runtime import ExternalNet
    from napari_unet.core.modelfile.files import UNetModel
    from napari_unet.core.network.unet import UNet, UNetConfig
    from napari_unet.core.train import TrainConfig

    cfg = UNetConfig(depth=2, base_channels=4)
    foreign = UNetModel(ExternalNet(cfg, scripted(UNet(cfg))), name="foreign")
    job = train_job([], foreign, "foreign", config=TrainConfig(steps=1, lr=1e-3),
                    background_label=None, device="cpu", stop=threading.Event())
    with pytest.raises(ValueError, match="another program"):
        next(job)
