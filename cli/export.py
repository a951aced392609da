"""volseg export: a store back to TIFF (per-frame files or one ImageJ hyperstack)."""

from volseg.stages.export import export_tiff

from ._progress import command_line
from ._progress import Progress, say
from ._select import add_select_arguments, select_kwargs
from .info import _size


def add_parser(sub):
    p = sub.add_parser(
        "export", help="write a store back to TIFF for Fiji, ImageJ or Imaris",
        description="Write an image store, or a prediction's mask or probabilities, as TIFF, "
                    "streamed frame by frame in bounded memory. Default: one 2D file per frame, "
                    "OUT/tTTT_zZZZ.tif (the naming `volseg convert` reads). --hyperstack: one "
                    "ImageJ hyperstack OUT.tif with axes TZYX and the store's pixel sizes. "
                    "STORE may be IMAGES.zarr, PRED.zarr/mask or PRED.zarr/probability "
                    "(PRED.zarr alone means its mask).")
    p.add_argument("store", metavar="STORE[/ARRAY]",
                   help="image store, or prediction store with /mask or /probability")
    p.add_argument("-o", "--output", required=True, metavar="OUT",
                   help="folder for per-frame files, or a .tif file with --hyperstack")
    p.add_argument("--hyperstack", action="store_true",
                   help="write one ImageJ hyperstack (TZYX) instead of one file per frame")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier export (only volseg's tTTT_zZZZ.tif files, or a "
                        "TIFF file, are ever deleted)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_select_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    unit = "frame" if args.hyperstack else "block"
    layout = "one ImageJ hyperstack" if args.hyperstack else "per-frame TIFF files"
    say(args, f"exporting {args.store} to {args.output} ({layout})")
    with Progress("export", unit=unit, quiet=args.quiet) as progress:
        summary = export_tiff(args.store, args.output, hyperstack=args.hyperstack,
                              overwrite=args.overwrite, progress=progress,
                              command=command_line(), **select_kwargs(args))
    for note in summary["notes"]:
        say(args, f"note: {note}")
    t, z, y, x = summary["shape"]
    size = _size(summary["bytes"])
    if summary["layout"] == "hyperstack":
        what = f"one ImageJ hyperstack (TZYX, {t} x {z} x {y} x {x})"
    else:
        what = f"{summary['files']} frame files tTTT_zZZZ.tif ({t} time points x {z} slices, {y} x {x})"
    units = summary["units"]
    sizes = ", ".join(f"{a} {summary['scale'][a]:g} {units[a]}" for a in "tzyx" if a in units)
    say(args, f"wrote {summary['path']}: {what}, {summary['dtype']}, {size}"
              + (f"; pixel sizes {sizes}" if sizes else ""))
    return 0

