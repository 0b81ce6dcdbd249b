"""What a training run reports: the provenance stored in the model file and the one-line summary
that the CLI and the widget show."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import torch

from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.network.geometry import pooled_levels
from napari_unet.core.train.budget import too_few_steps
from napari_unet.core.train.config import TrainConfig
from napari_unet.core.train.validation import ValScore


def training_provenance(model: UNetModel | None, mode: str, widen: bool, data: Any, tc: TrainConfig,
                lr: float, step: int, best_step: int, start: ValScore | None,
                best: ValScore | None, kept: str, adj: torch.Tensor | None, losses: list[float],
                seed: int, dev: torch.device, precision: str, masks: Any,
                background_label: int | None, seconds: float, trained_best: float = 0.0
                ) -> dict[str, Any]:
    def sc(v: ValScore | None) -> dict[str, Any] | None:
        return None if v is None else {"iou": v.iou, "f1": v.f1, "score": v.score,
                                       "objects": v.n_objects}

    note = data.validation_note
    if kept == "start":
        note = (f"WARNING: validation on {data.val_objects} held-back objects scored the starting "
                f"model ({start.score:.3f}) above the trained weights ({trained_best:.3f}) by "
                f"more than {tc.start_margin}: the starting model was kept")
    prov = {
        "base_model": None if model is None else {"name": model.name, "source": model.source},
        "from_scratch": model is None,
        "mode": mode,
        "boundary_class_added": widen,
        "data_shapes": [list(s) for s in data.shapes],
        "planes": len(data.planes),
        "known_pixels": data.known_pixels,
        "painted_objects": data.objects,
        "validation_pixels": data.val_pixels,
        "validation": {"available": data.has_validation, "objects": data.val_objects, "note": note,
                       "start": sc(start), "best": sc(best), "kept": kept},
        "background_label": background_label,
        "masks": masks is not None,
        "steps": step,
        "steps_planned": tc.steps,
        "minutes_planned": tc.minutes,
        "training_seconds_measured": round(seconds, 1),
        "best_step": best_step if data.has_validation else None,
        "patch": {"output": data.out_size, "input": data.in_size},
        "training": {**tc.to_dict(), "lr": lr, "precision": precision},
        "augmentation": tc.augmentation.to_dict(),
        # kept for older readers: the ranking score (mean of IoU and F1), None without validation
        "validation_iou": None if best is None else best.iou,
        "validation_iou_start": None if start is None else start.iou,
        "class_mean_weights": None if data.class_weights is None else [float(v) for v in data.class_weights],
        "logit_adjustment": None if adj is None else [float(v) for v in adj],
        "final_loss": losses[-1] if losses else None,
        "seed": seed,
        "device": str(dev),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if model is not None and model.provenance:
        prov["base_provenance"] = model.provenance
    return prov


def undertrained(prov: dict[str, Any]) -> str:
    """The warning of a 2D run that made too few steps to learn its painting ("" when not, and
    for Live, which has no end of its own): per network for an ensemble; none when validation
    ended the run because the painting was learnt."""
    if "live" in prov or "validation" not in prov:
        return ""
    runs = prov.get("ensemble") or [None]
    learnt = (all(e["ended_early_s"] is not None for e in runs) if runs[0] is not None
              else prov.get("ended_early") is not None)
    steps = int(prov["steps"] / len(runs))
    measured = prov.get("budget_estimate", {}).get("seconds_per_step")
    if measured is None and prov["steps"]:
        measured = prov["training_seconds_measured"] / prov["steps"]
    return too_few_steps(steps, measured, learnt)


def training_summary(prov: dict[str, Any]) -> str:
    """One line on what training did and what was validated (CLI, widget)."""
    if "fine_tuned_3d" in prov and "validation" not in prov:  # core/train/volume.py
        f = prov["fine_tuned_3d"]
        lifted = " (the base model lifted to 3D)" if "lifted_from" in prov else ""
        how = f"{lifted} fine-tuned"
        if f.get("from_scratch"):
            pooled = pooled_levels(f.get("z_pooling", []))
            how = " (new, pooling from the voxel size" + (f": z on level(s) {pooled})" if pooled else ")") \
                + " trained from scratch"
        return (f"3D U-Net{how} on painted slices {f['painted_slices']}: {f['steps']} "
                f"steps in {f['seconds']:.0f} s; not validated (a few painted slices leave nothing "
                f"to hold back): the final weights are kept")
    v = prov["validation"]
    head = (f"trained {prov['steps']} steps in {prov['training_seconds_measured']:.0f} s "
            f"({prov['mode']} mode{', boundary class added' if prov.get('boundary_class_added') else ''})")
    end = prov.get("ended_early")
    ens = prov.get("ensemble")
    if ens:
        n_in = sum(bool(e["in_ensemble"]) for e in ens)
        early = sum(e["ended_early_s"] is not None for e in ens)
        head = (f"trained {len(ens)} networks one after the other, {prov['steps']} steps in "
                f"{prov['training_seconds_measured']:.0f} s ({prov['mode']} mode"
                f"{', boundary class added' if prov.get('boundary_class_added') else ''}; "
                f"{early} of them ended early, their painting learnt), each validated on its own "
                f"held-back objects; ")
        head += (f"kept all {n_in} as an ensemble (segmenting runs each of them: {n_in}x the time "
                 f"of one network)" if n_in == len(ens) and n_in > 1 else
                 f"kept {n_in} of them as an ensemble ({len(ens) - n_in} validated no better than "
                 f"the starting model: left out; segmenting costs {n_in}x one network)" if n_in > 1
                 else "kept one network (the others validated no better than the starting model)"
                 if n_in == 1 else "no network validated better than the starting model")
        end = None
    if end:
        head += (f", ended early: the painting was learnt ({end['reason']}; at step "
                 f"{end['step']} training went back to step {end['from_step']}, the lowest "
                 f"validation loss, and decayed its learning rate from there)")
    bp = prov.get("background_prior")
    tail = ("" if bp is None else f"; segmenting adapts to each image's own share of background "
            f"(the painting's: {100 * bp:.0f} %)")
    short = undertrained(prov)
    if short:
        tail += f". {short[0].upper()}{short[1:]}"
    if not v["available"]:
        return f"{head}; {v['note']}{tail}"
    b, s0 = v["best"], v["start"]
    what = ("the starting model" if v["kept"] == "start" else
            "the ensemble (figures: the mean of its networks')" if v["kept"] == "ensemble" else
            "the final averaged weights" if v["kept"] == "final averaged" else f"step {prov['best_step']}")
    return (f"{head}; validation on {v['objects']} held-back objects: F1 {b['f1']:.3f}, IoU "
            f"{b['iou']:.3f} (start F1 {s0['f1']:.3f}, IoU {s0['iou']:.3f}); kept {what}{tail}")
