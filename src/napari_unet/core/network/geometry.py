"""The geometry of a U-Net, one axis at a time: :class:`Axis`, the one model of it.

Along one axis a U-Net's levels pool (by 2, or by 1 where they leave the axis alone) and convolve
(3 taps, or 1 tap: nnU-Net's in-plane 1x3x3 convolutions on strongly anisotropic voxels, Cicek et
al. 2016). The plain U-Net's Y and X axes pool and convolve at every level (:meth:`Axis.planar`);
a 3D U-Net's z axis may not. :class:`Axis` answers the questions of the overlap-tile strategy
(paper Fig. 2) along that axis: which input sizes keep every pooling on a size it divides, what size
comes out, how much context an output pixel needs, and which grid tile offsets must sit on for tiled
output to equal the whole image. Beside it: the anisotropic pooling rule and voxel-size checks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Axis:
    """One axis of a U-Net, for the overlap-tile strategy.

    Parameters
    ----------
    pools : tuple of int
        The pooling factor of each level along this axis, the first level first (2: the level's
        2x2 max pooling halves the axis; 1: it leaves the axis alone).
    spans : tuple of bool
        One per level, then one for the bottom block: whether that block's two convolutions reach
        along this axis (3 taps) or not (1 tap: the 1x3x3 convolutions of anisotropic levels).
    valid : bool
        True for unpadded convolutions (the paper's: each 3-tap one takes 2 pixels), False for
        zero-padded ("same") ones, which keep the size.

    Sizes are in pixels (voxels along z); input sizes are sizes of a network input tile.
    """

    pools: tuple[int, ...]
    spans: tuple[bool, ...]
    valid: bool

    @classmethod
    def planar(cls, depth: int, valid: bool) -> Axis:
        """Y or X of any U-Net: every level pools by 2 and convolves along it.

        Parameters
        ----------
        depth : int
            Number of poolings of the contracting path (4 in the paper).
        valid : bool
            Unpadded (True) or same-padded (False) convolutions.

        Returns
        -------
        Axis
            Its geometry: for ``Axis.planar(4, True)`` an input of 572 gives 388 (paper Fig. 1).
        """
        return cls((2,) * depth, (True,) * (depth + 1), valid)

    def _loss(self, level: int) -> int:  # level == len(pools): the bottom block
        return 4 if self.valid and self.spans[level] else 0

    @property
    def grid(self) -> int:
        """Pooling grid in pixels: the product of the poolings (2**depth for Y and X). Tile offsets
        that are multiples of it keep every pooling window where the whole image has it."""
        return math.prod(self.pools)

    def output_size(self, n: int) -> int | None:
        """The network's output size along this axis for an input of ``n`` pixels.

        Parameters
        ----------
        n : int
            Input size in pixels.

        Returns
        -------
        int or None
            Output size in pixels, or None when a pooling meets a size it does not divide or
            nothing is left (``n`` is not a valid input size).
        """
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
        """Whether an input of ``n`` pixels passes every pooling and leaves an output (bool)."""
        return self.output_size(n) is not None

    def input_size(self, out: int) -> int:
        """The smallest valid input whose output covers ``out`` pixels.

        Parameters
        ----------
        out : int
            Wanted output size in pixels (below 1 counts as 1).

        Returns
        -------
        int
            Input size in pixels (572 for an output of 388 on ``Axis.planar(4, True)``).
        """
        n = max(int(out), 1)
        while (o := self.output_size(n)) is None or o < out:
            n += 1
        return n

    def nearest_valid(self, n: int) -> tuple[int | None, int]:
        """The valid input sizes nearest ``n``.

        Parameters
        ----------
        n : int
            An input size in pixels, valid or not.

        Returns
        -------
        tuple of (int or None, int)
            The largest valid size at or below ``n`` (None when there is none) and the smallest
            valid size at or above ``n``, in pixels.
        """
        below = next((m for m in range(int(n), 0, -1) if self.is_valid(m)), None)
        above = max(int(n), 1)
        while not self.is_valid(above):
            above += 1
        return below, above

    @property
    def halo(self) -> int:
        """Context pixels an output pixel needs on each side (int). Valid: exactly the border the
        network loses per side (92 for ``Axis.planar(4, True)``: 572 -> 388). Same-padded: the
        receptive-field radius rounded up to the grid, so that cropping that margin from each tile
        reproduces the whole-image output exactly."""
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

    @property
    def smallest_tile(self) -> int:
        """The smallest input tile in pixels that keeps one grid step of output: valid, the input
        for an output of one grid step; same-padded, the halo on both sides plus one grid step."""
        return self.input_size(self.grid) if self.valid else 2 * self.halo + self.grid


def anisotropic_z_pooling(depth: int, z_ratio: float) -> tuple[bool, ...]:
    """Which levels of a 3D U-Net pool z.

    A level pools z once the voxel there is no longer strongly anisotropic (z spacing below twice
    the y/x spacing, nnU-Net's rule); before that it pools only Y and X, which halves the anisotropy.

    Parameters
    ----------
    depth : int
        Number of levels (poolings) of the 3D U-Net.
    z_ratio : float
        How many times as deep as wide a voxel is (the layer's scale: z spacing / xy spacing), > 0.

    Returns
    -------
    tuple of bool
        One per level, the first level first: True where its pooling also halves z. Confocal
        nuclei at ratio 5 and depth 3: (False, False, True).
    """
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
    """The levels of a 3D U-Net whose pooling also halves z, as said to users.

    Parameters
    ----------
    z_pooling : sequence of bool
        Per level, whether its pooling halves z (:attr:`UNetConfig.z_pooling`).

    Returns
    -------
    list of int
        Those levels, numbered from 1 (the first level).
    """
    return [level + 1 for level, pools in enumerate(z_pooling) if pools]


def voxel_size(spacing: tuple[float, ...] | list[float]) -> tuple[float, float, float]:
    """A volume's (Z, Y, X) voxel size, checked.

    Parameters
    ----------
    spacing : sequence of float
        Three voxel sizes (Z, Y, X), in any one unit.

    Returns
    -------
    tuple of three floats
        The sizes; a ValueError unless they are three finite numbers > 0.
    """
    sp = tuple(float(v) for v in spacing)
    if len(sp) != 3 or not all(math.isfinite(v) and v > 0 for v in sp):
        raise ValueError(f"the voxel size needs three sizes > 0 (Z, Y, X), got {tuple(spacing)!r}")
    return sp  # type: ignore[return-value]
