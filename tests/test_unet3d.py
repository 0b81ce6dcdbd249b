"""The 3D U-Net (Cicek et al. 2016): its geometry, its model file, and exact overlap-tile
inference in 3D (tiled output equals the network on the whole padded volume)."""

import numpy as np
import pytest
import torch

from napari_unet.core.exchange.opening import load_model
from napari_unet.core.modelfile.files import UNetModel, save_model
from napari_unet.core.modelfile.normalization import CLIP, Normalization
from napari_unet.core.network import geometry
from napari_unet.core.network.unet import UNet, UNetConfig
from napari_unet.core.predict.padding import mirror_index
from napari_unet.core.predict.predict2d import predict_image
from napari_unet.core.predict.predict3d import predict_volume, predict_volume_image
from napari_unet.core.predict.tiles import plan_tiles


def _net3d(padding="valid", depth=2, z_pooling=(False, True), seed=0, classes=2, z_convolution=()):
    torch.manual_seed(seed)
    return UNet(UNetConfig(depth=depth, base_channels=4, padding=padding, num_classes=classes,
                           dims=3, z_pooling=z_pooling, z_convolution=z_convolution)).eval()


def test_axis_geometry_matches_the_2d_unet():
    for padding in ("valid", "same"):
        for depth in (1, 2, 4):
            cfg = UNetConfig(depth=depth, padding=padding, base_channels=4)
            ax = geometry.Axis.planar(depth, padding == "valid")
            assert ax.halo == cfg.halo and ax.grid == cfg.grid
            for n in range(1, 300):
                want = cfg.output_size(n) if cfg.is_valid_input_size(n) else None
                assert ax.output_size(n) == want
    assert geometry.Axis.planar(4, True).input_size(388) == 572  # the paper's tile
    # levels that neither pool nor convolve along z, a bottom that does: only the bottom's
    # convolutions take planes, and any size is on the grid
    z = geometry.Axis((1, 1), (False, False, True), True)
    assert z.output_size(7) == 3 and z.halo == 2 and z.grid == 1
    assert geometry.Axis((1, 1), (True, True, True), True).output_size(33) == 33 - 4 * 5
    assert geometry.Axis((1, 2, 1), (True,) * 4, False).grid == 2


def test_anisotropic_z_pooling_follows_the_voxel_size():
    assert geometry.anisotropic_z_pooling(3, 5.0) == (False, False, True)  # CHO confocal nuclei
    assert geometry.anisotropic_z_pooling(4, 1.0) == (True,) * 4  # isotropic voxels
    assert geometry.anisotropic_z_pooling(2, 10.0) == (False, False)
    with pytest.raises(ValueError, match="ratio"):
        geometry.anisotropic_z_pooling(2, 0)


def test_3d_unet_shapes_and_config():
    net = _net3d()
    cfg = net.config
    assert isinstance(net.down[0][0], torch.nn.Conv3d) and net.down[0][0].kernel_size == (3, 3, 3)
    assert net.upconv[-1].kernel_size == (1, 2, 2) and net.upconv[0].kernel_size == (2, 2, 2)
    zin, yin = cfg.z_axis.input_size(5), cfg.input_size(20)
    out = net(torch.zeros(1, 1, zin, yin, yin + cfg.grid))
    assert tuple(out.shape) == (1, 2, cfg.z_output_size(zin), 20, 20 + cfg.grid)
    with pytest.raises(ValueError, match="planes along z"):
        cfg.z_output_size(8)  # 8 - 4 - 4 = 0 before the z pooling
    with pytest.raises(ValueError, match="Z, H, W"):
        net(torch.zeros(1, 1, yin, yin))
    with pytest.raises(ValueError, match="one True/False per level"):
        UNetConfig(depth=3, dims=3, z_pooling=(True,))
    with pytest.raises(ValueError, match="3D U-Nets"):
        UNetConfig(depth=2, z_pooling=(True, True))
    assert UNetConfig(depth=2, dims=3).z_pooling == (True, True)
    d = cfg.to_dict()
    assert d["dims"] == 3 and d["z_pooling"] == [False, True] and d["z_convolution"] == [True] * 3
    assert UNetConfig.from_dict(d) == cfg
    assert "dims" not in UNetConfig().to_dict()  # 2D headers stay as they were


def test_3d_model_file_round_trip(tmp_path):
    net = _net3d(padding="same")
    model = UNetModel(net, Normalization())
    path = save_model(model, tmp_path / "nuclei3d.safetensors")
    back = load_model(path)
    assert back.config == net.config
    x = torch.randn(1, 1, 8, 32, 32)
    with torch.no_grad():
        np.testing.assert_array_equal(back.net.eval()(x).numpy(), net(x).numpy())


def _whole_volume_reference(net, vol, padding):
    """Independent reference: normalise the whole volume, pad it once, run the net, crop."""
    cfg = net.config
    v = np.asarray(vol, np.float64)
    d, h, w = v.shape
    stats = Normalization().stats(v.reshape(1, d * h, w), channel_axis=0)
    norm = ((v - stats[0, 0]) / stats[0, 1]).clip(*CLIP).astype(np.float32)
    yx = geometry.Axis.planar(cfg.depth, cfg.padding == "valid")
    halos = (cfg.z_halo, cfg.halo, cfg.halo)
    sizes = []
    for n, ax, hl in zip((d, h, w), (cfg.z_axis, yx, yx), halos, strict=True):
        if cfg.padding == "valid":
            sizes.append(ax.input_size(n))
        else:
            sizes.append(int(np.ceil((n + 2 * hl) / ax.grid) * ax.grid))
    if padding == "mirror":
        idx = [mirror_index(np.arange(-hl, t - hl), n) for hl, t, n in zip(halos, sizes, (d, h, w), strict=True)]
        padded = norm[idx[0][:, None, None], idx[1][None, :, None], idx[2][None, None, :]]
    else:
        fill = float(np.median(norm))
        padded = np.pad(norm, [(hl, t - n - hl) for hl, t, n in zip(halos, sizes, (d, h, w), strict=True)],
                        constant_values=fill)
    with torch.no_grad():
        p = torch.softmax(net(torch.from_numpy(np.ascontiguousarray(padded)[None, None])), 1)[0].numpy()
    s = (0, 0, 0) if cfg.padding == "valid" else halos
    return p[:, s[0]:s[0] + d, s[1]:s[1] + h, s[2]:s[2] + w].transpose(1, 0, 2, 3)


CASES = [  # (net padding, z pooling, z convolution, volume shape); odd sizes throughout
    ("valid", (False, True), (), (5, 37, 45)), ("valid", (True, True), (), (11, 20, 13)),
    ("valid", (False, False), (False, False, True), (5, 37, 45)),
    ("same", (False, True), (), (11, 20, 13)), ("same", (False, False), (False, True, True), (3, 29, 31)),
    # a new 3D U-Net for voxels 2.5 times as deep as wide (volume_architecture((2.5, 1, 1), depth=2))
    ("valid", (False, True), (False, True, True), (7, 37, 45))]


@pytest.mark.parametrize("padding_mode", ["mirror", "zero"])
@pytest.mark.parametrize("net_padding,z_pooling,z_convolution,shape", CASES)
def test_tiled_volume_equals_whole_volume(net_padding, z_pooling, z_convolution, padding_mode, shape):
    net = _net3d(net_padding, z_pooling=z_pooling, z_convolution=z_convolution)
    rng = np.random.default_rng(1)
    vol = rng.gamma(2.0, 300.0, size=shape).astype(np.uint16)
    ref = _whole_volume_reference(net, vol, padding_mode)
    cfg = net.config
    smallest_z = cfg.z_axis.input_size(cfg.z_grid) if net_padding == "valid" \
        else 2 * cfg.z_halo + cfg.z_grid
    tiled = 0
    for tile in ((smallest_z, 200, 200), (200, 1, 200), (smallest_z + 3, 200, 1), 200):
        plan = plan_tiles(cfg, shape, tile)
        tiled = max(tiled, len(plan))
        for o in plan.origins:  # every tile on the pooling grid of its axis
            assert o[0] % cfg.z_grid == 0 and o[1] % cfg.grid == 0 and o[2] % cfg.grid == 0
        out = predict_volume_image(vol, net, tile_size=tile, padding=padding_mode, device="cpu")
        assert out.shape == (shape[0], 2) + shape[1:] and out.dtype == np.float32
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-5)
        sem = predict_volume_image(vol, net, tile_size=tile, padding=padding_mode, device="cpu",
                                   output="semantic")
        np.testing.assert_array_equal(sem, out.argmax(1))
    assert tiled >= 4  # the smallest tiles really cut the volume


def test_time_series_of_volumes_and_progress():
    net = _net3d("same")
    rng = np.random.default_rng(2)
    stack = rng.random((2, 6, 24, 40)).astype(np.float32)  # (T, Z, Y, X)
    gen = predict_volume(stack, net, tile_size=(6, 8 + 2 * net.config.halo, 200), device="cpu")
    events = []
    try:
        while True:
            events.append(next(gen))
    except StopIteration as e:
        out = e.value
    assert out.shape == (2, 6, 2, 24, 40)
    assert [ev.done for ev in events] == list(range(1, len(events) + 1)) and events[-1].total == len(events)
    assert {ev.plane for ev in events} == {0, 1} and len(events) >= 4
    for t in range(2):  # each volume on its own, with its own statistics
        np.testing.assert_allclose(out[t], predict_volume_image(stack[t], net, device="cpu"),
                                   rtol=1e-5, atol=1e-5)
    # axes name Z when it is not the last axis besides Y and X
    zt = np.ascontiguousarray(stack.transpose(1, 0, 2, 3))
    np.testing.assert_allclose(predict_volume_image(zt, net, axes="ZTYX", device="cpu"), out,
                               rtol=1e-5, atol=1e-5)  # the other axes lead, then (Z, classes, Y, X)


def test_3d_and_2d_models_refuse_what_they_cannot_read():
    net3 = _net3d()
    with pytest.raises(ValueError, match="no axis besides Y and X"):
        predict_volume_image(np.zeros((40, 40), np.float32), net3, device="cpu")
    net2 = UNet(UNetConfig(depth=2, base_channels=4))
    with pytest.raises(ValueError, match="needs a 3D U-Net"):
        predict_volume_image(np.zeros((4, 40, 40), np.float32), net2, device="cpu")
    with pytest.raises(ValueError, match="3D"):
        predict_image(np.zeros((4, 40, 40), np.float32), net3, device="cpu")
    vol = np.zeros((4, 40, 40), np.float32)
    vol[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        predict_volume_image(vol, net3, device="cpu")


def test_3d_model_writes_zarr_volume_by_volume_equal_to_memory(tmp_path, monkeypatch):
    """CLI `segment --zarr` with a 3D model: a (T, Z, Y, X) TIFF on disk into zarr, each output
    type equal to in-memory segmentation, built under a hidden name and renamed; a distributed run
    is refused with a message."""
    import tifffile
    import zarr

    from napari_unet.cli.main import main
    from napari_unet.core.segment import segment_image

    rng = np.random.default_rng(5)
    zz, yy, xx = np.mgrid[:6, :36, :44]
    stack = np.stack([
        ((((yy - cy) ** 2 + (xx - cx) ** 2 + (2 * (zz - 3)) ** 2) < 80) * 150
         + rng.integers(0, 40, zz.shape)).astype(np.uint8) for cy, cx in ((12, 14), (22, 30))])
    tifffile.imwrite(tmp_path / "stack.tif", stack)
    model = UNetModel(_net3d("valid", classes=2), name="random 3D")
    save_model(model, tmp_path / "m3.safetensors")
    model = load_model(tmp_path / "m3.safetensors")
    import napari_unet.core.segment as core_segment

    spacings, real = [], core_segment.segment

    def spy(*args, **kwargs):
        spacings.append(kwargs.get("spacing"))
        return real(*args, **kwargs)

    for kind in ("instances", "semantic", "probabilities"):
        out = tmp_path / f"{kind}.zarr"
        monkeypatch.setattr(core_segment, "segment", spy)
        assert main(["segment", str(tmp_path / "stack.tif"), "--model", str(tmp_path / "m3.safetensors"),
                     "--output", str(out), "--output-type", kind, "--zarr", "--device", "cpu",
                     "--spacing", "2", "1", "1", "-q"]) == 0
        monkeypatch.setattr(core_segment, "segment", real)
        # instances: one call per volume of the (T, Z, Y, X) stack; the others stream the stack
        assert spacings == [(2.0, 1.0, 1.0)] * (2 if kind == "instances" else 1)
        spacings.clear()
        got = zarr.open_array(str(out), mode="r")[:]
        want = segment_image(stack, model, output=kind, device="cpu",
                             **({"spacing": (2.0, 1.0, 1.0)} if kind == "instances" else {}))
        assert got.shape == want.shape
        if kind == "probabilities":
            np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert main(["segment", str(tmp_path / "stack.tif"), "--model", str(tmp_path / "m3.safetensors"),
                 "--output", str(tmp_path / "d.zarr"), "--workers", "1", "--device", "cpu", "-q"]) == 1
    assert not (tmp_path / "d.zarr").exists()
