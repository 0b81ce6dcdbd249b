"""Fine-tuning a modality no shipped model knows, from two painted frames, against the random forest.

For each case, two fully painted frames are the training data and other frames of the same kind
(never trained on) are scored: instance F1 at IoU > 0.5 (one-to-one matching) and foreground IoU,
against the wall-clock seconds of training, in one process:

- **U-Net**: ``napari_unet.core.train`` from the shipped ``nuclei`` model with the product's
  defaults and a time budget (``TrainConfig(minutes=...)``), one fresh run per budget (a run with
  a 60-s budget warms up and decays its learning rate within 60 s: it is what a user who asks for
  one minute gets). Segmented with the model's own post-processing (``segment_image``).
- **Random forest** (``_forest.py``): what ilastik / APOC / convpaint users get: scikit-image
  multiscale features (sigma 1-16) + scikit-learn RandomForest (100 trees), 3 classes
  (background / boundary / interior), watershed from interior seeds. Fitted with 5k, 20k and 80k
  sampled pixels per class; at each budget the best forest whose fit took no longer counts.

Cases: ``brightfield`` (../shared/data/brightfield-scratch: oblique brightfield of packed whole
cells, channel 1, automatic cell labels (channel 3); train on time points 0 and 1, score on 5 and 9)
``hoechst`` (the same time points' Hoechst nuclei channel 0 with its automatic nucleus labels
(channel 2): a real case of a modality the base model knows, which fine-tuning must not spoil)
and ``rods`` (a generated colony of packed rod-shaped cells, phase-contrast-like, weak borders:
``napari_unet._synthetic.rod_colony(contact=0.05)``; train on seeds 0 and 1, score on 2 and 3).

Run: ``python benchmarks/bench_finetune.py [--budgets 15 30 60 120 300] [--cases brightfield rods]``
Writes benchmarks/results/finetune.json, .md and docs/images/bench_finetune.png (``--out
results/X.json``: X.json, X.md and docs/images/bench_X.png).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _forest import fit_forest, predict_instances  # noqa: E402
from _machine import cpu_flags, matmul_gflops  # noqa: E402

from napari_unet._synthetic import rod_colony  # noqa: E402
from napari_unet.core.exchange.opening import load_model  # noqa: E402
from napari_unet.core.metrics import foreground_iou, instance_f1  # noqa: E402
from napari_unet.core.segment import segment_image  # noqa: E402
from napari_unet.core.train import TrainConfig, train  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"


def load_case(name: str) -> tuple[list, list]:
    """([(image, labels)] to train on, [(image, labels)] to score)."""
    if name == "brightfield":
        a = tifffile.imread(SHARED / "brightfield-scratch" / "scratch-assay.tif")
        pairs = {t: (a[1, t], a[3, t].astype(np.int32)) for t in (0, 1, 5, 9)}
        return [pairs[0], pairs[1]], [pairs[5], pairs[9]]
    if name == "hoechst":  # the same frames' nuclei channel: a modality the base model knows
        a = tifffile.imread(SHARED / "brightfield-scratch" / "scratch-assay.tif")
        pairs = {t: (a[0, t], a[2, t].astype(np.int32)) for t in (0, 1, 5, 9)}
        return [pairs[0], pairs[1]], [pairs[5], pairs[9]]
    if name == "rods":
        fr = [rod_colony(seed=s, contact=0.05) for s in range(4)]
        return fr[:2], fr[2:]
    raise ValueError(f"unknown case {name!r}")


def score(pred_fn, test) -> dict:
    f1s, ious = [], []
    for img, gt in test:
        pred = pred_fn(img)
        f1s.append(instance_f1(pred, gt))
        ious.append(foreground_iou(pred, gt))
    return {"f1": float(np.mean(f1s)), "iou": float(np.mean(ious)),
            "f1_each": [round(v, 4) for v in f1s], "iou_each": [round(v, 4) for v in ious]}


def run_unet(train_pairs, test, seconds: float, seed: int = 0, tta: bool = False) -> dict:
    cfg = TrainConfig(steps=10**9, minutes=seconds / 60.0)
    t0 = time.perf_counter()
    gen = train([p[0] for p in train_pairs], [p[1] for p in train_pairs], model=load_model("nuclei"),
                config=cfg, device="cpu", seed=seed)
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            model = stop.value
            break
    wall = time.perf_counter() - t0
    res = score(lambda im: segment_image(im, model, output="instances", device="cpu"), test)
    if tta:  # the Segment widget's / CLI's test-time augmentation (8 flips and rotations)
        t = score(lambda im: segment_image(im, model, output="instances", device="cpu", tta=True), test)
        res.update(f1_tta=t["f1"], iou_tta=t["iou"])
    prov = model.provenance
    end = prov.get("ended_early")
    if prov.get("ensemble"):  # the run ended before its budget when its last network did
        last = prov["ensemble"][-1]["ended_early_s"]
        end = None if last is None else {"seconds": last}
    res.update(seconds=round(wall, 1), steps=prov["steps"], mode=prov["mode"], seed=seed,
               networks=model.members,
               validation=prov["validation"]["kept"], precision=prov["training"]["precision"],
               ended_early_s=None if end is None else end["seconds"])
    return res


def run_forests(train_pairs, test) -> list[dict]:
    out = []
    for n in (5000, 20000, 80000):
        f = fit_forest([p[0] for p in train_pairs], [p[1] for p in train_pairs],
                       max_samples_per_class=n, n_trees=100, seed=0)
        res = score(lambda im, f=f: predict_instances(f, im), test)
        res.update(seconds=round(f.fit_seconds, 1), samples_per_class=n)
        out.append(res)
    return out


def forest_at(forests: list[dict], budget: float) -> dict | None:
    done = [f for f in forests if f["seconds"] <= budget]
    return max(done, key=lambda f: f["f1"] + f["iou"]) if done else None


def plot_path(out: Path) -> Path:
    """docs/images/bench_finetune.png for the main run (results/finetune.json), else
    bench_<the results file's name>.png (finetune_fp32.json: bench_finetune_fp32.png)."""
    return HERE.parent / "docs" / "images" / f"bench_{out.stem}.png"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(results["cases"])
    fig, axes = plt.subplots(1, 2 * len(cases), figsize=(4.2 * 2 * len(cases), 3.4))
    for ci, case in enumerate(cases):
        r = results["cases"][case]
        budgets = sorted({u["budget"] for u in r["unet"]})
        for k, metric in enumerate(("f1", "iou")):
            ax = axes[2 * ci + k]
            vals = [[u[metric] for u in r["unet"] if u["budget"] == b] for b in budgets]
            mean = np.array([np.mean(v) for v in vals])
            err = np.array([[m - min(v) for m, v in zip(mean, vals, strict=False)], [max(v) - m for m, v in zip(mean, vals, strict=False)]])
            seeds = max(len(v) for v in vals)
            ax.errorbar(budgets, mean, yerr=err if seeds > 1 else None, fmt="o-", capsize=3,
                        label="U-Net fine-tune (ours)" + (f", mean and range of {seeds} seeds" if seeds > 1 else ""))
            fx = sorted(r["forest"], key=lambda f: f["seconds"])
            ax.plot([f["seconds"] for f in fx], [f[metric] for f in fx], "s--",
                    label="random forest (3 classes + watershed)")
            ax.set_xscale("log")
            ax.set_xlabel("training budget / forest fit, wall seconds (2-core CPU)")
            ax.set_ylabel("instance F1@0.5" if metric == "f1" else "foreground IoU")
            ax.set_title(f"{case}: {'F1' if metric == 'f1' else 'IoU'}")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            if ci == 0 and k == 0:
                ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; load: {results['load']}", "",
             "\\* the run ended before its budget: validation said the painting was learnt "
             "(the validation loss had stopped improving).", ""]
    for case, r in results["cases"].items():
        seeds = len({u.get("seed", 0) for u in r["unet"]}) > 1
        tta = any("f1_tta" in u for u in r["unet"])
        head = "| budget (s) | " + ("seed | " if seeds else "") + "U-Net s | steps | networks | U-Net F1 | U-Net IoU | " + \
            ("F1 with TTA | IoU with TTA | " if tta else "") + \
            "forest F1 | forest IoU | forest fit s | ours above the forest in both |"
        lines += [f"**{case}** (scored on {r['test_frames']} frames not trained on)", "", head,
                  "|" + "---:|" * (head.count("|") - 2) + ":---:|"]
        for u in r["unet"]:
            f = forest_at(r["forest"], u["budget"])
            fb = (f"{f['f1']:.3f} | {f['iou']:.3f} | {f['seconds']:.0f}" if f else "— | — | (not fitted yet)")
            above = "yes" if f is None or (u["f1"] > f["f1"] and u["iou"] > f["iou"]) else "no"
            if tta and f is not None:
                above += " / with TTA " + ("yes" if u["f1_tta"] > f["f1"] and u["iou_tta"] > f["iou"] else "no")
            lines.append(f"| {u['budget']:.0f} | " + (f"{u.get('seed', 0)} | " if seeds else "")
                         + f"{u['seconds']:.0f}{'*' if u.get('ended_early_s') else ''} | {u['steps']} | {u.get('networks', 1)} | {u['f1']:.3f} | {u['iou']:.3f} | "
                         + (f"{u['f1_tta']:.3f} | {u['iou_tta']:.3f} | " if tta else "")
                         + f"{fb} | {above} |")
        lines.append("")
        if seeds:
            lines += ["Mean over seeds (range):", "",
                      "| budget (s) | U-Net F1 | U-Net IoU | forest F1 | forest IoU | mean above the forest in both |",
                      "|---:|---:|---:|---:|---:|:---:|"]
            for b in sorted({u["budget"] for u in r["unet"]}):
                us = [u for u in r["unet"] if u["budget"] == b]
                f = forest_at(r["forest"], b)
                mf, mi = np.mean([u["f1"] for u in us]), np.mean([u["iou"] for u in us])
                rng = {k: f"{min(u[k] for u in us):.3f}-{max(u[k] for u in us):.3f}" for k in ("f1", "iou")}
                above = "yes" if f is None or (mf > f["f1"] and mi > f["iou"]) else "no"
                fb = f"{f['f1']:.3f} | {f['iou']:.3f}" if f else "— | —"
                lines.append(f"| {b:.0f} | {mf:.3f} ({rng['f1']}) | {mi:.3f} ({rng['iou']}) | {fb} | {above} |")
            lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", type=float, nargs="+", default=[15, 30, 60, 120, 300])
    ap.add_argument("--cases", nargs="+", default=["brightfield", "rods", "hoechst"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0],
                    help="one U-Net run per budget and seed (the spread of a 2-minute run is wide)")
    ap.add_argument("--tta", action="store_true", help="also score with test-time augmentation")
    ap.add_argument("--out", default=str(HERE / "results" / "finetune.json"))
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="fp32: the path of a CPU without bf16 units (NAPARI_UNET_PRECISION; run with "
                         "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 for an AVX2-only CPU)")
    args = ap.parse_args()
    if args.precision != "auto":
        os.environ["NAPARI_UNET_PRECISION"] = args.precision
    load = os.getloadavg()
    mm = {dt: matmul_gflops(dt) for dt in ("float32", "bfloat16")}
    results = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                          f"({cpu_flags()}; ATEN_CPU_CAPABILITY="
                          f"{os.environ.get('ATEN_CPU_CAPABILITY', '-')}), "
                          f"torch {torch.__version__} ({torch.get_num_threads()} threads), precision "
                          f"{args.precision}; matmul fp32 {mm['float32']:.0f} GFLOP/s, bf16 "
                          f"{mm['bfloat16']:.0f} GFLOP/s",
               "load": f"load average {load[0]:.2f} at the start", "cases": {}}
    for case in args.cases:
        tr, te = load_case(case)
        forests = run_forests(tr, te)
        print(case, "forests", [(f["seconds"], round(f["f1"], 3), round(f["iou"], 3)) for f in forests],
              flush=True)
        unets = []
        for b, seed in [(b, seed) for b in args.budgets for seed in args.seeds]:
            u = run_unet(tr, te, b, seed=seed, tta=args.tta)
            u["budget"] = b
            unets.append(u)
            print(case, "unet", b, seed, u["seconds"], u["steps"], round(u["f1"], 3), round(u["iou"], 3),
                  *((round(u["f1_tta"], 3), round(u["iou_tta"], 3)) if args.tta else ()),
                  u["validation"], flush=True)
        results["cases"][case] = {"unet": unets, "forest": forests, "test_frames": len(te)}
    results["load"] += f", {os.getloadavg()[0]:.2f} at the end"
    Path(args.out).write_text(json.dumps(results, indent=1))
    md = markdown(results)
    Path(args.out).with_suffix(".md").write_text(md + "\n")
    plot(results, plot_path(Path(args.out)))
    print(md)


if __name__ == "__main__":
    main()
