"""The one way the widgets run long work: a job (a generator function of plain data, or a plain
function) in a napari generator worker, its events, result, error and end routed to the widget.

What napari's (superqt's) generator workers do, and what :class:`JobRunner` does about it:

- ``quit()`` takes effect at the job's next ``yield``: jobs yield at least once per tile or step;
- after a quit, ``returned`` is not emitted and the generator is not closed: a widget resets its
  buttons in ``on_done`` (the worker's ``finished``), never in ``on_result``;
- any ``RuntimeError`` raised by a job (torch raises them for memory, devices, shapes) is taken for
  "the worker was deleted": the worker ends with neither ``errored`` nor ``finished``, and the
  widget would wait for ever. The runner raises them as :class:`JobError` instead, and
  :func:`explain` says their cause;
- an error reaches ``on_error`` as one sentence for the user (:func:`explain`), the one place
  where the widgets turn an exception into words.

No torch here; napari's threading is imported when a job starts.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Generator
from typing import Any

from qtpy.QtCore import QObject


class JobError(Exception):
    """A ``RuntimeError`` of a job, carried out of the worker as its ``__cause__`` (see the module
    docstring); :func:`explain` says the cause."""


def explain(exc: BaseException, names: Any = None) -> str:
    """The sentence shown to the user for an exception raised by a job or the core.

    ``names``: what the user calls the core's inputs, one per (image, labels) pair
    (``_pairs.pair_names``): an error about the painting (``AnnotationError``) names its pair by
    it instead of "image 2 of 3". A :class:`JobError` says its cause.
    """
    from napari_unet.core.train.annotations import AnnotationError  # numpy only: no torch

    if isinstance(exc, JobError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if isinstance(exc, AnnotationError) and names:
        exc = exc.named(list(names))
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        msg = exc.args[0]  # str() of a KeyError is its repr: quoted
    elif isinstance(exc, ValueError | TypeError | KeyError | OSError):
        msg = str(exc)  # (a message may begin with a quoted layer name: 'nuclei' is a stack…)
    else:
        msg = f"{type(exc).__name__}: {exc}"
    if isinstance(exc, MemoryError):
        msg = "not enough memory: choose a smaller tile size under Advanced"
    return msg


def carried(job: Callable[..., Any]) -> Callable[..., Generator[Any, Any, Any]]:
    """``job`` as a generator function whose RuntimeErrors are raised as :class:`JobError`; a
    plain function becomes a generator that yields nothing and returns its result."""

    @functools.wraps(job)
    def run(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        try:
            result = job(*args, **kwargs)
            if isinstance(result, Generator):
                result = yield from result
            return result
        except RuntimeError as exc:
            raise JobError(str(exc)) from exc

    return run


class JobRoute(QObject):
    """Where one job's error and end go: a child of the widget, so that Qt drops its connections
    when the widget is deleted (a closed viewer), as it does for the widget's own methods."""

    def __init__(self, parent: QObject | None, on_error: Callable[[str], Any] | None,
                 on_done: Callable[[], Any] | None, names: Any, ended: Callable[[], Any]) -> None:
        super().__init__(parent)
        self.on_error, self.on_done, self.names, self.ended = on_error, on_done, names, ended

    def errored(self, exc: BaseException) -> None:
        if self.on_error is not None:
            self.on_error(explain(exc, self.names))

    def finished(self) -> None:
        self.ended()
        if self.on_done is not None:
            self.on_done()
        self.deleteLater()  # its job is over


class JobRunner:
    """Starts the jobs of one widget (or control) and quits them when it closes.

    ``start`` runs ``job(*args, **kwargs)`` in a napari generator worker and routes: every yielded
    event to ``on_event(event)``, the job's return value to ``on_result(value)`` (not after a quit),
    an error to ``on_error(sentence)`` (:func:`explain`, with ``names``), and the end (always, also
    after an error or a quit) to ``on_done()``. ``quit()`` (the widget closes) stops every running
    job at its next yield and lets nothing of it reach the widget any more. ``parent``: the widget
    (a QObject): once it is deleted, nothing of a job reaches it either.
    """

    def __init__(self, parent: QObject | None = None) -> None:
        self.parent = parent
        self.workers: list[Any] = []
        self._connections: dict[int, list[tuple[Any, Any]]] = {}

    @property
    def running(self) -> bool:
        return bool(self.workers)

    def start(self, job: Callable[..., Any], *args: Any,
              on_event: Callable[[Any], Any] | None = None,
              on_result: Callable[[Any], Any] | None = None,
              on_error: Callable[[str], Any] | None = None,
              on_done: Callable[[], Any] | None = None,
              names: Any = None, **kwargs: Any) -> Any:
        """Start ``job`` (see the class docstring); returns the worker, already started."""
        from napari.qt.threading import create_worker

        worker = create_worker(carried(job), *args, _ignore_errors=True, **kwargs)

        def ended() -> None:
            if worker in self.workers:
                self.workers.remove(worker)
            self._connections.pop(id(worker), None)

        route = JobRoute(self.parent, on_error, on_done, names, ended)
        links = [(worker.errored, route.errored), (worker.finished, route.finished)]
        if on_event is not None:
            links.append((worker.yielded, on_event))
        if on_result is not None:
            links.append((worker.returned, on_result))
        for signal, slot in links:
            signal.connect(slot)
        self.workers.append(worker)
        self._connections[id(worker)] = [*links, (None, route)]
        worker.start()
        return worker

    def quit(self) -> None:
        """Quit every running job (at its next yield); none of its signals reaches the widget."""
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.quit()
            for signal, slot in self._connections.pop(id(worker), []):
                if signal is None:
                    continue
                try:
                    signal.disconnect(slot)
                except (TypeError, RuntimeError):  # pragma: no cover - already disconnected
                    pass
