"""Fine-tune on brightfield cells in a real napari viewer (a modality no shipped model knows), then
segment a later frame with the new model; screenshots for docs/widget-finetune.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_brightfield.py [--minutes 2]

Data: ../shared/data/brightfield-scratch (ndev-sampledata, BSD-3): channel 1 (oblique brightfield)
of time points 0 and 1 with their cell labels (channel 3, automatic labels) as two painted pairs;
time point 5 is segmented. Writes docs/images/finetune-brightfield-*.png and prints the scores of
the result against the labels of time point 5.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_screenshots import _show_dock, shot, wait  # noqa: E402  (the same helpers)

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"  # where make_screenshots.shot writes
DATA = ROOT.parent / "shared" / "data" / "brightfield-scratch" / "scratch-assay.tif"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=2.0)
    ap.add_argument("--save", default=None, metavar="MODEL",
                    help="also write the fine-tuned model to this file (Save model…)")
    args = ap.parse_args()

    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_unet.core.metrics import foreground_iou, instance_f1

    a = tifffile.imread(DATA)
    OUT.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    for t in (0, 1):
        viewer.add_image(a[1, t], name=f"brightfield t{t}", translate=(t * 230, 0))
        viewer.add_labels(a[3, t].astype(np.int32), name=f"cells t{t}", translate=(t * 230, 0),
                          opacity=0.45)
    viewer.add_image(a[1, 5], name="brightfield t5", translate=(460, 0))
    _d, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune", tabify=True)
    ft.settings.base_model.value = "nuclei"
    ft.settings.device.value = "cpu"
    ft.settings.minutes.value = args.minutes
    ft.settings.steps.value = 0
    for t in (0, 1):
        ft.image.value, ft.labels.value = f"brightfield t{t}", f"cells t{t}"
        ft.add_pair.native.click()
    viewer.reset_view()
    ft.train_button.native.click()
    wait(app, lambda: ft.progress_bar.value() >= ft.progress_bar.maximum() // 2 or not ft.running)
    shot(viewer, app, "finetune-brightfield-training.png")
    wait(app, lambda: not ft.running)
    print("fine-tune status:", ft.status.text())
    if args.save:
        print("saved", ft.save(args.save))
    shot(viewer, app, "finetune-brightfield-done.png")

    _show_dock(viewer, seg)
    seg.images.value = ["brightfield t5"]
    seg.output.value = "instances"
    seg.device.value = "cpu"
    seg.run_button.native.click()
    wait(app, lambda: not seg.running and seg.status.text().startswith(("added", "Done")), timeout=600)
    for t in (0, 1):
        viewer.layers[f"cells t{t}"].visible = False
    result = viewer.layers["brightfield t5 instances"]
    result.opacity = 0.5
    viewer.camera.center = (460 + 105, 288)
    viewer.camera.zoom = 2.2
    shot(viewer, app, "finetune-brightfield-result.png")
    pred, gt = np.asarray(result.data), a[3, 5]
    print(f"t5: {int(pred.max())} objects (labels: {len(np.unique(gt)) - 1}), F1@0.5 "
          f"{instance_f1(pred, gt):.3f}, foreground IoU {foreground_iou(pred, gt):.3f}")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
