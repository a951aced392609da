"""volseg suggest: which frames to annotate next."""

from volseg.stages.suggest import suggest

from ._progress import Progress, say
from ._select import add_select_arguments, select_kwargs


def add_parser(sub):
    p = sub.add_parser(
        "suggest", help="rank the frames not yet annotated by how unsure the model is",
        description="Rank the (t, z) frames of PRED.zarr that TRUTH.zarr does not annotate "
                    "yet by the model's uncertainty (mean binary entropy of the probability) "
                    "and print the top N, spread over time points and depth rather than "
                    "neighbours of one slice. With --templates, each pick's predicted mask is "
                    "written as a label file: correct it (napari, Fiji) and give it back with "
                    "`volseg convert FILES --mask --update -o TRUTH.zarr`.")
    p.add_argument("prediction", metavar="PRED.zarr",
                   help="prediction store with probabilities (`volseg predict`)")
    p.add_argument("--truth", metavar="TRUTH.zarr",
                   help="the annotations so far: frames holding any are never suggested")
    p.add_argument("-n", type=int, default=10, metavar="N",
                   help="how many frames to suggest (default %(default)s)")
    p.add_argument("--csv", metavar="FILE.csv", help="write the picks as CSV")
    p.add_argument("--plots", metavar="DIR",
                   help="write a preview (image, probability, mask) of each pick into DIR")
    p.add_argument("--images", metavar="IMAGES.zarr",
                   help="the image store, for --plots (default: the one the prediction "
                        "records)")
    p.add_argument("--templates", metavar="DIR",
                   help="write each pick's predicted mask as tTTT_zZZZ.tif (0/1) into DIR, "
                        "to correct and give back with `convert --mask --update`")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the CSV, figures and templates of an earlier run")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_select_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    with Progress("suggest", quiet=args.quiet) as progress:
        report = suggest(args.prediction, truth=args.truth, n=args.n, images=args.images,
                         csv=args.csv, plots=args.plots, templates=args.templates,
                         overwrite=args.overwrite, progress=progress, **select_kwargs(args))
    print(f"{len(report['picks'])} of {report['candidates']} frames not yet annotated "
          f"({report['annotated_frames']} annotated of {report['frames']}); score: "
          f"{report['score']}")
    print(f"  {'rank':>4} {'t':>5} {'z':>5} {'score':>7} {'uncertain':>9} {'structure':>9}")
    for r in report["picks"]:
        print(f"  {r['rank']:>4} {r['t']:>5} {r['z']:>5} {r['score']:>7.4f} "
              f"{100 * r['uncertain']:>8.1f}% {100 * r['structure']:>8.1f}%")
    if report.get("templates"):
        say(args, f"templates in {report['templates']}: correct them, then `volseg convert "
                  f"{report['templates']} --mask --update -o {args.truth or 'TRUTH.zarr'}`")
    return 0
