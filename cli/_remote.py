"""`volseg train --cluster slurm`: the options, and a drop-in for volseg.training.train.

cli/train.py builds train()'s arguments, progress bar and log once; :func:`trainer`
gives it the function to call with them: ``volseg.training.train`` itself for
``--cluster local`` (training in this process), or one that runs the same call inside
a Slurm job and streams the progress and log lines back here.
"""

from __future__ import annotations

import functools

from volseg.errors import InputError

from ._progress import say


def add_slurm_options(p):
    """Add --cluster and --jobqueue-config to the train parser. (Not the shared cluster
    options: train's --workers means patch-reading threads, and training is one job.)"""
    g = p.add_argument_group("cluster")
    g.add_argument("--cluster", choices=("local", "slurm"), default="local",
                   help="local: train in this process (default); slurm: train inside one "
                        "Slurm job (a GPU worker when the profile asks for GPUs), with "
                        "progress shown here and the model written to -o")
    g.add_argument("--jobqueue-config", default=None, metavar="PATH",
                   help="slurm: dask-jobqueue profile (default ./jobqueue.yaml, then dask's "
                        "usual config locations)")
    return g


def trainer(args):
    """The function to call like ``volseg.training.train`` for these options."""
    if getattr(args, "cluster", "local") == "slurm":
        return functools.partial(run_on_slurm, args)
    if getattr(args, "jobqueue_config", None) is not None:
        raise InputError("only for a Slurm cluster", param="jobqueue_config")
    from volseg.training import train

    return train


def run_on_slurm(args, images_path, truth_path, out_path, **train_kwargs) -> dict:
    """``volseg.training.train(images_path, truth_path, out_path, **train_kwargs)``, run in
    one Slurm worker job; returns its summary."""
    from volseg.engine.cluster import open_client
    from volseg.training.remote import check_train_inputs, train_on_cluster

    options = dict(train_kwargs)
    progress = options.pop("progress", None)
    log = options.pop("log", None) or (lambda message: say(args, message))
    # Fail on bad input now, not after the job has waited in the queue.
    check_train_inputs(images_path, truth_path, out_path, **options)
    with open_client("slurm", jobs=1, jobqueue_config=args.jobqueue_config, log=log) as client:
        return train_on_cluster(client, images_path, truth_path, out_path, progress=progress,
                                log=log, **options)
