"""onnxruntime (CPU) vs our torch inference, both driven by our overlap-tile engine (issue 13).

For the shipped nuclei model (valid, base 16) and the paper's network (valid, base 64, random weights:
speed does not depend on the weights), on the real nuclei sample mirrored out to 1024 x 1024: wall time of
the whole tiled prediction (torch and onnxruntime interleaved, several rounds, min and median), the
ratio, and the max difference of the probabilities. The load average is printed before and after: on a
shared machine the other jobs' work is in every figure; read the ratios within a round.

    python benchmarks/bench_exchange.py               # ~3 min on 2 cores
    python benchmarks/bench_exchange.py --rounds 5 --size 2048
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from napari_unet._sample_data import sample_path  # noqa: E402
from napari_unet.core.exchange.opening import load_model  # noqa: E402
from napari_unet.core.exchange.runtime import onnxruntime_model  # noqa: E402
from napari_unet.core.modelfile.files import UNetModel  # noqa: E402
from napari_unet.core.network.unet import UNet, UNetConfig  # noqa: E402
from napari_unet.core.predict.padding import mirror_index  # noqa: E402
from napari_unet.core.predict.predict2d import predict_image  # noqa: E402
from napari_unet.core.predict.tiles import auto_tile_size  # noqa: E402


def image(size: int) -> np.ndarray:
    import tifffile

    img = tifffile.imread(sample_path("nuclei"))
    iy, ix = mirror_index(np.arange(size), img.shape[0]), mirror_index(np.arange(size), img.shape[1])
    return np.ascontiguousarray(img[iy[:, None], ix[None, :]])


def timed(fn) -> tuple[float, np.ndarray]:
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--skip-paper", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    models = {"shipped nuclei (base 16)": load_model("nuclei")}
    if not args.skip_paper:
        models["paper net (base 64)"] = UNetModel(UNet(UNetConfig(base_channels=64)).eval(), name="paper")
    img = image(args.size)
    load0 = os.getloadavg()
    print(f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
          f"{torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"load average before: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}")
    rows = []
    for name, model in models.items():
        tile = auto_tile_size(model.config, torch.device("cpu"))
        ort_model = onnxruntime_model(model)
        # warm-up (first-call allocations, onnxruntime graph optimisation)
        small = img[:256, :256]
        predict_image(small, model, device="cpu", tile_size=tile)
        predict_image(small, ort_model, device="cpu", tile_size=tile)
        t_torch, t_ort, ratios, diff = [], [], [], 0.0
        for r in range(args.rounds):
            a, pa = timed(lambda m=model, t=tile: predict_image(img, m, device="cpu", tile_size=t))
            b, pb = timed(lambda m=ort_model, t=tile: predict_image(img, m, device="cpu", tile_size=t))
            t_torch.append(a)
            t_ort.append(b)
            ratios.append(a / b)
            diff = max(diff, float(np.abs(pa - pb).max()))
            print(f"  {name} round {r}: torch {a:.2f} s, onnxruntime {b:.2f} s, torch/onnxruntime {a / b:.2f}",
                  flush=True)
        rows.append((name, tile, min(t_torch), statistics.median(t_torch), min(t_ort),
                     statistics.median(t_ort), statistics.median(ratios), diff))
    load1 = os.getloadavg()
    print(f"load average after: {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}\n")
    print(f"{args.size} x {args.size} px, {args.rounds} rounds, same tiler and tile size for both\n")
    print("| model | tile | torch min / median (s) | onnxruntime min / median (s) | torch / onnxruntime "
          "(median of rounds) | max abs diff of probabilities |")
    print("|---|---|---|---|---|---|")
    for name, tile, tmin, tmed, omin, omed, ratio, diff in rows:
        print(f"| {name} | {tile} | {tmin:.2f} / {tmed:.2f} | {omin:.2f} / {omed:.2f} | {ratio:.2f} | {diff:.1e} |")


if __name__ == "__main__":
    main()
