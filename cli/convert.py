"""volseg convert: TIFF stacks -> OME-Zarr."""

import argparse

from volseg.stages.convert import convert
from volseg.io.tiff import DEFAULT_PATTERN

from ._progress import command_line
from ._progress import Progress, say


def add_parser(sub):
    p = sub.add_parser(
        "convert", help="convert TIFF stacks to a chunked OME-Zarr image store",
        description="Convert TIFF stacks to an OME-NGFF 0.5 image store (Zarr v3, axes t,z,y,x; "
                    "full resolution at OUT/0). INPUT is a folder of per-frame TIFFs named like "
                    "t002_z015.tif, one multi-page TIFF per time point (several files or a folder), "
                    "or one ImageJ/OME hyperstack. Rerunning an interrupted conversion resumes it.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="TIFF folder or file(s)")
    p.add_argument("-o", "--output", required=True, metavar="OUT.zarr", help="store to write")
    p.add_argument("--mask", action="store_true",
                   help="annotation stack: values 0/1 or 0/255, stored as uint8 0/1")
    p.add_argument("--like", metavar="IMAGES.zarr", default=None,
                   help="annotations for some frames of this image store: each file's frame "
                        "is placed by the t and z numbers in its name (the store's numbers); "
                        "the truth store takes the images' shape, chunks and scale, and every "
                        "frame not given is stored as not annotated (255)")
    p.add_argument("--scribbles", action="store_true",
                   help="the labels are scribbles, as napari and ilastik paint them: 0 = not "
                        "annotated, 1 = structure, 2 = background (implies --mask)")
    p.add_argument("--update", action="store_true",
                   help="add the frames to the existing truth store OUT in place: a mask frame "
                        "replaces its frame, a scribble frame only the pixels it paints; every "
                        "other frame stays as it is (rerun to resume)")
    p.add_argument("--pattern", default=DEFAULT_PATTERN,
                   help="file-name pattern of per-frame TIFFs, with {t} and {z} (default %(default)s)")
    p.add_argument("--channel", type=int, default=None,
                   help="channel to take from RGB or multichannel TIFFs")
    p.add_argument("--chunks", default=None, metavar="[[T,]Z,]Y,X",
                   help="inner chunk shape (default: whole frames up to 1024x1024; several frames "
                        "per shard file)")
    p.add_argument("--allow-gaps", action="store_true",
                   help="accept missing numbers in the file names: time points and slices "
                        "found are numbered 0, 1, 2, ... in order (the original numbers are "
                        "recorded in the store); default: refuse them")
    p.add_argument("--nonfinite", type=float, default=None, metavar="VALUE",
                   help="replace NaN and infinite pixels of float images by VALUE (recorded "
                        "in the store); default: refuse them")
    p.add_argument("--pyramid", action=argparse.BooleanOptionalAction, default=None,
                   help="also write downsampled levels 1, 2, ... (y and x halved per level "
                        "until a frame fits in 256 px; images and probabilities by mean, masks "
                        "by max) so viewers stay responsive; default: on for frames larger "
                        "than 1024 px on a side")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing OUT made by volseg (the old store stays until "
                        "the new one is complete)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    command = command_line()
    with Progress("convert", quiet=args.quiet) as progress:
        summary = convert(args.inputs, args.output, mask=args.mask, pattern=args.pattern,
                          channel=args.channel, chunks=args.chunks, allow_gaps=args.allow_gaps,
                          nonfinite=args.nonfinite, pyramid=args.pyramid,
                          like=args.like, scribbles=args.scribbles, update=args.update,
                          overwrite=args.overwrite,
                          progress=progress, command=command,
                          log=None if args.quiet else (lambda m: say(args, m)))
    t, z, y, x = summary["shape"]
    if summary.get("layout") == "sparse":
        verb = "updated" if args.update else "wrote"
        say(args, f"{verb} {summary['path']}: {summary['frames']} annotated frame(s) of {t} time "
                  f"points x {z} slices x {y} x {x} ({summary['written']} blocks written, "
                  f"{summary['skipped']} already done); complete")
        return 0
    say(args, f"wrote {summary['path']}: {t} time points x {z} slices x {y} x {x} "
              f"{summary['dtype']} ({summary['written']} blocks written, {summary['skipped']} "
              f"already done{_levels(summary)}); complete")
    return 0


def _levels(summary) -> str:
    n = summary.get("levels") or 0
    return f", {n} pyramid level(s)" if n else ""
