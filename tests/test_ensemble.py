"""Ensembles of fine-tuned networks: the mean of their probabilities, the model file, tiling, and
training that shares its budget between networks holding back different objects."""

import json
import threading

import numpy as np
import pytest
import torch
from fake_clock import use_fake_clock
from helpers import drain, tiny_model
from safetensors import safe_open
from safetensors.torch import save_file

from napari_unet.cli.main import main
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import (
    ModelFileError,
    UNetModel,
    read_header,
    save_model,
)
from napari_unet.core.network.ensemble import UNetEnsemble
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.predict2d import predict_image
from napari_unet.core.segment import segment_image
from napari_unet.core.train import TrainConfig, prepare_data, train

pytestmark = pytest.mark.usefixtures("one_thread")


def nets(n=2, classes=2, padding="valid", seed=0, base=4, jitter=True):
    torch.manual_seed(seed)
    names = ("background", "object") if classes == 2 else ("background", "boundary", "interior")
    cfg = UNetConfig(depth=2, base_channels=base, padding=padding, num_classes=classes,
                     class_names=names)
    out = []
    for _ in range(n):
        net = UNet(cfg)
        if jitter:
            with torch.no_grad():  # members that disagree: a random head bias each
                net.head.bias.normal_(0, 1)
        out.append(net.eval())
    return out


# the model these tests train from: 8 base channels, classes named as training names them
START = dict(base_channels=8, training_names=True, eval_mode=True)


def fast(**kw):
    base = dict(steps=60, batch_size=4, patch_size=64, val_every=10, val_min_total=0,
                val_min_objects=1, precision="fp32", lr=3e-3, freeze_encoder=False)  # tiny bases
    base.update(kw)
    return TrainConfig(**base)


# ---------------------------------------------------------------------------- the network
def test_forward_gives_the_mean_of_the_members_probabilities():
    members = nets(3, classes=3)
    ens = UNetEnsemble(members).eval()
    x = torch.randn(2, 1, 92, 92)
    with torch.no_grad():
        p = torch.softmax(ens(x), 1)
        want = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        single = torch.softmax(members[0](x), 1)
    torch.testing.assert_close(p, want, atol=1e-6, rtol=1e-5)
    assert (p - single).abs().max() > 1e-3  # not one member's output
    assert torch.equal(p.argmax(1), want.argmax(1))
    with pytest.raises(ValueError, match="at least 2"):
        UNetEnsemble(members[:1])
    other = UNet(UNetConfig(depth=2, base_channels=8))
    with pytest.raises(ValueError, match="one architecture"):
        UNetEnsemble([members[0], other])


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_file_round_trip_and_tiled_equals_whole_image(tmp_path, padding):
    model = UNetModel(UNetEnsemble(nets(2, padding=padding)), name="two")
    path = save_model(model, tmp_path / "two.safetensors")
    assert read_header(path)["ensemble"] == 2
    with safe_open(str(path), "pt") as f:
        assert all(k.startswith(("members.0.", "members.1.")) for k in f.keys())
    back = load_model(path)
    assert back.members == 2 and isinstance(back.net, UNetEnsemble)
    img = np.random.default_rng(0).random((150, 133)).astype(np.float32)
    a = predict_image(img, model, output="probabilities", device="cpu", tile_size=64)
    b = predict_image(img, back, output="probabilities", device="cpu", tile_size=512)
    np.testing.assert_allclose(a, b, atol=1e-5)  # the file's weights, tiled == whole image
    one = predict_image(img, UNetModel(back.net.members[0]), output="probabilities", device="cpu")
    assert np.abs(a - one).max() > 1e-3
    # a header whose ensemble size does not match the weights is a clear error, not a guess
    with safe_open(str(path), "pt") as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata()
    h = json.loads(meta["napari_unet"])
    for bad, msg in ((3, "do not match"), (0, "ensemble size")):
        h["ensemble"] = bad
        save_file(state, str(tmp_path / "bad.safetensors"), metadata={"napari_unet": json.dumps(h)})
        with pytest.raises(ModelFileError, match=msg):
            load_model(tmp_path / "bad.safetensors")


def test_how_many_networks_by_default():
    two_minutes = TrainConfig(minutes=2)
    # the steps and passes over the painting that the budget holds, as the loop measures them
    assert two_minutes.members_for(True, steps=380, passes=340) == 1  # brightfield, 2 min, 2 cores
    assert TrainConfig(minutes=3).members_for(True, steps=560, passes=500) == 2
    assert TrainConfig(minutes=5).members_for(True, steps=950, passes=850) == 3
    assert TrainConfig(minutes=20).members_for(True, steps=3800, passes=3400) == 3  # at most 3
    assert two_minutes.members_for(True, steps=1000, passes=300) == 1  # a big painting: passes count
    assert two_minutes.members_for(True) == 1  # before the speed is measured
    assert two_minutes.members_for(False, steps=950, passes=850) == 1  # nothing tells a bad network
    assert two_minutes.members_for(True, live=True, steps=950, passes=850) == 1
    assert TrainConfig(steps=900).members_for(True, steps=900, passes=900) == 1  # no time budget
    assert TrainConfig(members=4).members_for(False) == 4
    for bad in (0, 9, 1.5, True):
        with pytest.raises(ValueError, match="members"):
            TrainConfig(members=bad)


@pytest.mark.parametrize("step_s, steps, seconds", [
    (0.1, [19, 18, 17], 6.2),  # ~9 steps/s: the budget holds ~49 steps, 3 networks' worth of 8 (at most 3)
    (0.3, [12, 7], 6.3),  # ~3 steps/s: ~17 steps, two networks
    (0.45, [12], 6.0),  # ~2 steps/s: ~11 steps, one network
])
def test_a_time_budget_decides_the_networks_from_the_machines_speed(colony, monkeypatch, step_s,
                                                                    steps, seconds):
    """Automatic: the loop measures its first steps, and a budget that holds k networks' worth
    of steps trains k, sharing the budget. The machine's speed is a fake clock (``step_s`` seconds
    per step, 0.05 s per validation), so the answer is exact on any machine under any load."""
    from napari_unet.core.train import config as config_module

    monkeypatch.setattr(config_module, "NETWORK_STEPS", 8)
    monkeypatch.setattr(config_module, "NETWORK_PASSES", 0.01)  # the steps decide, not the passes
    use_fake_clock(monkeypatch, step_s=step_s, val_s=0.05)
    imgs, labs = colony
    cfg = fast(steps=10**6, minutes=0.1, val_every=None, plateau_patience=0)  # 6 s
    events, model = drain(train(imgs, labs, model=tiny_model(**START), config=cfg, device="cpu", seed=0),
                          keep_events=True)
    k = len(steps)
    assert [e.step for e in events] == list(range(1, sum(steps) + 1))
    # the speed is known after the probe's steps: one network until then, then the ensemble's size
    probe = config_module.PROBE_STEPS
    assert all(e.networks == 1 for e in events[:probe - 1]) and events[probe - 1].networks == k
    assert [e.network for e in events] == [i for i, n in enumerate(steps) for _ in range(n)]
    assert events[-1].eta_s == 0.0  # the budget is spent
    prov = model.provenance
    # 6 s, and what ends after it: the step that crosses it, each later network's score at its
    # start and the last one's final validation (0.05 s each)
    assert prov["training_seconds_measured"] == seconds
    if k == 1:
        assert model.members == 1 and prov["steps"] == steps[0] and "ensemble" not in prov
        return
    runs = prov["ensemble"]
    assert [r["steps"] for r in runs] == steps and [r["holdback_seed"] for r in runs] == list(range(k))
    # the first network, slowed by the probe, had its share (6 s / k); later ones share what is left
    assert all(r["seconds"] <= 6.0 / k + step_s + 2 * 0.05 + 1e-9 for r in runs[1:])


# ---------------------------------------------------------------------------- training
def test_networks_share_the_budget_and_hold_back_different_objects(colony, tmp_path, capsys):
    imgs, labs = colony
    base = tiny_model(**START)
    events, model = drain(train(imgs, labs, model=base, config=fast(members=2), device="cpu", seed=0),
                          keep_events=True)
    assert [e.step for e in events] == list(range(1, 61))  # counted over both networks
    assert [e.network for e in events] == [0] * 30 + [1] * 30 and {e.networks for e in events} == {2}
    assert events[0].validation.startswith("network 1 of 2") and \
        events[-1].validation.startswith("network 2 of 2")
    assert all(e.total == 60 for e in events)
    prov = model.provenance
    runs = prov["ensemble"]
    assert [r["steps"] for r in runs] == [30, 30] and [r["holdback_seed"] for r in runs] == [0, 1]
    assert [r["seed"] for r in runs] == [0, 1] and prov["steps"] == 60
    # each network validated on its own objects: the hold-backs differ
    held = []
    for hs in (0, 1):
        d = prepare_data(imgs, labs, config=model.config, normalization=model.normalization,
                         mode="boundary", train_config=fast(holdback_seed=hs))
        held.append([set(np.unique(p.holdback.instances).tolist()) - {0} for p in d.planes])
        assert all(h for h in held[-1])
    assert held[0] != held[1]
    for r in runs:  # each scored on its own objects; left out only when the start was better
        assert r["in_ensemble"] == (r["start"]["score"] <= r["validation"]["score"] + 0.05)
    assert all(r["in_ensemble"] for r in runs)
    assert model.members == 2 and prov["validation"]["kept"] == "ensemble"
    assert "ensemble of 2 networks" in model.description
    out = segment_image(imgs[0], model, output="instances", device="cpu")
    assert out.shape == imgs[0].shape and out.max() > 0
    # the CLI: --members, the file and the summary line
    import tifffile

    tifffile.imwrite(tmp_path / "a.tif", imgs[0])
    tifffile.imwrite(tmp_path / "a_labels.tif", labs[0].astype(np.uint16))
    bpath = save_model(base, tmp_path / "base.safetensors")
    assert main(["train", "--images", str(tmp_path / "a.tif"), "--labels", str(tmp_path / "a_labels.tif"),
                 "--base-model", str(bpath), "--steps", "4", "--members", "2", "--patch-size", "32",
                 "--batch-size", "2", "--val-fraction", "0", "--device", "cpu", "--quiet",
                 "--output", str(tmp_path / "m.safetensors")]) == 0
    assert "trained 2 networks one after the other" in capsys.readouterr().out
    m = load_model(tmp_path / "m.safetensors")
    assert m.members == 2 and len(m.provenance["ensemble"]) == 2


def test_networks_worse_than_the_start_are_left_out(colony):
    """A learning rate that wrecks every network: none joins, the start comes back with its warning."""
    imgs, labs = colony
    good = drain(train(imgs, labs, model=tiny_model(**START), config=fast(),
                       device="cpu", seed=0))
    assert good.provenance["validation"]["best"]["score"] > 0.3
    wreck = fast(steps=8, val_every=2, lr=50.0, warmup=0.0, members=2)
    model = drain(train(imgs, labs, model=good, config=wreck, device="cpu", seed=0))
    prov = model.provenance
    assert [r["in_ensemble"] for r in prov["ensemble"]] == [False, False]
    assert model.members == 1 and prov["validation"]["kept"] == "start"
    assert "WARNING" in model.description
    for k, t in model.net.state_dict().items():
        assert torch.equal(t, good.net.state_dict()[k])


def test_stop_during_the_second_network(colony):
    imgs, labs = colony
    stop = threading.Event()
    gen = train(imgs, labs, model=tiny_model(**START), config=fast(members=2),
                device="cpu", seed=0, stop=stop)
    events = []
    while True:
        try:
            ev = next(gen)
        except StopIteration as s:
            model = s.value
            break
        events.append(ev)
        if ev.step == 34:
            stop.set()
    assert events[-1].step == 34 and events[-1].network == 1
    prov = model.provenance
    runs = prov["ensemble"]
    assert len(runs) == 2 and [r["steps"] for r in runs] == [30, 4]
    assert runs[0]["in_ensemble"]
    # the stopped network joins only when validation scored it above the start by the margin
    assert runs[1]["in_ensemble"] == (runs[1]["validation"]["score"] > runs[1]["start"]["score"] + 0.05)
    assert model.members == (2 if runs[1]["in_ensemble"] else 1)
    if not runs[1]["in_ensemble"]:
        assert "1 other network(s) trained and left out" in model.description


def test_fine_tuning_an_ensemble_starts_each_network_from_its_own(colony):
    imgs, labs = colony
    base_nets = nets(2, classes=3, seed=3)
    base = UNetModel(UNetEnsemble(base_nets), name="pair")
    cfg = fast(steps=2, lr=1e-12, warmup=0.0, ema=0.0, members=2, val_every=1)
    model = drain(train(imgs, labs, model=base, config=cfg, device="cpu", seed=0))
    assert model.members == 2
    for got, want in zip(model.net.members, base_nets, strict=True):
        for k, t in want.state_dict().items():
            torch.testing.assert_close(got.state_dict()[k], t, atol=1e-6, rtol=0)


# ---------------------------------------------------------------------------- exchange
def test_torchscript_and_onnx_files_hold_the_ensemble(tmp_path):
    from napari_unet.core.exchange import ExchangeError
    from napari_unet.core.exchange.bioimageio import export_bioimageio
    from napari_unet.core.exchange.portable import export_onnx, export_torchscript

    model = UNetModel(UNetEnsemble(nets(2)), name="two")
    cfg = model.config
    x = torch.randn(2, 1, cfg.input_size(3 * cfg.grid), cfg.input_size(4 * cfg.grid))
    with torch.no_grad():
        want = torch.softmax(model.net(x), 1)
        ts = torch.jit.load(str(export_torchscript(model, tmp_path / "two.pt")))
        torch.testing.assert_close(torch.softmax(ts(x), 1), want, atol=1e-5, rtol=1e-4)
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from napari_unet.core.exchange.runtime import onnx_session

    sess = onnx_session(str(export_onnx(model, tmp_path / "two.onnx")))
    got = torch.softmax(torch.from_numpy(sess.run(None, {"input": x.numpy()})[0]), 1)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # a bioimage.io package describes one network: a clear message, and no file
    with pytest.raises(ExchangeError, match="ensemble"):
        list(export_bioimageio(model, tmp_path / "two.zip"))
    assert not (tmp_path / "two.zip").exists()
