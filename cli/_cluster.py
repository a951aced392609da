"""The cluster options shared by predict, evaluate and train."""


def add_cluster_arguments(p, *, default_workers_help="1 process using every core",
                          default_threads_help="one per core"):
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", choices=("local", "slurm"), default="local",
                   help="where Dask workers run (default: this machine)")
    g.add_argument("--workers", type=int, default=None,
                   help=f"local: worker processes (default {default_workers_help})")
    g.add_argument("--threads", type=int, default=None,
                   help=f"local: Dask threads per worker (default {default_threads_help})")
    g.add_argument("--jobs", type=int, default=None, help="slurm: number of worker jobs (default 1)")
    g.add_argument("--adapt", default=None, metavar="MIN:MAX",
                   help="slurm: adaptive number of jobs; lost jobs are replaced")
    g.add_argument("--jobqueue-config", default=None, metavar="PATH",
                   help="slurm: dask-jobqueue profile (default ./jobqueue.yaml, then dask's "
                        "usual config locations)")
    return g


def cluster_kwargs(args) -> dict:
    """Keyword arguments of volseg.engine.cluster.open_client from parsed options, checked now
    (before any work starts) by the library's own rules."""
    from volseg.engine.cluster import check_options, parse_adapt

    kwargs = dict(cluster=args.cluster, workers=args.workers, threads=args.threads,
                  jobs=args.jobs, adapt=parse_adapt(args.adapt))
    check_options(**kwargs)
    return dict(kwargs, jobqueue_config=args.jobqueue_config)
