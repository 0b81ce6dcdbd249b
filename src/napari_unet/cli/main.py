"""``napari-unet segment|train|evaluate|export``: the parser of the sub-commands (one module each)
and :func:`main`.

The work itself is done by the core generators (and :mod:`napari_unet.batch` for many files); the
sub-command modules only turn arguments into calls and progress events into a tqdm bar
(:func:`napari_unet.cli.driver.drive`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from napari_unet.cli.driver import CLIError
from napari_unet.cli.evaluate import add_evaluate
from napari_unet.cli.export import add_export
from napari_unet.cli.segment import add_segment
from napari_unet.cli.train import add_train


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="napari-unet",
        description="U-Net segmentation (Ronneberger et al. 2015): segment, fine-tune, evaluate, export.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_segment(sub)
    add_train(sub)
    add_evaluate(sub)
    add_export(sub)
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
    # `python -m napari_unet.cli.main`: run the package's module, so that the CLIError the
    # sub-commands raise (napari_unet.cli.driver.CLIError) is the class main() catches
    from napari_unet.cli.main import main as _main

    sys.exit(_main())
