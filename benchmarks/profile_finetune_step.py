"""Where the time of one fine-tuning step goes, phase by phase (issue 11's profile).

Two brightfield frames (../shared/data/brightfield-scratch, time points 0 and 1) prepared as the
product does (from the shipped ``nuclei`` model, boundary class added), then ``--steps`` steps with
each phase timed: patch sampling, host-to-device copy, augmentation (elastic + flips + intensity),
forward, loss, backward, optimiser, weight averaging; and one validation of the held-back blocks.
Also the one-off costs: data preparation (normalisation, targets, weight maps, hold-back).

Then the rates (issue 31): the step's floating-point operations (``torch.utils.flop_counter``) over
the forward's and the backward's median times, as GFLOP/s and as a fraction of the machine's fp32
matmul rate; and ``--layers``: every 3x3 convolution of the network on its own, its forward, its
gradient with respect to the input (backward data) and with respect to the weights (backward
weights), each as GFLOP/s: which kernel keeps the step from the machine's ceiling.

The step is the product's (``TrainConfig()``: its batch, patch size and frozen contracting path);
``--train-encoder`` trains every layer.

Run: ``python benchmarks/profile_finetune_step.py [--steps 20] [--precision auto|fp32|bf16] [--layers]
[--train-encoder]``
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
from torch.utils.flop_counter import FlopCounterMode

from napari_unet.core.exchange.opening import load_model
from napari_unet.core.train import (
    TrainConfig,
    postprocessing_for,
    prepare_data,
    sample_batch,
    widen_head,
)
from napari_unet.core.train.augment import Augmentation, augment
from napari_unet.core.train.loss import training_loss
from napari_unet.core.train.optimisation import AveragedWeights, center_crop
from napari_unet.core.train.precision import autocast_for, resolve_precision
from napari_unet.core.train.validation import validate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import cpu_flags, matmul_gflops  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield-scratch" / "scratch-assay.tif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--train-encoder", action="store_true",
                    help="train every layer (the recipe keeps the contracting path frozen)")
    ap.add_argument("--layers", action="store_true",
                    help="also time every 3x3 convolution's forward, backward data and backward weights")
    args = ap.parse_args()
    mm32, mm16 = matmul_gflops("float32"), matmul_gflops("bfloat16")
    a = tifffile.imread(DATA)
    images, labels = [a[1, 0], a[1, 1]], [a[3, 0].astype(np.int32), a[3, 1].astype(np.int32)]
    base = load_model("nuclei")
    net = widen_head(base.net)
    cfg = TrainConfig()
    dev = torch.device("cpu")
    t0 = time.perf_counter()
    data = prepare_data(images, labels, config=net.config, normalization=base.normalization,
                        mode="boundary", train_config=cfg)
    prep = time.perf_counter() - t0
    post = postprocessing_for("boundary", data.object_area)
    precision = resolve_precision(args.precision, dev)
    autocast = autocast_for(precision, dev)
    net.to(memory_format=torch.channels_last).train()
    if cfg.freeze_encoder and not args.train_encoder:  # as the loop does when fine-tuning
        net.down.requires_grad_(False)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=2e-3)
    avg = AveragedWeights(net, cfg.ema)
    rng, gen = np.random.default_rng(0), torch.Generator().manual_seed(0)
    phases = {k: [] for k in ("sample", "to tensor", "augment", "forward", "loss", "backward",
                              "optimiser", "average")}

    def timed(name, fn):
        t = time.perf_counter()
        out = fn()
        phases[name].append(time.perf_counter() - t)
        return out

    aug = Augmentation()
    flops: dict[str, float] = {}
    for i in range(args.steps + 2):
        x, t, w = timed("sample", lambda: sample_batch(data, rng, cfg.batch_size, cfg.sampling,
                                                       cfg.foreground_fraction))
        xt, tt, wt = timed("to tensor", lambda x=x, t=t, w=w: (torch.from_numpy(x), torch.from_numpy(t),
                                                               torch.from_numpy(w)))
        xt, (tt, wt) = timed("augment", lambda xt=xt, tt=tt, wt=wt: augment(xt, [tt, wt], aug, gen))
        xt = xt.contiguous(memory_format=torch.channels_last)
        tt, wt = center_crop(tt, data.out_size), center_crop(wt, data.out_size)

        def fwd(xt=xt):
            with autocast():
                return net(xt)

        if i == 0:  # count the operations once, outside the timed steps
            with FlopCounterMode(display=False) as fc:
                lg = fwd()
                flops["forward"] = fc.get_total_flops()
                training_loss(cfg.loss, lg.float(), tt, wt).backward()
                flops["backward"] = fc.get_total_flops() - flops["forward"]
            opt.zero_grad(set_to_none=True)
        logits = timed("forward", fwd)
        loss = timed("loss", lambda logits=logits, tt=tt, wt=wt: training_loss(cfg.loss, logits.float(), tt, wt))
        opt.zero_grad(set_to_none=True)
        timed("backward", loss.backward)
        timed("optimiser", opt.step)
        timed("average", avg.update)
    t0 = time.perf_counter()
    validate(avg.net, data, dev, post, None, autocast)
    val = time.perf_counter() - t0
    med = {k: 1000 * float(np.median(v[2:])) for k, v in phases.items()}
    total = sum(med.values())
    print(f"CPU flags: {cpu_flags()}; matmul 2048^2 fp32 {mm32:.0f} GFLOP/s, bf16 {mm16:.0f} GFLOP/s; "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {precision}, "
          f"load average {os.getloadavg()[0]:.2f}; batch {cfg.batch_size} x {data.in_size} -> "
          f"{data.out_size}; {1000 / total:.2f} steps/s")
    print("| phase | ms per step (median) | share |\n|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {100 * v / total:.1f} % |")
    print(f"| **one step** | **{total:.0f}** | |")
    print(f"\none-off: data preparation (normalisation, targets, weight maps, hold-back) {prep * 1000:.0f} ms; "
          f"one validation of the held-back blocks ({data.val_objects} objects) {val * 1000:.0f} ms")
    f, b = flops["forward"], flops["backward"]
    tf, tb = med["forward"] / 1000, med["backward"] / 1000
    print("\n| part | GFLOP | GFLOP/s | share of the fp32 matmul rate |\n|---|---:|---:|---:|")
    for name, fl, t in (("forward", f, tf), ("backward", b, tb), ("forward + backward", f + b, tf + tb),
                        ("whole step", f + b, total / 1000)):
        print(f"| {name} | {fl / 1e9:.1f} | {fl / t / 1e9:.0f} | {100 * fl / t / 1e9 / mm32:.0f} % |")
    if args.layers:
        by_layer(net, xt, mm32)


def by_layer(net: torch.nn.Module, x: torch.Tensor, mm32: float) -> None:
    """Every 3x3 convolution on its own (its shapes in this step): forward, backward data and
    backward weights, as GFLOP/s (each the fastest of 3)."""
    shapes: list[tuple[torch.nn.Conv2d, torch.Size]] = []
    hooks = [m.register_forward_hook(lambda m, i, o: shapes.append((m, i[0].shape)))
             for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    with torch.no_grad():
        net(x.float())
    for h in hooks:
        h.remove()

    def best(fn) -> float:
        fn()
        out = []
        for _ in range(3):
            t = time.perf_counter()
            fn()
            out.append(time.perf_counter() - t)
        return min(out)

    print("\n| convolution (in -> out channels, input size) | GFLOP | forward GFLOP/s | backward data "
          "GFLOP/s | backward weights GFLOP/s |\n|---|---:|---:|---:|---:|")
    totals = np.zeros(3)
    fl_all = 0.0
    for m, shape in shapes:
        w = m.weight.detach()
        xi = torch.randn(shape).contiguous(memory_format=torch.channels_last)
        y = torch.nn.functional.conv2d(xi, w, m.bias)
        dy = torch.randn_like(y)
        fl = 2 * y.numel() * w.shape[1] * 9

        def grad(mask, xi=xi, w=w, dy=dy):
            return torch.ops.aten.convolution_backward(dy, xi, w, [w.shape[0]], [1, 1], [0, 0], [1, 1],
                                                       False, [0, 0], 1, mask)

        t = np.array([best(lambda xi=xi, w=w, m=m: torch.nn.functional.conv2d(xi, w, m.bias)),
                      best(lambda: grad([True, False, False])), best(lambda: grad([False, True, True]))])
        totals += t
        fl_all += fl
        print(f"| {w.shape[1]} -> {w.shape[0]}, {shape[2]} x {shape[3]} | {fl / 1e9:.2f} | "
              + " | ".join(f"{fl / v / 1e9:.0f}" for v in t) + " |")
    print("| **all 3x3 convolutions** | " + f"{fl_all / 1e9:.1f} | "
          + " | ".join(f"**{fl_all / v / 1e9:.0f}** ({100 * fl_all / v / 1e9 / mm32:.0f} %)" for v in totals)
          + " |")


if __name__ == "__main__":
    main()
