"""``napari-unet segment|train|evaluate``: argument parsing and a progress bar, nothing else.

The work itself is done by the core generators (and ``batch`` for many files); this module only turns
arguments into calls and progress events into a tqdm bar.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Generator, Sequence
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
            total = getattr(ev, "total", None)
            done = getattr(ev, "done", getattr(ev, "step", None))
            if quiet or total is None or done is None:
                continue
            if bar is None or bar.total != total:
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


# ---------------------------------------------------------------------------- segment
def _add_segment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment images (TIFF or zarr; 2D, stacks, channels)")
    p.set_defaults(func=_run_segment)


def _run_segment(args: argparse.Namespace) -> int:
    raise CLIError("segment is not implemented yet")


# ---------------------------------------------------------------------------- train
def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune or train a model on painted labels")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> int:
    raise CLIError("train is not implemented yet")


# ---------------------------------------------------------------------------- evaluate
def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="score a segmentation against ground truth (JSON)")
    p.set_defaults(func=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    raise CLIError("evaluate is not implemented yet")


# ---------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation (Ronneberger et al. 2015): segment, fine-tune, evaluate.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    _add_segment(sub)
    _add_train(sub)
    _add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"napari-unet {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"napari-unet {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
