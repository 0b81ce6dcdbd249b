"""Overlap-tile inference (paper Fig. 2): tiled output equals whole-image output."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from napari_unet.core.device import resolve_device
from napari_unet.core.events import TileDone
from napari_unet.core.modelfile.files import UNetModel
from napari_unet.core.modelfile.normalization import CLIP, Normalization
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.checks import smallest_tile
from napari_unet.core.predict.layout import infer_layout
from napari_unet.core.predict.padding import mirror_index
from napari_unet.core.predict.predict2d import predict, predict_image
from napari_unet.core.predict.tiles import plan_tiles


def _net(padding="valid", depth=2, in_channels=1, classes=2, seed=0):
    torch.manual_seed(seed)
    return UNet(UNetConfig(depth=depth, base_channels=4, padding=padding, in_channels=in_channels,
                           num_classes=classes)).eval()


def _whole_image_reference(net, img, padding):
    """Independent reference: normalise the whole image, pad it ONCE, run the net, crop."""
    padded, (h, w), s = _pad_whole_image(net, img, padding)
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(padded[None].copy())), 1)[0].numpy()
    return p[:, s : s + h, s : s + w]


def _pad_whole_image(net, img, padding):
    """The normalised image padded once to a valid network input; its (h, w) and output offset."""
    cfg = net.config
    img = np.asarray(img, np.float64)
    chw = img if img.ndim == 3 else img[None]
    stats = Normalization().stats(chw, channel_axis=0)
    norm = ((chw - stats[:, 0, None, None]) / stats[:, 1, None, None]).clip(*CLIP).astype(np.float32)
    _, h, w = norm.shape
    halo = cfg.halo
    if cfg.padding == "valid":
        th, tw = cfg.input_size(h), cfg.input_size(w)
    else:
        g = cfg.grid
        th, tw = (int(np.ceil((s + 2 * halo) / g) * g) for s in (h, w))
    if padding == "mirror":
        ry = mirror_index(np.arange(-halo, th - halo), h)
        rx = mirror_index(np.arange(-halo, tw - halo), w)
        padded = norm[:, ry[:, None], rx[None, :]]
    else:
        # zero padding: one constant beyond the border, the plane's median (core.padding.zero_context)
        fill = [float(np.median(c)) for c in norm]
        padded = np.stack([np.pad(c, ((halo, th - h - halo), (halo, tw - w - halo)), constant_values=f)
                           for c, f in zip(norm, fill, strict=True)])
    return padded, (h, w), 0 if cfg.padding == "valid" else halo


@pytest.mark.parametrize("padding_mode", ["mirror", "zero"])
@pytest.mark.parametrize("net_padding", ["valid", "same"])
@pytest.mark.parametrize("shape", [(67, 45), (13, 150), (1, 37), (29, 1), (1, 1), (200, 201)])
def test_tiled_equals_whole_image(net_padding, padding_mode, shape):
    net = _net(net_padding)
    rng = np.random.default_rng(0)
    img = rng.gamma(2.0, 300.0, size=shape).astype(np.uint16)  # real-like skewed intensities
    ref = _whole_image_reference(net, img, padding_mode)
    for tile in (smallest_tile(net.config), 64, 100):
        plan = plan_tiles(net.config, shape, tile)
        out = predict_image(img, net, tile_size=tile, padding=padding_mode, device="cpu")
        assert out.shape == (2,) + shape and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        if max(shape) > 100 and tile < 64:
            assert len(plan) > 4  # really tiled


def test_paper_depth_tiling_exact_with_many_tiles():
    net = _net("valid", depth=4)
    img = np.random.default_rng(1).normal(size=(150, 170)).astype(np.float32)
    ref = _whole_image_reference(net, img, "mirror")
    out = predict_image(img, net, tile_size=220, device="cpu")
    assert len(plan_tiles(net.config, img.shape, 220)) >= 4
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)


class _Probe(torch.nn.Module):
    """A 'network' whose right output is known exactly: the centre crop of its input, as logits
    (x, -x), so the tiled probabilities must equal sigmoid(2 x) of the normalised image."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, x):
        cfg = self.config
        if cfg.padding == "valid":
            n = cfg.output_size(x.shape[-2]), cfg.output_size(x.shape[-1])
            dy, dx = (x.shape[-2] - n[0]) // 2, (x.shape[-1] - n[1]) // 2
            x = x[..., dy : dy + n[0], dx : dx + n[1]]
        return torch.cat([x[:, :1], -x[:, :1]], dim=1)


@settings(max_examples=40, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(0, 120),
       padding=st.sampled_from(["valid", "same"]), depth=st.integers(1, 3))
def test_tiles_abut_exactly_probe(h, w, tile, padding, depth):
    cfg = UNetConfig(depth=depth, base_channels=1, padding=padding)
    tile += smallest_tile(cfg)  # smaller tiles are refused (tests/test_bad_inputs.py)
    probe = _Probe(cfg)
    img = np.arange(h * w, dtype=np.float32).reshape(h, w)
    out = predict_image(img, probe, tile_size=tile, device="cpu",
                        normalization=Normalization("fixed", offset=0.0, scale=float(h * w)))
    expected = 1 / (1 + np.exp(-2 * img / (h * w)))
    np.testing.assert_allclose(out[0], expected, rtol=1e-6, atol=1e-6)


@settings(max_examples=15, deadline=None)
@given(h=st.integers(1, 90), w=st.integers(1, 90), tile=st.integers(0, 120),
       padding=st.sampled_from(["valid", "same"]), depth=st.integers(1, 3))
def test_tta_undoes_each_flip_and_rotation_probe(h, w, tile, padding, depth):
    """The probe commutes with flips and rotations, so test-time augmentation must give back
    exactly its plain output: any transform not undone (or undone wrongly) on any tile,
    square or not, would move pixels."""
    cfg = UNetConfig(depth=depth, base_channels=1, padding=padding)
    tile += smallest_tile(cfg)
    img = np.arange(h * w, dtype=np.float32).reshape(h, w)
    norm = Normalization("fixed", offset=0.0, scale=float(h * w))
    out = predict_image(img, _Probe(cfg), tile_size=(tile, tile + 16), device="cpu",
                        normalization=norm, tta=True)
    np.testing.assert_allclose(out[0], 1 / (1 + np.exp(-2 * img / (h * w))), rtol=1e-6, atol=1e-6)


def _whole_image_tta_reference(net, img, padding):
    """The 8 flips/rotations of the whole padded image, each through the net and back, averaged."""
    padded, (h, w), _ = _pad_whole_image(net, img, padding)
    acc = 0
    for k in range(4):
        for flip in (False, True):
            x = np.rot90(padded, k, axes=(1, 2))
            x = x[:, :, ::-1] if flip else x
            with torch.no_grad():
                p = torch.softmax(net(torch.from_numpy(x[None].copy())), 1)[0].numpy()
            p = p[:, :, ::-1] if flip else p
            acc = acc + np.rot90(p, -k, axes=(1, 2))
    return (acc / 8)[:, :h, :w]


@pytest.mark.parametrize("padding_mode", ["mirror", "zero"])
@pytest.mark.parametrize("shape", [(67, 45), (120, 131)])
def test_tta_tiled_equals_whole_image(padding_mode, shape):
    net = _net("valid")
    img = np.random.default_rng(3).gamma(2.0, 300.0, size=shape).astype(np.uint16)
    ref = _whole_image_tta_reference(net, img, padding_mode)
    plain = predict_image(img, net, padding=padding_mode, device="cpu")
    assert np.abs(plain - ref).max() > 1e-3  # the averaging changes the output
    for tile in (smallest_tile(net.config), 64, (52, 100)):
        out = predict_image(img, net, tile_size=tile, padding=padding_mode, device="cpu", tta=True)
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
    sem = predict_image(img, net, tile_size=64, padding=padding_mode, device="cpu", tta=True,
                        output="semantic")
    np.testing.assert_array_equal(sem, ref.argmax(0))


def test_mirror_index_matches_numpy_reflect():
    for n in (1, 2, 3, 8):
        a = np.arange(n)
        ref = np.pad(a, (40, 40), mode="reflect") if n > 1 else np.zeros(n + 80, int)
        assert np.array_equal(a[mirror_index(np.arange(-40, n + 40), n)], ref)


def test_plan_steps_on_pooling_grid():
    cfg = UNetConfig(depth=4)
    # 388 + 3 * 384 = 1540: four tiles of the paper's 572 -> 388, stepping by 384 (388 is not a
    # multiple of 16: a 388 step would shift the pooling grid between tiles)
    plan = plan_tiles(cfg, (1540, 388), 572)
    assert plan.tile_in == (572, 572) and plan.tile_out == (388, 388)
    assert plan.keep == (384, 384)
    assert [y for y, _ in plan.origins] == [0, 384, 768, 1152]
    for shape, tile in [((2048, 2048), 572), ((2048, 1000), 700), ((700, 1100), 300)]:
        plan = plan_tiles(cfg, shape, tile)
        assert all(y % 16 == 0 and x % 16 == 0 for y, x in plan.origins)
        assert all(cfg.is_valid_input_size(t) and t <= tile for t in plan.tile_in)
        # no more tiles than the requested size needs, and no tile larger than needed
        n_max = len(plan_tiles(cfg, shape, cfg.nearest_valid_input_sizes(tile)[0]))
        assert len(plan) == n_max
    # tile size lowered to the nearest valid size and to what covers the image
    assert plan_tiles(cfg, (50, 50), 572).tile_in == (cfg.input_size(50),) * 2


@settings(max_examples=80, deadline=None)
@given(shape=st.tuples(st.integers(1, 300), st.integers(1, 300), st.integers(1, 300)),
       extra=st.tuples(st.integers(0, 200), st.integers(0, 200), st.integers(0, 200)),
       padding=st.sampled_from(["valid", "same"]), depth=st.integers(1, 3),
       z_pooling=st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_one_planner_one_covering_rule_for_planes_and_volumes(shape, extra, padding, depth, z_pooling):
    """The one N-D planner: a plane's plan is the Y and X of a volume's plan of the same U-Net, and
    along every axis of both the tiles start at 0 on the axis's pooling grid, abut (one step apart),
    cover the axis without a spare row, and have valid sizes no larger than asked for."""
    cfg2 = UNetConfig(depth=depth, base_channels=1, padding=padding)
    cfg3 = UNetConfig(depth=depth, base_channels=1, padding=padding, dims=3, z_pooling=z_pooling[:depth])
    asked = (cfg3.z_axis.smallest_tile + extra[0], smallest_tile(cfg2) + extra[1], smallest_tile(cfg2) + extra[2])
    volume = plan_tiles(cfg3, shape, asked)
    plane = plan_tiles(cfg2, shape[1:], asked[1:])
    for name in ("shape", "tile_in", "tile_out", "keep", "kept_max", "context", "skip", "starts"):
        assert getattr(volume, name)[1:] == getattr(plane, name), name
    assert volume.origins == tuple((z,) + yx for z in volume.starts[0] for yx in plane.origins)
    assert plane.origins_in(plane.shape) == plane.origins
    for plan, axes in ((plane, (cfg2.yx_axis,) * 2), (volume, (cfg3.z_axis, cfg3.yx_axis, cfg3.yx_axis))):
        for a, ax in enumerate(axes):
            n, starts, keep, kept_max = plan.shape[a], plan.starts[a], plan.keep[a], plan.kept_max[a]
            assert ax.output_size(plan.tile_in[a]) == plan.tile_out[a] and plan.tile_in[a] <= asked[a - len(axes)]
            assert keep % ax.grid == 0 and keep <= kept_max and plan.skip[a] + kept_max <= plan.tile_out[a]
            assert plan.context[a] == ax.halo and plan.skip[a] == (0 if ax.valid else ax.halo)
            assert starts[0] == 0 and all(s % ax.grid == 0 for s in starts)  # on the pooling grid
            assert all(b - s == keep for s, b in zip(starts[:-1], starts[1:], strict=True))  # abutting
            assert starts[-1] + kept_max >= n  # covering
            assert len(starts) == 1 or starts[-2] + kept_max < n  # no spare row


def test_stack_is_segmented_plane_by_plane():
    net = _net()
    rng = np.random.default_rng(2)
    stack = rng.normal(size=(3, 40, 50)).astype(np.float32) * 10
    out = predict_image(stack, net, tile_size=44, device="cpu")
    assert out.shape == (3, 2, 40, 50)
    for z in range(3):
        np.testing.assert_allclose(out[z], _whole_image_reference(net, stack[z], "mirror"),
                                   rtol=1e-5, atol=1e-5)


def test_channels_and_rgb_for_multichannel_models():
    net = _net(in_channels=3)
    rng = np.random.default_rng(3)
    cyx = rng.integers(0, 255, size=(3, 40, 41)).astype(np.uint8)
    ref = _whole_image_reference(net, cyx, "mirror")
    np.testing.assert_allclose(predict_image(cyx, net, tile_size=44, device="cpu"), ref, atol=1e-5)
    yxc = np.moveaxis(cyx, 0, -1).copy()
    np.testing.assert_allclose(predict_image(yxc, net, tile_size=44, device="cpu"), ref, atol=1e-5)


def test_rgb_for_one_channel_model_is_a_clear_error():
    net = _net()
    rgb = np.zeros((30, 30, 3), np.uint8)
    with pytest.raises(ValueError, match="RGB/multichannel image .* reads 1 channel"):
        predict_image(rgb, net)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64, bool])
def test_dtypes_accepted(dtype):
    img = (np.random.default_rng(4).random((30, 31)) * 100).astype(dtype)
    out = predict_image(img, _net(), tile_size=44, device="cpu")
    assert np.isfinite(out).all()


def test_bad_inputs_are_clear_errors():
    net = _net()
    bad = np.ones((20, 20), np.float32)
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict_image(bad, net)
    inf = np.ones((20, 20), np.float32)
    inf[0, 0] = np.inf
    with pytest.raises(ValueError, match="NaN or infinite"):
        predict_image(inf, net)
    with pytest.raises(ValueError, match="dtype"):
        predict_image(np.ones((20, 20), complex), net)
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        predict_image(np.ones(20), net)
    with pytest.raises(ValueError, match="padding"):
        predict_image(np.ones((20, 20)), net, padding="wrap")
    with pytest.raises(ValueError, match="axes"):
        infer_layout((5, 20, 20), 1, axes="YX")


def test_input_not_modified():
    img = np.random.default_rng(5).normal(size=(40, 40)).astype(np.float32)
    copy = img.copy()
    predict_image(img, _net(), tile_size=44, device="cpu")
    assert np.array_equal(img, copy)


def test_generator_reports_progress_and_stops_between_tiles():
    net = _net()
    img = np.random.default_rng(6).normal(size=(100, 100)).astype(np.float32)
    gen = predict(img, net, tile_size=44, device="cpu")
    events = [next(gen), next(gen)]
    assert all(isinstance(e, TileDone) for e in events)
    assert events[0].done == 1 and events[1].done == 2 and events[0].total > 2
    assert events[0].device == "cpu"
    gen.close()  # cancel: no more work, no error
    with pytest.raises(StopIteration):
        next(gen)
    n = sum(1 for _ in predict(img, net, tile_size=44, device="cpu"))
    assert n == events[0].total
    # test-time augmentation: 8 forward passes per tile, and a stopping point between them
    gen = predict(img, net, tile_size=44, device="cpu", tta=True)
    events = [next(gen) for _ in range(8)]
    assert [e.done for e in events] == [0] * 7 + [1]
    gen.close()
    assert not torch.is_inference_mode_enabled()  # not left on by a suspended pass


def test_semantic_output_streams_into_zarr():
    zarr = pytest.importorskip("zarr")
    net = _net()
    img = np.random.default_rng(7).normal(size=(90, 70)).astype(np.float32)
    z = zarr.zeros((90, 70), chunks=(32, 32), dtype=np.uint8)
    predict_image(img, net, output="semantic", tile_size=44, out=z, device="cpu")
    probs = predict_image(img, net, tile_size=44, device="cpu")
    assert np.array_equal(z[...], probs.argmax(0))


def test_model_normalisation_used_and_model_unchanged():
    net = _net()
    model = UNetModel(net, normalization=Normalization("fixed", offset=10.0, scale=2.0))
    img = np.random.default_rng(8).normal(size=(30, 30)).astype(np.float32)
    a = predict_image(img, model, device="cpu")
    b = predict_image(img, net, device="cpu", normalization=Normalization("fixed", offset=10.0, scale=2.0))
    assert np.array_equal(a, b)
    assert next(net.parameters()).is_contiguous()  # the caller's net keeps its memory layout


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    net = _net()
    img = np.random.default_rng(9).normal(size=(120, 90)).astype(np.float32)
    cpu = predict_image(img, net, tile_size=64, device="cpu")
    gpu = predict_image(img, net, tile_size=64, device="cuda")
    np.testing.assert_allclose(cpu, gpu, atol=1e-4)


def test_counting_percentiles_equal_numpy():
    """Integer images get their normalisation percentiles by counting values: the same float64
    numbers as np.percentile (bitwise), for every integer dtype, ranges and edge quantiles."""
    from napari_unet.core.modelfile.normalization import percentiles

    rng = np.random.default_rng(0)
    for dt in (np.uint8, np.uint16, np.int16, np.int32, np.int64, np.uint32, bool):
        for n in (1, 2, 7, 1000):
            if dt is bool:
                a = rng.integers(0, 2, n).astype(bool)
            else:
                lo = max(np.iinfo(dt).min, -70000)
                a = rng.integers(lo, min(np.iinfo(dt).max, 70000), n, endpoint=True).astype(dt)
            qs = [0.0, 1.0, 37.3, 50.0, 99.8, 100.0]
            np.testing.assert_array_equal(percentiles(a, qs), np.percentile(a.astype(np.float64), qs))
    wide = np.array([0, 2**40, 5], np.int64)  # too wide a range to count: falls back to numpy
    assert percentiles(wide, [50.0]) == [5.0]
