"""Training-side benchmarks, one process, printed as a markdown table of ratios.

1. Elastic deformation (paper 3.1) of a 512x512 image + labels: ours (torch ``grid_sample``, one
   sample) against ``elasticdeform.deform_random_grid`` (3x3 grid, sigma 10, image order 3, labels
   order 0). elasticdeform 0.5.1's wheel is built against NumPy 1 and does not import under NumPy 2;
   then the same algorithm in scipy (cubic-spline displacement field from a 3x3 grid, image by
   ``map_coordinates`` order 3 as elasticdeform does, and order 1 = bilinear like ours) stands in.
2. Border weight map (eq. 2) of a 512x512 image with ~300 touching objects: ours (each object's
   distance transform on its bounding box + margin) against the per-object whole-image loop;
   the values are asserted identical.
3. Training steps per second on the CPU for the shipped architecture (valid, depth 4, 16 channels),
   4 patches of output 260 (input 444).

Run: ``PYTHONPATH=src python benchmarks/bench_training.py [--quick] [--threads N]``
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

from napari_unet.core.train.annotations import labels_to_target
from napari_unet.core.train.augment import elastic_deform
from napari_unet.core.train.weight_map import class_balance, weight_map

HERE = Path(__file__).resolve().parent
DATA = HERE.parent / "tests" / "data" / "touching-cells-huh7"


def best_of(fn, repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def touching_objects(n: int = 300, size: int = 512, seed: int = 0) -> np.ndarray:
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    markers = np.zeros((size, size), np.int32)
    pts = rng.choice(size * size, n, replace=False)
    markers.flat[pts] = np.arange(1, n + 1)
    lab = watershed(ndimage.distance_transform_edt(markers == 0), markers)
    # some background: drop a few objects so background, gaps and contacts all occur
    drop = rng.choice(np.arange(1, n + 1), n // 10, replace=False)
    return np.where(np.isin(lab, drop), 0, lab).astype(np.int32)


def reference_weight_map(target, objects, num_classes, w0=10.0, sigma=5.0):
    ids = [i for i in np.unique(objects) if i != 0]
    d1 = np.full(objects.shape, np.inf)
    d2 = np.full(objects.shape, np.inf)
    for i in ids:  # one whole-image distance transform per object
        d = ndimage.distance_transform_edt(objects != i)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    border = w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    border[~np.isfinite(d2)] = 0
    wc = class_balance(target, num_classes).astype(np.float32)
    out = np.zeros(target.shape, np.float32)
    known = target >= 0
    out[known] = wc[target[known]]
    bg = target == 0
    out[bg] = (out[bg] + border[bg]).astype(np.float32)
    return out


def scipy_elastic(image, labels, rng, sigma=10.0, points=3, order=3):
    """The same algorithm as elasticdeform.deform_random_grid, in scipy."""
    h, w = image.shape
    coarse = rng.normal(0, sigma, (2, points, points))
    gy = np.linspace(0, points - 1, h)
    gx = np.linspace(0, points - 1, w)
    cy, cx = np.meshgrid(gy, gx, indexing="ij")
    disp = [ndimage.map_coordinates(c, [cy, cx], order=3, mode="mirror") for c in coarse]
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = [yy + disp[0], xx + disp[1]]
    img = ndimage.map_coordinates(image, coords, order=order, mode="mirror")
    lab = ndimage.map_coordinates(labels, coords, order=0, mode="mirror")
    return img, lab


def bench_elastic(repeat: int) -> list[tuple[str, float, str]]:
    rng = np.random.default_rng(0)
    image = rng.random((512, 512)).astype(np.float32)
    labels = touching_objects()
    g = torch.Generator().manual_seed(0)
    ti = torch.from_numpy(image)[None, None]
    tl = torch.from_numpy(labels)[None]

    def ours():
        elastic_deform(ti, tl, sigma=10.0, grid_points=3, generator=g)

    def ours_numpy():  # including the numpy <-> torch round trip
        a, b = elastic_deform(torch.from_numpy(image)[None, None], torch.from_numpy(labels)[None],
                              generator=g)
        a.numpy(), b.numpy()

    rows = []
    t_ours = best_of(ours, repeat)
    t_ours_np = best_of(ours_numpy, repeat)
    rows.append(("elastic 512x512 image+labels: ours (torch, CPU)", t_ours, "1.0x"))
    rows.append(("  ours incl. numpy round trip", t_ours_np, f"{t_ours_np / t_ours:.2f}x"))
    peer = None
    try:
        import elasticdeform

        def ed():
            elasticdeform.deform_random_grid([image, labels], sigma=10, points=3, order=[3, 0])

        peer = ("elasticdeform.deform_random_grid (order 3/0)", best_of(ed, repeat))
    except Exception as exc:  # 0.5.1 wheel vs NumPy 2
        rows.append((f"elasticdeform: cannot import ({type(exc).__name__}); scipy stands in", float("nan"),
                     ""))
    if peer is not None:
        rows.append((peer[0], peer[1], f"ours {peer[1] / t_ours:.1f}x faster"))
    t3 = best_of(lambda: scipy_elastic(image, labels, rng, order=3), repeat)
    t1 = best_of(lambda: scipy_elastic(image, labels, rng, order=1), repeat)
    rows.append(("scipy map_coordinates, image order 3 (= elasticdeform's algorithm)", t3,
                 f"ours {t3 / t_ours:.1f}x faster"))
    rows.append(("scipy map_coordinates, image order 1 (bilinear, like ours)", t1,
                 f"ours {t1 / t_ours:.1f}x faster"))
    return rows


def bench_weights(repeat: int) -> list[tuple[str, float, str]]:
    labels = touching_objects()
    tg = labels_to_target(labels)
    n_obj = int(tg.objects.max())
    t_ours = best_of(lambda: weight_map(tg.target, tg.objects, 2), repeat)
    t0 = time.perf_counter()
    ref = reference_weight_map(tg.target, tg.objects, 2)
    t_ref = time.perf_counter() - t0
    ours = weight_map(tg.target, tg.objects, 2)
    assert np.array_equal(ours, ref), f"max diff {np.abs(ours - ref).max()}"
    return [
        (f"weight map 512x512, {n_obj} objects: ours (bbox + margin)", t_ours, "1.0x"),
        ("per-object whole-image distance transforms (values identical: asserted)", t_ref,
         f"ours {t_ref / t_ours:.1f}x faster"),
    ]


def bench_training(steps: int) -> list[tuple[str, float, str]]:
    import tifffile

    from napari_unet.core.modelfile.files import UNetModel
    from napari_unet.core.network.unet import UNet, UNetConfig
    from napari_unet.core.train import TrainConfig, train

    img = tifffile.imread(DATA / "t20_image.tif")
    lab = tifffile.imread(DATA / "t20_labels.tif")
    mask = tifffile.imread(DATA / "t20_annotated_region_mask.tif")
    torch.manual_seed(0)
    cfg = UNetConfig(depth=4, base_channels=16, padding="valid", class_names=("background", "object"))
    model = UNetModel(UNet(cfg), name="shipped-architecture")
    tc = TrainConfig(steps=steps + 2, batch_size=4, patch_size=256, val_fraction=0.0)
    times = []
    t = time.perf_counter()
    for _ev in train(img, lab, [mask], model=model, config=tc, device="cpu", seed=0):
        now = time.perf_counter()
        times.append(now - t)
        t = now
    per = float(np.median(times[2:]))
    n_in = cfg.input_size(256)
    return [(f"training step, depth 4 / 16 ch valid, 4 x {n_in}->{cfg.output_size(n_in)} (CPU)", per,
             f"{1 / per:.2f} steps/s")]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="fewer repeats")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch intra-op threads (default 1: scipy and elasticdeform are single-threaded, "
                         "and on a shared, oversubscribed CPU OpenMP threads spin against other processes)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    repeat = 3 if args.quick else 7
    rows = []
    rows += bench_elastic(repeat)
    rows += bench_weights(max(1, repeat // 2))
    rows += bench_training(4 if args.quick else 8)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"torch {torch.__version__}, numpy {np.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, load average {load:.1f}")
    print()
    print("| what | time (ms) | ratio |")
    print("|---|---:|---|")
    for what, sec, ratio in rows:
        ms = "" if np.isnan(sec) else f"{sec * 1000:.1f}"
        print(f"| {what} | {ms} | {ratio} |")


if __name__ == "__main__":
    main()
