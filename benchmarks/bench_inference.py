"""Inference benchmark (issue 2): our overlap-tile inference vs MONAI's ``sliding_window_inference``.

Same model, same 2048x2048 real-derived image (nuclei-widefield, mirrored out to 2048x2048), in one
run, for a same-padded base-16 net (MONAI runs it as it is) and for valid nets, the paper's 64-channel
U-Net and the shipped model (MONAI through a predictor that mirror-pads each window by the halo): wall time (competitors interleaved, several rounds, min and median), peak memory (each method in
a fresh subprocess), max difference to the whole-image output (seams), and achieved GFLOP/s as a
fraction of this machine's fp32 matmul GFLOP/s measured in the same rounds.

    python benchmarks/bench_inference.py            # full run, writes benchmarks/results/inference.md
    python benchmarks/bench_inference.py --repeats 3 --nchw      # longer
    python benchmarks/bench_inference.py --skip-paper64           # ~4 min instead of ~10

The machine may be shared: read the ratios measured within a round, and the min over rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from napari_unet.core.exchange.opening import load_model  # noqa: E402
from napari_unet.core.modelfile.normalization import Normalization  # noqa: E402
from napari_unet.core.network.unet import UNet, UNetConfig  # noqa: E402
from napari_unet.core.predict.padding import mirror_index  # noqa: E402
from napari_unet.core.predict.predict2d import predict_image  # noqa: E402
from napari_unet.core.predict.tiles import auto_tile_size, plan_tiles  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nuclei-widefield" / "image.tif"
SHIPPED = ROOT / "src" / "napari_unet" / "models" / "nuclei.safetensors"
RESULTS = ROOT / "benchmarks" / "results" / "inference.md"
SIZE = 2048
ROI = 512
VROI = 516  # MONAI window for valid nets: a valid output size (input 700), the nearest to 512
CPU = torch.device("cpu")


# ---------------------------------------------------------------------------- data and models
def real_image(size: int = SIZE) -> np.ndarray:
    """The 1080x1280 uint16 widefield nuclei image, mirrored (edge repeated) out to size x size."""
    img = tifffile.imread(DATA)
    reps = [int(np.ceil(size / s)) for s in img.shape]
    tiles = [[img[:: -1 if i % 2 else 1, :: -1 if j % 2 else 1] for j in range(reps[1])]
             for i in range(reps[0])]
    return np.ascontiguousarray(np.block(tiles)[:size, :size])


def same_net() -> UNet:
    """The model for the MONAI comparison: same-padded depth 4, base 16, He init (seed 0)."""
    torch.manual_seed(0)
    return UNet(UNetConfig(depth=4, base_channels=16, padding="same")).eval()


def valid_net() -> UNet:
    """The paper's valid 64-channel U-Net, He init (seed 0)."""
    torch.manual_seed(0)
    return UNet(UNetConfig()).eval()


def normalised(img: np.ndarray, norm: Normalization | None = None) -> np.ndarray:
    """(1, H, W) float32 with whole-image statistics, as ``predict`` computes them."""
    norm = norm or Normalization()
    chw = img[None]
    return norm.apply(chw, norm.stats(chw, channel_axis=0))


def channels_last(net: UNet) -> Callable[[torch.Tensor], torch.Tensor]:
    """The best CPU form of the net for MONAI too: channels_last weights and input."""
    import copy

    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    return lambda x: net_cl(x.contiguous(memory_format=torch.channels_last))


# ---------------------------------------------------------------------------- methods
def ours(tile: int | None) -> Callable:
    def run(img, net, norm=None):
        return predict_image(img, net, device="cpu", tile_size=tile, batch_size=1,
                             normalization=norm)
    return run


def monai(overlap: float, cl: bool = True) -> Callable:
    def run(img, net, norm=None):
        from monai.inferers import sliding_window_inference

        x = torch.from_numpy(normalised(img, norm))[None]
        pred = channels_last(net) if cl else net
        with torch.inference_mode():
            logits = sliding_window_inference(x, (ROI, ROI), 1, pred, overlap=overlap, mode="gaussian")
            return torch.softmax(logits, 1)[0].numpy()
    return run


def whole_mirror(img, net, norm=None):
    """Reference for ours (tests/test_tiling.py ``_whole_image_reference``): normalise the whole
    image, mirror-pad it ONCE by the halo (up to the pooling grid), one forward pass, crop."""
    cfg = net.config
    x = normalised(img, norm)
    _, h, w = x.shape
    halo, g = cfg.halo, cfg.grid
    if cfg.padding == "valid":
        th, tw = cfg.input_size(h), cfg.input_size(w)
    else:
        th, tw = (int(np.ceil((s + 2 * halo) / g) * g) for s in (h, w))
    ry = mirror_index(np.arange(-halo, th - halo), h)
    rx = mirror_index(np.arange(-halo, tw - halo), w)
    padded = x[:, ry[:, None], rx[None, :]]
    del x
    with torch.inference_mode():
        p = torch.softmax(channels_last(net)(torch.from_numpy(padded[None].copy())), 1)[0].numpy()
    s = 0 if cfg.padding == "valid" else halo
    return p[:, s : s + h, s : s + w]


def monai_valid(overlap: float, roi: int) -> Callable:
    """MONAI with a valid (unpadded) U-Net: its windows must come back at their own size, so the
    predictor mirror-pads each window by the halo first (what a user has to write), and ``roi`` is a
    valid output size (516: input 700, the valid size nearest MONAI's usual 512)."""
    def run(img, net, norm=None):
        import torch.nn.functional as F
        from monai.inferers import sliding_window_inference

        halo = net.config.halo
        f = channels_last(net)
        x = torch.from_numpy(normalised(img, norm))[None]
        with torch.inference_mode():
            logits = sliding_window_inference(
                x, (roi, roi), 1, lambda w: f(F.pad(w, (halo,) * 4, mode="reflect")),
                overlap=overlap, mode="gaussian")
            return torch.softmax(logits, 1)[0].numpy()
    return run


def whole_plain(img, net, norm=None):
    """Reference for MONAI: the net on the whole unpadded image (its convolutions zero-pad), which
    is what MONAI's windows approximate (2048 is a multiple of the 512 window: MONAI pads nothing)."""
    x = torch.from_numpy(normalised(img, norm))[None]
    with torch.inference_mode():
        return torch.softmax(channels_last(net)(x), 1)[0].numpy()


METHODS: dict[str, tuple[str, Callable]] = {
    "ours_auto": ("ours, auto tile", ours(None)),
    "ours_1024": ("ours, tile_size=1024", ours(1024)),
    "monai_025": ("MONAI 512, overlap 0.25, gaussian", monai(0.25)),
    "monai_05": ("MONAI 512, overlap 0.5, gaussian", monai(0.5)),
    "monai_025_nchw": ("MONAI 512, overlap 0.25, plain net (NCHW)", monai(0.25, cl=False)),
    "whole_mirror": ("whole image, mirror-padded once (ref. for ours)", whole_mirror),
    "whole_plain": ("whole image, unpadded (ref. for MONAI)", whole_plain),
}
SECONDARY = ("monai_05", "monai_025_nchw", "whole_plain")
REFERENCE = {"ours_auto": "whole_mirror", "ours_1024": "whole_mirror", "monai_025": "whole_plain",
             "monai_05": "whole_plain", "monai_025_nchw": "whole_plain"}


def computed_flops(key: str, cfg: UNetConfig, shape: tuple[int, int]) -> float:
    """Network FLOPs actually computed (every tile or window, including discarded context)."""
    if key.startswith("ours"):
        tile = None if key == "ours_auto" else int(key.split("_")[1])
        plan = plan_tiles(cfg, shape, tile or auto_tile_size(cfg, CPU))
        assert plan.tile_in[0] == plan.tile_in[1]
        return len(plan) * cfg.tile_flops(plan.tile_in[0])
    if key.startswith("monai"):
        overlap = 0.5 if key == "monai_05" else 0.25
        step = int(ROI * (1 - overlap))
        n = [int(np.ceil((s - ROI) / step)) + 1 for s in shape]
        return n[0] * n[1] * cfg.tile_flops(ROI)
    if key == "whole_mirror":
        g = cfg.grid
        th = int(np.ceil((shape[0] + 2 * cfg.halo) / g) * g)
        return cfg.tile_flops(th)
    return cfg.tile_flops(shape[0])


def tiles_of(key: str, cfg: UNetConfig, shape: tuple[int, int]) -> str:
    if key.startswith("ours"):
        tile = None if key == "ours_auto" else int(key.split("_")[1])
        plan = plan_tiles(cfg, shape, tile or auto_tile_size(cfg, CPU))
        return f"{len(plan)} x {plan.tile_in[0]}"
    if key.startswith("monai"):
        overlap = 0.5 if key == "monai_05" else 0.25
        step = int(ROI * (1 - overlap))
        n = int(np.ceil((shape[0] - ROI) / step)) + 1
        return f"{n * n} x {ROI}"
    if key == "whole_mirror":
        g = cfg.grid
        return f"1 x {int(np.ceil((shape[0] + 2 * cfg.halo) / g) * g)}"
    return f"1 x {shape[0]}"


# ---------------------------------------------------------------------------- measurements
def matmul_gflops(n: int = 2048, reps: int = 4) -> float:
    """fp32 matmul GFLOP/s: best of ``reps`` torch.mm of n x n matrices (2 n^3 FLOPs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b))[0] for _ in range(reps))
    return 2 * n**3 / best / 1e9


def _timed(fn: Callable) -> tuple[float, object]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def forward_seconds(net: UNet, size: int, reps: int = 2) -> float:
    """Best time of one bare channels_last forward pass on a size x size tile."""
    f = channels_last(net)
    x = torch.randn(1, 1, size, size)
    with torch.inference_mode():
        f(x)
        return min(_timed(lambda: f(x))[0] for _ in range(reps))


def seam_errors(p: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
    """max |probability difference| and % of argmax labels changed."""
    return float(np.abs(p - ref).max()), float(100 * np.mean(p.argmax(0) != ref.argmax(0)))


def memory_child(key: str, size: int) -> None:
    """Run one method once in this fresh process; print its peak RSS above the baseline (MiB).

    The baseline is the RSS after torch, the image and the model are loaded. The peak is the
    kernel's VmHWM after resetting it (``/proc/self/clear_refs``: ru_maxrss would carry the
    parent's peak across fork + exec)."""
    torch.set_grad_enabled(False)
    img = real_image(size)
    if ":" in key:  # a valid model: "paper64:ours", "shipped:monai", ...
        which, method = key.split(":")
        if which == "paper64":
            net, norm = valid_net(), None
        else:
            m = load_model(SHIPPED)
            net, norm = m.net, m.normalization
        run = ours(None) if method == "ours" else monai_valid(0.25, VROI)
        fn = lambda img, net: run(img, net, norm)  # noqa: E731
    else:
        net = same_net()
        fn = METHODS[key][1]
    import psutil

    base = psutil.Process().memory_info().rss
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    fn(img, net)
    status = Path("/proc/self/status").read_text()
    peak = int(status.split("VmHWM:")[1].split()[0]) * 1024
    print(json.dumps({"key": key, "peak_mib": (peak - base) / 2**20, "baseline_mib": base / 2**20}))


def memory_of(key: str, size: int) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    r = subprocess.run([sys.executable, __file__, "--memory-child", key, "--size", str(size)], capture_output=True,
                       text=True, env=env, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def loadavg() -> str:
    return "/".join(f"{v:.1f}" for v in os.getloadavg())


def machine() -> str:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    flags = next((ln.split(":", 1)[1].split() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("flags")), [])
    simd = ", ".join(f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags)
    return (f"{os.cpu_count()} cores ({cpu}; {simd}), torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


# ---------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2, help="interleaved rounds of the timed methods")
    ap.add_argument("--skip-paper64", action="store_true", help="skip the paper's 64-channel net (~6 min)")
    ap.add_argument("--skip-shipped", action="store_true", help="skip the shipped valid model")
    ap.add_argument("--size", type=int, default=SIZE, help="image side (2048; smaller to smoke-test)")
    ap.add_argument("--nchw", action="store_true", help="also time MONAI with the plain NCHW net")
    ap.add_argument("--no-memory", action="store_true", help="skip the subprocess memory runs")
    ap.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child, args.size)
        return 0
    warnings.filterwarnings("ignore")
    torch.set_grad_enabled(False)
    t_start = time.perf_counter()
    img = real_image(args.size)
    net = same_net()
    cfg = net.config
    shape = img.shape
    print(f"# machine: {machine()}\n# image {shape} {img.dtype} from {DATA}; load avg {loadavg()}")

    # -- interleaved timing rounds; each round also measures the matmul ceiling next to the methods
    timed = ["ours_auto", "ours_1024", "monai_025", "monai_05", "whole_mirror", "whole_plain"]
    if args.nchw:
        timed.insert(4, "monai_025_nchw")
    times: dict[str, list[float]] = {k: [] for k in timed}
    ceilings: list[float] = []
    fwd: dict[int, list[float]] = {}
    outputs: dict[str, np.ndarray] = {}
    for r in range(args.repeats):
        order = timed[r % len(timed):] + timed[: r % len(timed)]  # rotate: no fixed position bias
        ceilings.append(matmul_gflops())
        for k in order:
            if r >= 1 and k in SECONDARY:
                continue  # the secondary entries once only, to save time
            t, out = _timed(lambda k=k: METHODS[k][1](img, net))
            times[k].append(t)
            outputs.setdefault(k, out)
            print(f"round {r}: {k:15s} {t:7.2f} s   (load {loadavg()})", flush=True)
        for k in ("ours_auto", "ours_1024"):
            plan = plan_tiles(cfg, shape, auto_tile_size(cfg, CPU) if k == "ours_auto" else 1024)
            fwd.setdefault(plan.tile_in[0], []).append(forward_seconds(net, plan.tile_in[0]))
        fwd.setdefault(ROI, []).append(forward_seconds(net, ROI))
        ceilings.append(matmul_gflops())
        print(f"round {r}: matmul ceiling {ceilings[-2]:.0f} / {ceilings[-1]:.0f} GFLOP/s", flush=True)
    ceiling = max(ceilings)

    # -- valid (the paper's) models on the same image: the paper's 64-channel net and the shipped one
    vnet = valid_net()
    vcfg = vnet.config
    v_fwd = forward_seconds(vnet, 572, reps=2)
    v_fwd_tiles = {}
    if not args.skip_paper64:
        vt_in = plan_tiles(vcfg, shape, auto_tile_size(vcfg, CPU)).tile_in[0]
        v_fwd_tiles[vt_in] = forward_seconds(vnet, vt_in, reps=1)
    valid_rows = []
    valid_nets = [("paper's U-Net: valid, depth 4, 64 channels, He init (seed 0)", vnet, None)]
    if SHIPPED.exists() and not args.skip_shipped:
        m = load_model(SHIPPED)
        valid_nets.append((f"shipped `{SHIPPED.stem}`: valid, depth 4, {m.config.base_channels} channels, "
                           "trained", m.net, m.normalization))
    for title, vn, vnorm in valid_nets:
        if args.skip_paper64 and vn is vnet:
            continue
        vc = vn.config
        vkeys = {"ours": ("ours, auto tile", ours(None)),
                 "monai": (f"MONAI {VROI} (input {vc.input_size(VROI)}), overlap 0.25, gaussian, "
                           "mirror-padding predictor", monai_valid(0.25, VROI))}
        vt: dict[str, list[float]] = {k: [] for k in vkeys}
        vout, vmem = {}, {}
        for r in range(args.repeats):
            ceilings.append(matmul_gflops())
            for k in (list(vkeys) if r % 2 == 0 else list(vkeys)[::-1]):
                t, out = _timed(lambda f=vkeys[k][1], vn=vn, vnorm=vnorm: f(img, vn, vnorm))
                vt[k].append(t)
                vout.setdefault(k, out)
                print(f"valid {vc.base_channels}-ch round {r}: {k:6s} {t:7.2f} s (load {loadavg()})", flush=True)
            ceilings.append(matmul_gflops())
        t_ref, ref = _timed(lambda vn=vn, vnorm=vnorm: whole_mirror(img, vn, vnorm))
        print(f"valid {vc.base_channels}-ch whole image: {t_ref:.1f} s", flush=True)
        tag = "paper64" if vn is vnet else "shipped"
        if not args.no_memory:  # fresh processes, one at a time (the 64-channel runs are large)
            for k in vkeys:
                vmem[k] = memory_of(f"{tag}:{k}", args.size)["peak_mib"]
                print(f"memory {tag}:{k}: {vmem[k]:.0f} MiB above baseline", flush=True)
        plan = plan_tiles(vc, shape, auto_tile_size(vc, CPU))
        n_m = [int(np.ceil((sz - VROI) / int(VROI * 0.75))) + 1 for sz in shape]
        flops = {"ours": len(plan) * vc.tile_flops(plan.tile_in[0]),
                 "monai": n_m[0] * n_m[1] * vc.tile_flops(vc.input_size(VROI))}
        tiles = {"ours": f"{len(plan)} x {plan.tile_in[0]} -> {plan.tile_out[0]}",
                 "monai": f"{n_m[0] * n_m[1]} x {vc.input_size(VROI)} -> {VROI}"}
        vseam = {k: seam_errors(vout[k], ref) for k in vkeys}
        valid_rows.append((title, vc, vkeys, vt, vseam, vmem, t_ref, flops, tiles))
        del vout, ref
    ceiling = max(ceilings)
    ceiling_med = statistics.median(ceilings)

    def pct(g: float) -> str:
        """GFLOP/s as a share of the best and of the median matmul rate measured in this run."""
        return f"{g:.0f} ({100 * g / ceiling:.0f}% / {100 * g / ceiling_med:.0f}%)"

    # -- peak memory, each method in a fresh process
    mem = {}
    if not args.no_memory:  # fresh processes, run side by side: peak RSS is per process
        keys = ("ours_auto", "ours_1024", "monai_025", "monai_05", "whole_mirror", "whole_plain")
        with ThreadPoolExecutor(3) as pool:
            for k, m in zip(keys, pool.map(lambda k: memory_of(k, args.size), keys), strict=True):
                mem[k] = m
                print(f"memory {k}: {m['peak_mib']:.0f} MiB above baseline", flush=True)

    # -- the table
    base_t = min(times["monai_025"])
    useful = cfg.tile_flops(shape[0])  # same-padded: FLOPs are proportional to the area
    lines = [
        f"Model: same-padded U-Net, depth 4, base 16 channels, He init (seed 0), eval, fp32; image "
        f"{shape[0]}x{shape[1]} uint16 (nuclei-widefield mirrored); CPU, batch 1. "
        f"fp32 matmul ceiling (torch.mm 2048^2, measured before and after every round): best "
        f"**{ceiling:.0f} GFLOP/s**, median **{ceiling_med:.0f} GFLOP/s** "
        f"(all: {', '.join(f'{v:.0f}' for v in ceilings)}); percentages are of the best / the median. Times: min (median) of "
        f"{args.repeats} interleaved rounds (MONAI 0.5, MONAI NCHW and the unpadded whole image: one run); "
        f"load average at the end {loadavg()}.",
        "",
        "| method | tiles | time min (median) s | speed vs MONAI 0.25 | Mpx/s | peak MiB | "
        "max abs prob diff | labels changed | GFLOP/s computed (% ceiling) | GFLOP/s useful "
        "(% ceiling) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k in timed:
        ts = times[k]
        t = min(ts)
        comp = computed_flops(k, cfg, shape)
        if k in REFERENCE:
            d, lab = seam_errors(outputs[k], outputs[REFERENCE[k]])
            ref = "mirror" if REFERENCE[k] == "whole_mirror" else "unpadded"
            diff, labs = f"{d:.2g} (vs {ref})", f"{lab:.3f}%"
        else:
            diff, labs = "reference", "-"
        m = mem.get(k)
        mtxt = "-" if m is None else f"{m['peak_mib']:.0f}"
        lines.append(
            f"| {METHODS[k][0]} | {tiles_of(k, cfg, shape)} | {t:.2f} ({statistics.median(ts):.2f}) | "
            f"{base_t / t:.2f}x | {shape[0] * shape[1] / t / 1e6:.2f} | {mtxt} | {diff} | {labs} | "
            f"{pct(comp / t / 1e9)} | {pct(useful / t / 1e9)} |")
    lines += [
        "",
        "Bare network (one channels_last forward, best of the rounds), to split network from tiling cost:",
        "",
        "| tile | forward s | GFLOP/s (% ceiling) |",
        "|---|---|---|",
    ]
    for size, ts in sorted(fwd.items()):
        f = cfg.tile_flops(size) / min(ts) / 1e9
        lines.append(f"| base-16 same, {size}x{size} | {min(ts):.3f} | {pct(f)} |")
    vf = vcfg.tile_flops(572) / v_fwd / 1e9
    lines.append(f"| paper's valid 64-ch, 572x572 -> 388 | {v_fwd:.2f} | {pct(vf)} |")
    for size, t in v_fwd_tiles.items():
        vf = vcfg.tile_flops(size) / t / 1e9
        lines.append(f"| paper's valid 64-ch, {size}x{size} -> {vcfg.output_size(size)} (our tile) | {t:.2f} | "
                     f"{pct(vf)} |")
    for title, vc_, vkeys, vt, vseam, vmem, t_ref, flops, tiles in valid_rows:
        base = min(vt["monai"])
        lines += ["", f"**Valid model: {title}**, same image; ours against the whole image mirror-padded "
                      f"once ({t_ref:.1f} s):", "",
                  "| method | tiles | time min (median) s | speed vs MONAI | Mpx/s | peak MiB | "
                  "max abs prob diff | labels changed | GFLOP/s computed (% ceiling) | "
                  "GFLOP/s useful (% ceiling) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        useful_v = vc_.tile_flops(vc_.input_size(shape[0]))  # one whole-image forward
        for k, (label, _) in vkeys.items():
            t = min(vt[k])
            d, lab = vseam[k]
            lines.append(
                f"| {label} | {tiles[k]} | {t:.2f} ({statistics.median(vt[k]):.2f}) | {base / t:.2f}x | "
                f"{shape[0] * shape[1] / t / 1e6:.2f} | {vmem.get(k, float('nan')):.0f} | {d:.2g} | {lab:.3f}% | "
                f"{pct(flops[k] / t / 1e9)} | {pct(useful_v / t / 1e9)} |")
    lines += ["", f"Machine: {machine()}. Whole benchmark: {time.perf_counter() - t_start:.0f} s."]
    table = "\n".join(lines)
    print("\n" + table)
    if args.size != SIZE or args.skip_paper64 or args.skip_shipped:
        return 0  # a smoke test or a partial run: printed, nothing written
    RESULTS.write_text("# Inference benchmark (issue 2)\n\nCommand: `python benchmarks/bench_inference.py`\n\n"
                       + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
