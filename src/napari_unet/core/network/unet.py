"""The U-Net of Ronneberger, Fischer and Brox (MICCAI 2015): :class:`UNetConfig` and :class:`UNet`.

Paper section 2: a contracting path of blocks of two 3x3 convolutions + ReLU followed by a 2x2 max
pooling (stride 2), channels doubling at each step; an expanding path of 2x2 up-convolutions that halve
the channels, concatenation with the cropped skip connection and two 3x3 convolutions + ReLU; a final
1x1 convolution to the classes. ``padding="valid"`` (the paper's unpadded convolutions) makes the output
smaller than the input by a constant border (the halo); ``padding="same"`` keeps the size. The 3D U-Net
of Cicek et al. 2016 (``dims=3``) is the same network on volumes.

The configuration answers the overlap-tile strategy's questions (paper Fig. 2: which input tile gives
an output tile, which sizes are valid, how much context) through one model of the geometry per axis,
:class:`~napari_unet.core.network.geometry.Axis`. This file is also the architecture file of
bioimage.io packages, preceded there by geometry.py (see ``core/exchange/bioimageio.py``).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from napari_unet.core.network.geometry import Axis

PADDINGS = ("valid", "same")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a U-Net, validated once.

    Parameters
    ----------
    in_channels : int
        Number of image channels the model reads (1 for grey-value microscopy).
    num_classes : int
        Number of output classes of the pixel-wise softmax (2 in the paper's cell tasks, 7 in its
        dental X-ray variant); >= 2.
    depth : int
        Number of 2x2 max poolings in the contracting path (4 in the paper).
    base_channels : int
        Feature channels of the first level (64 in the paper); doubled at each level.
    padding : {"valid", "same"}
        "valid" (paper: unpadded 3x3 convolutions, the output is smaller than the input by twice
        :attr:`halo` pixels) or "same" (zero-padded convolutions, the output has the input's size).
    dropout : float
        Drop-out probability at the end of the contracting path (paper section 3.1), in [0, 1).
    class_names : tuple of str
        One name per class; class 0 is the background class. Default: "background", "class 1", ...
    dims : {2, 3}
        2 (the paper's U-Net on planes, input (N, C, Y, X)) or 3 (the 3D U-Net of Cicek et al.
        2016 on volumes: 3x3x3 convolutions, 2x2x2 poolings, input (N, C, Z, Y, X)).
    z_pooling : tuple of bool
        3D only: per level, whether its pooling (and up-convolution) also halves z; False pools
        only Y and X (levels where the voxel is strongly anisotropic, see
        :func:`~napari_unet.core.network.geometry.anisotropic_z_pooling`). Default: every level
        pools z.
    z_convolution : tuple of bool
        3D only: per level, then for the bottom block, whether its convolutions are 3x3x3 (True,
        Cicek et al.) or in-plane 1x3x3 (False, nnU-Net's anisotropic levels: a 2D U-Net lifted
        to 3D). Default: all 3x3x3.

    Raises ValueError naming the field when a value is out of range. Sizes (``output_size``,
    ``input_size``, ``halo``, ``grid``) are in pixels along Y and X (:attr:`yx_axis`); the ``z_``
    ones in planes along z (:attr:`z_axis`).
    """

    in_channels: int = 1
    num_classes: int = 2
    depth: int = 4
    base_channels: int = 64
    padding: str = "valid"
    dropout: float = 0.5
    class_names: tuple[str, ...] = field(default=())
    dims: int = 2
    z_pooling: tuple[bool, ...] = field(default=())
    z_convolution: tuple[bool, ...] = field(default=())

    def __post_init__(self) -> None:
        def _positive_int(name: str, minimum: int) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"UNetConfig.{name} must be an integer >= {minimum}, got {value!r}")

        _positive_int("in_channels", 1)
        _positive_int("num_classes", 2)
        _positive_int("depth", 1)
        _positive_int("base_channels", 1)
        if self.padding not in PADDINGS:
            raise ValueError(f"UNetConfig.padding must be one of {PADDINGS}, got {self.padding!r}")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"UNetConfig.dropout must be in [0, 1), got {self.dropout!r}")
        names = tuple(self.class_names)
        if not names:
            names = ("background",) + tuple(f"class {i}" for i in range(1, self.num_classes))
        if len(names) != self.num_classes:
            raise ValueError(
                f"UNetConfig.class_names has {len(names)} names for {self.num_classes} classes"
            )
        object.__setattr__(self, "class_names", tuple(str(n) for n in names))
        if self.dims not in (2, 3) or isinstance(self.dims, bool):
            raise ValueError(f"UNetConfig.dims must be 2 or 3, got {self.dims!r}")
        for name, n, what in (("z_pooling", self.depth, "per level"),
                              ("z_convolution", self.depth + 1, "per level and the bottom")):
            v = tuple(getattr(self, name))
            if self.dims == 2 and v:
                raise ValueError(f"UNetConfig.{name} is for 3D U-Nets (dims=3) only")
            if self.dims == 3:
                v = v or (True,) * n
                if len(v) != n or not all(isinstance(b, bool) for b in v):
                    raise ValueError(f"UNetConfig.{name} needs one True/False {what} ({n}), got "
                                     f"{getattr(self, name)!r}")
            object.__setattr__(self, name, v)

    def to_dict(self) -> dict[str, Any]:
        """The configuration as plain JSON types (the model file's header).

        Returns
        -------
        dict
            Field name -> value; a 2D model's dict has no ``dims``, ``z_pooling``,
            ``z_convolution`` (its header stays what it always was).
        """
        d = asdict(self)
        d["class_names"] = list(self.class_names)
        if self.dims == 2:  # a 2D model's header stays what it always was
            del d["dims"], d["z_pooling"], d["z_convolution"]
        else:
            d["z_pooling"], d["z_convolution"] = list(self.z_pooling), list(self.z_convolution)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> UNetConfig:
        """The configuration of a :meth:`to_dict` dict.

        Parameters
        ----------
        d : dict
            Field name -> value; unknown keys are a ValueError.

        Returns
        -------
        UNetConfig
        """
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown U-Net configuration keys: {sorted(unknown)}")
        d = dict(d)
        if "class_names" in d:
            d["class_names"] = tuple(d["class_names"])
        for name in ("z_pooling", "z_convolution"):
            if name in d:
                d[name] = tuple(bool(b) for b in d[name])
        return cls(**d)

    # ------------------------------------------------------------------ geometry
    @property
    def yx_axis(self) -> Axis:
        """The geometry along Y and X (both alike): :meth:`Axis.planar` of this depth and padding.
        The methods below that take no ``z_`` are its answers, in the names models always had."""
        return Axis.planar(self.depth, self.padding == "valid")

    @property
    def grid(self) -> int:
        """Pooling grid in pixels: 2**depth. Tile offsets must be multiples of it for exact tiling."""
        return self.yx_axis.grid

    @property
    def z_pools(self) -> tuple[int, ...]:
        """3D: the pooling factor of each level along z (1 where only Y and X are pooled)."""
        return tuple(2 if b else 1 for b in self.z_pooling)

    @property
    def z_axis(self) -> Axis:
        """3D: the geometry along z (its grid, halo, valid sizes)."""
        return Axis(self.z_pools, self.z_convolution, self.padding == "valid")

    @property
    def z_grid(self) -> int:
        """3D: the pooling grid along z in planes (tile offsets in z are multiples of it)."""
        return self.z_axis.grid

    def z_output_size(self, input_size: int) -> int:
        """3D: the output size along z.

        Parameters
        ----------
        input_size : int
            Input planes along z.

        Returns
        -------
        int
            Output planes; a ValueError naming the nearest valid sizes when ``input_size`` is not
            valid.
        """
        n = self.z_axis.output_size(input_size)
        if n is None:
            below, above = self.z_axis.nearest_valid(input_size)
            near = f"{below} or {above}" if below else f"{above}"
            raise ValueError(f"{input_size} planes along z do not fit this 3D U-Net's poolings; "
                             f"nearest valid sizes: {near}")
        return n

    @property
    def z_halo(self) -> int:
        """3D: context planes an output voxel needs above and below (see :attr:`halo`)."""
        return self.z_axis.halo

    def output_size(self, input_size: int) -> int:
        """Output size along Y or X for an input tile of ``input_size`` pixels.

        Parameters
        ----------
        input_size : int
            Input size in pixels.

        Returns
        -------
        int
            Output size in pixels (388 for 572 with a valid depth-4 model). Raises ValueError
            (naming the nearest valid sizes) when a 2x2 pooling would meet an odd size or the tile
            is too small to give any output.
        """
        n = self.yx_axis.output_size(input_size)
        if n is None:
            raise ValueError(self._invalid_message(input_size))
        return n

    def input_size(self, output_size: int) -> int:
        """Smallest valid input tile whose output covers ``output_size`` pixels.

        Parameters
        ----------
        output_size : int
            Wanted output size in pixels.

        Returns
        -------
        int
            Input size in pixels: for a valid U-Net of depth 4 an output of 388 needs an input of
            572 (paper Fig. 1).
        """
        return self.yx_axis.input_size(output_size)

    def is_valid_input_size(self, input_size: int) -> bool:
        """Whether a tile of ``input_size`` pixels passes every pooling and gives an output."""
        return self.yx_axis.is_valid(input_size)

    def valid_input_sizes(self, lo: int, hi: int) -> list[int]:
        """All valid input tile sizes in [lo, hi] pixels, ascending."""
        return [n for n in range(max(lo, 1), hi + 1) if self.is_valid_input_size(n)]

    def nearest_valid_input_sizes(self, input_size: int) -> tuple[int | None, int]:
        """The valid input sizes just below or at (None if there is none) and just above or at
        ``input_size`` pixels."""
        return self.yx_axis.nearest_valid(input_size)

    def _invalid_message(self, input_size: int) -> str:
        n = int(input_size)
        below, above = self.nearest_valid_input_sizes(n)  # n itself is not valid
        near = f"{below} or {above}" if below else f"{above}"
        return (
            f"input size {n} is not valid for a {self.padding} U-Net of depth {self.depth}: every 2x2 "
            f"max pooling must see an even size; nearest valid sizes: {near}"
        )

    @property
    def halo(self) -> int:
        """Context pixels needed on each side of an output pixel along Y and X.

        For valid models this is exactly the border lost per side (92 for depth 4: 572 -> 388). For
        same-padded models it is the receptive-field radius rounded up to the pooling grid, so that
        cropping that margin from each tile reproduces the whole-image output exactly.
        """
        return self.yx_axis.halo

    def tile_flops(self, input_size: int) -> float:
        """Floating-point operations of one forward pass of a 2D model on a square tile.

        Parameters
        ----------
        input_size : int
            Side of the square input tile in pixels (a valid size, else ValueError).

        Returns
        -------
        float
            FLOPs (2 per multiply-add), convolutions and up-convolutions counted layer by layer.
        """
        self.output_size(input_size)  # validates
        loss = 2 if self.padding == "valid" else 0  # pixels each 3x3 convolution takes
        chans = [self.base_channels * 2**i for i in range(self.depth + 1)]
        n, cin, total, sizes = int(input_size), self.in_channels, 0.0, []
        for level in range(self.depth):
            n -= loss
            total += 2 * 9 * cin * chans[level] * n * n
            n -= loss
            total += 2 * 9 * chans[level] ** 2 * n * n
            sizes.append(n)
            cin = chans[level]
            n //= 2
        n -= loss
        total += 2 * 9 * chans[-2] * chans[-1] * n * n
        n -= loss
        total += 2 * 9 * chans[-1] ** 2 * n * n
        for level in range(self.depth - 1, -1, -1):
            n *= 2
            total += 2 * 4 * chans[level + 1] * chans[level] * (n // 2) ** 2  # 2x2 up-convolution
            n -= loss
            total += 2 * 9 * 2 * chans[level] * chans[level] * n * n
            n -= loss
            total += 2 * 9 * chans[level] ** 2 * n * n
        total += 2 * chans[0] * self.num_classes * n * n
        return total

    def flops_per_output_pixel(self, input_size: int | None = None) -> float:
        """FLOPs per output pixel of a 2D model.

        Parameters
        ----------
        input_size : int, optional
            Side of the square input tile in pixels; default: the paper's 572 for valid depth-4
            models, else the valid size nearest 572.

        Returns
        -------
        float
            :meth:`tile_flops` divided by the output tile's pixels.
        """
        if input_size is None:
            below, above = self.nearest_valid_input_sizes(572)
            input_size = below or above
        out = self.output_size(input_size)
        return self.tile_flops(input_size) / out**2


def _center_crop(x: torch.Tensor, *size: int) -> torch.Tensor:
    """The centre of ``x`` with the last ``len(size)`` axes cut to ``size``."""
    key = [slice(None)] * (x.ndim - len(size))
    for n, want in zip(x.shape[-len(size):], size, strict=True):
        d = (n - want) // 2
        key.append(slice(d, d + want))
    return x[tuple(key)]


class _DoubleConv(nn.Sequential):
    def __init__(self, cin: int, cout: int, padding: int, dims: int = 2, z: bool = True) -> None:
        conv = nn.Conv2d if dims == 2 else nn.Conv3d
        k: Any = 3 if z or dims == 2 else (1, 3, 3)  # 1x3x3: in-plane only
        pad: Any = padding if z or dims == 2 else (0, padding, padding)
        super().__init__(
            conv(cin, cout, k, padding=pad),
            nn.ReLU(inplace=True),
            conv(cout, cout, k, padding=pad),
            nn.ReLU(inplace=True),
        )


class UNet(nn.Module):
    """The U-Net (paper Fig. 1) as a torch module.

    Parameters
    ----------
    config : UNetConfig, optional
        The architecture; or give its fields as keyword arguments instead (not both).

    ``forward`` maps a float32 (N, in_channels, Y, X) tensor (3D: (N, in_channels, Z, Y, X)) to class
    logits (N, num_classes, y, x): with ``padding="valid"`` y = config.output_size(Y) (a valid input
    size; 572 -> 388 at depth 4), with ``"same"`` y = Y (Y a multiple of 2**depth); in 3D z as
    :meth:`UNetConfig.z_output_size`. The softmax is not part of the model; :func:`torch.softmax`
    over dim 1 gives the paper's pixel-wise softmax p_k(x).
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("give either a UNetConfig or keyword arguments, not both")
        self.config = config
        pad = 1 if config.padding == "same" else 0
        chans = [config.base_channels * 2**i for i in range(config.depth + 1)]
        dims = config.dims
        self.down = nn.ModuleList()
        cin = config.in_channels
        zc = config.z_convolution or (True,) * (config.depth + 1)
        for level, c in enumerate(chans[:-1]):
            self.down.append(_DoubleConv(cin, c, pad, dims, zc[level]))
            cin = c
        self.bottom = _DoubleConv(chans[-2], chans[-1], pad, dims, zc[-1])
        # Paper 3.1: "Drop-out layers at the end of the contracting path" (after the bottleneck
        # block, as in the original Caffe model). Identity in eval mode, so inference is exact.
        self.dropout = nn.Dropout(config.dropout) if config.dropout > 0 else nn.Identity()
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in range(config.depth - 1, -1, -1):
            k = self._window(level)
            upconv = nn.ConvTranspose2d if dims == 2 else nn.ConvTranspose3d
            self.upconv.append(upconv(chans[level + 1], chans[level], k, stride=k))
            self.up.append(_DoubleConv(2 * chans[level], chans[level], pad, dims, zc[level]))
        self.head = (nn.Conv2d if dims == 2 else nn.Conv3d)(chans[0], config.num_classes, 1)
        self.reset_parameters()

    def _window(self, level: int) -> int | tuple[int, int, int]:
        """The pooling (and up-convolution) window of ``level``: 2 (2x2 in 2D), in 3D (2, 2, 2) or
        (1, 2, 2) where the level pools only Y and X."""
        if self.config.dims == 2:
            return 2
        return (self.config.z_pools[level], 2, 2)

    def reset_parameters(self) -> None:
        """He-normal initialisation (paper section 3): N(0, sqrt(2 / N)), N = fan-in of a neuron."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
                if isinstance(m, nn.ConvTranspose2d | nn.ConvTranspose3d):
                    # weight is (in, out, kh, kw): each output pixel of an up-convolution whose
                    # stride is its window sees exactly one input pixel per input channel, so the
                    # fan-in is in_channels.
                    fan_in = m.weight.shape[0]
                else:
                    fan_in = math.prod(m.weight.shape[1:])
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / fan_in))
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of ``x``.

        Parameters
        ----------
        x : torch.Tensor
            float32 (N, in_channels, Y, X), or (N, in_channels, Z, Y, X) for a 3D U-Net; sizes valid
            for the model (a ValueError names the nearest valid ones).

        Returns
        -------
        torch.Tensor
            float32 logits (N, num_classes, y, x) (3D: (N, num_classes, z, y, x)), sizes as in the
            class docstring.
        """
        cfg = self.config
        nd = cfg.dims + 2
        if x.ndim != nd or x.shape[1] != cfg.in_channels:
            want = "H, W" if cfg.dims == 2 else "Z, H, W"
            raise ValueError(
                f"UNet expects input of shape (N, {cfg.in_channels}, {want}), got {tuple(x.shape)}"
            )
        if cfg.padding == "valid":
            for n in x.shape[-2:]:
                cfg.output_size(n)  # raises with the nearest valid sizes
            if cfg.dims == 3:
                cfg.z_output_size(x.shape[2])
        else:
            g = cfg.grid
            if x.shape[-2] % g or x.shape[-1] % g or (cfg.dims == 3 and x.shape[2] % cfg.z_grid):
                zg = "" if cfg.dims == 2 else f" (Z divisible by {cfg.z_grid})"
                raise ValueError(
                    f"a same-padded U-Net of depth {cfg.depth} needs H and W divisible by {g}{zg}, "
                    f"got {tuple(x.shape[2:])}"
                )
        pool = F.max_pool2d if cfg.dims == 2 else F.max_pool3d
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            x = pool(x, self._window(level))
        x = self.dropout(self.bottom(x))
        for upconv, block in zip(self.upconv, self.up, strict=True):
            x = upconv(x)
            skip = skips.pop()
            skip = _center_crop(skip, *x.shape[2:])
            x = block(torch.cat([skip, x], dim=1))
        return self.head(x)
