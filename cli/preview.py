"""volseg preview: figures of single frames (image, truth, probability, mask, errors)."""

from volseg.stages.preview import preview

from ._progress import say
from ._select import add_select_arguments, select_kwargs


def add_parser(sub):
    p = sub.add_parser(
        "preview", help="draw frames of a prediction next to the image (and the truth)",
        description="Draw frames of PRED.zarr side by side: the image, the ground truth (with "
                    "--truth), the probability, the mask, and the errors on the image (false "
                    "positives vermillion, false negatives blue, true positives yellow; "
                    "colour-blind safe). Without --truth the last panel shows the mask on the "
                    "image. Reads only the frames drawn. Prints each frame's Dice with --truth.")
    p.add_argument("prediction", metavar="PRED.zarr", help="prediction store (`volseg predict`)")
    p.add_argument("--images", required=True, metavar="IMAGES.zarr",
                   help="the image store the prediction was made from")
    p.add_argument("--truth", metavar="TRUTH.zarr", help="binary truth store (`convert --mask`)")
    p.add_argument("--t", default="0", metavar="T",
                   help="time point(s): 3, 0-3 (both ends included), 1,3,5 or all (default 0)")
    p.add_argument("--z", default="0", metavar="Z",
                   help="depth slice(s), same forms as --t (default 0)")
    p.add_argument("-o", "--output", required=True, metavar="FIG.png",
                   help="figure file (.png, .pdf, .svg); several frames without --grid write "
                        "FIG_t000_z003.png, ...")
    p.add_argument("--grid", action="store_true",
                   help="one figure with a row per frame instead of one file per frame")
    p.add_argument("--dpi", type=int, default=100, help="resolution (default %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace figure files volseg did not write (its own are replaced)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_select_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from volseg.errors import InputError

    if not 20 <= args.dpi <= 1200:
        raise InputError(f"--dpi: {args.dpi} is outside 20..1200")

    def on_frame(info):
        line = f"t={info['t']} z={info['z']}"
        if info.get("annotated") is False:
            line += ": not annotated (no Dice)"
        elif "dice" in info:
            d = info["dice"]
            line += (f": Dice {'n/a' if d is None else f'{d:.4f}'}, "
                     f"{info['tp']:,} true positive, {info['fp']:,} false positive, "
                     f"{info['fn']:,} false negative pixels")
        say(args, f"{line} -> {info['path']}")

    paths = preview(args.prediction, args.images, truth=args.truth, t=args.t, z=args.z,
                    out=args.output, grid=args.grid, dpi=args.dpi, on_frame=on_frame,
                    overwrite=args.overwrite, **select_kwargs(args))
    say(args, f"wrote {len(paths)} figure{'s' if len(paths) != 1 else ''}"
              + (f": {paths[0]}" if len(paths) == 1 else f" ({paths[0]} ... {paths[-1]})"))
    return 0
