"""The training loop of one network: :func:`train_network` yields a :class:`~..events.StepDone`
after every step and returns the trained :class:`~..io.UNetModel` (:func:`.members.train` runs it
once per network of an ensemble).

What one step does (paper section 3):

1. draw ``batch_size`` random patches centred on known pixels of the training part of the painting
   (a share of them on object pixels); for valid models the input tile is the output patch plus
   the model's halo of real (mirrored at the image border) context;
2. augment image, target and weight map together (elastic deformation, flips, 90-degree turns,
   intensity jitter; :mod:`..augment`);
3. crop target and weight map to the model's output and minimise the pixel-wise softmax
   cross-entropy weighted by the border weight map of eq. 2, unknown pixels ignored.

Which weights come back: the final averaged weights (``keep="final"``, the default) or the best
validated ones (``keep="best"``); the starting model only when validation on held-back whole
objects scores it above those by more than ``start_margin``, and then the provenance and the
returned model's description say so. Without a validation set the provenance says that nothing
was validated.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import torch

from napari_unet.core.device import busy_cores, cpu_threads, resolve_device, usable_cores
from napari_unet.core.events import StepDone
from napari_unet.core.modelfile.files import Postprocessing, UNetModel
from napari_unet.core.modelfile.normalization import Normalization
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.train.annotations import num_classes_for
from napari_unet.core.train.augment import augment
from napari_unet.core.train.budget import BudgetEstimate
from napari_unet.core.train.config import (
    PROBE_STEPS,
    TrainConfig,
    default_architecture,
    postprocessing_for,
)
from napari_unet.core.train.data import as_list, prepare_data, sample_batch
from napari_unet.core.train.live_inbox import LIVE_WARMUP_STEPS, LiveData, LivePreview
from napari_unet.core.train.loss import training_loss
from napari_unet.core.train.optimisation import (
    AveragedWeights,
    TorchRng,
    center_crop,
    clone_state,
    schedule,
    should_stop,
)
from napari_unet.core.train.plateau import Plateau
from napari_unet.core.train.precision import autocast_for, resolve_precision
from napari_unet.core.train.report import training_provenance
from napari_unet.core.train.start import (
    member_view,
    refuse_3d,
    resolve_mode,
    widen_head,
    widened_config,
)
from napari_unet.core.train.validation import ValScore, validate


def train_network(
    images: Any,
    labels: Any,
    masks: Any = None,
    *,
    model: UNetModel | None = None,
    architecture: UNetConfig | None = None,
    config: TrainConfig | None = None,
    mode: str | None = None,
    background_label: int | None = None,
    channel_axis: int | None = None,
    device: str | torch.device = "auto",
    seed: int | None = None,
    stop: Callable[[], bool] | Any = None,
    name: str | None = None,
    live: tuple[Any, int, float] | None = None,
    member: int = 0,
    members: int | None = None,
) -> Generator[StepDone, None, UNetModel]:
    """Fine-tune ``model`` (or train a new one) on painted labels; yields StepDone, returns the model.

    ``images``: a 2D image (Y, X), a multichannel image with ``channel_axis``, or a stack (Z, Y, X);
    or a list of those. ``labels``: the matching integer labels (a napari Labels layer: one id per
    object, 0 = not painted), same shapes. ``masks``: None, or one mask (or None) per image, nonzero
    where the annotation is complete; without masks and without ``background_label`` the whole
    frame counts as complete. ``background_label``: the id painted on background (scribbles).
    ``model``: a :class:`UNetModel` to fine-tune (not modified: a copy is trained) or None to train
    a new one with ``architecture`` (default :func:`default_architecture`).
    ``mode``: None/"auto" (default): "boundary" (background / boundary / interior) when painted
    objects touch (a 2-class base model gets a boundary class: :func:`.network.widen_head`), else
    "binary" (the paper's background / object with separating lines); or either one explicitly.
    With an explicit ``architecture``, "auto" follows its number of classes.
    ``stop``: a callable (or an object with ``is_set()``) checked before every step; when it says
    stop, training ends and the kept model is returned (see the module docstring). Closing the
    generator also ends it. ``seed``: same seed, data and device -> same weights on the CPU.

    Errors in the data (AnnotationError, a ValueError) are raised at the first ``next()``.
    ``live``: (inbox, painting version, preview seconds), set by :func:`.live.live_train`.
    ``member``: this network's index in an ensemble (its hold-back and its network of a base
    ensemble); ``members``: the ensemble's size, None = decide it from the painting
    (:meth:`TrainConfig.members_for`) and train the first network on its share of the budget;
    the decision is returned as ``provenance["members_planned"]``.
    """
    tc = config or TrainConfig()
    refuse_3d(model if model is not None else architecture)
    if model is not None:
        model = member_view(model, member)
    dev = resolve_device(device)
    seed = secrets.randbelow(2**31) if seed is None else int(seed)
    if model is None and architecture is not None and mode in (None, "auto"):
        mode = "boundary" if architecture.num_classes == 3 else "binary"  # as it was built
    mode, widen = resolve_mode(model, mode, labels, background_label)
    if model is not None:
        arch = widened_config(model.config) if widen else model.config
        normalization = model.normalization
    else:
        if architecture is None:
            c = 1 if channel_axis is None else int(np.shape(as_list(images, "images")[0])[channel_axis])
            architecture = default_architecture(c, mode)
        arch = architecture
        if arch.num_classes != num_classes_for(mode):
            raise ValueError(f"architecture has {arch.num_classes} classes but mode {mode!r} needs "
                             f"{num_classes_for(mode)}")
        normalization = Normalization()
    data = prepare_data(images, labels, masks, config=arch, normalization=normalization, mode=mode,
                        background_label=background_label, channel_axis=channel_axis,
                        train_config=tc)
    known = max(1, sum(p.centres.size for p in data.planes))
    seen = np.mean([min(data.out_size, p.shape[0]) * min(data.out_size, p.shape[1])
                    for p in data.planes])  # plane pixels in one patch
    passes_per_step = tc.batch_size * seen / known  # a step's share of a pass over the painting
    # how many networks: explicit, or (automatic, with a time budget and validation) decided from
    # the speed of this machine over the first steps
    probe = members is None and tc.members is None and live is None and data.has_validation \
        and tc.minutes is not None
    t_probe = 0.0
    estimate: BudgetEstimate | None = None  # the steps a time budget holds here, once measured
    budget_note = ""  # and what that means, said with every step from then on
    k = members if members is not None else tc.members_for(data.has_validation, live is not None)
    if members is None and k > 1:  # the first of k networks: its share of the budget
        tc = dataclasses.replace(tc, steps=max(1, tc.steps // k),
                                 minutes=None if tc.minutes is None else tc.minutes / k)
    which = f"network {member + 1} of {k}: " if k > 1 else ""
    base_post = model.postprocessing if model is not None else None
    sized = base_post is None or widen or base_post.split == "seeded"

    def post_for(d: Any) -> Postprocessing:
        """Post-processing for the painting ``d``: sized for its objects (seeded / new models),
        with its background share when prior adaptation is on."""
        post = postprocessing_for(mode, d.object_area) if sized else base_post
        share = d.background_share
        keep = tc.prior_adaptation and share is not None and 0.0 < share < 1.0
        return dataclasses.replace(post, background_prior=round(float(share), 6) if keep else None)

    post = post_for(data)
    live_data = live_preview = None
    if live is not None:
        inbox, version, preview_every = live

        def build(labs: list[Any], mks: list[Any]) -> Any:
            return prepare_data(images, labs, None if all(m is None for m in mks) else mks,
                                config=arch, normalization=normalization, mode=mode,
                                background_label=background_label, channel_axis=channel_axis,
                                train_config=tc)

        live_data = LiveData(inbox, build, version)
        live_preview = LivePreview(as_list(images, "images"), inbox, normalization, channel_axis,
                                   preview_every, background_label)

    base_adj = None if model is None else model.provenance.get("logit_adjustment")
    use_adj = tc.logit_adjustment if tc.logit_adjustment is not None else base_adj is not None
    adj = torch.from_numpy(data.logit_adjustment()).float() if use_adj else None

    rng_t = TorchRng(seed, dev)
    with rng_t.active():
        if model is not None:
            net = UNet(model.config)
            net.load_state_dict(model.net.state_dict())
            if base_adj is not None:  # train in the weighted parametrisation the loss expects
                with torch.no_grad():
                    net.head.bias -= torch.tensor(base_adj, dtype=net.head.bias.dtype)
            if widen:
                net = widen_head(net)
        else:
            net = UNet(arch)
    net.to(dev, memory_format=torch.channels_last)
    net.train()
    if tc.freeze_encoder and model is not None:  # the contracting path keeps the base's features
        net.down.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    precision = resolve_precision(tc.precision, dev)
    autocast = autocast_for(precision, dev)
    lr = tc.learning_rate()
    if tc.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=lr,
                                                      weight_decay=tc.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=tc.momentum,
                              weight_decay=tc.weight_decay)
    averaged = AveragedWeights(net, tc.ema)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    budget = None if tc.minutes is None or live is not None else 60.0 * float(tc.minutes)
    val_every = tc.validation_interval()
    plateau = Plateau(0 if live is not None else tc.plateau_patience)
    factor = 0.0
    ended: dict[str, Any] | None = None  # when the schedule ended early, and why
    low_state: dict[str, torch.Tensor] = {}  # the averaged weights at the validation loss's minimum
    low_step = 0

    t0 = time.perf_counter()
    start = validate(averaged.net, data, dev, post, adj, autocast)
    val_cost = time.perf_counter() - t0
    start_state = clone_state(averaged.net)
    best: ValScore | None = None  # the best trained step
    best_state, best_step = start_state, 0
    last: ValScore | None = start
    last_val_step, last_val_t = 0, time.perf_counter()
    step = 0
    losses: list[float] = []
    t0 = time.perf_counter()

    def progress(now: float) -> float:
        p = step / tc.steps
        return max(p, (now - t0) / budget) if budget else p

    def clock(now: float) -> float:  # the plateau's clock: seconds with a time budget, else steps
        return now - t0 if budget else float(step)

    def run_validation() -> None:
        nonlocal best, best_state, best_step, last, last_val_step, last_val_t, val_cost, ended
        nonlocal low_state, low_step
        tv = time.perf_counter()
        with rng_t.active():
            last = validate(averaged.net, data, dev, post, adj, autocast)
        val_cost = time.perf_counter() - tv
        last_val_step, last_val_t = step, time.perf_counter()
        if last is not None and (best is None or last.score > best.score):
            best, best_state, best_step = last, clone_state(averaged.net), step
        passes = step * passes_per_step  # times over the painting was seen
        learnt = last is not None and start is not None and last.score > start.score + tc.start_margin
        if last is not None and step > 0 and plateau.observe(last.nll, progress(last_val_t),
                                                             clock(last_val_t), factor,
                                                             passes=passes, learnt=learnt):
            # the decay starts from the weights of the minimum: what came after it was memorising
            net.load_state_dict(low_state)
            averaged.net.load_state_dict(low_state)
            ended = {"step": step, "seconds": round(last_val_t - t0, 1), "from_step": low_step,
                     "best_validation_loss": round(plateau.best, 4),
                     "reason": f"the validation loss had not improved for {plateau.patience} "
                               f"validations"}
        elif plateau.improved:
            low_state, low_step = clone_state(averaged.net), step

    def validation_due(now: float) -> bool:
        if not data.has_validation:
            return False
        if live is not None:  # live: by the clock, never more than ~10 % of the time
            return now - last_val_t >= max(10.0, 9.0 * val_cost)
        if budget is None or tc.val_every:
            return step % val_every == 0
        # with a time budget: ~15 validations per run, never more than ~10 % of the time
        return now - last_val_t >= max(budget / 15.0, 9.0 * val_cost)

    def result() -> UNetModel:
        if data.has_validation and last_val_step != step:
            run_validation()  # stopped early: score the weights reached so far
        trained: ValScore | None = None  # the validation score of the trained weights kept
        if not data.has_validation or live is not None:  # live: the held-back objects change
            kept, state, kept_step, trained = "final averaged", clone_state(averaged.net), step, last
        elif best is None:
            kept, state, kept_step = "no step trained", start_state, 0
        else:
            if tc.keep == "best":
                kept, state, kept_step, trained = "best validated", best_state, best_step, best
            else:
                kept, state, kept_step, trained = "final averaged", clone_state(averaged.net), step, last
            if start.score > trained.score + tc.start_margin:  # validation really says so
                kept, state, kept_step = "start", start_state, 0
        scored = trained if kept in ("best validated", "final averaged") else start
        out = UNet(arch)
        out.load_state_dict(state)
        out.eval()
        if adj is not None:
            with torch.no_grad():
                out.head.bias += adj
        prov = training_provenance(model, mode, widen, data, tc, lr, step, kept_step, start, scored, kept,
                           adj, losses, seed, dev, precision, masks, background_label,
                           time.perf_counter() - t0, 0.0 if trained is None else trained.score)
        prov["background_prior"] = post.background_prior
        prov["ended_early"] = ended
        if threads_before is not None:
            prov["cpu_threads"] = prov_threads
        if estimate is not None:
            prov["budget_estimate"] = {"seconds_per_step": round(estimate.seconds_per_step, 3),
                                       "steps": estimate.steps}
        prov["members_planned"] = k
        if live_data is not None:
            prov["live"] = {"painting_changes": live_data.changes,
                            "seconds": round(time.perf_counter() - t0, 1),
                            "painting_version": live_data.version}
        nm = name or (f"{model.name}-finetuned" if model is not None else f"unet-{mode}")
        desc = (f"fine-tuned from {model.name}" if model is not None else "trained from scratch") + \
            f" on {len(data.planes)} painted plane(s), {step} steps" + \
            (", live while the user painted" if live is not None else "") + \
            f"; {prov['validation']['note']}"
        return UNetModel(net=out, normalization=normalization, postprocessing=post, name=nm,
                         description=desc, provenance=prov)

    # CPU: one thread per core that other processes leave free (more make every step wait for
    # preempted threads), for this run only
    threads_before = None
    if dev.type == "cpu":
        threads_before = torch.get_num_threads()
        prov_threads = cpu_threads(usable_cores(), busy_cores())
        torch.set_num_threads(prov_threads)
    try:
        while live is not None or step < tc.steps:
            now = time.perf_counter()
            if should_stop(stop) or (budget is not None and now - t0 >= budget) or \
                    (live is not None and live[0].stopped) or plateau.done(clock(now)):
                break
            if live_data is not None:
                new = live_data.refresh()  # a changed painting is trained on from this step
                if new is not None:
                    data = new
                    post = post_for(data)
            factor = (min(1.0, 0.1 + 0.9 * step / LIVE_WARMUP_STEPS) if live is not None
                      else plateau.factor(clock(now)) if plateau.ending
                      else schedule(progress(now), tc.warmup, tc.cosine_decay))
            for g in opt.param_groups:
                g["lr"] = lr * factor
            with rng_t.active():
                x, t, w = sample_batch(data, rng, tc.batch_size, tc.sampling,
                                       tc.foreground_fraction, tc.background_fraction)
                xt = torch.from_numpy(x).to(dev)
                tt = torch.from_numpy(t).to(dev)
                wt = torch.from_numpy(w).to(dev)
                xt, (tt, wt) = augment(xt, [tt, wt], tc.augmentation, gen)
                xt = xt.contiguous(memory_format=torch.channels_last)
                tt = center_crop(tt, data.out_size)
                wt = center_crop(wt, data.out_size)
                with autocast():
                    logits = net(xt)
                loss = training_loss(tc.loss, logits.float(), tt, wt)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if tc.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, tc.grad_clip)
                opt.step()
                averaged.update()
            step += 1
            if step == 2:
                t_probe = time.perf_counter()  # the first steps warm up kernels and caches
            if budget is not None and live is None and step == PROBE_STEPS:
                # the steps the budget holds here (validation: up to a tenth), said to the user
                estimate = BudgetEstimate((time.perf_counter() - t_probe) / (step - 2), budget)
                budget_note = estimate.sentence()
            if probe and step == PROBE_STEPS:  # probe: a time budget, so budget is set
                probe = False
                rate = 1.0 / max(estimate.seconds_per_step, 1e-9)  # type: ignore[union-attr]
                expect = rate * 0.9 * budget
                k = tc.members_for(True, steps=expect, passes=expect * passes_per_step)
                if k > 1:  # the first of k networks: its share of the budget
                    budget /= k
                    which = f"network {member + 1} of {k}: "
            lv = float(loss.detach())
            losses.append(lv)
            now = time.perf_counter()
            if validation_due(now) or (live is None and step == tc.steps):
                if data.has_validation:
                    run_validation()
            if live_preview is not None and live_preview.due():
                with rng_t.active():
                    ev = live_preview.run(averaged.net, data, dev, post, adj, step)
                if ev is not None:
                    yield ev
            now = time.perf_counter()
            if live is not None:
                eta, total = None, step
            elif plateau.ending:  # the final decay: its end is known
                left = plateau.remaining(clock(now))
                rate = step / max(now - t0, 1e-9) if budget else 1.0
                eta = left if budget else left * (now - t0) / step
                total = min(tc.steps, step + int(round(left * rate)))
            elif budget is not None:
                eta = max(0.0, budget - (now - t0))
                total = min(tc.steps, max(step, int(round(step / max(progress(now), 1e-9)))))
            else:
                eta = (now - t0) / step * (tc.steps - step)
                total = tc.steps
            yield StepDone(step=step, total=total, loss=lv,
                           val_score=None if last is None else last.score,
                           best_score=max((v.score for v in (start, best) if v is not None),
                                          default=None),
                           eta_s=eta,
                           val_iou=None if last is None else last.iou,
                           val_f1=None if last is None else last.f1,
                           validation=which + data.validation_note + (
                               f"; {live_data.message}" if live_data is not None and live_data.message
                               else "") + ("; the painting is learnt (the validation loss stopped "
                                           "improving): finishing early" if plateau.ending else ""),
                           painting_version=None if live_data is None else live_data.trained_version,
                           network=member, networks=k,
                           budget=budget_note,
                           budget_short=estimate is not None and estimate.too_few)
    except GeneratorExit:
        # closed by the caller: end cleanly (Python >= 3.13 hands this value to close())
        return result()
    finally:
        if threads_before is not None:
            torch.set_num_threads(threads_before)
    return result()

