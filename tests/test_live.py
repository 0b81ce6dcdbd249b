"""Live training (core): the painting changes between steps, the preview, Stop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet._synthetic import rod_colony
from napari_unet.core.events import LiveWaiting, PreviewDone, StepDone, run_to_end
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.segment import segment_image
from napari_unet.core.train import LiveInbox, TrainConfig, live_train, prepare_data, sample_batch
from napari_unet.core.train.live import live_config
from napari_unet.core.train.live_inbox import (
    MEANINGFUL_AGREEMENT,
    LiveData,
    painting_agreement,
    preview_meaning,
)

BG = 1000  # the background label of the scribbles


@pytest.fixture(scope="module")
def colony():
    img, gt = rod_colony(shape=(128, 160), n_cells=10, seed=3, contact=0.05)
    return img, gt.astype(np.int32)


def _config() -> TrainConfig:
    return TrainConfig(batch_size=2, patch_size=64, lr=1e-3)


def _paint_objects(inbox: LiveInbox, gt: np.ndarray, ids) -> None:
    for i in ids:
        sel = gt == i
        ys, xs = np.nonzero(sel)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        cur = inbox.snapshot()[0][0][y0:y1, x0:x1]
        inbox.paint(0, (y0, x0), np.where(sel[y0:y1, x0:x1], i, cur))


def _paint_background(inbox: LiveInbox, gt: np.ndarray, box) -> None:
    y0, y1, x0, x1 = box
    cur = inbox.snapshot()[0][0][y0:y1, x0:x1]
    inbox.paint(0, (y0, x0), np.where(gt[y0:y1, x0:x1] == 0, BG, cur))


def _next_step(gen) -> StepDone:
    while True:
        ev = next(gen)
        if isinstance(ev, StepDone):
            return ev


def test_waits_for_a_painting_then_trains_on_each_change_from_the_next_step(colony):
    img, gt = colony
    inbox = LiveInbox(np.zeros_like(gt))
    gen = live_train(img, inbox, model=load_model("nuclei"), config=_config(), device="cpu",
                     background_label=BG, seed=0, poll=0.0)
    ev = next(gen)
    assert isinstance(ev, LiveWaiting) and "no painted pixel" in ev.message
    _paint_objects(inbox, gt, np.unique(gt)[1:3])  # objects, no background yet: still waiting
    ev = next(gen)
    assert isinstance(ev, LiveWaiting) and "background" in ev.message
    _paint_background(inbox, gt, (0, 40, 0, 160))
    ev = _next_step(gen)
    assert ev.painting_version == inbox.version
    before = inbox.version
    _paint_objects(inbox, gt, np.unique(gt)[3:5])
    assert inbox.version > before
    ev = _next_step(gen)
    assert ev.painting_version == inbox.version  # the very next step used the new painting
    inbox.stop()
    model = run_to_end(gen)
    assert model.provenance["live"]["painting_changes"] == 1
    # Live records no background prior (a few scribbles are no prior of the image)
    assert model.postprocessing.background_prior is None and model.provenance["background_prior"] is None
    assert "live" in model.description


def test_a_new_object_can_be_drawn_into_patches_after_the_change(colony):
    img, gt = colony
    ids = np.unique(gt)[1:]
    lab = np.where(gt == ids[0], ids[0], 0)
    lab[:20] = np.where(gt[:20] == 0, BG, lab[:20])
    inbox = LiveInbox(lab)
    cfg = load_model("nuclei").config

    def build(labs, masks):
        return prepare_data(img, labs[0], None, config=cfg, normalization=load_model("nuclei").normalization,
                            mode="binary", background_label=BG, train_config=_config())

    live = LiveData(inbox, build, inbox.version)
    data = build(*inbox.snapshot()[:2])
    new_id = ids[-1]
    new = gt == new_id
    rng = np.random.default_rng(0)

    def covers_new(d) -> bool:  # a patch centred on the new object's pixels
        fg = set(np.flatnonzero(new).tolist())
        return any(int(c) in fg for c in d.planes[0].fg_centres)

    assert not covers_new(data) and live.refresh() is None  # unchanged painting: no rebuild
    # the change: the first object erased (unknown again), the new one painted
    old = gt == ids[0]
    inbox.paint(0, (0, 0), np.where(old, 0, inbox.snapshot()[0][0]))
    _paint_objects(inbox, gt, [new_id])
    data2 = live.refresh()
    assert data2 is not None and covers_new(data2)
    fg = set(np.flatnonzero(new).tolist())
    assert all(int(c) in fg for c in data2.planes[0].fg_centres)  # only the new object now
    # the patches drawn on objects are centred on it: object at the centre of every target
    x, t, w = sample_batch(data2, rng, 32, "pixels", foreground_fraction=1.0)
    c = data2.out_size // 2 + data2.halo
    assert (t[:, c, c] > 0).all()


def test_live_recipe_samples_painted_background_and_keeps_the_base_encoder(colony):
    """Live's recipe: patches centred on painted background as often as on objects, and the
    contracting path keeps the base model's weights while the rest learns."""
    img, gt = colony
    lab = np.where(np.isin(gt, np.unique(gt)[1:4]), gt, 0)
    lab[:30] = np.where(gt[:30] == 0, BG, lab[:30])
    base = load_model("nuclei")
    data = prepare_data(img, lab, None, config=base.config, normalization=base.normalization,
                        mode="binary", background_label=BG, train_config=_config())
    c = data.out_size // 2 + data.halo
    rng = np.random.default_rng(0)
    _, t, _ = sample_batch(data, rng, 32, "pixels", background_fraction=1.0)
    assert (t[:, c, c] == 0).all()  # every centre on a painted background pixel
    _, t, _ = sample_batch(data, rng, 64, "pixels", 0.5, 0.5)
    assert 16 < (t[:, c, c] == 0).sum() < 48 and 16 < (t[:, c, c] > 0).sum() < 48
    assert (t[:, c, c] >= 0).all()  # never centred on an unknown pixel
    with pytest.raises(ValueError, match="background_fraction"):
        TrainConfig(foreground_fraction=0.6, background_fraction=0.5)

    inbox = LiveInbox(lab)
    gen = live_train(img, inbox, model=base, config=live_config(batch_size=2, patch_size=64),
                     device="cpu", background_label=BG, seed=0, poll=0.0)
    for _ in range(4):
        _next_step(gen)
    inbox.stop()
    model = run_to_end(gen)
    before, after = base.net.state_dict(), model.net.state_dict()
    down = [k for k in after if k.startswith("down.")]
    assert down and all(torch.equal(after[k], before[k]) for k in down)
    for k in ("bottom.", "up.0.", "upconv.0."):  # the rest learnt
        assert any(not torch.allclose(after[n], before[n]) for n in after if n.startswith(k)), k
    assert model.provenance["live"]["painting_changes"] == 0


def test_the_optimiser_state_survives_a_change_of_the_painting(colony):
    """The same painting 'changed' (rebuilt) at step 3 trains to exactly the weights of a run
    without a change: nothing of the optimiser, the averaged weights or the RNG was reset."""
    img, gt = colony
    lab = np.where(np.isin(gt, np.unique(gt)[1:4]), gt, 0)
    lab[:30] = np.where(gt[:30] == 0, BG, lab[:30])

    def run(change_at: int | None) -> dict:
        inbox = LiveInbox(lab)
        gen = live_train(img, inbox, model=load_model("nuclei"), config=_config(), device="cpu",
                         background_label=BG, seed=1, poll=0.0)
        for _ in range(6):
            ev = _next_step(gen)
            if change_at is not None and ev.step == change_at:
                inbox.set_labels(0, lab)  # a change event with the same values
        inbox.stop()
        model = run_to_end(gen)
        assert model.provenance["steps"] == 6
        assert model.provenance["live"]["painting_changes"] == (0 if change_at is None else 1)
        return model.net.state_dict()

    a, b = run(None), run(3)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_preview_of_the_view_equals_segment_and_stop_keeps_that_model(colony):
    img, gt = colony
    lab = np.where(np.isin(gt, np.unique(gt)[1:5]), gt, 0)
    lab[:30] = np.where(gt[:30] == 0, BG, lab[:30])
    inbox = LiveInbox(lab)
    h, w = gt.shape
    gen = live_train(img, inbox, model=load_model("nuclei"), config=_config(), device="cpu",
                     background_label=BG, seed=0, poll=0.0, preview_every=3600)
    _next_step(gen)
    inbox.view(0, (0, h, 0, w))
    preview = None
    while preview is None:
        ev = next(gen)
        if isinstance(ev, PreviewDone):
            preview = ev
    assert preview.box == (0, h, 0, w) and preview.labels.shape == (h, w)
    inbox.stop()
    model = run_to_end(gen)
    assert model.provenance["steps"] == preview.step  # no step after the preview
    ref = segment_image(img, model, output="instances", device="cpu")
    np.testing.assert_array_equal(preview.labels, ref)
    # the preview says how much of the painting in view it agrees with: the same figure as the
    # kept model's segmentation against the painting
    prob = segment_image(img, model, output="probabilities", device="cpu")
    assert preview.agreement is not None
    assert preview.agreement == pytest.approx(painting_agreement(prob[0] < 0.5, lab, BG), abs=1e-3)
    base = load_model("nuclei")
    assert any(not torch.equal(v, base.net.state_dict()[k]) for k, v in model.net.state_dict().items()
               if k in base.net.state_dict() and v.shape == base.net.state_dict()[k].shape)


def test_a_painting_that_cannot_be_trained_on_keeps_the_previous_one(colony):
    img, gt = colony
    lab = np.where(np.isin(gt, np.unique(gt)[1:4]), gt, 0)
    lab[:30] = np.where(gt[:30] == 0, BG, lab[:30])
    inbox = LiveInbox(lab)
    gen = live_train(img, inbox, model=load_model("nuclei"), config=_config(), device="cpu",
                     background_label=BG, seed=0, poll=0.0)
    first = _next_step(gen)
    inbox.set_labels(0, np.where(lab == BG, BG, 0))  # every object erased
    ev = _next_step(gen)
    assert "cannot be trained on" in ev.validation and "previous" in ev.validation
    assert ev.painting_version == first.painting_version
    inbox.stop()
    assert run_to_end(gen) is not None


def test_inbox_refuses_a_change_outside_the_labels():
    inbox = LiveInbox(np.zeros((10, 12), np.int32))
    with pytest.raises(ValueError, match="outside"):
        inbox.paint(0, (8, 0), np.ones((4, 4), np.int32))
    with pytest.raises(ValueError, match="2-D"):
        inbox.paint(0, (0,), np.ones(4, np.int32))
    assert inbox.version == 0


def test_painting_agreement_is_the_mean_of_the_painted_objects_and_background_got_right():
    painted = np.zeros((20, 20), np.int32)
    painted[:5] = BG  # 100 background pixels painted
    painted[10:15, :10] = 3  # 50 object pixels painted
    fg = np.zeros((20, 20), bool)
    fg[10:15, :5] = True  # half the painted object called foreground
    fg[:1] = True  # a fifth of the painted background called foreground
    assert painting_agreement(fg, painted, BG) == pytest.approx(0.5 * (0.5 + 0.8))
    assert painting_agreement(~fg | (painted == 3), painted, BG) == pytest.approx(0.5 * (1 + 0.2))
    # unpainted pixels count nowhere, except as background inside a mask
    assert painting_agreement(fg | (painted == 0), painted, BG) == pytest.approx(0.5 * (0.5 + 0.8))
    mask = np.zeros((20, 20), bool)
    mask[15:] = True  # 100 unpainted pixels that are background, all called foreground here
    got = painting_agreement(fg | mask, painted, BG, mask)
    assert got == pytest.approx(0.5 * (0.5 + 80 / 200))


def test_a_view_with_too_little_painting_has_no_agreement_and_says_so():
    painted = np.zeros((20, 20), np.int32)
    painted[:5] = BG
    painted[10, :5] = 3  # 5 object pixels: too few to score
    assert painting_agreement(np.ones((20, 20), bool), painted, BG) is None
    assert painting_agreement(np.ones((20, 20), bool), np.full((20, 20), 3), BG) is None
    assert "too little painting" in preview_meaning(None)
    assert "still learning" in preview_meaning(MEANINGFUL_AGREEMENT - 0.01)
    assert "do not judge" in preview_meaning(0.5) and "50 %" in preview_meaning(0.5)
    sentence = preview_meaning(MEANINGFUL_AGREEMENT)
    assert "still learning" not in sentence and "not painted" in sentence
