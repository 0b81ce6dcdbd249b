"""What every ``napari-unet`` sub-command shares: :class:`CLIError` (a user error, printed as one
line, exit code 2) and :func:`drive` (a progress generator run to its end behind a tqdm bar)."""

from __future__ import annotations

import sys
from collections.abc import Generator
from typing import Any


class CLIError(Exception):
    """A user error: printed as one line, exit code 2."""


def drive(gen: Generator[Any, None, Any], desc: str, quiet: bool = False) -> Any:
    """Run a progress generator to its end with a tqdm bar; return the generator's return value."""
    from tqdm import tqdm

    bar = None
    try:
        while True:
            try:
                ev = next(gen)
            except StopIteration as stop:
                return stop.value
            if hasattr(ev, "name"):  # ItemDone: reported by the caller, not a bar
                continue
            total = getattr(ev, "total", None)
            done = getattr(ev, "done", getattr(ev, "step", None))
            if quiet or total is None or done is None:
                continue
            if bar is not None and bar.total != total and hasattr(ev, "step"):
                bar.total = total  # a time budget's step estimate settles: same bar
            elif bar is None or bar.total != total:
                if bar is not None:
                    bar.close()
                bar = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, leave=True)
            bar.n = done
            postfix = {}
            for key in ("loss", "val_score"):
                v = getattr(ev, key, None)
                if v is not None:
                    postfix[key] = f"{v:.4f}"
            if postfix:
                bar.set_postfix(postfix, refresh=False)
            bar.refresh()
    finally:
        if bar is not None:
            bar.close()
