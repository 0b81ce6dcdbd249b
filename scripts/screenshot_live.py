"""Live mode in a real napari viewer: a user paints brightfield cells (a modality no shipped model
knows) with napari's own brush, and the preview follows; screenshots for docs/widget-finetune.md.

    xvfb-run -a -s "-screen 0 1600x1000x24" python scripts/screenshot_live.py [--every 5]

Data: ../shared/data/brightfield-scratch (ndev-sampledata, BSD-3), channel 1 of time point 0. The
"user" follows the stroke plan of benchmarks/bench_live.py (``strokes``: alternately a whole cell of
the automatic cell labels, channel 3, with its own id, and a background disk away from the cells),
one planned stroke every ``--every`` seconds, but paints it as a person does: mouse press / move /
release on the canvas with napari's brush (tests/painting.py, imported by putting the repository's
tests/ folder on sys.path): a cell as brush strokes along its rows inside it (``paint_object``),
a background scribble as a short zig-zag drag of the brush with the background label. A stroke
drawn this way takes real time itself (the clock runs on; a planned stroke that is due while the
previous one is still being drawn starts right after it). Writes docs/images/live-*.png (a strip
of the preview improving), docs/images/live-preview.gif (the canvas every ``--gif-every`` seconds,
a frame each; none while a cell is being drawn), prints the preview's F1 on the unpainted cells at
each shot and how long the strokes took. Needs the ``benchmarks`` extra (bench_live imports
scikit-learn) and a Qt binding with QtTest (the ``gui`` extra).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from bench_live import BG, score_rest, strokes  # noqa: E402  (the stroke plan of the benchmark)
from make_screenshots import settle, shot, wait  # noqa: E402
from painting import paint_object, stroke  # noqa: E402  (mouse events on the canvas, napari's brush)

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
    ft.settings.base_model.value = "nuclei"
    ft.settings.device.value = "cpu"
    ft.settings.background_label.value = BG
    ft.live.new_labels.native.click()
    layer = viewer.layers["brightfield painting"]
    settle(app, 1.0)  # the window takes its final size before the camera fits the image
    viewer.reset_view()
    plan = strokes(gt, int(max(args.shots) / args.every) + 2)

    took: list[tuple[str, float]] = []  # (kind, seconds) of each planned stroke drawn

    def paint(k: int) -> None:
        """Planned stroke ``k`` drawn with napari's brush through mouse events on the canvas."""
        sel, value = plan[k]
        t = time.perf_counter()
        if value > BG:  # a whole cell: brush strokes along its rows, inside it
            obj = int(gt[sel][0])
            if ndi.binary_erosion(sel).any():
                paint_object(viewer, layer, gt, obj, value, size=3)
            else:  # too thin to keep a 3-pixel brush inside: a 1-pixel brush along its rows
                ys, xs = np.nonzero(sel)
                for y in np.unique(ys):
                    row = xs[ys == y]
                    stroke(viewer, layer, [(y, row.min()), (y, row.max())], label=value, size=1)
            took.append(("cell", time.perf_counter() - t))
        else:  # a background scribble: a zig-zag of the brush in the planned disk (away from cells)
            ys, xs = np.nonzero(sel)
            cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
            h, w = gt.shape
            pts = [(min(h - 1, max(0, cy + dy)), min(w - 1, max(0, cx + dx)))
                   for dy, dx in ((-2, -3), (2, -1), (-2, 1), (2, 3))]
            stroke(viewer, layer, pts, label=BG, size=3)
            took.append(("background", time.perf_counter() - t))

    paint(0)
    paint(1)
    ft.live.live.value = True
    settle(app, 0.5)  # the preview layer is added above the painting; the painting stays active
    t0 = time.perf_counter()
    k = 2
    frames: list = []
    next_frame = 0.0

    def frame() -> None:  # the canvas, with the time and the strokes so far written on it
        nonlocal next_frame
        now = time.perf_counter() - t0
        step = None if ft.live.last_preview is None else ft.live.last_preview.step
        frames.append((canvas_grab(viewer), f"{now:.0f} s after Live on, {k} strokes, preview of step {step}"))
        # the next slot of --gif-every seconds; slots missed while a cell was being drawn are skipped
        next_frame = (np.floor(now / args.gif_every) + 1) * args.gif_every

    for when in sorted(args.shots):
        while time.perf_counter() - t0 < when:
            if k < len(plan) and k * args.every <= time.perf_counter() - t0:
                paint(k)
                k += 1
            if next_frame <= time.perf_counter() - t0:
                frame()
            settle(app, 0.1)
        last = ft.live.last_preview
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
    for kind in ("cell", "background"):
        sec = [t for c, t in took if c == kind]
        if sec:
            print(f"a {kind} stroke took {np.mean(sec):.1f} s on average ({min(sec):.1f}-{max(sec):.1f} s, "
                  f"{len(sec)} strokes) with the mouse")
    ft.live.live.value = False
    wait(app, lambda: ft.live.session is None, timeout=600)
    print("kept:", ft.status.text())
    shot(viewer, app, "live-stopped.png")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
