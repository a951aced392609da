"""volseg demo: the whole pipeline on synthetic data, in minutes."""

import sys

from ._progress import Progress, say


def add_parser(sub):
    p = sub.add_parser(
        "demo", help="run every stage on synthetic data (about 15 minutes on 2 CPU cores)",
        description="Synthesise a small 4D series, convert it to OME-Zarr, train a small U-Net "
                    "briefly (last time point held out), predict, evaluate and draw figures; "
                    "prints each step, the metrics, and where everything is.")
    p.add_argument("-o", "--output", default="volseg-demo", metavar="DIR",
                   help="folder for everything the demo writes (default %(default)s)")
    p.add_argument("--small", action="store_true",
                   help="a tiny run in seconds (checks the installation; scores mean little)")
    p.add_argument("--seed", type=int, default=0, help="seed of data and training")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier demo in DIR")
    p.add_argument("-q", "--quiet", action="store_true", help="print only the results")
    p.set_defaults(run=run)
    return p


def run(args) -> int:
    from volseg.stages.demo import FULL, SMALL, format_summary, run_demo

    bars = []

    def progress_factory(desc):
        bar = Progress(desc, quiet=args.quiet, unit="step" if desc == "train" else "block")
        bars.append(bar)
        return bar

    try:
        result = run_demo(args.output, size=SMALL if args.small else FULL, seed=args.seed,
                          overwrite=args.overwrite, log=lambda m: say(args, m),
                          progress_factory=progress_factory)
    finally:
        for bar in bars:
            bar.close()
    for line in format_summary(result):
        print(line)
    fatal = [p for p in result["problems"] if "threshold" in p]
    for problem in result["problems"]:  # printed even with --quiet
        print(f"volseg demo: {'error' if problem in fatal else 'warning'}: {problem}",
              file=sys.stderr)
    if fatal:
        print("volseg demo: the U-Net should beat a global threshold on this data on every "
              f"machine; please report this with {result['out_dir']}/demo.json",
              file=sys.stderr)
        return 1
    return 0
