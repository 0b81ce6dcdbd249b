"""Scale benchmark: peak memory of block-by-block segmentation against the input size, and the speed-up
of 1 vs 2 dask.distributed workers.

Each case runs in its own process; its peak RSS (``ru_maxrss``) is read there. Model: the shipped-model
architecture (valid U-Net, depth 4, 16 base channels, 2 classes) with random weights: memory and speed
do not depend on the weights. Inputs: an 8192 x 8192 uint16 zarr made by tiling the real
nuclei-widefield image, and the real 20 x 700 x 1100 HeLa stack (as zarr).

    PYTHONPATH=src python benchmarks/bench_scale.py            # all cases, writes benchmarks/results/scale.md
    PYTHONPATH=src python benchmarks/bench_scale.py --case hela_zarr
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data"
if not DATA.is_dir():
    DATA = Path("/work/shared/data")
WORK = Path(os.environ.get("BENCH_SCALE_DIR", "/tmp/napari_unet_bench_scale"))


def _model():
    import torch

    from napari_unet.core.modelfile.files import UNetModel
    from napari_unet.core.network.unet import UNet, UNetConfig

    torch.manual_seed(0)
    return UNetModel(UNet(UNetConfig(depth=4, base_channels=16, padding="valid", num_classes=2)), name="bench")


def _drive(gen):
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def _peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def make_inputs() -> None:
    import tifffile
    import zarr

    WORK.mkdir(parents=True, exist_ok=True)
    big = WORK / "synthetic_8k.zarr"
    if not big.exists():
        src = tifffile.imread(DATA / "nuclei-widefield" / "image.tif")  # 1080 x 1280 uint16
        z = zarr.open_array(store=str(big), mode="w", shape=(8192, 8192), chunks=(1024, 1024), dtype=src.dtype)
        for y in range(0, 8192, 1024):
            rows = np.take(src, np.arange(y, y + 1024) % src.shape[0], axis=0)
            z[y : y + 1024] = np.take(rows, np.arange(8192) % src.shape[1], axis=1)
    hela = WORK / "hela.zarr"
    if not hela.exists():
        s = tifffile.imread(DATA / "hela-stack" / "stack.tif")
        z = zarr.open_array(store=str(hela), mode="w", shape=s.shape, chunks=(1, 700, 1100), dtype=s.dtype)
        z[...] = s
    small = WORK / "hela4.tif"
    if not small.exists():
        tifffile.imwrite(small, tifffile.imread(DATA / "hela-stack" / "stack.tif")[:4])


def case_baseline() -> dict:
    """Python + torch + napari_unet + the model: what every case pays before any image."""
    import torch  # noqa: F401

    import napari_unet.batch  # noqa: F401

    _model()
    return {"peak_rss": _peak_rss()}


def _zarr_case(name: str, output_type: str) -> dict:
    import zarr

    from napari_unet.batch import segment_to_zarr

    src = zarr.open_array(store=str(WORK / name), mode="r")
    out = WORK / f"out_{name}_{output_type}.zarr"
    t0 = time.perf_counter()
    _drive(segment_to_zarr(src, _model(), out, output_type=output_type, device="cpu"))
    dt = time.perf_counter() - t0
    peak = _peak_rss()  # before reading the result back
    import dask.array as da

    n_obj = int(da.from_zarr(zarr.open_array(store=str(out), mode="r")).max().compute(scheduler="threads"))
    return {"peak_rss": peak, "seconds": dt, "input_bytes": int(src.nbytes), "shape": list(src.shape),
            "mpx": float(np.prod(src.shape)) / 1e6, "max_label": n_obj, "output_type": output_type}


def case_big_semantic() -> dict:
    return _zarr_case("synthetic_8k.zarr", "semantic")


def case_big_instances() -> dict:
    return _zarr_case("synthetic_8k.zarr", "instances")


def case_hela_zarr() -> dict:
    return _zarr_case("hela.zarr", "instances")


def case_hela_in_memory() -> dict:
    """The same stack through the in-memory core ``segment`` (reference for the zarr path)."""
    import tifffile

    from napari_unet.core.segment import segment_image

    img = tifffile.imread(DATA / "hela-stack" / "stack.tif")
    t0 = time.perf_counter()
    segment_image(img, _model(), output="instances", device="cpu")
    return {"peak_rss": _peak_rss(), "seconds": time.perf_counter() - t0, "input_bytes": int(img.nbytes)}


def _workers_case(n: int | None) -> dict:
    from napari_unet.batch import segment_to_zarr

    path = WORK / "hela4.tif"
    out = WORK / f"out_workers_{n}.zarr"
    if n is None:
        t0 = time.perf_counter()
        _drive(segment_to_zarr(path, _model(), out, output_type="semantic", device="cpu", block_size=512))
        return {"seconds": time.perf_counter() - t0}
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        client.run(lambda: bool(__import__("napari_unet.batch")))  # start-up not timed
        t0 = time.perf_counter()
        _drive(segment_to_zarr(path, _model(), out, output_type="semantic", client=client, block_size=512))
        return {"seconds": time.perf_counter() - t0}


def case_one_process() -> dict:
    return _workers_case(None)


def case_workers_1() -> dict:
    return _workers_case(1)


def case_workers_2() -> dict:
    return _workers_case(2)


CASES = ["baseline", "hela_in_memory", "hela_zarr", "big_semantic", "big_instances",
         "one_process", "workers_1", "workers_2"]


def run_case(name: str) -> dict:
    env = dict(os.environ)
    out = subprocess.run([sys.executable, __file__, "--case", name], capture_output=True, text=True, env=env,
                         check=False)
    if out.returncode:
        raise RuntimeError(f"case {name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--case", choices=CASES)
    ap.add_argument("--only", nargs="*", choices=CASES, help="run these cases (default: all)")
    args = ap.parse_args()
    if args.case:
        print(json.dumps(globals()[f"case_{args.case}"]()))
        return
    make_inputs()
    saved = HERE / "results" / "scale.json"
    results = json.loads(saved.read_text()) if args.only and saved.exists() else {}
    for name in args.only or CASES:
        results[name] = run_case(name)
        print(name, results[name], file=sys.stderr, flush=True)
        saved.write_text(json.dumps(results, indent=1))
        write_markdown(results)


def write_markdown(r: dict) -> None:
    gb = 1024**3
    base = r.get("baseline", {}).get("peak_rss", 0)
    lines = [
        "# Scale benchmark (benchmarks/bench_scale.py)",
        "",
        f"Machine: {os.cpu_count()} CPU cores, {platform.processor() or platform.machine()}, load average at the end "
        f"{os.getloadavg()[0]:.1f} (the machine is shared: read timings as rough). Model: valid U-Net, depth 4, "
        "16 base channels, 2 classes, random weights; CPU; tile size chosen automatically; blocks 1024 px "
        "(rounded to the tile step). Peak RSS is the whole process's maximum resident memory.",
        "",
        f"Baseline (Python + torch + napari_unet + model, no image): {base / gb:.2f} GB.",
        "",
        "| case | input | input size | time | peak RSS | peak RSS - input | peak RSS - baseline |",
        "|---|---|---|---|---|---|---|",
    ]
    labels = {"hela_in_memory": "HeLa stack, in-memory `segment` (TIFF), instances",
              "hela_zarr": "HeLa stack, zarr -> zarr, instances",
              "big_semantic": "8192 x 8192 zarr -> zarr, semantic",
              "big_instances": "8192 x 8192 zarr -> zarr, instances"}
    for k, label in labels.items():
        if k not in r:
            continue
        c = r[k]
        shape = " x ".join(str(s) for s in c.get("shape", [])) or "20 x 700 x 1100"
        lines.append(f"| {label} | {shape} | {c['input_bytes'] / 1e6:.0f} MB | {c['seconds']:.0f} s | "
                     f"{c['peak_rss'] / gb:.2f} GB | {(c['peak_rss'] - c['input_bytes']) / gb:.2f} GB | "
                     f"{(c['peak_rss'] - base) / gb:.2f} GB |")
    if {"workers_1", "workers_2"} <= set(r):
        t1, t2 = r["workers_1"]["seconds"], r["workers_2"]["seconds"]
        lines += ["", "## 1 vs 2 dask workers (4 HeLa frames, semantic, blocks of 512 px, TIFF -> zarr)", "",
                  "| run | time | speed-up vs 1 worker |", "|---|---|---|"]
        if "one_process" in r:
            t0 = r["one_process"]["seconds"]
            lines.append(f"| one process, no dask (torch uses both cores) | {t0:.1f} s | {t1 / t0:.2f} |")
        lines.append(f"| LocalCluster, 1 worker x 1 thread | {t1:.1f} s | 1.00 |")
        lines.append(f"| LocalCluster, 2 workers x 1 thread | {t2:.1f} s | {t1 / t2:.2f} |")
    (HERE / "results" / "scale.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
