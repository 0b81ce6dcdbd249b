"""Data augmentation in torch, batched, on the training device (paper section 3.1).

Elastic deformation: random displacement vectors on a coarse grid (paper: 3x3, Gaussian with 10 px
standard deviation), per-pixel displacements by bicubic interpolation of that grid. The image is
resampled bilinearly; labels, masks and weight maps by nearest neighbour, all with the same sampling
grid, so a painted object moves with its pixels. Flips and 90-degree rotations are folded into the same
sampling grid (one ``grid_sample`` per batch); intensity jitter (contrast and brightness) acts on the
image only. Outside the tile the data is mirrored (as in the overlap-tile strategy).

Randomness comes from a ``torch.Generator`` on the CPU (small draws, then moved to the device), so a
seed gives the same augmentation on every device.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class Augmentation:
    """Augmentation settings.

    ``elastic``: elastic deformation on/off; ``grid_points``: coarse grid points per axis (paper: 3);
    ``sigma``: standard deviation of the coarse displacements in pixels (paper: 10); ``flip``: random
    horizontal/vertical flips; ``rot90``: random 90-degree rotations (square tiles only);
    ``intensity``: jitter amplitude on the normalised image: contrast factor uniform in
    [1 - intensity, 1 + intensity], offset uniform in [-intensity, intensity] times the tile's
    standard deviation (an absolute offset would swamp dim images); 0 = off.
    ``scale``: random zoom, a factor drawn log-uniformly in [1 / (1 + scale), 1 + scale] (0 = off);
    ``rotate``: rotations by any angle (square tiles only). Both fold into the same sampling grid
    as the flips (nnU-Net's spatial augmentation; the paper has shifts, rotations and elastic
    deformation).
    """

    elastic: bool = True
    grid_points: int = 3
    sigma: float = 10.0
    flip: bool = True
    rot90: bool = True
    intensity: float = 0.1
    scale: float = 0.0
    rotate: bool = False

    def __post_init__(self) -> None:
        if int(self.grid_points) < 2:
            raise ValueError(f"Augmentation.grid_points must be >= 2, got {self.grid_points!r}")
        if self.sigma < 0:
            raise ValueError(f"Augmentation.sigma must be >= 0 pixels, got {self.sigma!r}")
        if not 0 <= self.intensity < 1:
            raise ValueError(f"Augmentation.intensity must be in [0, 1), got {self.intensity!r}")
        if not 0 <= self.scale < 1:
            raise ValueError(f"Augmentation.scale must be in [0, 1), got {self.scale!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def none(cls) -> Augmentation:
        return cls(elastic=False, flip=False, rot90=False, intensity=0.0, scale=0.0, rotate=False)


@functools.lru_cache(maxsize=64)
def _cubic_weights(points: int, size: int, device: str) -> torch.Tensor:
    """(size, points) matrix W with W @ v = bicubic interpolation (align_corners) of v to ``size``.

    torch's bicubic upsampling is separable, so a coarse field C (points x points) interpolates to
    Wy @ C @ Wx^T: two small matrix products instead of a full-resolution bicubic kernel.
    """
    basis = torch.eye(points).reshape(points, 1, points, 1).expand(points, 1, points, 2)
    out = F.interpolate(basis, size=(size, 2), mode="bicubic", align_corners=True)
    return out[:, 0, :, 0].T.contiguous().to(device)


def random_displacement(n: int, shape: tuple[int, int], grid_points: int = 3, sigma: float = 10.0,
                        generator: torch.Generator | None = None,
                        device: torch.device | str | None = None) -> torch.Tensor:
    """Smooth random displacements (pixels), float32 (N, 2, H, W): (dy, dx) per pixel.

    Displacements on a ``grid_points`` x ``grid_points`` grid spanning the tile are drawn from
    N(0, sigma^2) and interpolated bicubically to every pixel (paper 3.1); the same values as
    ``F.interpolate(coarse, (H, W), mode="bicubic", align_corners=True)``, computed separably.
    """
    coarse = torch.randn((n, 2, grid_points, grid_points), generator=generator) * float(sigma)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    wy = _cubic_weights(grid_points, int(shape[0]), str(dev))
    wx = _cubic_weights(grid_points, int(shape[1]), str(dev))
    return wy @ coarse.to(dev) @ wx.T


def _dihedral(n: int, shape: tuple[int, int], flip: bool, rot90: bool,
              generator: torch.Generator | None) -> torch.Tensor:
    """(N, 2, 2) integer matrices: random flips and (for square tiles) 90-degree rotations."""
    mats = torch.eye(2).repeat(n, 1, 1)
    if rot90 and shape[0] == shape[1]:
        k = torch.randint(0, 4, (n,), generator=generator)
        r = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        for i in range(n):
            mats[i] = torch.linalg.matrix_power(r, int(k[i]))
    if flip:
        f = torch.randint(0, 2, (n, 2), generator=generator).float() * -2 + 1  # +-1 per axis
        mats = mats * f[:, None, :]
    return mats


def _similarity(n: int, shape: tuple[int, int], scale: float, rotate: bool,
                generator: torch.Generator | None) -> torch.Tensor:
    """(N, 2, 2) matrices: a random rotation by any angle (square tiles only) and a random zoom
    log-uniform in [1 / (1 + scale), 1 + scale] (a zoom z samples the input at p / z)."""
    r = torch.rand((n, 2), generator=generator)
    mats = torch.eye(2).repeat(n, 1, 1)
    if rotate and shape[0] == shape[1]:
        a = r[:, 0] * 2 * torch.pi
        c, s = torch.cos(a), torch.sin(a)
        mats = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], 1)
    if scale > 0:
        z = torch.exp((2 * r[:, 1] - 1) * float(torch.log1p(torch.tensor(scale))))
        mats = mats / z[:, None, None]
    return mats


def sampling_grid(shape: tuple[int, int], displacement: torch.Tensor | None = None,
                  transforms: torch.Tensor | None = None, n: int | None = None,
                  device: torch.device | str | None = None) -> torch.Tensor:
    """``grid_sample`` grid (N, H, W, 2), align_corners=True: output pixel p samples the input at
    A_n (p - c) + c + u_n(p), with A_n a 2x2 (flip/rotation) matrix, c the tile centre and u_n the
    displacement (N, 2, H, W) in pixels (dy, dx). Rotations (off-diagonal A) need H == W.
    """
    h, w = shape
    if displacement is not None:
        n = displacement.shape[0]
        device = displacement.device
    if n is None:
        raise ValueError("give n or a displacement")
    sy, sx = 2.0 / max(h - 1, 1), 2.0 / max(w - 1, 1)
    # normalised coordinates of the output pixels, centred: -1 .. 1
    by = (torch.arange(h, dtype=torch.float32, device=device) * sy - 1.0)[None, :, None]
    bx = (torch.arange(w, dtype=torch.float32, device=device) * sx - 1.0)[None, None, :]
    if transforms is None:
        gy, gx = by, bx
    else:
        a = transforms.to(device=device, dtype=torch.float32)
        if h != w and bool((a[:, 0, 1] != 0).any() or (a[:, 1, 0] != 0).any()):
            raise ValueError("90-degree rotations need a square tile")
        gy = a[:, 0, 0, None, None] * by + a[:, 0, 1, None, None] * bx
        gx = a[:, 1, 0, None, None] * by + a[:, 1, 1, None, None] * bx
    if displacement is not None:
        gy = gy + displacement[:, 0] * sy
        gx = gx + displacement[:, 1] * sx
    grid = torch.empty((n, h, w, 2), dtype=torch.float32, device=device)
    grid[..., 0] = gx  # two strided writes: faster than torch.stack along the last axis
    grid[..., 1] = gy
    return grid


def warp(image: torch.Tensor | None, maps: Sequence[torch.Tensor], grid: torch.Tensor,
         padding_mode: str = "reflection") -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Resample ``image`` (N, C, H, W) bilinearly and each of ``maps`` ((N, H, W) or (N, K, H, W),
    any dtype) by nearest neighbour with the same ``grid``. New tensors; the inputs are unchanged.
    Integer maps keep their dtype and their values (nearest neighbour only copies values). A 3D
    ``grid`` (N, D, H, W, 3) resamples (N, C, D, H, W) images trilinearly and (N, D, H, W) maps.
    """
    out_img = None
    if image is not None:
        out_img = F.grid_sample(image.float(), grid, mode="bilinear", padding_mode=padding_mode,
                                align_corners=True)
    out_maps = []
    for m in maps:
        squeeze = m.ndim == grid.ndim - 1  # no channel axis
        x = m[:, None] if squeeze else m
        if x.is_floating_point():
            ftype = x.dtype
        else:
            big = x.numel() and int(x.abs().max()) >= 2**24
            ftype = torch.float64 if big else torch.float32
        y = F.grid_sample(x.to(ftype), grid.to(ftype), mode="nearest", padding_mode=padding_mode,
                          align_corners=True)
        if not m.is_floating_point():
            y = y.to(m.dtype)  # nearest neighbour copies exact integer values
        out_maps.append(y[:, 0] if squeeze else y)
    return out_img, out_maps


def augment(image: torch.Tensor, maps: Sequence[torch.Tensor], augmentation: Augmentation,
            generator: torch.Generator | None = None,
            displacement: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Augment a batch: ``image`` (N, C, H, W) float, ``maps`` (labels, targets, masks, weight maps;
    (N, H, W) or (N, K, H, W)) deformed with the same field. ``displacement`` (N, 2, H, W) overrides
    the random elastic field (zeros: no deformation). Returns new tensors; the inputs are unchanged.
    """
    n, _, h, w = image.shape
    aug = augmentation
    if displacement is None and aug.elastic and aug.sigma > 0:
        displacement = random_displacement(n, (h, w), aug.grid_points, aug.sigma, generator,
                                           image.device)
    transforms = None
    if aug.flip or aug.rot90:
        transforms = _dihedral(n, (h, w), aug.flip, aug.rot90, generator)
    if aug.scale > 0 or (aug.rotate and h == w):
        sim = _similarity(n, (h, w), aug.scale, aug.rotate, generator)
        transforms = sim if transforms is None else sim @ transforms
    if displacement is None and transforms is None:
        out_img, out_maps = image.float().clone(), [m.clone() for m in maps]
    else:
        grid = sampling_grid((h, w), displacement, transforms, n=n, device=image.device)
        out_img, out_maps = warp(image, maps, grid)
    if aug.intensity > 0:
        r = torch.rand((n, 2), generator=generator).to(image.device)
        scale = 1.0 + (2 * r[:, 0] - 1) * aug.intensity
        # the offset is relative to each tile's spread: a fixed offset would swamp dim images
        spread = out_img.flatten(1).std(dim=1)
        shift = (2 * r[:, 1] - 1) * aug.intensity * spread
        out_img = out_img * scale[:, None, None, None] + shift[:, None, None, None]
    return out_img, out_maps


def elastic_deform(image: torch.Tensor, labels: torch.Tensor, sigma: float = 10.0,
                   grid_points: int = 3,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Elastic deformation only (paper 3.1) of ``image`` (N, C, H, W) and ``labels`` (N, H, W)."""
    n, _, h, w = image.shape
    disp = random_displacement(n, (h, w), grid_points, sigma, generator, image.device)
    out_img, (out_lab,) = warp(image, [labels], sampling_grid((h, w), disp))
    return out_img, out_lab


def elastic_3d(image: torch.Tensor, maps: Sequence[torch.Tensor], grid_points: int = 3,
               sigma: float = 10.0, generator: torch.Generator | None = None,
               z_ratio: float = 1.0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Elastic deformation in 3D (Cicek et al. 2016) of ``image`` (N, Z, H, W) and ``maps`` (each
    (N, Z, H, W), any dtype) with one field: displacements (dz, dy, dx) drawn N(0, sigma^2) (in
    Y/X pixels; z displacements divided by ``z_ratio``, the voxel's depth over its width, so the
    deformation is the same in space, and scaled down for a patch shallower than it is wide, so
    that it is no steeper along z than in the plane) on a ``grid_points``^3 grid spanning the patch and
    interpolated trilinearly to every voxel. The image is resampled trilinearly, the maps by
    nearest neighbour; outside the patch the data is mirrored. New tensors; the inputs are
    unchanged. For near-isotropic voxels; strongly anisotropic ones stay with the in-plane field of
    :func:`augment`."""
    if not z_ratio > 0:
        raise ValueError(f"z_ratio must be > 0, got {z_ratio!r}")
    n, d, h, w = image.shape
    dev = image.device
    coarse = torch.randn((n, 3, grid_points, grid_points, grid_points), generator=generator) * float(sigma)
    # z: in the voxel's proportions, and no larger, relative to the patch's depth, than the in-plane
    # displacements are to its width (a shallow patch would fold: the field spans it all)
    coarse[:, 0] *= min(1.0, (d - 1) / max(min(h, w) - 1, 1)) / float(z_ratio)
    disp = F.interpolate(coarse.to(dev), size=(d, h, w), mode="trilinear", align_corners=True)
    axes = [torch.arange(s, dtype=torch.float32, device=dev) * (2.0 / max(s - 1, 1)) - 1.0
            for s in (d, h, w)]
    grid = torch.empty((n, d, h, w, 3), dtype=torch.float32, device=dev)
    for k, (axis, s) in enumerate(zip(axes, (d, h, w), strict=True)):  # k: z, y, x
        shape = [1, 1, 1, 1]
        shape[k + 1] = s
        # grid_sample takes (x, y, z) in the last axis
        grid[..., 2 - k] = axis.reshape(shape) + disp[:, k] * (2.0 / max(s - 1, 1))
    out_img, out_maps = warp(image[:, None], maps, grid)
    return out_img[:, 0], out_maps
