"""volseg evaluate: exact metrics of a prediction store against a truth store."""

from __future__ import annotations

from pathlib import Path

from ._cluster import add_cluster_arguments, cluster_kwargs
from ._progress import Progress, say
from ._select import add_select_arguments, select_kwargs


def add_parser(sub):
    p = sub.add_parser(
        "evaluate", help="score a prediction against the truth, over every voxel",
        description="Score PRED.zarr (from `volseg predict`) against a binary TRUTH.zarr "
                    "(`volseg convert --mask`) over every voxel, streamed block by block on a "
                    "Dask cluster in bounded memory. Confusion counts at the operating threshold "
                    "and 256-bin probability histograms per class are summed exactly; all metrics "
                    "(accuracy, sensitivity, specificity, precision, Dice, IoU, MCC, ROC AUC, "
                    "average precision, best threshold) come from those counts.")
    p.add_argument("prediction", metavar="PRED.zarr", help="prediction store")
    p.add_argument("--truth", required=True, metavar="TRUTH.zarr", help="binary truth store")
    p.add_argument("--json", metavar="REPORT.json", help="write the full report as JSON")
    p.add_argument("--csv", metavar="PER_T.csv",
                   help="write the metrics per time point as CSV (with --per-z, also "
                        "PER_T_per_z.csv)")
    p.add_argument("--roi", metavar="ROI.zarr",
                   help="binary store: count only voxels inside it (the same shape, or one "
                        "time point and/or slice for all, as predict --roi takes)")
    p.add_argument("--threshold", type=float, metavar="T",
                   help="operating threshold in [0, 1] (default: the one stored with the "
                        "prediction, counted from its mask)")
    p.add_argument("--plots", metavar="DIR",
                   help="write ROC, precision-recall and per-time-point figures (PNG) here")
    p.add_argument("--per-z", action="store_true", help="also report metrics per depth slice")
    p.add_argument("--cldice", action="store_true",
                   help="also compute clDice (centreline Dice, skeletons of every 2D frame; slower)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing --json/--csv/--plots files that volseg did not write "
                        "(its own earlier reports are replaced without asking)")
    p.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    add_cluster_arguments(p, default_workers_help="one single-threaded process per core")
    add_select_arguments(p)
    p.set_defaults(run=run)
    return p


def _check_outputs(args) -> None:
    """Refuse to replace files volseg did not write (unless --overwrite), before counting."""
    from volseg.engine.outputs import check_report_files
    from volseg.viz.figures import EVALUATION_FIGURES

    check_report_files(json=args.json, csv=args.csv, plots=args.plots,
                       figures=EVALUATION_FIGURES, overwrite=args.overwrite,
                       csv_paths=[_per_z_path(Path(args.csv))] if args.csv and args.per_z else [])


def _per_z_path(csv_path: Path) -> Path:
    return csv_path.with_name(csv_path.stem + "_per_z" + csv_path.suffix)


def run(args) -> int:
    from volseg.engine.cluster import open_client
    from volseg.stages.evaluate import evaluate, local_layout, prepare, write_csv, write_json

    _check_outputs(args)
    json_path = Path(args.json) if args.json else None
    csv_path = Path(args.csv) if args.csv else None
    # Check the stores before starting a cluster: bad input fails in a fraction of a second.
    prepare(args.prediction, args.truth, roi_path=args.roi, threshold=args.threshold,
            **select_kwargs(args))

    kw = cluster_kwargs(args)
    if kw["cluster"] == "local" and kw["workers"] is None and kw["threads"] is None:
        kw.update(local_layout())
    with open_client(**kw, log=None if args.quiet else (lambda m: say(args, m))) as client, \
            Progress("evaluate", quiet=args.quiet) as progress:
        report = evaluate(args.prediction, args.truth, roi_path=args.roi,
                          threshold=args.threshold, per_z=args.per_z, cldice=args.cldice,
                          **select_kwargs(args),
                          client=client, progress=progress)
    if not args.quiet:
        print(format_report(report), flush=True)
    if json_path:
        write_json(report, json_path)
        say(args, f"wrote {json_path}")
    if csv_path:
        write_csv(report, csv_path)
        say(args, f"wrote {csv_path}")
        if args.per_z:
            z_path = _per_z_path(csv_path)
            write_csv(report, z_path, key="per_z")
            say(args, f"wrote {z_path}")
    if args.plots:
        from volseg.viz.figures import evaluation_figures

        for path in evaluation_figures(report, args.plots):
            say(args, f"wrote {path}")
    return 0


def _f(v, digits=4) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def format_report(r: dict) -> str:
    """The report as a readable table for the terminal."""
    t, z, y, x = r["shape"]
    rate = r.get("voxels_per_second")
    lines = [
        f"evaluated {r['prediction']} against {r['truth']}"
        + (f" inside {r['roi']}" if r.get("roi") else ""),
        f"  {t} time points x {z} slices x {y} x {x}: {r['voxels']:,} voxels counted in "
        f"{r['seconds']:.1f} s" + (f" ({rate / 1e6:.0f} M voxels/s)" if rate else ""),
        f"  threshold {_f(r['threshold'], 3)}: "
        + ("counts from the stored mask" if r["confusion_source"] == "mask"
           else f"counts from probability >= threshold (mask was made at "
                f"{_f(r['stored_threshold'], 3)})"),
        "",
        f"  {'':14}{'truth 1':>16}{'truth 0':>16}",
        f"  {'predicted 1':14}{r['tp']:>16,}{r['fp']:>16,}",
        f"  {'predicted 0':14}{r['fn']:>16,}{r['tn']:>16,}",
        "",
    ]
    rows = [("accuracy", "accuracy"), ("sensitivity", "sensitivity (recall)"),
            ("specificity", "specificity"), ("precision", "precision"),
            ("balanced_accuracy", "balanced accuracy"), ("dice", "Dice (F1)"),
            ("iou", "IoU (Jaccard)"), ("mcc", "MCC")]
    if r.get("probability"):
        rows += [("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC (avg precision)"),
                 ("best_threshold", "best threshold"), ("best_dice", "Dice at best threshold")]
    if "cldice" in r:
        rows += [("cldice", "clDice"), ("cl_precision", "  topology precision"),
                 ("cl_sensitivity", "  topology sensitivity")]
    for key, label in rows:
        lines.append(f"  {label:24}{_f(r.get(key)):>10}")
    per_t = r.get("per_timepoint") or []
    if len(per_t) > 1:
        lines.append("")
        if len(per_t) <= 12:
            best = bool(r.get("probability"))
            lines.append(f"  {'t':>5}{'dice':>9}{'sens':>9}{'prec':>9}{'iou':>9}{'voxels':>14}"
                         + (f"{'best thr':>10}{'its dice':>10}" if best else ""))
            for row in per_t:
                lines.append(f"  {row['t']:>5}{_f(row['dice']):>9}{_f(row['sensitivity']):>9}"
                             f"{_f(row['precision']):>9}{_f(row['iou']):>9}{row['voxels']:>14,}"
                             + (f"{_f(row.get('best_threshold'), 3):>10}"
                                f"{_f(row.get('best_dice')):>10}" if best else ""))
        else:
            scored = [(row["dice"], row["t"]) for row in per_t if row["dice"] is not None]
            if scored:
                scored.sort()
                lo, hi = scored[0], scored[-1]
                med = scored[len(scored) // 2][0]
                lines.append(f"  Dice per time point: min {_f(lo[0])} (t={lo[1]}), median "
                             f"{_f(med)}, max {_f(hi[0])} (t={hi[1]}); "
                             f"{len(per_t) - len(scored)} time points without structure")
    oracle = r.get("oracle_per_timepoint_threshold") or {}
    if len(per_t) > 1 and oracle.get("mean_gain") is not None:
        lines += ["", f"  a threshold per time point, chosen on this data (an oracle, an upper "
                      f"bound): mean Dice {_f(oracle['mean_dice'])} -> "
                      f"{_f(oracle['mean_best_dice'])} (+{oracle['mean_gain']:.4f}; at most "
                      f"+{oracle['max_gain']:.4f}, t={oracle['max_gain_t']}); every voxel "
                      f"{_f(r.get('dice'))} -> {_f(oracle['pooled_dice'])}"]
    if r.get("note"):
        lines += ["", f"  note: {r['note']}"]
    return "\n".join(lines)
