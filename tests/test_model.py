"""The U-Net of the paper: architecture, geometry and initialisation."""

import math

import pytest
import torch

from napari_unet.core.network.unet import UNet, UNetConfig


def test_paper_geometry_572_to_388():
    cfg = UNetConfig()  # paper defaults: depth 4, 64 channels, valid
    assert cfg.output_size(572) == 388
    assert cfg.input_size(388) == 572
    assert cfg.halo == 92


def test_paper_net_has_23_conv_layers_and_paper_channels():
    net = UNet(UNetConfig(base_channels=64))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d | torch.nn.ConvTranspose2d)]
    assert len(convs) == 23  # paper section 2
    assert [b[0].out_channels for b in net.down] + [net.bottom[0].out_channels] == [64, 128, 256, 512, 1024]
    assert net.head.kernel_size == (1, 1)


@pytest.mark.parametrize("depth", [1, 2, 3, 4])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_geometry_matches_running_the_model(depth, padding):
    cfg = UNetConfig(depth=depth, base_channels=2, padding=padding, num_classes=3)
    net = UNet(cfg).eval()
    sizes = cfg.valid_input_sizes(1, 300) if padding == "valid" else [cfg.grid * k for k in (1, 2, 5)]
    assert sizes
    for n in sizes[:4]:
        with torch.no_grad():
            y = net(torch.zeros(1, 1, n, n + (cfg.grid if padding == "same" else 0) * 0))
        assert y.shape[1] == 3
        expected = cfg.output_size(n) if padding == "valid" else n
        assert y.shape[-1] == expected


def test_valid_sizes_keep_every_pooling_even():
    cfg = UNetConfig(depth=4)
    for n in cfg.valid_input_sizes(100, 700):
        m = n
        for _ in range(cfg.depth):
            m -= 4
            assert m % 2 == 0
            m //= 2
    assert 572 in cfg.valid_input_sizes(500, 600)
    assert 573 not in cfg.valid_input_sizes(500, 600)


def test_invalid_size_error_names_nearest_valid_sizes():
    cfg = UNetConfig(depth=4, base_channels=2)
    with pytest.raises(ValueError, match="nearest valid sizes: 556 or 572"):
        cfg.output_size(570)
    net = UNet(cfg)
    with pytest.raises(ValueError, match="even"):
        net(torch.zeros(1, 1, 570, 572))


def test_same_padding_keeps_size_and_rejects_off_grid():
    cfg = UNetConfig(depth=3, base_channels=2, padding="same")
    net = UNet(cfg).eval()
    with torch.no_grad():
        assert net(torch.zeros(2, 1, 40, 24)).shape == (2, 2, 40, 24)
    with pytest.raises(ValueError, match="divisible by 8"):
        net(torch.zeros(1, 1, 41, 24))


def test_input_channels_checked():
    net = UNet(UNetConfig(in_channels=3, depth=1, base_channels=2))
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        net(torch.zeros(1, 1, 20, 20))


def test_he_normal_initialisation_std():
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=16, depth=2))
    conv = net.down[1][2]  # 3x3 conv with 32 input channels: N = 9 * 32
    std = conv.weight.std().item()
    assert abs(std - math.sqrt(2 / (9 * 32))) / math.sqrt(2 / (9 * 32)) < 0.05
    assert torch.all(conv.bias == 0)


def test_dropout_at_end_of_contracting_path_only_in_training():
    torch.manual_seed(0)
    net = UNet(UNetConfig(depth=2, base_channels=4, dropout=0.5))
    x = torch.randn(1, 1, 44, 44)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
    net.train()
    with torch.no_grad():
        assert not torch.equal(net(x), net(x))
    assert isinstance(net.dropout, torch.nn.Dropout)


def test_forward_backward_multiclass():
    cfg = UNetConfig(depth=2, base_channels=4, num_classes=7)  # dental X-ray variant: 7 classes
    net = UNet(cfg)
    x = torch.randn(2, 1, 44, 44)
    y = net(x)
    loss = torch.nn.functional.cross_entropy(y, torch.randint(0, 7, (2,) + y.shape[-2:]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


@pytest.mark.parametrize("bad", [dict(depth=0), dict(num_classes=1), dict(padding="reflect"),
                                 dict(dropout=1.0), dict(class_names=("a",))])
def test_config_validation(bad):
    with pytest.raises(ValueError):
        UNetConfig(**bad)


def test_config_round_trip():
    cfg = UNetConfig(in_channels=2, num_classes=3, depth=3, base_channels=8, padding="same",
                     class_names=("bg", "edge", "cell"))
    assert UNetConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown"):
        UNetConfig.from_dict({**cfg.to_dict(), "bogus": 1})


def test_flops_per_pixel_of_paper_net_about_2_mflop():
    # FACTS.md: the paper's valid 64-channel U-Net costs ~2.0 MFLOP per output pixel on 572 tiles
    cfg = UNetConfig()
    assert 1.9e6 < cfg.flops_per_output_pixel(572) < 2.1e6
    # same-padded base 64: ~1.47 MFLOP per pixel (FACTS.md), no halo
    same = UNetConfig(padding="same")
    assert 1.3e6 < same.tile_flops(512) / 512**2 < 1.6e6


def test_geometry_of_every_size_is_the_axis_model():
    """UNetConfig's sizes along Y and X are those of Axis.planar; the paper's 572 -> 388 among them,
    and a size far below the smallest valid one names that size (not a StopIteration)."""
    from napari_unet.core.network.geometry import Axis

    for depth in (1, 2, 4):
        for padding in ("valid", "same"):
            cfg = UNetConfig(depth=depth, padding=padding, base_channels=2)
            ax = Axis.planar(depth, padding == "valid")
            assert cfg.yx_axis == ax and (cfg.halo, cfg.grid) == (ax.halo, ax.grid)
            for n in range(1, 400):
                assert cfg.is_valid_input_size(n) == ax.is_valid(n)
                assert cfg.nearest_valid_input_sizes(n) == ax.nearest_valid(n)
                assert cfg.input_size(n) == ax.input_size(n)
    with pytest.raises(ValueError, match="nearest valid sizes: 188$"):
        UNetConfig(depth=4).output_size(5)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_bioimageio_architecture_file_stands_alone(tmp_path, padding):
    """The architecture file of a bioimage.io package (geometry.py, then unet.py, then the package's
    wrapper) builds and runs the network where napari_unet cannot be imported."""
    import subprocess
    import sys

    from napari_unet.core.exchange.bioimageio import ARCH_CALLABLE, architecture_source

    arch = tmp_path / "arch.py"
    arch.write_text(architecture_source(), encoding="utf-8")
    cfg = UNetConfig(depth=2, base_channels=2, padding=padding)
    torch.manual_seed(0)
    net = UNet(cfg).eval()
    torch.save(net.state_dict(), tmp_path / "w.pt")
    n = cfg.input_size(30)
    x = torch.randn(1, 1, n, n)
    torch.save(x, tmp_path / "x.pt")
    code = f"""
import sys, runpy, torch
sys.modules["napari_unet"] = None  # not installed: any import of it fails
ns = runpy.run_path({str(arch)!r})
net = ns[{ARCH_CALLABLE!r}](**{cfg.to_dict()!r}).eval()
net.load_state_dict(torch.load({str(tmp_path / "w.pt")!r}))
with torch.no_grad():
    torch.save(net(torch.load({str(tmp_path / "x.pt")!r})), {str(tmp_path / "y.pt")!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
    with torch.no_grad():
        expected = torch.softmax(net(x), dim=1)
    assert torch.equal(torch.load(tmp_path / "y.pt"), expected)
