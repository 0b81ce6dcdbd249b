"""Screenshots of the widgets in a real napari viewer, for docs/widget-*.md.

    xvfb-run -a env PYTHONPATH=src python scripts/make_screenshots.py [--steps 40]

Opens the nuclei sample (File > Open Sample), simulates painting (the sample's hand-drawn mask in the
top-left quarter, that quarter marked complete with a rectangle), previews the augmentation, fine-tunes
with the Fine-tune widget, then segments with the Segment widget using the fine-tuned model. The base
model is the shipped ``nuclei`` model when the package has it, else a small untrained U-Net (so the
pictures show the workflow; the labels then come from a short training only).
Writes docs/images/segment-*.png and finetune-*.png.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"


def wait(app, cond, timeout: float = 3600) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.01)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError


def settle(app, seconds: float = 0.5) -> None:
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        app.processEvents()
        time.sleep(0.01)


def shot(viewer, app, name: str) -> None:
    settle(app)
    path = OUT / name
    viewer.screenshot(path=str(path), canvas_only=False, flash=False)
    print("wrote", path.relative_to(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=None,
                    help="fine-tuning steps (default: 30 from the shipped model, 60 from scratch)")
    args = ap.parse_args()

    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.open_sample("napari-unet", "nuclei")
    image = viewer.layers[-1]
    image.name = "nuclei"
    mask = tifffile.imread(ROOT / "tests" / "data" / "nuclei_dsb2018_mask_instances.tif")
    painted = np.zeros_like(mask)
    painted[:256, :256] = mask[:256, :256]
    viewer.add_labels(painted, name="painted")
    viewer.add_shapes([np.array([[0, 0], [0, 255], [255, 255], [255, 0]])],
                      shape_type="rectangle", name="complete region", edge_color="yellow",
                      face_color="transparent", edge_width=3)

    _d, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    if "nuclei" not in seg.registry:
        import torch

        from napari_unet.core.modelfile.files import UNetModel, save_model
        from napari_unet.core.network.unet import UNet, UNetConfig

        torch.manual_seed(0)
        net = UNet(UNetConfig(depth=3, base_channels=8, padding="valid", dropout=0.0))
        path = save_model(UNetModel(net, name="untrained"),
                          Path(tempfile.mkdtemp()) / "untrained.safetensors")
        seg.load_model_file(str(path))
        ft.settings.lr.value = 3e-3  # from scratch: a higher rate than for fine-tuning
    base = seg.model.value
    steps = args.steps or (30 if base == "nuclei" else 60)

    # ---------------------------------------------------------------- fine-tune
    ft.image.value, ft.labels.value, ft.region.value = "nuclei", "painted", "complete region"
    ft.settings.base_model.value = base
    ft.settings.steps.value = steps
    ft.add_pair.native.click()
    ft.preview_button.native.click()
    wait(app, lambda: ft.preview_worker is None)
    viewer.reset_view()
    shot(viewer, app, "finetune-preview.png")
    for name in ("augmented sample", "augmented weight map"):
        viewer.layers[name].visible = False
    ft.train_button.native.click()
    wait(app, lambda: ft.progress_bar.value() >= max(2, steps // 2) or not ft.running)
    shot(viewer, app, "finetune-training.png")
    wait(app, lambda: not ft.running)
    for name in ("augmented sample", "augmented weight map"):
        viewer.layers.remove(name)
    viewer.reset_view()
    shot(viewer, app, "finetune-done.png")

    # ---------------------------------------------------------------- segment
    _show_dock(viewer, seg)
    seg.images.value = ["nuclei"]
    seg.output.value = "instances"
    seg.advanced.expand(animate=False)
    seg.tta.value = True  # the 8-orientation average: the documented way to get the best outlines
    viewer.layers["painted"].visible = False
    viewer.layers["complete region"].visible = False
    seg.run_button.native.click()
    try:
        wait(app, lambda: not seg.running and seg.status.text().startswith(("added", "Done")), timeout=300)
    except TimeoutError:
        print("segment did not finish: running", seg.running, "status", repr(seg.status.text()))
        raise
    settle(app)
    print("segment status:", seg.status.text())
    shot(viewer, app, "segment-instances.png")
    viewer.close()
    return 0


def _show_dock(viewer, widget) -> None:
    from qtpy.QtWidgets import QDockWidget

    parent = widget.parent()
    while parent is not None and not isinstance(parent, QDockWidget):
        parent = parent.parent()
    if parent is not None:
        parent.show()
        parent.raise_()


if __name__ == "__main__":
    raise SystemExit(main())
