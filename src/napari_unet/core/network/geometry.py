"""Geometry of one axis of a U-Net whose levels may pool or convolve along it or not.

A 3D U-Net on strongly anisotropic voxels (Cicek et al. 2016; nnU-Net) pools only in Y and X on
its first levels, and nnU-Net's anisotropic levels convolve only in-plane (1x3x3): along z those
levels have a pooling factor of 1 and convolutions that take nothing from z. The plain U-Net's Y
and X axes pool and convolve at every level (:meth:`Axis.planar`).

The questions are those of the overlap-tile strategy (paper Fig. 2) along that axis: which input
sizes keep every pooling on a size it divides, what size comes out, how much context an output
voxel needs, and which grid tile offsets must sit on for tiled output to equal the whole volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Axis:
    """One axis of a U-Net: ``pools`` the pooling factor of each level (1 or 2); ``spans``
    whether the convolutions of each level, then of the bottom block, reach along the axis (3
    taps) or not (1 tap: the 1x3x3 convolutions of anisotropic levels); ``valid``: unpadded
    convolutions (each spanning one takes 2 voxels) or same-padded ones."""

    pools: tuple[int, ...]
    spans: tuple[bool, ...]
    valid: bool

    @classmethod
    def planar(cls, depth: int, valid: bool) -> Axis:
        """Y or X of any U-Net: every level pools and convolves."""
        return cls((2,) * depth, (True,) * (depth + 1), valid)

    def _loss(self, level: int) -> int:  # level == len(pools): the bottom block
        return 4 if self.valid and self.spans[level] else 0

    @property
    def grid(self) -> int:
        """Tile offsets that are multiples of this keep every pooling window where the whole
        volume has it."""
        return math.prod(self.pools)

    def output_size(self, n: int) -> int | None:
        """Output size for an input of ``n``, or None when a pooling meets a size it does not
        divide or nothing is left."""
        n = int(n)
        for lv, p in enumerate(self.pools):
            n -= self._loss(lv)
            if n <= 0 or n % p:
                return None
            n //= p
        n -= self._loss(len(self.pools))
        if n <= 0:
            return None
        for lv in range(len(self.pools) - 1, -1, -1):
            n = self.pools[lv] * n - self._loss(lv)
            if n <= 0:
                return None
        return n

    def is_valid(self, n: int) -> bool:
        return self.output_size(n) is not None

    def input_size(self, out: int) -> int:
        """The smallest valid input whose output covers ``out``."""
        n = max(int(out), 1)
        while (o := self.output_size(n)) is None or o < out:
            n += 1
        return n

    def nearest_valid(self, n: int) -> tuple[int | None, int]:
        """The valid input sizes just below or at (None: none) and at or above ``n``."""
        below = next((m for m in range(int(n), 0, -1) if self.is_valid(m)), None)
        above = max(int(n), 1)
        while not self.is_valid(above):
            above += 1
        return below, above

    @property
    def halo(self) -> int:
        """Context voxels an output voxel needs on each side. Valid: exactly the border the network
        loses per side. Same-padded: the receptive-field radius rounded up to the grid, so that
        cropping that margin from each tile reproduces the whole-volume output exactly."""
        if self.valid:
            n = self.input_size(1)
            return (n - self.output_size(n)) // 2  # type: ignore[operator]
        radius, scale = 0, 1
        for lv, p in enumerate(self.pools):
            radius += 2 * scale * self.spans[lv]  # two convolutions on the way down
            radius += (p - 1) * scale  # the pooling window
            scale *= p
        radius += 2 * scale * self.spans[-1]  # the bottom block
        for lv in range(len(self.pools) - 1, -1, -1):
            scale //= self.pools[lv]
            radius += 2 * scale * self.spans[lv]  # two convolutions on the way up
        return int(math.ceil((radius + 1) / self.grid) * self.grid)


def anisotropic_z_pooling(depth: int, z_ratio: float) -> tuple[bool, ...]:
    """Which levels of a 3D U-Net pool z, for voxels ``z_ratio`` times as deep as they are wide
    (the layer's scale: z spacing / xy spacing). A level pools z once the voxel there is no longer
    strongly anisotropic (z spacing below twice the y/x spacing, nnU-Net's rule); before that it
    pools only Y and X, which halves the anisotropy. Confocal nuclei at ratio 5 and depth 3:
    (False, False, True)."""
    if not z_ratio > 0:
        raise ValueError(f"the z / xy voxel size ratio must be > 0, got {z_ratio!r}")
    out, r = [], float(z_ratio)
    for _ in range(int(depth)):
        pool_z = r < 2.0
        out.append(pool_z)
        if not pool_z:
            r /= 2.0
    return tuple(out)


def pooled_levels(z_pooling: tuple[bool, ...] | list[bool]) -> list[int]:
    """The levels (1 = the first) of a 3D U-Net whose pooling also halves z, as said to users."""
    return [level + 1 for level, pools in enumerate(z_pooling) if pools]


def voxel_size(spacing: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """A volume's (Z, Y, X) voxel size as three floats; ValueError unless three finite sizes > 0."""
    sp = tuple(float(v) for v in spacing)
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"the voxel size needs three sizes > 0 (Z, Y, X), got {tuple(spacing)!r}")
    return sp  # type: ignore[return-value]
