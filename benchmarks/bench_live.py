"""Live training against ilastik's live update, with a simulated user who paints.

The user paints from a reference instance map, one stroke every ``--every`` seconds (wall clock):
alternately a whole object (its own id) and a background scribble (a disk of the background label
on reference background, away from objects). Unpainted is unknown. Two contenders, one after the
other in one process, on the same stroke schedule:

- **Live** (ours): ``napari_unet.core.train.live_train`` from the shipped ``nuclei`` model with the
  product's defaults, the view = the whole image, previewed every 3 s. What is scored at time t is
  the latest preview the user had seen by t (what the widget shows).
- **Random forest, retrained after every stroke** (ilastik's live update, APOC, convpaint):
  ``_forest.py``'s 3-class pixel classifier on multiscale features (computed once per image, as
  ilastik caches them), refitted on all strokes so far whenever a stroke arrives (strokes that
  arrive during a fit are taken together by the next), then the whole image predicted + watershed.

Score: instance F1 at IoU > 0.5 on the **unpainted rest** of the image (reference objects not
painted by then; predicted objects lying mostly on painted objects are not counted), against
seconds since the first stroke. Preview refresh: the seconds between previews.

Run: ``python benchmarks/bench_live.py [--seconds 120] [--plans 3] [--cases brightfield rods]
[--precision auto|fp32|bf16]``; writes
benchmarks/results/live.json, .md and docs/images/bench_live.png (``--out results/X.json``:
X.json, X.md, docs/images/bench_X.png).
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
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _forest import features, probabilities_to_instances  # noqa: E402
from _machine import cpu_flags, matmul_gflops  # noqa: E402

from napari_unet._synthetic import rod_colony  # noqa: E402
from napari_unet.core.events import PreviewDone  # noqa: E402
from napari_unet.core.exchange.opening import load_model  # noqa: E402
from napari_unet.core.metrics import match_instances  # noqa: E402
from napari_unet.core.train import LiveInbox, live_train  # noqa: E402
from napari_unet.core.train.annotations import labels_to_target  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
BG = 1  # background label of the scribbles; objects get ids from 2
CHECKPOINTS = (15, 30, 60, 90, 120, 180, 300)


def load_case(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name == "brightfield":
        a = tifffile.imread(SHARED / "brightfield-scratch" / "scratch-assay.tif")
        return a[1, 0], a[3, 0].astype(np.int32)
    if name == "rods":
        img, gt = rod_colony(seed=0, contact=0.05)
        return img, gt.astype(np.int32)
    raise ValueError(f"unknown case {name!r}")


def strokes(gt: np.ndarray, n: int, seed: int = 0) -> list[tuple[np.ndarray, int]]:
    """(pixels (bool), value) of the user's strokes in order: object, background, object, ..."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.unique(gt)[1:])
    far = ndi.distance_transform_edt(gt == 0) > 6
    cand = np.flatnonzero(far)
    yy, xx = np.mgrid[-4:5, -4:5]
    disk = yy**2 + xx**2 <= 16
    out = []
    for k in range(n):
        if k % 2 == 0 and k // 2 < ids.size:
            out.append((gt == ids[k // 2], BG + 1 + k // 2))
        elif cand.size:
            cy, cx = divmod(int(cand[rng.integers(cand.size)]), gt.shape[1])
            sel = np.zeros(gt.shape, bool)
            y0, x0 = max(0, cy - 4), max(0, cx - 4)
            d = disk[y0 - (cy - 4):, x0 - (cx - 4):][: gt.shape[0] - y0, : gt.shape[1] - x0]
            sel[y0 : y0 + d.shape[0], x0 : x0 + d.shape[1]] = d
            out.append((sel & (gt == 0), BG))
    return out


def paint_due(plan: list[tuple[np.ndarray, int]], k: int, every: float, now: float,
              painted: np.ndarray) -> int:
    """Paint into ``painted`` the strokes of ``plan`` due by ``now`` (stroke k at k * every
    seconds), from stroke ``k`` on; returns the index of the next stroke."""
    while k < len(plan) and k * every <= now:
        sel, v = plan[k]
        painted[sel] = v
        k += 1
    return k


def paint_layer(layer, sel: np.ndarray, value: int) -> None:
    """Paint ``sel`` with ``value`` into a napari Labels layer through its edit API (one undoable
    step, one paint event), as napari's brush and fill do."""
    with layer.block_history():
        layer.data_setitem(np.nonzero(sel & (np.asarray(layer.data) != value)), value)


def score_rest(pred: np.ndarray, gt: np.ndarray, painted: np.ndarray) -> float:
    """F1@0.5 on the reference objects not painted; predictions lying mostly on painted objects
    are not counted."""
    obj_painted = painted > BG
    done = np.unique(gt[obj_painted])
    gt_rest = np.where(np.isin(gt, done), 0, gt)
    p = pred.astype(np.int64)
    if p.max() > 0:
        size = np.bincount(p.ravel())
        on = np.bincount(p.ravel(), weights=obj_painted.ravel().astype(float), minlength=size.size)
        drop = on > 0.5 * size
        drop[0] = False
        p[drop[p]] = 0
    return float(match_instances(p, gt_rest).f1)


def at(timeline: list[tuple[float, float]], t: float) -> float | None:
    seen = [f for s, f in timeline if s <= t]
    return seen[-1] if seen else None


def run_live(img, gt, seconds, every, seed=0, config=None) -> dict:
    plan = strokes(gt, int(seconds / every) + 2, seed)
    painted = np.zeros(gt.shape, np.int32)
    inbox = LiveInbox(painted)
    inbox.view(0, (0, gt.shape[0], 0, gt.shape[1]))
    gen = live_train(img, inbox, model=load_model("nuclei"), background_label=BG, device="cpu",
                     config=config,
                     seed=seed, preview_every=3.0, poll=0.05)
    t0 = time.perf_counter()
    k = 0
    previews = []  # (t, labels, painted at that time)
    steps = 0
    while True:
        now = time.perf_counter() - t0
        if (k2 := paint_due(plan, k, every, now, painted)) > k:
            inbox.set_labels(0, painted)
            k = k2
        if now >= seconds:
            break
        ev = next(gen)
        if isinstance(ev, PreviewDone):
            previews.append((time.perf_counter() - t0, ev.labels, painted.copy(), ev.seconds))
        elif hasattr(ev, "step"):
            steps = ev.step
    inbox.stop()
    try:
        while True:
            next(gen)
    except StopIteration:
        pass
    timeline = [(t, score_rest(lab, gt, p)) for t, lab, p, _ in previews]
    gaps = np.diff([0.0] + [t for t, *_ in previews])
    return {"timeline": timeline, "steps": steps, "strokes": k,
            "preview_seconds_median": float(np.median([s for *_, s in previews])) if previews else None,
            "preview_interval_max": float(gaps[1:].max()) if gaps.size > 1 else None}


def run_forest(img, gt, seconds, every, seed=0) -> dict:
    from sklearn.ensemble import RandomForestClassifier

    plan = strokes(gt, int(seconds / every) + 2, seed)
    painted = np.zeros(gt.shape, np.int32)
    t0 = time.perf_counter()
    f = features(img)
    flat = f.reshape(-1, f.shape[-1])
    k = 0
    timeline = []
    fits = 0
    while True:
        now = time.perf_counter() - t0
        k = paint_due(plan, k, every, now, painted)
        if now >= seconds:
            break
        tgt = labels_to_target(painted, None, BG, mode="boundary").target.ravel() \
            if (painted > BG).any() and (painted == BG).any() else None
        if tgt is None:
            time.sleep(0.05)
            continue
        known = np.flatnonzero(tgt >= 0)
        rng = np.random.default_rng(seed)
        if known.size > 60000:
            known = rng.choice(known, 60000, replace=False)
        clf = RandomForestClassifier(n_estimators=100, n_jobs=2, random_state=seed)
        clf.fit(flat[known], tgt[known])
        prob = np.zeros((3, flat.shape[0]), np.float32)
        prob[np.asarray(clf.classes_, int)] = clf.predict_proba(flat).T
        lab = probabilities_to_instances(prob.reshape(3, *gt.shape))
        timeline.append((time.perf_counter() - t0, score_rest(lab, gt, painted)))
        fits += 1
        nxt = k * every  # wait for the next stroke (ilastik refits on a change)
        rest = nxt - (time.perf_counter() - t0)
        if rest > 0:
            time.sleep(min(rest, max(0.0, seconds - (time.perf_counter() - t0))))
    return {"timeline": timeline, "fits": fits, "strokes": k}


def summary(runs: list[dict], cps: list[int]) -> list[list[float | None]]:
    """Per checkpoint, the F1 of each run (None where that run had no score yet)."""
    return [[at(r["timeline"], c) for r in runs] for c in cps]


def fmt(vals: list[float | None]) -> str:
    """Mean (min-max) over runs; a run with no score yet counts as 0 in the mean and says so."""
    if all(v is None for v in vals):
        return "—"
    got = [0.0 if v is None else v for v in vals]
    if len(got) == 1:
        return f"{got[0]:.3f}"
    return f"{np.mean(got):.2f} ({min(got):.2f}-{max(got):.2f})"


def goal_line(case: str, r: dict, cps: list[int]) -> str:
    """Whether Live is above the forest from 60 s on: in the mean and in every paired run."""
    later = [c for c in cps if c >= 60]
    if not later:
        return f"{case}: goal not scored (runs shorter than 60 s)"
    lv, rf = summary(r["live"], later), summary(r["forest"], later)
    mean_ok = all(np.mean([v or 0 for v in a]) > np.mean([v or 0 for v in b])
                  for a, b in zip(lv, rf, strict=True))
    pairs = [all((a[i] or 0) > (b[i] or 0) for a, b in zip(lv, rf, strict=True))
             for i in range(len(r["live"]))]
    return (f"{case}: Live above the forest at every checkpoint from 60 s on: "
            f"{'yes' if mean_ok else 'no'} in the mean, in {sum(pairs)} of {len(pairs)} "
            f"stroke plans")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--every", type=float, default=5.0)
    ap.add_argument("--plans", type=int, default=3,
                    help="stroke plans (the order of objects and scribbles), one paired run each")
    ap.add_argument("--cases", nargs="+", default=["brightfield", "rods"])
    ap.add_argument("--out", default=str(HERE / "results" / "live.json"))
    ap.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                    help="fp32 forces the path of a CPU without bf16 units (NAPARI_UNET_PRECISION)")
    args = ap.parse_args()
    if args.precision != "auto":
        os.environ["NAPARI_UNET_PRECISION"] = args.precision
    mm = {dt: matmul_gflops(dt) for dt in ("float32", "bfloat16")}
    load = os.getloadavg()
    res = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores "
                      f"({cpu_flags()}), torch {torch.__version__} ({torch.get_num_threads()} threads), "
                      f"precision {args.precision}; matmul fp32 {mm['float32']:.0f} GFLOP/s, bf16 "
                      f"{mm['bfloat16']:.0f} GFLOP/s",
           "load": f"load average {load[0]:.2f} at the start", "seconds": args.seconds,
           "every": args.every, "plans": args.plans, "cases": {}}
    for case in args.cases:
        img, gt = load_case(case)
        runs: dict[str, list[dict]] = {"live": [], "forest": []}
        for plan in range(args.plans):
            live = run_live(img, gt, args.seconds, args.every, seed=plan)
            print(case, plan, "live", [(round(t), round(f, 3)) for t, f in live["timeline"]],
                  flush=True)
            rf = run_forest(img, gt, args.seconds, args.every, seed=plan)
            print(case, plan, "forest", [(round(t), round(f, 3)) for t, f in rf["timeline"]],
                  flush=True)
            runs["live"].append(live)
            runs["forest"].append(rf)
        res["cases"][case] = {**runs, "objects": int(np.unique(gt).size - 1)}
    res["load"] += f", {os.getloadavg()[0]:.2f} at the end"
    Path(args.out).write_text(json.dumps(res, indent=1))
    lines = [f"Machine: {res['machine']}; {res['load']}; a stroke every {args.every:.0f} s; "
             f"{args.plans} stroke plans, one paired run each: mean (min-max)", ""]
    cps = [c for c in CHECKPOINTS if c <= args.seconds]
    for case, r in res["cases"].items():
        lines += [f"**{case}** ({r['objects']} objects; F1@0.5 on the unpainted rest)", "",
                  "| seconds since the first stroke | " + " | ".join(str(c) for c in cps) + " |",
                  "|---|" + "---:|" * len(cps)]
        for who in ("live", "forest"):
            lines.append(f"| {'Live (ours)' if who == 'live' else 'random forest, refit per stroke'} | "
                         + " | ".join(fmt(v) for v in summary(r[who], cps)) + " |")

        def sec(vals: list[float | None]) -> str:
            v = [x for x in vals if x is not None]
            return "—" if not v else f"{max(v):.1f} s"

        lv = r["live"]
        lines += ["", f"Live: {int(np.mean([x['steps'] for x in lv]))} steps (mean), preview of the "
                      f"whole image {np.median([x['preview_seconds_median'] or 0 for x in lv]):.1f} s "
                      f"(median), longest interval between previews "
                      f"{sec([x['preview_interval_max'] for x in lv])}; forest: "
                      f"{int(np.mean([x['fits'] for x in r['forest']]))} fits (mean).", "",
                  goal_line(case, r, cps), ""]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(res["cases"]), figsize=(5 * len(res["cases"]), 3.4))
        for ax, (case, r) in zip(np.atleast_1d(axes), res["cases"].items(), strict=True):
            for who, style, color in (("live", "-", "C0"), ("forest", "--", "C1")):
                vals = summary(r[who], cps)
                mean = [np.mean([v or 0 for v in a]) for a in vals]
                lo = [min(v or 0 for v in a) for a in vals]
                hi = [max(v or 0 for v in a) for a in vals]
                ax.plot(cps, mean, style, marker="o", ms=3, color=color,
                        label="Live U-Net (ours)" if who == "live"
                        else "random forest, refit per stroke")
                ax.fill_between(cps, lo, hi, color=color, alpha=0.15)
            ax.set_title(f"{case} ({args.plans} stroke plans: mean, range)")
            ax.set_xlabel("seconds since the first stroke")
            ax.set_ylabel("F1@0.5, unpainted rest")
            ax.set_ylim(0, 1)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(HERE.parent / "docs" / "images" / f"bench_{Path(args.out).stem}.png", dpi=110)
    except ImportError:  # pragma: no cover
        pass
    print("\n".join(lines))


if __name__ == "__main__":
    main()
