"""Where the time of one fine-tuning step goes, phase by phase (issue 11's profile).

Two brightfield frames (../shared/data/brightfield-scratch, time points 0 and 1) prepared as the
product does (from the shipped ``nuclei`` model, boundary class added), then ``--steps`` steps with
each phase timed: patch sampling, host-to-device copy, augmentation (elastic + flips + intensity),
forward, loss, backward, optimiser, weight averaging; and one validation of the held-back blocks.
Also the one-off costs: data preparation (normalisation, targets, weight maps, hold-back).

Run: ``python benchmarks/profile_finetune_step.py [--steps 20] [--precision auto|fp32|bf16]``
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

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

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "brightfield-scratch" / "scratch-assay.tif"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--precision", default="auto")
    args = ap.parse_args()
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
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
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
    for _ in range(args.steps + 2):
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
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, precision {precision}, "
          f"load average {os.getloadavg()[0]:.2f}; batch {cfg.batch_size} x {data.in_size} -> "
          f"{data.out_size}")
    print("| phase | ms per step (median) | share |\n|---|---:|---:|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {100 * v / total:.1f} % |")
    print(f"| **one step** | **{total:.0f}** | |")
    print(f"\none-off: data preparation (normalisation, targets, weight maps, hold-back) {prep * 1000:.0f} ms; "
          f"one validation of the held-back blocks ({data.val_objects} objects) {val * 1000:.0f} ms")


if __name__ == "__main__":
    main()
