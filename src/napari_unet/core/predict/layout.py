"""Which axes of an image are Y, X, channels and planes, decided once for a model's channel count,
with messages that say how the image was read and which ``axes`` would fit."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Layout:
    """Which source axes are Y, X, channels (C) and planes (anything else: T, Z, ...)."""

    axes: str

    @property
    def y(self) -> int:
        return self.axes.index("Y")

    @property
    def x(self) -> int:
        return self.axes.index("X")

    @property
    def c(self) -> int | None:
        return self.axes.index("C") if "C" in self.axes else None

    @property
    def plane_axes(self) -> tuple[int, ...]:
        return tuple(i for i, a in enumerate(self.axes) if a not in "YXC")


def infer_layout(shape: tuple[int, ...], in_channels: int, axes: str | None = None,
                 rgb: bool | None = None) -> Layout:
    """Decide the axes of an image for a model reading ``in_channels`` channels.

    2D (Y, X); stacks (Z or T, Y, X, more leading axes allowed) are segmented plane by plane;
    channels (C, Y, X) or RGB (Y, X, 3 / 4) are used where the model reads that many channels.
    ``axes`` (e.g. "ZYX", "YXC", "TCYX") overrides the guess; ``rgb`` says the last axis is colour
    (napari knows this of its layers).
    """
    nd = len(shape)
    if axes is not None:
        axes = axes.upper()
        if len(axes) != nd or len(set(axes)) != nd or "Y" not in axes or "X" not in axes:
            raise ValueError(f"axes {axes!r} do not describe an image of shape {tuple(shape)}: give one "
                             f"distinct letter per axis, with Y and X (e.g. 'YX', 'ZYX', 'CYX', 'YXC')")
        layout = Layout(axes)
    elif nd < 2:
        raise ValueError(f"expected an image with at least 2 dimensions (Y, X), got shape {tuple(shape)}")
    elif nd == 2:
        layout = Layout("YX")
    elif rgb or (rgb is None and shape[-1] in (3, 4) and shape[-2] > 4 and shape[-3] > 4):
        layout = Layout("P" * (nd - 3) + "YXC")
    elif in_channels > 1 and shape[-3] == in_channels:
        layout = Layout("P" * (nd - 3) + "CYX")
    else:
        layout = Layout("P" * (nd - 2) + "YX")
    layout = Layout("".join(a if a in "YXC" else "P" for a in layout.axes))
    n_ch = 1 if layout.c is None else shape[layout.c]
    if n_ch != in_channels:
        if layout.c is not None and layout.axes.endswith("C") and in_channels == 1:
            raise ValueError(
                f"this is an RGB/multichannel image (shape {tuple(shape)}, {n_ch} channels) but the model "
                f"reads 1 channel: convert it to grey values or pick one channel first")
        raise ValueError(_channel_message(tuple(shape), in_channels, layout, axes))
    return layout


def _channel_message(shape: tuple[int, ...], in_channels: int, layout: Layout, axes: str | None) -> str:
    """Why the image's channels do not fit the model, and, where one axis could hold them, the
    ``axes`` that say so."""
    read = f"axes={axes!r}" if axes is not None else f"read as {layout.axes.replace('P', 'Z')}"
    if layout.c is not None:
        return (f"the model reads {in_channels} channel(s) but the image (shape {shape}, {read}) has "
                f"{shape[layout.c]} along its channel axis C: give an image with {in_channels} "
                f"channel(s), or use a model made for {shape[layout.c]}-channel images")
    msg = (f"the model reads {in_channels} channels but the image (shape {shape}, {read}) has no "
           f"channel axis")
    cands = [i for i, n in enumerate(shape) if n == in_channels]
    if cands and 3 <= len(shape) <= 5:
        c = cands[0]
        rest = [i for i in range(len(shape)) if i != c]
        names = "TZ"[2 - (len(rest) - 2):] + "YX"  # e.g. ZYX for three axes besides C
        letters = dict(zip(rest, names, strict=True))
        suggestion = "".join("C" if i == c else letters[i] for i in range(len(shape)))
        return msg + f": if axis {c} (length {in_channels}) holds the channels, give axes={suggestion!r}"
    return msg + (f": give an image with {in_channels} channels and say which axis holds them with "
                  f"axes=... (e.g. 'CYX' or 'YXC')")
