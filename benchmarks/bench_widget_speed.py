"""The Fine-tune widget's training speed against the same training from Python / the CLI (a
benchmark, not a test; issue 31: goal widget steps/s / CLI steps/s >= 0.9).

The same painting (a 512 x 512 synthetic colony of packed rods, every cell painted: one pair,
no validation, so every step is a training step), the same settings (the shipped ``nuclei``
model, 500-step recipe cut to ``--steps``, seed 0, CPU), the same precision (``--precision``,
through NAPARI_UNET_PRECISION): once in a real viewer's Fine-tune widget (Train clicked, steps
timed from the worker's StepDone events) and once by ``core.train.train`` in this process's main
thread (what ``napari-unet train`` runs), alternating, ``--rounds`` times each. Steps/s counts
steps 3..N (the first two warm up kernels). ``--busy K`` runs K busy processes beside both.

    xvfb-run -a python benchmarks/bench_widget_speed.py [--steps 30] [--rounds 2] [--precision fp32] [--busy 0]

Writes benchmarks/results/widget_speed.md (appends a section per run).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import cpu_flags, matmul_gflops  # noqa: E402


def spin() -> None:  # a busy process
    while True:
        pass


def steps_per_s(stamps: list[tuple[int, float]]) -> float:
    s = [(k, t) for k, t in stamps if k >= 2]
    return (s[-1][0] - s[0][0]) / (s[-1][1] - s[0][1])


def painting() -> tuple[np.ndarray, np.ndarray]:
    from napari_unet._synthetic import rod_colony

    return rod_colony((512, 512), n_cells=34, seed=3)


def run_python(steps: int) -> tuple[float, int]:
    from napari_unet.core.events import StepDone
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.train import TrainConfig, train

    img, lab = painting()
    cfg = TrainConfig.from_choices(steps=steps)
    gen = train([img], [lab], model=load_model("nuclei"), config=cfg, device="cpu", seed=0)
    stamps = []
    try:
        while True:
            ev = next(gen)
            if isinstance(ev, StepDone):
                stamps.append((ev.step, time.perf_counter()))
    except StopIteration as stop:
        model = stop.value
    return steps_per_s(stamps), int(model.provenance.get("cpu_threads", 0))


def run_widget(app, viewer, ft, steps: int) -> tuple[float, int]:
    from napari_unet.core.events import StepDone

    ft.settings.steps.value = steps
    ft.settings.minutes.value = 0
    ft.settings.members.value = 1
    ft.settings.device.value = "cpu"
    ft.settings.seed.value = 0
    ft.settings.base_model.value = "nuclei"
    stamps: list[tuple[int, float]] = []
    ft.train_button.native.click()
    ft.worker.yielded.connect(
        lambda ev: stamps.append((ev.step, time.perf_counter())) if isinstance(ev, StepDone) else None)
    while ft.running:
        app.processEvents()
        time.sleep(0.005)
    return steps_per_s(stamps), int(ft.model.provenance.get("cpu_threads", 0))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="fp32")
    ap.add_argument("--busy", type=int, default=0, help="busy processes beside the runs")
    args = ap.parse_args()
    if args.precision != "auto":
        os.environ["NAPARI_UNET_PRECISION"] = args.precision
    busy = [mp.Process(target=spin, daemon=True) for _ in range(args.busy)]
    for p in busy:
        p.start()

    import napari
    import torch
    from qtpy.QtWidgets import QApplication

    img, lab = painting()
    viewer = napari.Viewer(show=True)
    app = QApplication.instance()
    viewer.add_image(img, name="rods")
    viewer.add_labels(lab.astype(np.uint32), name="rods painting")
    _d, ft = viewer.window.add_plugin_dock_widget("napari-unet", "Fine-tune")
    ft.image.value, ft.labels.value = "rods", "rods painting"
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores ({cpu_flags()}); "
               f"torch {torch.__version__}; fp32 matmul {matmul_gflops('float32'):.0f} GFLOP/s, bf16 "
               f"{matmul_gflops('bfloat16'):.0f} GFLOP/s; load {os.getloadavg()[0]:.2f} at start; "
               f"{args.busy} busy processes beside")
    print(machine)
    rows = []
    for r in range(args.rounds):
        w, wt = run_widget(app, viewer, ft, args.steps)
        c, ct = run_python(args.steps)
        rows.append((w, c, wt, ct))
        print(f"round {r + 1}: widget {w:.3f} steps/s ({wt} threads), Python/CLI {c:.3f} steps/s "
              f"({ct} threads), ratio {w / c:.2f}")
    for p in busy:
        p.terminate()
    ratio = statistics.median(w / c for w, c, _, _ in rows)
    lines = [f"## {time.strftime('%Y-%m-%d %H:%M')}, {args.steps} steps, precision {args.precision}",
             "", machine, "", "| round | widget steps/s | CLI steps/s | widget / CLI | threads (widget, CLI) |",
             "|---:|---:|---:|---:|---|"]
    lines += [f"| {i + 1} | {w:.3f} | {c:.3f} | {w / c:.2f} | {wt}, {ct} |" for i, (w, c, wt, ct) in enumerate(rows)]
    lines += ["", f"Median widget / CLI: **{ratio:.2f}** (goal >= 0.9); load {os.getloadavg()[0]:.2f} at the end.", ""]
    out = HERE / "results" / "widget_speed.md"
    prev = out.read_text() if out.exists() else "# Fine-tune widget vs CLI training speed (benchmarks/bench_widget_speed.py)\n\n"
    out.write_text(prev + "\n".join(lines) + "\n")
    print("\n".join(lines))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
