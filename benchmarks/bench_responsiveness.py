"""How responsive napari stays while the widgets work (a benchmark, not a test).

A QTimer heartbeat ticks every 10 ms on the Qt event loop; the longest gap between ticks while the
Segment widget segments a 2048x2048 real image (the DSB 2018 nuclei sample tiled 4x4) and while the
Fine-tune widget trains, and while Live mode trains and previews a 512 x 512 view as a simulated
user paints, is what a user feels as a freeze. Goal: longest gap < 100 ms; in Live mode, the
preview of the view refreshed at least every 5 s.

    xvfb-run -a env PYTHONPATH=src python benchmarks/bench_responsiveness.py [--steps 10] [--size 2048]

The network is the shipped ``nuclei`` model when present, else a random one of the shipped
architecture (valid padding, depth 4, 16 base channels: same compute). The gap caused by adding the
result layer (main-thread napari work, not the worker) is reported separately.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class Heartbeat:
    def __init__(self, interval_ms: int = 10) -> None:
        from qtpy.QtCore import QTimer

        self.interval = interval_ms
        self.ticks: list[float] = []
        self.timer = QTimer()
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(lambda: self.ticks.append(time.perf_counter()))

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> dict[str, float]:
        self.timer.stop()
        self.ticks.append(time.perf_counter())
        gaps = np.diff(self.ticks) * 1000
        return {"max_ms": float(gaps.max()), "p99_ms": float(np.percentile(gaps, 99)),
                "median_ms": float(statistics.median(gaps)), "ticks": len(gaps),
                "over_100ms": int((gaps > 100).sum())}

    @staticmethod
    def summary(ticks: list[float], until: float) -> dict[str, float]:
        t = np.asarray(ticks)
        t = t[t <= until]
        gaps = np.diff(t) * 1000 if len(t) > 1 else np.zeros(1)
        return {"max_ms": float(gaps.max()), "p99_ms": float(np.percentile(gaps, 99)),
                "median_ms": float(statistics.median(gaps)), "ticks": len(gaps),
                "over_100ms": int((gaps > 100).sum())}

    def gaps_around(self, t: float) -> float:
        """The gap (ms) that contains time ``t``."""
        ticks = np.asarray(self.ticks)
        i = int(np.searchsorted(ticks, t))
        if 0 < i < len(ticks):
            return float((ticks[i] - ticks[i - 1]) * 1000)
        return float("nan")


def wait(app, cond, timeout: float = 1800) -> None:
    t0 = time.perf_counter()
    while not cond():
        app.processEvents()
        time.sleep(0.001)
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError


def idle(app, hb: Heartbeat, seconds: float) -> dict[str, float]:
    hb.start()
    t0 = time.perf_counter()
    wait(app, lambda: time.perf_counter() - t0 > seconds)
    return hb.stop()


def model_path(tmp: Path) -> tuple[str, str]:
    from napari_unet._widgets._state import shipped_model_files

    shipped = shipped_model_files()
    if "nuclei" in shipped:
        return str(shipped["nuclei"]), "shipped nuclei model"
    import torch

    from napari_unet.core.modelfile.files import UNetModel, save_model
    from napari_unet.core.network.unet import UNet, UNetConfig

    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=4, base_channels=16, padding="valid"))
    return str(save_model(UNetModel(net, name="random"), tmp / "random.safetensors")), \
        "random model, shipped architecture (valid, depth 4, base 16)"


def fmt(d: dict[str, float]) -> str:
    return (f"longest gap {d['max_ms']:7.1f} ms | p99 {d['p99_ms']:6.1f} ms | median "
            f"{d['median_ms']:5.1f} ms | gaps > 100 ms: {d['over_100ms']} of {d['ticks']}")


def live_run(app, viewer, ft, hb: Heartbeat, seconds: float) -> None:
    """Live mode on a 512 x 512 brightfield view while a simulated user paints a stroke every 5 s
    (bench_live's user, through the Labels layer's edit API): event-loop gaps and how often the
    preview of the view is refreshed."""
    import tifffile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_live import BG, paint_layer, strokes

    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield-scratch" / "scratch-assay.tif"
    if not data.exists():
        print("live: skipped (brightfield-scratch not found)")
        return
    a = tifffile.imread(data)
    img = np.concatenate([a[1, 0], a[1, 1], a[1, 2]])[:512, :512]
    gts = [a[3, t].astype(np.int32) for t in (0, 1, 2)]
    off = np.cumsum([0] + [int(g.max()) for g in gts[:-1]])
    gt = np.concatenate([np.where(g > 0, g + o, 0) for g, o in zip(gts, off, strict=True)])[:512, :512]
    viewer.add_image(img, name="live image")
    ft.image.value = "live image"
    ft.settings.base_model.value = "nuclei" if "nuclei" in ft.settings.base_model.choices else ft.settings.base_model.choices[0]
    ft.settings.background_label.value = BG
    ft.live.new_labels.native.click()
    layer = viewer.layers["live image painting"]
    for other in list(viewer.layers):
        if other.name not in ("live image", "live image painting"):
            other.visible = False
    viewer.reset_view()
    plan = strokes(gt, int(seconds / 5) + 3)

    marks: list[tuple[float, float, str]] = []  # (start, end, what) of main-thread work

    def stroke(k: int) -> None:
        t = time.perf_counter()
        paint_layer(layer, *plan[k])
        marks.append((t, time.perf_counter(), f"stroke {k}"))

    stroke(0)
    stroke(1)
    previews: list[tuple[float, float, tuple]] = []
    handler = ft.live.on_event

    def spy(ev):
        t = time.perf_counter()
        handler(ev)
        if type(ev).__name__ == "PreviewDone":
            previews.append((t, ev.seconds, ev.box))
            marks.append((t, time.perf_counter(), "preview shown"))

    ft.live.on_event = spy
    # main-thread work that may explain a long gap: the preview drawn into its layer, Python's
    # garbage collector (it stops every thread while it walks napari's object graph)
    import gc

    from napari_unet._widgets import _live as live_mod

    show = live_mod.LiveSession._show_preview

    def shown(self, ev):
        t = time.perf_counter()
        show(self, ev)
        marks.append((t, time.perf_counter(), "preview drawn into its layer"))

    live_mod.LiveSession._show_preview = shown
    gc_start: list[float] = []

    def collected(phase, info):
        if phase == "start":
            gc_start.append(time.perf_counter())
        elif gc_start:
            t = gc_start.pop()
            if time.perf_counter() - t > 0.005:  # the short ones explain nothing
                marks.append((t, time.perf_counter(), f"gc generation {info['generation']}"))

    gc.callbacks.append(collected)
    hb.start()
    t0 = time.perf_counter()
    ft.live.live.value = True  # the click: the session starts, the empty preview layer is added
    t_on = time.perf_counter()
    marks.append((t0, t_on, "switching Live on (adding the preview layer)"))
    app.processEvents()  # the click's answer: the new layer drawn
    t_on = time.perf_counter()
    k = 2
    while time.perf_counter() - t0 < seconds:
        if k < len(plan) and (k - 1) * 5.0 <= time.perf_counter() - t0:
            stroke(k)
            k += 1
        app.processEvents()
        time.sleep(0.005)
    ft.live.live.value = False
    wait(app, lambda: ft.live.session is None)
    res = hb.stop()
    gc.callbacks.remove(collected)
    live_mod.LiveSession._show_preview = show
    running = Heartbeat.summary([t for t in hb.ticks if t >= t_on], float("inf"))
    times = [t - t0 for t, _, _ in previews]
    box = previews[-1][2] if previews else None
    iv = np.diff(times) if len(times) > 1 else np.array([np.nan])
    print(f"live {seconds:.0f} s, {k} strokes, view {box}: {fmt(res)}")
    print(f"  the click that switches Live on (session started, preview layer added and drawn): "
          f"{(t_on - t0) * 1000:.0f} ms")
    print(f"  from then on, while training and previewing: {fmt(running)}")
    print(f"  previews: {len(previews)}, first at {times[0] if times else float('nan'):.1f} s, "
          f"interval median {np.median(iv):.1f} s, max {np.max(iv):.1f} s; one preview "
          f"{np.median([s for _, s, _ in previews]) if previews else float('nan'):.2f} s of compute")
    # each long gap, with the main-thread work that overlapped it (a stroke of the simulated user,
    # the preview layer updated) or none: then the worker thread held the interpreter
    ticks = np.asarray(hb.ticks)
    gaps = np.diff(ticks)
    for i in np.flatnonzero(gaps > 0.1):
        a, b = ticks[i], ticks[i + 1]
        what = [f"{w} ({(e - s) * 1000:.0f} ms)" for s, e, w in marks if s < b and e > a]
        print(f"  gap {gaps[i] * 1000:5.0f} ms at t={a - t0:6.2f} s: "
              f"{', '.join(what) or 'no main-thread work of ours'}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2048, help="image side in pixels (tiles of 512)")
    ap.add_argument("--steps", type=int, default=5, help="training steps")
    ap.add_argument("--verbose", action="store_true", help="list the long gaps of the training run")
    ap.add_argument("--live", type=float, default=60.0,
                    help="seconds of Live mode on a 512x512 view of brightfield cells (0: skip)")
    args = ap.parse_args()

    import napari
    import tifffile
    import torch
    from qtpy.QtWidgets import QApplication

    from napari_unet._sample_data import sample_path

    tmp = Path(tempfile.mkdtemp())
    path, what = model_path(tmp)
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    nuclei = tifffile.imread(sample_path("nuclei"))
    reps = max(1, args.size // 512)
    image = np.tile(nuclei, (reps, reps))
    viewer.add_image(image, name="nuclei")
    _d, seg = viewer.window.add_plugin_dock_widget("napari-unet", "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    seg.load_model_file(path)
    seg.device.value = "cpu"
    hb = Heartbeat()
    print(f"napari {napari.__version__}, torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), {what}")
    print(f"idle viewer          : {fmt(idle(app, hb, 2.0))}")

    # ---------------------------------------------------------------- segmentation
    # the result arrives as a JobResult event: gaps before it are the worker's effect on the event
    # loop; the gap around it is napari building and drawing the new Labels layer
    arrived: list[float] = []
    seg_yielded = seg.on_event

    def spy(ev):
        if type(ev).__name__ == "JobResult":
            arrived.append(time.perf_counter())
        seg_yielded(ev)

    seg.on_event = spy
    from napari_unet.core import device as _jobs  # where the Segment job reads the cores

    reserve = _jobs.usable_cores
    for policy in ("all cores", "one core kept for the viewer"):
        # the widget's policy (default) versus torch on every core
        _jobs.usable_cores = reserve if policy.startswith("one") else (lambda: 10**6)
        if "nuclei instances" in viewer.layers:
            viewer.layers.remove("nuclei instances")
        arrived.clear()
        hb.start()
        t0 = time.perf_counter()
        seg.run()
        wait(app, lambda: not seg.running)
        dt = time.perf_counter() - t0
        res = hb.stop()
        cut = arrived[-1] if arrived else hb.ticks[-1]
        before = Heartbeat.summary(hb.ticks, until=cut)
        print(f"segment {image.shape[0]}x{image.shape[1]}, torch on {policy}, {dt:5.1f} s:")
        print(f"  while the worker computes: {fmt(before)}")
        print(f"  whole run incl. adding the Labels layer: {fmt(res)}")
    _jobs.usable_cores = reserve

    # ---------------------------------------------------------------- training
    try:
        import napari_unet.core.train  # noqa: F401
    except ImportError:
        print("fine-tune: skipped (napari_unet.core.train is not available)")
        viewer.close()
        return 0
    mask = tifffile.imread(Path(__file__).resolve().parents[1] / "tests" / "data"
                           / "nuclei_dsb2018_mask_instances.tif")
    viewer.add_image(nuclei, name="train image")
    viewer.add_labels(mask, name="train labels")
    ft.image.value, ft.labels.value = "train image", "train labels"
    ft.settings.base_model.value = seg.model.value
    ft.settings.steps.value = args.steps
    ft.settings.device.value = "cpu"
    hb.start()
    t0 = time.perf_counter()
    marks: dict[str, float] = {}
    ft_yielded = ft.on_event

    def ft_spy(ev):
        marks.setdefault("first step", time.perf_counter())
        marks["last step"] = time.perf_counter()
        ft_yielded(ev)

    ft.on_event = ft_spy
    ft.train()
    marks["train() returned"] = time.perf_counter()
    wait(app, lambda: not ft.running)
    marks["finished"] = time.perf_counter()
    if ft.model is None:
        print("fine-tune failed")
    dt = time.perf_counter() - t0
    print(f"fine-tune {args.steps} steps ({dt:5.1f} s): {fmt(hb.stop())}")
    if args.live > 0:
        live_run(app, viewer, ft, hb, args.live)
    if args.verbose:
        ticks = np.asarray(hb.ticks)
        gaps = np.diff(ticks)
        for i in np.flatnonzero(gaps > 0.1):
            print(f"  gap {gaps[i] * 1000:6.0f} ms ending at t={ticks[i + 1] - t0:6.2f} s")
        for k, v in sorted(marks.items(), key=lambda kv: kv[1]):
            print(f"  {k:16s} t={v - t0:6.2f} s")
    viewer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
