"""Fine-tune widget under a real napari viewer (run with xvfb-run). Skipped until core.train exists."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from napari.layers import Image, Labels
from qtpy.QtCore import Qt

pytest.importorskip("napari_unet.core.train")

PLUGIN = "napari-unet"
TIMEOUT = 180_000  # ms


def click(qtbot, button) -> None:
    qtbot.mouseClick(button.native, Qt.MouseButton.LeftButton)


def setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask, region=True):
    """Viewer with the real nuclei image, labels painted in its top-left quarter, a rectangle
    marking that quarter as completely annotated, and both widgets."""
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="nuclei")
    painted = np.zeros_like(nuclei_mask)
    painted[:256, :256] = nuclei_mask[:256, :256]
    viewer.add_labels(painted, name="painted")
    if region:
        viewer.add_shapes([np.array([[0, 0], [0, 255], [255, 255], [255, 0]])],
                          shape_type="rectangle", name="region")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert seg.load_model_file(str(tiny_model_path)) == "tiny"
    ft.image.value, ft.labels.value = "nuclei", "painted"
    if region:
        ft.region.value = "region"
    ft.settings.base_model.value = "tiny"
    return viewer, seg, ft


def test_finetune_from_painted_layer_then_segment(make_napari_viewer, qtbot, tiny_model_path,
                                                  nuclei_image, nuclei_mask, tmp_path):
    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    labels_before = viewer.layers["painted"].data.copy()
    image_before = nuclei_image.copy()
    ft.settings.steps.value = 3
    ft.settings.device.value = "cpu"
    click(qtbot, ft.add_pair)
    assert ft.pair_list.count() == 1
    click(qtbot, ft.train_button)
    assert ft.running and ft.stop_button.enabled and not ft.train_button.enabled
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    assert ft.model is not None and ft.model_name == "tiny fine-tuned on nuclei"
    assert ft.plot.loss and len(ft.plot.loss) == 3
    assert ft.save_button.enabled and ft.train_button.enabled and ft.export_control.button.enabled
    # the status says what was kept and how many steps it took
    assert ft.status.text().startswith("Model 'tiny fine-tuned on nuclei' ready in the Segment widget")
    assert "trained 3 steps" in ft.status.text()
    # the new model appears in the Segment widget at once, as the current model
    assert "tiny fine-tuned on nuclei" in seg.model.choices
    assert seg.model.value == "tiny fine-tuned on nuclei"
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT)
    out = viewer.layers["nuclei instances"]
    assert isinstance(out, Labels) and out.data.shape == (512, 512)
    np.testing.assert_array_equal(viewer.layers["painted"].data, labels_before)
    np.testing.assert_array_equal(viewer.layers["nuclei"].data, image_before)
    # Save writes a model file that loads back to the same network
    from napari_unet.core.exchange.opening import load_model

    path = ft.save(str(tmp_path / "ft.safetensors"))
    loaded = load_model(path)
    for k, v in ft.model.net.state_dict().items():
        np.testing.assert_array_equal(loaded.net.state_dict()[k].numpy(), v.numpy())

    # seeded: training again with the same seed gives the same weights, another seed others
    def retrain():
        click(qtbot, ft.train_button)
        qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
        return {k: v.clone() for k, v in ft.model.net.state_dict().items()}

    first = {k: v.clone() for k, v in ft.model.net.state_dict().items()}
    again = retrain()
    assert all(torch.equal(first[k], again[k]) for k in first)
    ft.settings.seed.value = 7
    other = retrain()
    assert not all(torch.equal(first[k], other[k]) for k in first)
    # each run kept its model under a number of its own: none replaced another
    runs = ["tiny fine-tuned on nuclei", "tiny fine-tuned on nuclei (2)", "tiny fine-tuned on nuclei (3)"]
    assert [n for n in seg.model.choices if n.startswith("tiny ")] == runs
    assert ft.registry[runs[0]].model is not ft.registry[runs[2]].model


def test_stop_keeps_the_best_model(make_napari_viewer, qtbot, tiny_model_path, nuclei_image,
                                   nuclei_mask):
    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask,
                            region=False)
    lab = viewer.layers["painted"]
    lab.data[300:310, 300:400] = 9  # a background scribble
    ft.settings.scribbles.value = True
    ft.settings.background_label.value = 9
    ft.settings.steps.value = 5000
    ft.settings.device.value = "cpu"
    ft.train()
    qtbot.waitUntil(lambda: ft.progress_bar.value() >= 2, timeout=TIMEOUT)
    # the painting removed while it trains: seen and said, training goes on with its copy
    viewer.layers.remove(lab)
    qtbot.waitUntil(lambda: "'painted' was removed during training" in ft.status.text()
                    and "step" in ft.status.text(), timeout=TIMEOUT)
    click(qtbot, ft.stop_button)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    assert ft.model is not None
    prov = ft.model.provenance
    assert prov["steps"] < 5000 and prov["background_label"] == 9
    assert seg.model.value == ft.model_name
    # the status says it was stopped, what was kept and after how many steps
    assert ft.status.text().startswith(f"Stopped: model '{ft.model_name}' ready")
    assert f"trained {prov['steps']} steps" in ft.status.text()
    assert ft.save_button.enabled and ft.export_control.button.enabled


def test_preview_adds_an_augmented_sample_and_its_weight_map(make_napari_viewer, qtbot,
                                                             tiny_model_path, nuclei_image,
                                                             nuclei_mask):
    viewer, _seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    ft.settings.strength.value = 1.0
    click(qtbot, ft.preview_button)
    qtbot.waitUntil(lambda: ft.preview_worker is None, timeout=TIMEOUT)
    img, wm = viewer.layers["augmented sample"], viewer.layers["augmented weight map"]
    assert isinstance(img, Image) and img.data.shape == (512, 512)
    assert wm.data.shape == (512, 512) and wm.data.max() > 1.0  # border weights (eq. 2)
    # unknown pixels (outside the complete region, which moved with the deformation) weigh 0
    assert (wm.data == 0).mean() > 0.5


def test_training_errors_are_notified(make_napari_viewer, qtbot, tiny_model_path, nuclei_image,
                                      nuclei_mask, notifications):
    viewer, _seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    viewer.add_labels(np.zeros((100, 100), np.uint8), name="wrong size")
    ft.labels.value = "wrong size"
    assert ft.train() is None
    assert any("differ in shape" in str(n.message) for n in notifications)


def test_time_budget_and_what_is_validated_are_shown(make_napari_viewer, qtbot, tiny_model_path,
                                                     nuclei_image, nuclei_mask, monkeypatch):
    """Minutes as the budget (Steps 0 = no step limit); a painting too small to validate says so
    in the status line and keeps the final weights. The training clock is fake (1 s per step), so
    the steps the budget holds are exact on any machine."""
    from fake_clock import use_fake_clock

    use_fake_clock(monkeypatch, step_s=1.0, val_s=0.0)
    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    lab = viewer.layers["painted"]
    few = np.isin(lab.data, np.unique(lab.data[lab.data > 0])[:5])  # five nuclei painted
    lab.data = np.where(few, lab.data, 0)
    ft.settings.minutes.value = 0.1  # 6 s
    ft.settings.steps.value = 0
    ft.settings.device.value = "cpu"
    seen = []
    click(qtbot, ft.train_button)
    ft.worker.yielded.connect(lambda ev: seen.append(ft.status.text()) if hasattr(ev, "step") else None)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    prov = ft.model.provenance
    assert prov["minutes_planned"] == 0.1 and prov["training_seconds_measured"] == 6.0
    assert prov["steps"] == 6 and prov["validation"]["kept"] == "final averaged"
    assert ft.progress_bar.maximum() == 6  # the bar counts seconds of the budget
    assert any("no validation: 5 objects painted" in t for t in seen)
    assert "no validation" in ft.status.text() and "trained" in ft.status.text()


def test_a_budget_too_short_for_this_machine_is_warned_of_while_training_and_after(
        make_napari_viewer, qtbot, tiny_model_path, nuclei_image, nuclei_mask, monkeypatch):
    """Minutes 0.25 on a slow machine (a fake clock: 1 s per step): once the first steps are
    measured the status says what the budget holds and how many minutes would do, a warning says
    it once, and the finished model is said to be undertrained."""
    from fake_clock import use_fake_clock

    from napari_unet._widgets import _finetune

    use_fake_clock(monkeypatch, step_s=1.0, val_s=0.0)
    warned: list[str] = []
    monkeypatch.setattr(_finetune, "show_warning", warned.append)
    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    ft.settings.minutes.value = 0.25  # 15 s: 13 steps (validation may take a tenth)
    ft.settings.steps.value = 0
    ft.settings.members.value = 1
    ft.settings.device.value = "cpu"
    seen = []
    click(qtbot, ft.train_button)
    ft.worker.yielded.connect(lambda ev: seen.append(ft.status.text()) if hasattr(ev, "step") else None)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    said = "a step takes 1.0 s on this machine: 0.25 minutes hold about 13 steps, too few to learn"
    assert any(said in t for t in seen)
    assert sum(said in w for w in warned) == 1  # once, not at every step
    steps = ft.model.provenance["steps"]
    assert any(f"only {steps} steps: too few to learn the painting" in w for w in warned)


def test_an_ensemble_of_networks_from_the_networks_field(make_napari_viewer, qtbot, tiny_model_path,
                                                         nuclei_image, nuclei_mask, tmp_path):
    """Networks = 2: two networks train one after the other (the status says which), the model
    averages them, Segment uses it and Save writes both."""
    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    ft.settings.steps.value = 6
    ft.settings.members.value = 2
    ft.settings.device.value = "cpu"
    click(qtbot, ft.add_pair)
    seen = []
    click(qtbot, ft.train_button)
    ft.worker.yielded.connect(lambda ev: seen.append(ft.status.text()) if hasattr(ev, "step") else None)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    assert ft.model.members == 2 and len(ft.model.provenance["ensemble"]) == 2
    assert any("network 1 of 2" in t for t in seen) and any("network 2 of 2" in t for t in seen)
    assert ft.plot.loss and len(ft.plot.loss) == 6  # the steps of both networks, one curve
    assert ft.plot.starts == [4]  # and a line where the second network began
    assert "trained 2 networks one after the other" in ft.status.text()
    seg.run()
    qtbot.waitUntil(lambda: not seg.running, timeout=TIMEOUT)
    out = viewer.layers["nuclei instances"]
    assert isinstance(out, Labels) and out.data.shape == (512, 512)
    from napari_unet.core.exchange.opening import load_model

    loaded = load_model(ft.save(str(tmp_path / "two.safetensors")))
    assert loaded.members == 2
    for k, v in ft.model.net.state_dict().items():
        np.testing.assert_array_equal(loaded.net.state_dict()[k].numpy(), v.numpy())


def test_the_loss_plot_is_not_flattened_by_a_step_without_objects(qtbot):
    """A step whose patches held no object has a loss near 0: on the log scale it used to pull the
    range down to 1e-8 and draw every other step as one flat line at the top. The range starts at
    the 10th percentile; the bold curve and the figure shown are the running mean."""
    import math

    from napari_unet._widgets._plot import LossPlot

    plot = LossPlot()
    qtbot.addWidget(plot)
    plot.clear(100)
    losses = [1.0 + 0.5 * math.sin(i) for i in range(100)]
    for i in (10, 40, 41, 70, 90):
        losses[i] = 1e-9  # patches of background only
    for i, v in enumerate(losses, start=1):
        plot.add(i, v, None)
    raw, smooth, lo, hi, k = plot.loss_curves()
    assert k == 4 and len(raw) == len(smooth) == 100
    assert lo > -1.0 and hi >= max(raw)  # the outlier does not set the range
    assert math.isclose(10 ** smooth[-1], sum(losses[-4:]) / 4, rel_tol=1e-9)
    plot.resize(300, 120)
    plot.grab()  # paints without error at that range (values below it are drawn at the floor)


def _errors(notes) -> list[str]:
    return [str(n.message) for n in notes if str(getattr(n, "severity", "")).lower() == "error"]


def test_a_failed_fine_tune_says_why_in_the_status_until_the_next_action(
        make_napari_viewer, qtbot, tiny_model_path, nuclei_image, nuclei_mask, notifications):
    """An RGB image under a grey-value model fails in the job: the status line says the same
    sentence as the error notification (not "Preparing 1 pair(s)…", nor the earlier model's
    "ready"), the buttons come back, no model is added, and the sentence stays until the next
    action."""
    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask,
                            region=False)
    ft.settings.steps.value, ft.settings.device.value = 2, "cpu"
    click(qtbot, ft.train_button)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    assert ft.model_name == "tiny fine-tuned on nuclei" and ft.save_button.enabled
    models = list(seg.model.choices)
    rgb = np.repeat((nuclei_image // 256).astype(np.uint8)[..., None], 3, axis=-1)
    viewer.add_image(rgb, name="colour", rgb=True)
    ft.image.value = "colour"
    click(qtbot, ft.train_button)
    assert ft.status.text() == "Preparing 1 pair(s)…"
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    said = _errors(notifications)
    # the pair named by its layers (the core's sentence after the widget's)
    assert len(said) == 1 and said[0].startswith("Fine-tuning failed: 'painted' on 'colour': ")
    assert "3 channel(s)" in said[0], said
    assert ft.status.text() == said[0] == ft.last_error
    assert ft.train_button.enabled and not ft.stop_button.enabled and ft.image.enabled
    assert list(seg.model.choices) == models and ft.model_name == "tiny fine-tuned on nuclei"
    assert ft.save_button.enabled and ft.export_control.button.enabled  # the earlier model stays
    qtbot.wait(200)  # the status is not a notification: it does not vanish
    assert ft.status.text() == said[0]
    ft.image.value = "nuclei"
    click(qtbot, ft.train_button)  # the next action
    assert ft.status.text() == "Preparing 1 pair(s)…" and ft.last_error == ""
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    assert ft.status.text().startswith("Model 'tiny fine-tuned on nuclei (2)' ready")


def test_any_error_of_the_job_reaches_the_status(make_napari_viewer, qtbot, tiny_model_path,
                                                 nuclei_image, nuclei_mask, notifications,
                                                 monkeypatch):
    """torch raises RuntimeErrors (memory, devices, shapes), and napari's generator worker takes a
    RuntimeError for a deleted worker: it ended with neither errored nor finished, and the widget
    waited for ever. The job carries them out: said like any other error, the buttons back."""
    import napari_unet._widgets._train_jobs as training

    def broken(*_a, **_k):
        yield from ()
        raise RuntimeError("CUDA out of memory")

    monkeypatch.setattr(training, "start_training", broken)
    viewer, _seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    ft.settings.steps.value = 2
    click(qtbot, ft.train_button)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    sentence = "Fine-tuning failed: RuntimeError: CUDA out of memory"
    assert _errors(notifications) == [sentence] and ft.status.text() == sentence
    assert ft.train_button.enabled and not ft.save_button.enabled
    # an error before the job starts says so the same way
    viewer.add_labels(np.zeros((100, 100), np.uint8), name="wrong size")
    ft.labels.value = "wrong size"
    assert ft.train() is None
    assert ft.status.text() == _errors(notifications)[-1] != sentence
    assert "'wrong size'" in ft.status.text() and ft.train_button.enabled


def _live_like(model, **prov):
    """``model`` as a Live run hands it back (LiveSession's on_model): provenance["live"] set."""
    import dataclasses

    return dataclasses.replace(model, provenance={**model.provenance, **prov,
                                                  "live": {"painting_changes": 4}})


def test_train_live_and_corrections_models_have_names_of_their_own(
        make_napari_viewer, qtbot, tiny_model_path, nuclei_image, nuclei_mask):
    """Train, Live and a fine-tune on corrections each add a model named by how it was made and
    on which image; a second one of a kind gets a number; the Segment widget lists them all."""
    from napari_unet._widgets._corrections import CORRECTED

    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask,
                            region=False)
    ft.settings.steps.value, ft.settings.device.value = 2, "cpu"
    click(qtbot, ft.train_button)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    trained = ft.model
    assert ft.model_name == "tiny fine-tuned on nuclei"
    # Live from the fine-tuned model: named after the model the chain started from
    ft.settings.base_model.value = "tiny fine-tuned on nuclei"
    ft.on_model(_live_like(trained))
    assert ft.model_name == "tiny live on nuclei" and seg.model.value == "tiny live on nuclei"
    ft.on_model(_live_like(trained))
    assert ft.model_name == "tiny live on nuclei (2)"
    # a correction of the painted layer, then Train on the corrected objects
    lab = viewer.layers["painted"]
    obj = int(lab.data[lab.data > 0][0])
    with lab.block_history():
        lab.data_setitem(np.nonzero(lab.data == obj), 1000)  # an object repainted
    ft.settings.base_model.value = "tiny"
    ft.region.value = CORRECTED
    click(qtbot, ft.train_button)
    qtbot.waitUntil(lambda: not ft.running, timeout=TIMEOUT)
    assert ft.model_name == "tiny corrected on nuclei", ft.status.text()
    ft.on_model(_live_like(trained))  # Live on the corrected objects
    assert ft.model_name == "tiny corrected live on nuclei"
    made = ["tiny fine-tuned on nuclei", "tiny live on nuclei", "tiny live on nuclei (2)",
            "tiny corrected on nuclei", "tiny corrected live on nuclei"]
    assert [n for n in seg.model.choices if n.startswith("tiny ")] == made
    assert [n for n in ft.settings.base_model.choices if n.startswith("tiny ")] == made
    assert ft.registry["tiny fine-tuned on nuclei"].model is trained  # not replaced


def test_save_and_export_are_enabled_after_a_live_model(make_napari_viewer, qtbot, tiny_model_path,
                                                        nuclei_image):
    from napari_unet.core.exchange.opening import load_model

    viewer = make_napari_viewer()
    viewer.add_image(nuclei_image, name="cells")
    _d, seg = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment")
    _d, ft = viewer.window.add_plugin_dock_widget(PLUGIN, "Fine-tune")
    assert seg.load_model_file(str(tiny_model_path)) == "tiny"
    ft.image.value, ft.settings.base_model.value = "cells", "tiny"
    assert not ft.save_button.enabled and not ft.export_control.button.enabled
    live = _live_like(load_model(tiny_model_path), steps=12, training_seconds_measured=3.0,
                      mode="binary", validation={"available": False, "note": "no validation"})
    ft.on_model(live)  # how a Live session hands back its model
    assert ft.save_button.enabled and ft.export_control.button.enabled
    assert ft.status.text().startswith("Model 'tiny live on cells' ready") and \
        "trained 12 steps" in ft.status.text()
    ft.live.on_done()  # and then ends
    assert ft.save_button.enabled and ft.export_control.button.enabled
    assert ft.train_button.enabled and seg.model.value == "tiny live on cells"


def test_progress_is_drawn_a_few_times_a_second_and_every_step_is_kept(
        make_napari_viewer, qtbot, tiny_model_path, nuclei_image, nuclei_mask, monkeypatch):
    """Steps of a fifth of a second: the bar, the status line and the plot are drawn at most every
    SHOW_EVERY_S (an injected clock), yet the plot keeps every step, a budget warning is drawn at
    once, and the end draws the last step."""
    from napari_unet._widgets import _finetune
    from napari_unet.core.events import StepDone

    warned: list[str] = []
    monkeypatch.setattr(_finetune, "show_warning", warned.append)
    viewer, seg, ft = setup(make_napari_viewer, tiny_model_path, nuclei_image, nuclei_mask)
    now = [100.0]
    ft.clock = lambda: now[0]
    ft.progress_bar.setRange(0, 40)
    ft.plot.clear(40)
    for step in range(1, 21):  # 20 steps of 0.2 s: 4 s
        ft.on_event(StepDone(step=step, total=40, loss=1.0 / step))
        now[0] += 0.2
    drawn = ft.progress_bar.value()
    assert len(ft.plot.loss) == 20  # every step recorded
    assert drawn < 20 and drawn % 3 == 1  # steps 1, 4, 7, ...: 0.5 s apart at 0.2 s a step
    assert f"step {drawn}/40" in ft.status.text()
    short = StepDone(step=21, total=40, loss=0.05, budget="a step takes 9 s: too few",
                     budget_short=True)
    ft.on_event(short)  # 0.2 s after step 20: drawn at once, and warned of once
    assert ft.progress_bar.value() == 21 and "too few" in ft.status.text()
    assert warned == ["Fine-tune: a step takes 9 s: too few."]
    ft.on_event(StepDone(step=22, total=40, loss=0.05, budget="a step takes 9 s: too few",
                         budget_short=True))
    assert ft.progress_bar.value() == 21 and len(warned) == 1
    ft._on_finished()  # the run ends: its last step is drawn
    assert ft.progress_bar.value() == 22
