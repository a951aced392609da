"""``volseg synth``: write a synthetic stand-in for the microscope data as TIFF frames."""

from __future__ import annotations

import argparse
from pathlib import Path

from ._progress import Progress, say


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic data set (images + labels as per-frame TIFFs)",
        description=(
            "Write a realistic, seeded stand-in for the microscope data: a branching "
            "network of tubes in 3D that grows and drifts over time, imaged with a blurring "
            "point-spread function, uneven illumination, Poisson + Gaussian noise and bright "
            "round blobs that are not structure. Writes DIR/images/tTTT_zZZZ.tif (uint8) and "
            "DIR/labels/tTTT_zZZZ.tif (uint8 0/1), and DIR/synth.json with a summary, and "
            "prints the foreground fraction and the Dice of the best global intensity "
            "threshold (how far plain thresholding gets)."),
    )
    p.add_argument("-o", "--output", required=True, type=Path, metavar="DIR",
                   help="output folder (created if missing)")
    p.add_argument("--timepoints", type=_positive_int, default=4, metavar="T",
                   help="number of time points (default: 4)")
    p.add_argument("--depth", type=_positive_int, default=8, metavar="Z",
                   help="depth slices per time point (default: 8)")
    p.add_argument("--height", type=_positive_int, default=523, metavar="H",
                   help="frame height in pixels (default: 523)")
    p.add_argument("--width", type=_positive_int, default=821, metavar="W",
                   help="frame width in pixels (default: 821)")
    p.add_argument("--seed", type=_seed, default=0, metavar="S",
                   help="random seed; the same seed gives the same data (default: 0)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace TIFF files already in DIR/images and DIR/labels")
    p.add_argument("-q", "--quiet", action="store_true", help="print nothing")
    p.set_defaults(run=run)


def run(args) -> int:
    from volseg.data.synth import write_synth

    with Progress("synth", unit="frame", quiet=args.quiet) as progress:
        s = write_synth(args.output, timepoints=args.timepoints, depth=args.depth,
                        height=args.height, width=args.width, seed=args.seed,
                        overwrite=args.overwrite, progress=progress)
    t, z, h, w = s["shape"]
    say(args, f"wrote {s['frames']} image frames to {s['images_dir']} and {s['frames']} "
              f"label frames to {s['labels_dir']} ({t} x {z} x {h} x {w}, seed {s['seed']}) "
              f"in {s['seconds']:.1f} s")
    say(args, f"foreground: {100 * s['foreground_fraction']:.2f} % of voxels "
              f"({s['foreground_voxels']} of {s['voxels']})")
    if s["threshold_dice"] is None:
        say(args, "best global threshold: undefined (no foreground)")
    else:
        say(args, f"best global threshold: image >= {s['threshold']} gives Dice "
                  f"{s['threshold_dice']:.3f} against the labels")
    return 0
