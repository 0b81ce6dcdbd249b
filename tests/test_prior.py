"""Adapting a trained model's background prior to the plane it segments (label shift by EM)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers import tiny_model

from napari_unet.core.events import run_to_end
from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import Postprocessing, UNetModel, save_model
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.postprocess.prior import (
    MAX_ODDS_SHIFT,
    adapt_background_prior,
    estimate_background_prior,
)
from napari_unet.core.segment import segment_image
from napari_unet.core.train import TrainConfig, train_model, training_summary


def posteriors(n: int, prior_bg: float, model_prior_bg: float, seed: int = 0):
    """Pixels of a plane whose true background share is ``prior_bg``, one Gaussian feature per
    class (bg N(0, 1), object N(2, 1)), and the posteriors of the Bayes classifier fitted where
    background was ``model_prior_bg``: (model posteriors (2, n), true posteriors (2, n))."""
    rng = np.random.default_rng(seed)
    is_bg = rng.random(n) < prior_bg
    x = np.where(is_bg, rng.normal(0, 1, n), rng.normal(2, 1, n))
    lik_bg, lik_obj = np.exp(-x**2 / 2), np.exp(-(x - 2) ** 2 / 2)

    def post(pb):
        b = pb * lik_bg
        o = (1 - pb) * lik_obj
        return np.stack([b / (b + o), o / (b + o)]).astype(np.float32)

    return post(model_prior_bg), post(prior_bg)


def test_em_recovers_the_plane_s_background_share_and_the_bayes_posteriors():
    p, truth = posteriors(200_000, prior_bg=0.2, model_prior_bg=0.7)
    p = p.reshape(2, 400, 500)
    bg = estimate_background_prior(p, 0.7)
    assert abs(bg - 0.2) < 0.02
    q, bg2 = adapt_background_prior(p, 0.7)
    assert bg2 == pytest.approx(bg)
    assert np.allclose(q.sum(0), 1, atol=1e-5)
    assert np.abs(q.reshape(2, -1) - truth).max() < 0.05
    # the decision changes where the old prior decided it: more object pixels
    assert (q[1] > 0.5).mean() > (p[1] > 0.5).mean() + 0.05


def test_a_plane_like_the_training_data_is_left_alone():
    p, _ = posteriors(100_000, prior_bg=0.7, model_prior_bg=0.7, seed=1)
    p = p.reshape(2, 200, 500)
    q, bg = adapt_background_prior(p, 0.7)
    assert abs(bg - 0.7) < 0.02
    assert np.abs(q - p).max() < 0.03


def test_the_shift_is_capped_and_a_model_without_a_prior_is_untouched():
    p = np.zeros((3, 50, 50), np.float32)
    p[0] = 0.999
    p[1:] = 0.0005  # a plane the model calls background everywhere
    bg = estimate_background_prior(p, 0.5)
    odds = bg / (1 - bg)
    assert odds == pytest.approx(MAX_ODDS_SHIFT, rel=1e-3)  # capped, not driven to 1
    same, none = adapt_background_prior(p, None)
    assert same is p  # no copy, no change
    assert none is None
    with pytest.raises(ValueError, match="classes"):
        estimate_background_prior(p[0], 0.5)
    with pytest.raises(ValueError, match="background_prior"):
        Postprocessing(background_prior=1.0)


def test_segment_adapts_each_whole_plane_and_tiling_does_not_change_the_result(tmp_path):
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, padding="valid"))
    plain = UNetModel(net, name="plain")
    adapted = UNetModel(net, name="adapted",
                        postprocessing=Postprocessing(background_prior=0.9))
    rng = np.random.default_rng(0)
    img = rng.normal(size=(150, 170)).astype(np.float32)
    img[40:90, 50:120] += 3
    p0 = segment_image(img, plain, output="probabilities", device="cpu")
    whole = segment_image(img, adapted, output="probabilities", device="cpu", tile_size=512)
    tiled = segment_image(img, adapted, output="probabilities", device="cpu", tile_size=44)
    assert np.allclose(whole, tiled, atol=1e-5)
    expected, _ = adapt_background_prior(p0, 0.9)
    assert np.allclose(whole, expected, atol=1e-5)
    assert np.abs(whole - p0).max() > 1e-3  # the adaptation did something
    sem = segment_image(img, adapted, output="semantic", device="cpu", tile_size=44)
    assert np.array_equal(sem, np.argmax(whole, axis=0))
    # round trip through a model file; a file without the field reads as None
    save_model(adapted, tmp_path / "a.safetensors")
    assert load_model(tmp_path / "a.safetensors").postprocessing.background_prior == 0.9
    save_model(plain, tmp_path / "p.safetensors")
    assert load_model(tmp_path / "p.safetensors").postprocessing.background_prior is None


def test_training_records_the_painting_s_background_share_and_zarr_refuses_block_wise(tmp_path):
    from napari_unet.batch import segment_to_zarr

    rng = np.random.default_rng(0)
    img = rng.normal(size=(96, 96)).astype(np.float32)
    lab = np.zeros((96, 96), np.int32)
    lab[10:30, 10:30] = 1
    lab[50:80, 40:70] = 2
    img[lab > 0] += 2
    base = tiny_model()
    cfg = dict(steps=2, batch_size=2, patch_size=32, val_fraction=0.0, precision="fp32")
    m = train_model(img, lab, model=base, config=TrainConfig(**cfg), device="cpu", seed=0,
                    mode="binary")
    share = float((lab == 0).mean())
    assert m.postprocessing.background_prior == pytest.approx(share, abs=1e-5)
    off = train_model(img, lab, model=base, config=TrainConfig(**cfg, prior_adaptation=False),
                      device="cpu", seed=0, mode="binary")
    assert off.postprocessing.background_prior is None
    assert dataclasses.replace(m.postprocessing, background_prior=None) == off.postprocessing
    # the CLI and the widget say so
    assert f"(the painting's: {100 * share:.0f} %)" in training_summary(m.provenance)
    assert "share of background" not in training_summary(off.provenance)
    with pytest.raises(ValueError, match="block by block"):
        run_to_end(segment_to_zarr(img, m, tmp_path / "out.zarr", output_type="semantic", device="cpu"))
    assert not (tmp_path / "out.zarr").exists()
    run_to_end(segment_to_zarr(img, off, tmp_path / "ok.zarr", output_type="semantic", device="cpu"))
    assert (tmp_path / "ok.zarr").exists()
