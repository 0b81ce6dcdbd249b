"""A 2D U-Net lifted to a 3D U-Net that starts out equal to it, plane by plane.

Fine-tuning a 3D U-Net from a few painted slices needs a start that already knows the images: a 3D
network from scratch would have to learn the objects' appearance from two slices. The lifted
network keeps every 2D filter as an in-plane 1x3x3 filter on levels that neither pool nor
convolve along z (the anisotropic levels of nnU-Net), and turns the deepest ``z_blocks`` blocks
(the bottom, then the levels above it) into 3x3x3 convolutions whose only non-zero taps are the
middle plane's: before any training its output on a volume equals the 2D model on every plane;
fine-tuning can then learn what the planes above and below say, where the context is widest.
"""

from __future__ import annotations

import torch

from napari_unet.core.network.unet import UNet, UNetConfig


def lifted_config(cfg: UNetConfig, z_blocks: int = 1) -> UNetConfig:
    """The 3D configuration of a lifted 2D U-Net: no level pools z; the bottom block and the
    ``z_blocks - 1`` deepest levels convolve 3x3x3, the others 1x3x3."""
    if cfg.dims != 2:
        raise ValueError("only a 2D U-Net can be lifted to 3D; this one is already 3D")
    if not 0 <= int(z_blocks) <= cfg.depth + 1:
        raise ValueError(f"z_blocks must be from 0 to {cfg.depth + 1} (the levels and the bottom), "
                         f"got {z_blocks!r}")
    zc = tuple(level >= cfg.depth + 1 - int(z_blocks) for level in range(cfg.depth + 1))
    d = cfg.to_dict()
    d.update(dims=3, z_pooling=[False] * cfg.depth, z_convolution=list(zc))
    return UNetConfig.from_dict(d)


def lift_network(net: UNet, z_blocks: int = 1) -> UNet:
    """A 3D UNet with the weights of the 2D ``net`` (see the module docstring)."""
    out = UNet(lifted_config(net.config, z_blocks))
    src = net.state_dict()
    dst = out.state_dict()
    with torch.no_grad():
        for name, w3 in dst.items():
            w2 = src[name]
            if w3.ndim == w2.ndim:  # biases
                w3.copy_(w2)
            else:  # (O, I, kh, kw) -> (O, I, kz, kh, kw): the 2D filter on the middle plane
                w3.zero_()
                w3[:, :, w3.shape[2] // 2] = w2
    out.load_state_dict(dst)
    return out
