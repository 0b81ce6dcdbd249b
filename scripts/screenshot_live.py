"""Live mode in a real napari viewer: a user paints brightfield cells (a modality no shipped model
knows) and the preview follows; screenshots for docs/widget-finetune.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_live.py [--every 5]

Data: ../shared/data/brightfield-scratch (ndev-sampledata, BSD-3), channel 1 of time point 0. The
"user" paints from its cell labels (channel 3, automatic labels) through the Labels layer's own
edit API, one stroke every ``--every`` seconds: alternately a whole cell (its own id) and a
background scribble. Writes docs/images/live-*.png (a strip of the preview improving), docs/images/live-preview.gif
(the canvas every ``--gif-every`` seconds, a frame each) and prints the preview's F1 on the
unpainted cells at each shot.
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


def canvas_grab(viewer) -> np.ndarray:
    """The canvas as the window shows it (a grab of the window, cropped to the canvas widget):
    napari's offscreen ``canvas_only`` render left part of the image black under Xvfb."""
    from qtpy.QtCore import QPoint

    win = viewer.window._qt_window
    canvas = viewer.window._qt_viewer.canvas.native
    full = viewer.screenshot(canvas_only=False, flash=False)[..., :3]
    scale = full.shape[1] / win.width()
    p = canvas.mapTo(win, QPoint(0, 0))
    y0, x0 = round(p.y() * scale), round(p.x() * scale)
    return full[y0:y0 + round(canvas.height() * scale), x0:x0 + round(canvas.width() * scale)]


def write_gif(frames: list, path: Path, width: int = 560) -> None:
    """The frames cropped to where the image is drawn (the canvas's black margins left out), each
    with its caption above, one adaptive palette each (no dithering noise in the flat regions)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=15)
    out = []
    for a, caption in frames:  # the canvas may change size while the window settles: each its own crop
        drawn = a.max(axis=-1) > 0
        rows, cols = np.flatnonzero(drawn.any(1)), np.flatnonzero(drawn.any(0))
        im = Image.fromarray(np.ascontiguousarray(a[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]))
        im = im.resize((width, round(width * im.height / im.width)), Image.Resampling.LANCZOS)
        page = Image.new("RGB", (width, im.height + 24), (0, 0, 0))
        page.paste(im, (0, 24))
        ImageDraw.Draw(page).text((6, 3), caption, fill=(255, 255, 255), font=font)
        out.append(page.quantize(colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE))
    out[0].save(path, save_all=True, append_images=out[1:], duration=700, loop=0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--shots", type=float, nargs="+", default=[20, 60, 120])
    ap.add_argument("--gif-every", type=float, default=5.0)
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
    settle(app, 1.0)  # the window takes its final size before the camera fits the image
    viewer.reset_view()
    plan = strokes(gt, int(max(args.shots) / args.every) + 2)

    def stroke(k: int) -> None:
        paint_layer(layer, *plan[k])

    stroke(0)
    stroke(1)
    ft.live.live.value = True
    t0 = time.perf_counter()
    k = 2
    frames: list = []

    def frame() -> None:  # the canvas, with the time and the strokes so far written on it
        step = None if ft.live._last is None else ft.live._last.step
        frames.append((canvas_grab(viewer),
                       f"{time.perf_counter() - t0:.0f} s after Live on, {k} strokes, preview of step {step}"))

    for when in sorted(args.shots):
        while time.perf_counter() - t0 < when:
            if k < len(plan) and k * args.every <= time.perf_counter() - t0:
                stroke(k)
                k += 1
            if len(frames) * args.gif_every <= time.perf_counter() - t0:
                frame()
            settle(app, 0.1)
        last = ft.live._last
        f1 = None
        if last is not None:  # the preview covers the box in view
            y0, y1, x0, x1 = last.box
            f1 = score_rest(last.labels, gt[y0:y1, x0:x1], np.asarray(layer.data)[y0:y1, x0:x1])
        print(f"{when:.0f} s: {k} strokes, preview of step {None if last is None else last.step}, "
              f"F1 on the unpainted cells {f1}; status: {ft.status.text()!r}", flush=True)
        shot(viewer, app, f"live-{int(when)}s.png")
    frame()
    gif = ROOT / "docs" / "images" / "live-preview.gif"
    write_gif(frames, gif)
    print("wrote", gif.relative_to(ROOT), f"({len(frames)} frames)")
    ft.live.live.value = False
    wait(app, lambda: ft.live.session is None, timeout=600)
    print("kept:", ft.status.text())
    shot(viewer, app, "live-stopped.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
