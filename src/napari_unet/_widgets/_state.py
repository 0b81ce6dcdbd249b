"""The models available in one napari viewer, shared by the Segment and Fine-tune widgets.

One :class:`ModelRegistry` per viewer (:func:`registry_for`) holds name -> model entries: the shipped
models (by file, loaded on first use), model files the user opened, and models fine-tuned in this
session (in memory). Widgets listen to its signals instead of reaching into each other.
No torch import here: listing shipped models only looks at file names.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from psygnal import Signal

SUFFIX = ".safetensors"


@dataclass
class ModelEntry:
    """One available model: ``kind`` is "shipped", "file" or "session" (fine-tuned here).

    ``path`` is where its file is (None for an unsaved session model); ``model`` the loaded
    :class:`~napari_unet.core.modelfile.files.UNetModel`, or None until first used; ``root`` for a session
    model: the shipped or opened model its chain of fine-tunings started from (names say it).
    """

    name: str
    kind: str
    path: str | None = None
    model: Any = None
    root: str = ""

    def ref(self) -> Any:
        """What a worker needs: the loaded model, else the file path (loaded in the worker)."""
        return self.model if self.model is not None else self.path


@dataclass(frozen=True)
class ModelLoaded:
    """A job's event: the model file of registry entry ``name`` was loaded in the worker (the
    widget caches it with :meth:`ModelRegistry.set_loaded`)."""

    name: str
    model: Any


def load_in_worker(ref: Any, name: str) -> Generator[ModelLoaded, None, Any]:
    """In a job: the model of :meth:`ModelEntry.ref` ``ref`` (a loaded model, or a file path that
    is loaded here and reported with :class:`ModelLoaded`); returns the loaded model."""
    from napari_unet.core.exchange.opening import load_model
    from napari_unet.core.modelfile.files import UNetModel

    if isinstance(ref, UNetModel):
        return ref
    model = load_model(ref)
    yield ModelLoaded(name, model)
    return model


DEFAULT_MODEL = "nuclei"


def shipped_model_files() -> dict[str, Path]:
    """Name -> file of the shipped models (same rule as ``core.modelfile.files.shipped_models``, without torch)."""
    d = Path(str(resources.files("napari_unet") / "models"))
    if not d.is_dir():
        return {}
    return {p.name[: -len(SUFFIX)]: p for p in sorted(d.glob(f"*{SUFFIX}"))}


class ModelRegistry:
    """Evented name -> :class:`ModelEntry` mapping plus the current model's name.

    Signals: ``changed()`` when models are added or removed; ``current_changed(str)`` when the
    current model changes. Mutate it from the Qt (main) thread only.
    """

    changed = Signal()
    current_changed = Signal(str)

    def __init__(self, include_shipped: bool = True) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._current = ""
        if include_shipped:
            for name, path in shipped_model_files().items():
                self._entries[name] = ModelEntry(name, "shipped", str(path))
        if self._entries:
            # the default model is the general-purpose nuclei model, as on the command line
            self._current = DEFAULT_MODEL if DEFAULT_MODEL in self._entries else next(iter(self._entries))

    # ------------------------------------------------------------------ read
    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __getitem__(self, name: str) -> ModelEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no model named {name!r}; available: {', '.join(self._entries) or 'none'}") from None

    @property
    def current(self) -> str:
        return self._current

    @current.setter
    def current(self, name: str) -> None:
        if name and name not in self._entries:
            raise KeyError(f"no model named {name!r}")
        if name != self._current:
            self._current = name
            self.current_changed.emit(name)

    # ------------------------------------------------------------------ write
    def unique_name(self, name: str) -> str:
        if name not in self._entries:
            return name
        k = 2
        while f"{name} ({k})" in self._entries:
            k += 1
        return f"{name} ({k})"

    def add_file(self, path: str | os.PathLike) -> str:
        """Add a model file (its header is checked now; the weights are loaded on first use).

        Returns the entry's name (the file name without suffix; made unique). A file already in the
        registry is not added twice. Raises ``core.modelfile.files.ModelFileError`` for a file that is not a model.
        """
        from napari_unet.core.modelfile.files import (
            read_header,  # imports torch: only when the user opens a file
        )

        path = str(Path(path).expanduser().resolve())
        for entry in self._entries.values():
            if entry.path and os.path.abspath(entry.path) == path:
                return entry.name
        if path.lower().endswith(".zip"):  # a bioimage.io package: can napari-unet run it?
            from napari_unet.core.exchange.package_import import inspect_package

            inspect_package(path)
        else:
            read_header(path)
        stem = Path(path).name
        stem = stem[: -len(SUFFIX)] if stem.endswith(SUFFIX) else Path(path).stem
        name = self.unique_name(stem)
        self._entries[name] = ModelEntry(name, "file", path)
        self.changed.emit()
        return name

    def root_of(self, name: str) -> str:
        """The model that ``name``'s chain of fine-tunings started from (``name`` itself for a
        shipped or opened model, or one not in the registry)."""
        entry = self._entries.get(name)
        return (entry.root or name) if entry is not None else name

    def add_model(self, name: str, model: Any, path: str | None = None, root: str = "") -> str:
        """Add an in-memory model (e.g. fine-tuned in this session); returns its unique name: a
        name already taken gets a number ("name (2)"), no model is ever replaced."""
        name = self.unique_name(name)
        self._entries[name] = ModelEntry(name, "session", path, model, root)
        self.changed.emit()
        return name

    def set_loaded(self, name: str, model: Any) -> None:
        """Cache a model a worker loaded from the entry's file."""
        if name in self._entries and self._entries[name].model is None:
            self._entries[name].model = model


_REGISTRIES: dict[int, tuple[weakref.ref, ModelRegistry]] = {}


def registry_for(viewer: Any) -> ModelRegistry:
    """The model registry of ``viewer`` (created on first use, dropped when the viewer is gone)."""
    # napari hands plugins a proxy of the viewer (a new one per widget): key on the real viewer
    viewer = getattr(viewer, "__wrapped__", viewer)
    key = id(viewer)
    hit = _REGISTRIES.get(key)
    if hit is not None and hit[0]() is viewer:
        return hit[1]
    reg = ModelRegistry()
    _REGISTRIES[key] = (weakref.ref(viewer, lambda _r, k=key: _REGISTRIES.pop(k, None)), reg)
    return reg
