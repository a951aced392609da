"""The cluster options shared by predict, evaluate and train."""

from volseg.errors import InputError


def add_cluster_arguments(p, *, default_workers_help="1 process using every core"):
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", choices=("local", "slurm"), default="local",
                   help="where Dask workers run (default: this machine)")
    g.add_argument("--workers", type=int, default=None,
                   help=f"local: worker processes (default {default_workers_help})")
    g.add_argument("--threads", type=int, default=None, help="local: threads per worker")
    g.add_argument("--jobs", type=int, default=None, help="slurm: number of worker jobs (default 1)")
    g.add_argument("--adapt", default=None, metavar="MIN:MAX",
                   help="slurm: adaptive number of jobs; lost jobs are replaced")
    g.add_argument("--jobqueue-config", default=None, metavar="PATH",
                   help="slurm: dask-jobqueue profile (default ./jobqueue.yaml, then dask's "
                        "usual config locations)")
    return g


def parse_adapt(text):
    if text is None:
        return None
    try:
        lo, hi = (int(v) for v in text.split(":"))
    except ValueError:
        raise InputError(f"--adapt: expected MIN:MAX (e.g. 1:4), got {text!r}") from None
    if not 0 <= lo <= hi or hi < 1:
        raise InputError(f"--adapt: need 0 <= MIN <= MAX and MAX >= 1, got {text!r}")
    return lo, hi


def cluster_kwargs(args) -> dict:
    """Keyword arguments of volseg.cluster.open_client from parsed options."""
    if args.cluster == "local" and (args.jobs is not None or args.adapt is not None):
        raise InputError("--jobs/--adapt: only with --cluster slurm")
    return dict(cluster=args.cluster, workers=args.workers, threads=args.threads, jobs=args.jobs,
                adapt=parse_adapt(args.adapt), jobqueue_config=args.jobqueue_config)
