"""Small Qt helpers shared by the widgets (no torch)."""

from __future__ import annotations

from typing import Any

from napari.layers import Image, Labels, Layer
from napari.utils.notifications import show_error

_WARM = False

# a training's progress (bar, plot, status line) is drawn at most this often: a step can take a
# fifth of a second, and redrawing the window at every step took the training's CPU
# (docs/benchmarks.md, "The Fine-tune widget against the CLI")
SHOW_EVERY_S = 0.5


def warm_up_labels() -> None:
    """Build one tiny Labels layer (not added to any viewer), once per session.

    napari's first Labels layer of a session pays for lazy imports and its unit registry (1.5-3 s
    measured here). Paying it when the widget opens keeps it from freezing the viewer at the moment
    the first result is added.
    """
    global _WARM
    if not _WARM:
        import numpy as np

        Labels(np.zeros((2, 2), np.uint8))
        _WARM = True


def show_failure(status: Any, message: str) -> None:
    """``message`` as an error notification and in the widget's status line ``status`` (a QLabel),
    where it stays until the widget's next action: notifications vanish after a few seconds."""
    show_error(message)
    status.setText(message)


def layer_key(layer: Any) -> Any:
    """A layer's identity, the same for every napari ``PublicOnlyProxy`` of it (a plugin widget's
    viewer hands out a new proxy on every access, so proxies cannot be compared with ``is`` or
    weakly referenced): its unique id."""
    return getattr(layer, "unique_id", None) or id(getattr(layer, "__wrapped__", layer))


def find_layer(viewer: Any, key: Any) -> Any:
    """The layer of ``viewer`` whose :func:`layer_key` is ``key`` (that very layer: a new layer
    given a removed one's name is another), or None."""
    return next((layer for layer in viewer.layers if layer_key(layer) == key), None)


def layer_names(viewer: Any, kinds: tuple[type, ...]) -> list[str]:
    return [layer.name for layer in viewer.layers if isinstance(layer, kinds)]


def level0(data: Any) -> Any:
    """The full-resolution array of a layer's data (level 0 of a multiscale pyramid)."""
    if isinstance(data, list | tuple) or type(data).__name__ == "MultiScaleData":
        return data[0]
    return data


def put_layer(viewer: Any, name: str, data: Any, kind: str, meta: dict[str, Any],
              **extra: Any) -> Layer:
    """Add layer ``name`` (``kind`` "labels" or "image"), or replace the data of an existing layer of
    that name and kind (re-running never piles up copies). ``meta``: spatial keyword arguments."""
    cls = Labels if kind == "labels" else Image
    if name in viewer.layers:
        old = viewer.layers[name]
        if isinstance(old, cls) and old.ndim == data.ndim and not (kind == "image" and old.rgb):
            # spatial metadata first (same ndim), then the data
            for key, value in meta.items():
                try:
                    setattr(old, key, value)
                except Exception:  # pragma: no cover - a napari without that property
                    pass
            old.data = data
            if kind == "image":
                old.reset_contrast_limits()
            return old
        index = viewer.layers.index(old)
        viewer.layers.remove(old)
        layer = cls(data, name=name, **_supported(cls, meta), **extra)
        viewer.layers.insert(index, layer)
        return layer
    layer = cls(data, name=name, **_supported(cls, meta), **extra)
    viewer.layers.append(layer)
    return layer


def _supported(cls: type, meta: dict[str, Any]) -> dict[str, Any]:
    import inspect

    params = inspect.signature(cls.__init__).parameters
    return {k: v for k, v in meta.items() if k in params}
