"""Live mode in a real napari viewer: a user paints brightfield cells (a modality no shipped model
knows) and the preview follows; screenshots for docs/widget-finetune.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_live.py [--every 5]

Data: ../shared/data/brightfield-scratch (ndev-sampledata, BSD-3), channel 1 of time point 0. The
"user" paints from its cell labels (channel 3, automatic labels) through the Labels layer's own
edit API, one stroke every ``--every`` seconds: alternately a whole cell (its own id) and a
background scribble. Writes docs/images/live-*.png (a strip of the preview improving) and prints
the preview's F1 on the unpainted cells at each shot.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_live import BG, paint_layer, score_rest, strokes  # noqa: E402  (the simulated user of the benchmark)
from make_screenshots import settle, shot, wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "brightfield-scratch" / "scratch-assay.tif"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--shots", type=float, nargs="+", default=[20, 60, 120])
    args = ap.parse_args()

    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    a = tifffile.imread(DATA)
    img, gt = a[1, 0], a[3, 0].astype(np.int32)
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.add_image(img, name="brightfield")
    _d, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    ft.image.value = "brightfield"
    ft.base_model.value = "nuclei"
    ft.device.value = "cpu"
    ft.background_label.value = BG
    ft.live.new_labels.native.click()
    layer = viewer.layers["brightfield painting"]
    viewer.reset_view()
    plan = strokes(gt, int(max(args.shots) / args.every) + 2)

    def stroke(k: int) -> None:
        paint_layer(layer, *plan[k])

    stroke(0)
    stroke(1)
    ft.live.live.value = True
    t0 = time.perf_counter()
    k = 2
    for when in sorted(args.shots):
        while time.perf_counter() - t0 < when:
            if k < len(plan) and k * args.every <= time.perf_counter() - t0:
                stroke(k)
                k += 1
            settle(app, 0.1)
        last = ft.live._last
        f1 = None
        if last is not None:  # the preview covers the box in view
            y0, y1, x0, x1 = last.box
            f1 = score_rest(last.labels, gt[y0:y1, x0:x1], np.asarray(layer.data)[y0:y1, x0:x1])
        print(f"{when:.0f} s: {k} strokes, preview of step {None if last is None else last.step}, "
              f"F1 on the unpainted cells {f1}; status: {ft.status.text()!r}", flush=True)
        shot(viewer, app, f"live-{int(when)}s.png")
    ft.live.live.value = False
    wait(app, lambda: ft.live.session is None, timeout=600)
    print("kept:", ft.status.text())
    shot(viewer, app, "live-stopped.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
