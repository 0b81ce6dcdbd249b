"""Intensity normalisation, computed once per image (never per tile: that would break exactness)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

MODES = ("percentile", "minmax", "fixed", "none")
_MAX_SAMPLES = 1 << 22  # statistics of huge images from a regular subsample of ~4 Mpx
_MAX_HIST_RANGE = 1 << 20  # integer images spanning fewer values get exact percentiles by counting
# Normalised intensities are clipped to this range (all modes but "none"). The low and high
# percentiles map to 0 and 1; without a limit one saturated (hot) camera pixel becomes a value of
# several hundred that the network's 3x3 convolutions spread over its whole receptive field (92 px
# for the shipped models: one hot pixel in a 256 x 256 nuclei crop changed 4454 pixels up to 95 px
# away and lost 5 of 32 nuclei). [-1, 2] keeps every intensity a real image has around its
# percentiles (the shipped models' held-back scores are unchanged to 0.002) and caps the rest.
CLIP = (-1.0, 2.0)
_F32_MAX = float(np.finfo(np.float32).max)


def percentiles(values: np.ndarray, qs: list[float] | tuple[float, ...]) -> list[float]:
    """``np.percentile(values, qs)`` (its default "linear" method, same float64 results), computed
    for integer data of a moderate value range by counting values (O(n), no sort) instead of
    sorting a float64 copy: it matters when the network itself takes a few seconds
    (docs/benchmarks.md)."""
    a = np.asarray(values)
    if a.dtype.kind not in "biu" or a.size == 0:
        return _float_percentiles(np.asarray(a, np.float64), qs)
    flat = a.ravel()
    lo, hi = int(flat.min()), int(flat.max())
    if hi - lo >= _MAX_HIST_RANGE:
        return [float(v) for v in np.percentile(flat.astype(np.float64), qs)]
    # unsigned values are shifted in their own dtype (uint64 values above 2**63 do not fit an
    # intp), signed ones in int64 (a narrow dtype would wrap); the spread is < 2**20 either way
    wide = flat.astype(np.uint64 if flat.dtype.kind in "bu" else np.int64)
    shifted = np.subtract(wide, wide.dtype.type(lo)).astype(np.intp)
    cum = np.cumsum(np.bincount(shifted, minlength=hi - lo + 1))
    n = flat.size

    def order_stat(k: int) -> float:  # the k-th smallest value (0-based)
        return float(lo + int(np.searchsorted(cum, k, side="right")))

    out = []
    for q in np.true_divide(np.asarray(qs, np.float64), 100):
        vi = (n - 1) * q  # numpy's virtual index for the linear method
        if vi >= n - 1:
            out.append(float(hi))
            continue
        if vi < 0:
            out.append(float(lo))
            continue
        prev = np.floor(vi)
        a0, b0 = order_stat(int(prev)), order_stat(int(prev) + 1)
        t = vi - prev
        d = b0 - a0
        out.append(float(b0 - d * (1 - t)) if t >= 0.5 else float(a0 + d * t))
    return out


# ---------------------------------------------------------------------------- large integers
# Integers are exact in float64 up to 2**53 and in float32 (the arithmetic of images of up to 32
# bits) up to 2**24. Above that, nearby values become the same float: a uint64 image offset by
# 2**60 (a camera's 0..235 counts on top) turned into one or two grey values, and the shipped
# nuclei model found 3 objects where the same image without the offset has 10 (0 on other crops).
# Subtracting the minimum in integers first keeps every grey value.
_FEW_LEVELS = 64  # fewer grey levels than this surviving the float conversion: refused


def _float_bits(dtype: np.dtype) -> int:
    """Mantissa bits of the float type that :meth:`Normalization.apply` computes in for an integer
    ``dtype`` (float64 for 64-bit integers, float32 otherwise)."""
    return 53 if np.dtype(dtype).itemsize >= 8 else 24


def _int_range(a: np.ndarray) -> tuple[int, int]:
    return int(a.min()), int(a.max())


def integer_offset(image: Any) -> int:
    """The whole number to subtract (in integers) from an integer image before it is converted to
    float, so that float arithmetic keeps all its grey values; 0 when nothing needs subtracting.

    Non-zero only for 32- and 64-bit integer images whose values lie beyond what their float
    type holds exactly (2**24, 2**53) and span less than 2**62. The offset is the minimum (of a
    regular subsample of lazy images; numpy images are read whole) rounded down to a multiple of
    2**32 (2**16 for 32-bit images): an image ``x + 2**60`` gives 2**60 and ``x`` back exactly,
    and what remains starts below 2**32, where float64 also keeps the percentiles' fractions.
    """
    dtype = np.dtype(image.dtype)
    if dtype.kind not in "iu" or dtype.itemsize < 4:
        return 0  # 8- and 16-bit integers are exact in float32
    if isinstance(image, np.ndarray):
        lo, hi = _int_range(image)
    else:
        shape = tuple(int(s) for s in image.shape)
        n = math.prod(shape)
        step = max(1, int(math.ceil((n / _MAX_SAMPLES) ** (1 / max(1, len(shape))))))
        lo, hi = _int_range(np.asarray(image[tuple(slice(None, None, step) for _ in shape)]))
    if max(abs(lo), abs(hi)) < 2 ** _float_bits(dtype) or hi - lo >= 2**62:
        return 0
    step = 4 * dtype.itemsize  # 32 (64-bit) or 16 (32-bit) low bits
    return (lo >> step) << step  # rounded down (also for negative values)


def subtract_offset(block: np.ndarray, offset: int) -> np.ndarray:
    """``block - offset`` computed exactly in 64-bit integers (int64 out; a new array), for
    integer blocks whose values lie within 2**63 of ``offset``."""
    a = np.asarray(block)
    u = a.astype(np.uint64) if a.dtype.kind == "u" else a.astype(np.int64).view(np.uint64)
    return (u - np.uint64(offset % 2**64)).view(np.int64)  # modulo 2**64, read as signed


class OffsetRemoved:
    """A lazy view of an integer image minus a whole number, computed exactly in integers when a
    part is read (int64): what the tiler reads of a uint64 image above 2**53 (see
    :func:`without_integer_offset`). The source is never modified or read whole."""

    def __init__(self, source: Any, offset: int) -> None:
        self.source = source
        self.offset = int(offset)
        self.shape = tuple(int(s) for s in source.shape)
        self.ndim = len(self.shape)
        self.dtype = np.dtype(np.int64)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> Any:
        part = self.source[key]
        if isinstance(part, np.ndarray | np.generic | int):
            return subtract_offset(part, self.offset)
        return OffsetRemoved(part, self.offset)  # a lazy part (dask): still lazy

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = subtract_offset(np.asarray(self.source), self.offset)
        return out if dtype is None else out.astype(dtype)


def without_integer_offset(image: Any, normalization: Normalization) -> Any:
    """``image``, or an :class:`OffsetRemoved` view of it when :func:`integer_offset` is not 0 and
    ``normalization`` is shift-invariant (modes "percentile" and "minmax": the statistics move
    with the offset, so the network input is that of the image without it). Modes "fixed" and
    "none" use the values as they are: the image is returned unchanged."""
    if normalization.mode not in ("percentile", "minmax"):
        return image
    offset = integer_offset(image)
    return image if offset == 0 else OffsetRemoved(image, offset)


def _check_levels(sample: np.ndarray) -> None:
    """Refuse an integer sample whose grey values the float arithmetic of :meth:`Normalization.apply`
    would merge into fewer than :data:`_FEW_LEVELS` levels (values far above 2**53 (64-bit) or
    2**24 (32-bit) with a small spread); a constant image passes (it has no contrast to lose)."""
    lo, hi = _int_range(sample)
    big = max(abs(lo), abs(hi))
    bits = _float_bits(sample.dtype)
    if big < 2**bits or hi == lo:
        return
    step = 2 ** (big.bit_length() - bits)  # distance between neighbouring floats up there
    if (hi - lo) // step < _FEW_LEVELS:
        raise ValueError(
            f"the image's values lie around {lo} (above 2**{bits}, where {sample.dtype} values "
            f"become floats {step} apart) but differ by only {hi - lo}: its contrast would be "
            f"lost. Subtract the image's minimum first (in integers, e.g. image - image.min()) "
            f"and store it in a smaller integer type (e.g. uint16)")


def _float_percentiles(a: np.ndarray, qs: list[float] | tuple[float, ...]) -> list[float]:
    """np.percentile of finite float64 values, also near the float64 limits (where the linear
    interpolation's differences overflow): such data is scaled by a power of two first (exact)."""
    m = float(np.max(np.abs(a))) if a.size else 0.0
    if not np.isfinite(m) or m < 2.0**1000:
        return [float(v) for v in np.percentile(a, qs)]
    k = 2.0 ** (math.ceil(math.log2(m)) - 1)  # |a / k| <= 2; 2.0**1024 would overflow
    return [float(v) * k for v in np.percentile(a / k, qs)]


@dataclass(frozen=True)
class Normalization:
    """How raw intensities become network input.

    mode "percentile" (default): (x - p_low) / (p_high - p_low) with percentiles of the image;
    "minmax": the same with the minimum and maximum; "fixed": (x - offset) / scale;
    "none": the values as they are (float32).

    Normalised values are clipped to :data:`CLIP` ([-1, 2]) in every mode but "none" (unless
    ``clip=False``), so a few saturated or dead pixels cannot disturb the segmentation around them. The arithmetic is done
    in float64 for float64 and 64-bit integer images (a finite float64 image of any magnitude
    gives finite network input).
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    offset: float = 0.0
    scale: float = 1.0
    clip: bool = True  # False: no clipping (models from elsewhere that were trained without it)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"normalization mode must be one of {MODES}, got {self.mode!r}")
        if self.mode == "percentile" and not 0 <= self.low < self.high <= 100:
            raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.low}, {self.high}")
        if self.mode == "fixed" and self.scale == 0:
            raise ValueError("normalization scale must not be 0")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["clip"]:
            del d["clip"]  # the default: model files stay readable by versions without the field
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Normalization:
        return cls(**d)

    @property
    def clip_range(self) -> tuple[float, float]:
        """The range normalised values are clipped to: :data:`CLIP`, or float32's finite range for
        mode "none" and ``clip=False``."""
        return CLIP if self.clip and self.mode != "none" else (-_F32_MAX, _F32_MAX)

    def stats(self, image: Any, channel_axis: int | None = None) -> np.ndarray:
        """(offset, scale, clip low, clip high) per channel, shape (C, 4), computed on the whole 2D
        image (Y, X) or (C, Y, X) with ``channel_axis=0``: everything :meth:`apply` needs. Huge or
        lazy images are read through a regular subsample.
        """
        if channel_axis is None:
            planes = [image]
        else:
            planes = [np.take(image, c, axis=channel_axis) if isinstance(image, np.ndarray)
                      else image[(slice(None),) * channel_axis + (c,)]
                      for c in range(image.shape[channel_axis])]
        out = np.empty((len(planes), 4), np.float64)
        for i, plane in enumerate(planes):
            out[i] = self._plane_stats(plane) + self.clip_range
        return out

    def _plane_stats(self, plane: Any) -> tuple[float, float]:
        if self.mode == "none":
            return 0.0, 1.0
        if self.mode == "fixed":
            return float(self.offset), float(self.scale)
        h, w = plane.shape[-2:]
        step = max(1, int(np.ceil(np.sqrt(h * w / _MAX_SAMPLES))))
        sample = np.asarray(plane[::step, ::step])
        if sample.dtype.kind in "iu" and sample.size:
            _check_levels(sample)
        if sample.dtype.kind not in "biu":
            sample = sample.astype(np.float64)
        if self.mode == "minmax":
            lo, hi = float(sample.min()), float(sample.max())
        else:
            lo, hi = percentiles(sample, [self.low, self.high])
        scale = hi - lo
        if scale == math.inf:  # finite values more than float64's range apart
            scale = float(np.finfo(np.float64).max)
        if not np.isfinite(scale) or scale <= 0:
            scale = 1.0  # a constant image: shift to zero, keep its (absent) contrast
        return lo, scale

    @staticmethod
    def apply(tile: np.ndarray, stats: np.ndarray) -> np.ndarray:
        """Normalise a (C, h, w) tile with per-channel ``stats`` from :meth:`stats` (offset, scale
        and the clip range; further columns are ignored); float32 out, clipped.

        float64 and 64-bit integer tiles are normalised in float64 and only then cast, so values
        beyond float32's range do not become inf."""
        t = np.asarray(tile)
        st = np.asarray(stats, np.float64)
        # float64 for 64-bit data, and for statistics beyond float32 (a float32 image spanning
        # -3.4e38 .. 3.4e38 has a scale of 6.8e38)
        wide = (t.dtype.itemsize >= 8 and t.dtype.kind in "fiu") or not np.all(np.abs(st[:, :2]) < _F32_MAX)
        ft = np.float64 if wide else np.float32
        t = np.asarray(t, dtype=ft)
        off = st[:, 0].astype(ft)[:, None, None]
        scl = st[:, 1].astype(ft)[:, None, None]
        with np.errstate(over="ignore", invalid="ignore"):
            out = (t - off) / scl
        if st.shape[1] >= 4:
            np.clip(out, st[:, 2, None, None].astype(ft), st[:, 3, None, None].astype(ft), out=out)
        return out.astype(np.float32, copy=False)
