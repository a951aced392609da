"""volseg measure: the structure per time point (volume, centre-line length, branching,
diameter, tortuosity), and with --truth how far the mask's numbers are from the truth's."""

from __future__ import annotations

from ._cluster import add_cluster_arguments, cluster_kwargs
from ._progress import Progress, say
from ._select import add_select_arguments, select_kwargs


def add_parser(sub):
    p = sub.add_parser(
        "measure", help="measure the structure per time point: length, branching, diameter",
        description="Measure the tubular structure of every time point of MASK (a prediction "
                    "store's mask, or any 0/1 store such as a truth store) on its 3D volume in "
                    "physical units: volume, centre-line (skeleton) length, branches, branch "
                    "points, end points, connected components, mean and median diameter and "
                    "tortuosity. With --truth the truth is measured alike and the relative error "
                    "of each number is reported. One task per time point; its z-stack is read "
                    "whole.")
    p.add_argument("mask", metavar="MASK", help="prediction store (its mask) or 0/1 image store")
    p.add_argument("--truth", metavar="TRUTH.zarr", help="0/1 truth store of the same shape")
    p.add_argument("--roi", metavar="ROI.zarr",
                   help="mask store (nonzero inside) of the same shape, or of one time point "
                        "and/or slice for all: measure only structure inside it")
    p.add_argument("--spacing", metavar="Z,Y,X",
                   help="voxel size (default: the store's OME-NGFF scale, else 1,1,1)")
    p.add_argument("--prune", type=float, metavar="LENGTH",
                   help="remove tip branches shorter than this physical length (default: the "
                        "median diameter of each volume; 0 keeps all)")
    p.add_argument("--surface", action="store_true", help="also measure the surface area")
    p.add_argument("--max-bytes", type=int, default=None, metavar="N",
                   help="memory one time point may use (default 8 GiB); a larger z-stack is "
                        "refused before any work")
    p.add_argument("--picture-t", type=int, default=None, metavar="T",
                   help="time point of the skeleton figure of --plots (default: the middle one)")
    p.add_argument("--json", metavar="REPORT.json", help="write the report as JSON")
    p.add_argument("--csv", metavar="PER_T.csv", help="write one row per time point as CSV")
    p.add_argument("--plots", metavar="DIR",
                   help="write measures.png (each measure over time) and skeleton.png here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --json/--csv/--plots files that volseg did not write")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_cluster_arguments(p, default_workers_help="none: threads of this process")
    add_select_arguments(p)
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from contextlib import nullcontext

    from volseg.engine.cluster import open_client
    from volseg.stages.measure import DEFAULT_MAX_BYTES, measure, prepare, write_csv, write_json

    from volseg.stages.measure import MEASURE_FIGURES

    from volseg.engine.outputs import check_report_files

    check_report_files(json=args.json, csv=args.csv, plots=args.plots, figures=MEASURE_FIGURES,
                       overwrite=args.overwrite)  # before measuring
    kw = dict(truth_path=args.truth, roi_path=args.roi, spacing=args.spacing, prune=args.prune,
              surface=args.surface, picture_t=args.picture_t,
              max_bytes=DEFAULT_MAX_BYTES if args.max_bytes is None else args.max_bytes,
              **select_kwargs(args))
    prepare(args.mask, **kw)  # bad input fails before a cluster starts
    ckw = cluster_kwargs(args)
    # Locally, threads of this process (as verify); a local Dask cluster with --workers.
    local_threads = args.cluster == "local" and args.workers is None
    with (nullcontext() if local_threads else
          open_client(**ckw, log=None if args.quiet else (lambda m: say(args, m)))) as client, \
            Progress("measure", unit="time point", quiet=args.quiet) as progress:
        report = measure(args.mask, **kw, client=client,
                         threads=args.threads if local_threads else None, progress=progress)
    if not args.quiet:
        print(format_report(report), flush=True)
    if args.json:
        write_json(report, args.json)
        say(args, f"wrote {args.json}")
    if args.csv:
        write_csv(report, args.csv)
        say(args, f"wrote {args.csv}")
    if args.plots:
        from volseg.stages.measure import measure_figures

        for path in measure_figures(report, args.plots):
            say(args, f"wrote {path}")
    return 0


_COLUMNS = (("volume", "volume", 12), ("skeleton_length", "length", 10),
            ("branches", "branches", 9), ("branch_points", "junct", 7), ("end_points", "ends", 7),
            ("components", "comp", 7), ("mean_diameter", "diam", 7),
            ("median_diameter", "med.d", 7), ("tortuosity", "tort", 7))


def _v(value, width) -> str:
    if value is None:
        return f"{'n/a':>{width}}"
    if isinstance(value, int):
        return f"{value:>{width},}"
    return f"{value:>{width},.1f}" if abs(value) >= 100 else f"{value:>{width}.2f}"


def _e(value, width) -> str:
    return f"{'n/a':>{width}}" if value is None else f"{100 * value:>+{width - 1}.1f}%"


def _line(label, row, fmt) -> str:
    # a space before every column: a value as wide as its column (+100.0%) stays apart
    return f"  {label:>7}" + "".join(" " + fmt(row.get(k), w) for k, _, w in _COLUMNS)


def format_report(r: dict) -> str:
    """The measures per time point and their summary as a table for the terminal."""
    t, z, y, x = r["shape"]
    sp = r["spacing"]
    unit = r.get("units") or "(no unit recorded)"
    lines = [
        f"measured {r['mask']}" + (f" against {r['truth']}" if r.get("truth") else "")
        + (f" inside {r['roi']}" if r.get("roi") else ""),
        f"  {t} time points x {z} x {y} x {x} voxels of {sp['z']:g} x {sp['y']:g} x {sp['x']:g} "
        f"{unit} ({r['spacing_source']}); {r['prune_rule']}",
        f"  {r['seconds']:.1f} s ({r['seconds_per_timepoint'] or 0:.1f} s per time point)",
        "",
        f"  {'t':>7}" + "".join(f" {h:>{w}}" for _, h, w in _COLUMNS),
    ]
    truth = bool(r.get("truth"))
    for row in r["per_timepoint"]:
        lines.append(_line(str(row["t"]), row, _v))
        if truth and "truth" in row:
            lines.append(_line("truth", row["truth"], _v))
            lines.append(_line("error", row["relative_error"], _e))
    s = r["summary"]
    lines.append(_line("mean", s, _v))
    if truth and "truth" in s:
        lines.append(_line("truth", s["truth"], _v))
        lines.append(_line("error", s["relative_error"], _e))
    if r.get("note"):
        lines += ["", f"  note: {r['note']}"]
    return "\n".join(lines)
