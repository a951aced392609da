"""Training inside one Dask worker (a Slurm job), followed from the submitting terminal.

:func:`train_on_cluster` sends one task, :func:`volseg.training.train`, to a worker of a
:func:`volseg.engine.cluster.open_client` cluster (on Slurm: a worker job with a GPU when the
profile asks for one). Nothing is copied: the stores and the model file are on a file
system the job shares with the submitting machine, so every path is made absolute
before it travels.

While it runs, the task sends its log lines and step progress to the scheduler as Dask
*events* (``Worker.log_event``) on a topic of its own; the client subscribes to the
topic, so they reach the terminal as they happen, and replays from the scheduler's
event log whatever its subscription missed. Only short messages travel this way; the
model goes straight to its file.

What the terminal gets when things go wrong:

* bad input found in the worker (e.g. a patch size that does not fit the depth): the
  worker's :class:`~volseg.errors.InputError`, re-raised here as itself;
* Ctrl-C: the worker is asked to stop after its current step; it validates and saves
  the best model so far, as a local ``volseg train`` does (a second Ctrl-C abandons it);
* the job ends under the training (scancel, preemption, node failure, walltime) or the
  worker is killed repeatedly (memory): an :class:`InputError` naming the job and its log.

Inside a Slurm job the training also stops in time for the job's walltime: the time it
has left caps ``time_limit``, so the best model is saved before Slurm ends the job.
"""

from __future__ import annotations

import itertools
import os
import queue
import time
import uuid

from volseg.errors import InputError

#: Seconds between progress events from the worker (log lines are sent at once).
PROGRESS_EVERY = 0.5
#: Walltime reserve: the training stops this many minutes (plus 5 %) before the job ends.
WALLTIME_RESERVE_MIN = 2.0

_AUTO = object()
_PATH_OPTIONS = ("roi_path", "init")


def train_on_cluster(client, images_path, truth_path, out_path, *, progress=None, log=None,
                     resources=_AUTO, worker_timeout: float = 30.0, poll: float = 0.1,
                     **train_kwargs) -> dict:
    """Run :func:`volseg.training.train` in one worker of ``client``; stream its output here.

    Parameters
    ----------
    client : distributed.Client
        From :func:`volseg.engine.cluster.open_client` (``cluster="slurm", jobs=1`` for a
        training job). Its workers must see the paths given here.
    images_path, truth_path, out_path : path
        As for :func:`volseg.training.train`; made absolute here (relative paths are read
        against this process's working directory, not the job's).
    progress : callable(done, total), optional
        Step progress within each epoch, called in this thread.
    log : callable(str), optional
        The training's log lines (one per epoch and a few status lines), called in this
        thread as they arrive.
    resources : dict or None, optional
        Worker resources the task needs; default :func:`volseg.engine.cluster.gpu_resources`
        of ``client`` (``{"GPU": 1}`` when the workers advertise GPUs).
    worker_timeout : float
        Seconds the cluster may have no worker at all while the training is unfinished
        before the run is given up (the training job ended).
    poll : float
        Seconds between checks of the task and the event queue.
    **train_kwargs
        Any other keyword argument of :func:`volseg.training.train`.

    Returns
    -------
    dict
        :func:`volseg.training.train`'s summary, with ``worker`` (host, Slurm job id).
    """
    from distributed import Event

    from volseg.engine.cluster import gpu_resources

    if resources is _AUTO:
        resources = gpu_resources(client)
    check_train_inputs(images_path, truth_path, out_path, **train_kwargs)
    for key in _PATH_OPTIONS:
        if train_kwargs.get(key) is not None:
            train_kwargs[key] = absolute(train_kwargs[key])
    args = (absolute(images_path), absolute(truth_path), absolute(out_path))
    topic = f"volseg-train-{uuid.uuid4().hex[:12]}"
    stream = _Stream(client, topic, progress=progress, log=log)
    stop = Event(f"{topic}-stop", client=client)
    future = client.submit(_train_task, topic, *args, train_kwargs, key=topic, pure=False,
                           resources=resources)
    where = {}
    stopping = False
    try:
        try:
            result = _wait(client, future, stream, where, worker_timeout, poll)
        except KeyboardInterrupt:
            stream.say("interrupted: the training job stops after its current step and saves "
                       "the best model so far (Ctrl-C again to abandon it)")
            stopping = True
            stop.set()
            result = _wait(client, future, stream, where, worker_timeout, poll)
    except BaseException:
        future.cancel()
        raise
    finally:
        stream.close()
        if stopping:
            try:
                stop.clear()  # the scheduler forgets the event
            except Exception:
                pass
    if result.get("interrupted"):
        raise KeyboardInterrupt  # stopped before a single epoch was validated: nothing saved
    summary = result["summary"]
    summary["worker"] = where.get("start", {})
    return summary


def check_train_inputs(images_path, truth_path, out_path, **train_kwargs) -> None:
    """Everything :func:`volseg.training.train` checks before reading pixel data (its
    :class:`~volseg.training.TrainConfig` and :func:`~volseg.training.open_inputs`), done
    here before a job is submitted: it may wait in the queue for hours before the
    worker would find the same mistakes. :class:`InputError` on the first that fails.
    """
    from volseg.training import TrainConfig, open_inputs

    open_inputs(TrainConfig(images_path, truth_path, out_path, **train_kwargs))


def absolute(path) -> str:
    """``path`` with ``~`` expanded, absolute against this process's working directory."""
    return os.path.abspath(os.path.expanduser(os.fspath(path)))


# --------------------------------------------------------------------------- client side

class _Stream:
    """The events of one topic, delivered in order and once, in the waiting thread."""

    def __init__(self, client, topic, *, progress, log):
        self.client, self.topic = client, topic
        self.progress, self.log = progress, log
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.last = -1
        client.subscribe_topic(topic, self.events.put)  # runs in the client's event loop

    def deliver(self, message: dict, where: dict) -> None:
        seq = message.get("seq", -1)
        if seq <= self.last:
            return  # already delivered (the replay overlaps the subscription)
        self.last = seq
        kind = message.get("kind")
        if kind == "log":
            self.say(message["text"])
        elif kind == "progress" and self.progress is not None:
            self.progress(message["done"], message["total"])
        elif kind == "start":
            where["start"] = {k: message.get(k) for k in ("host", "job_id")}

    def drain(self, where: dict) -> None:
        while True:
            try:
                _, message = self.events.get_nowait()
            except queue.Empty:
                return
            self.deliver(message, where)

    def replay(self, where: dict) -> None:
        """Deliver what the subscription has not (events logged before it was active)."""
        self.drain(where)
        try:
            events = self.client.get_events(self.topic)
        except Exception:
            return
        for _, message in sorted(events, key=lambda e: e[1].get("seq", -1)):
            self.deliver(message, where)

    def say(self, text: str) -> None:
        if self.log is not None:
            self.log(text)

    def close(self) -> None:
        try:
            self.client.unsubscribe_topic(self.topic)
        except Exception:
            pass


def _wait(client, future, stream: _Stream, where: dict, worker_timeout: float, poll: float):
    """The task's result, delivering its events meanwhile; an InputError when no worker
    is left to run it or it kept killing its workers."""
    from distributed import KilledWorker

    no_workers_since = None
    last_check = 0.0
    while not future.done():
        try:
            _, message = stream.events.get(timeout=poll)
            stream.deliver(message, where)
        except queue.Empty:
            pass
        now = time.monotonic()
        if now - last_check >= 1.0:
            last_check = now
            if client.scheduler_info(n_workers=1).get("workers"):
                no_workers_since = None
            else:
                no_workers_since = no_workers_since or now
                if now - no_workers_since > worker_timeout:
                    stream.replay(where)
                    raise InputError(_lost_message(client, where, worker_timeout),
                                     param="cluster")
    stream.replay(where)
    try:
        return future.result()
    except KilledWorker:
        raise InputError(
            "the training killed its Dask worker several times (most often out of memory): "
            "raise jobqueue.slurm.memory in the profile, or train with a smaller batch or "
            "patch" + _job_log_hint(where), param="cluster") from None


def _lost_message(client, where: dict, timeout: float) -> str:
    job = where.get("start", {}).get("job_id")
    what = f"Slurm job {job}" if job else "the job"
    return (f"{what} running the training ended before the training did (cancelled, "
            f"preempted or failed; no worker for {timeout:.0f} s); nothing was saved"
            + _job_log_hint(where))


def _job_log_hint(where: dict) -> str:
    import dask

    job = where.get("start", {}).get("job_id")
    if not job:
        return ""
    from volseg.engine.cluster.waiting import log_tail

    log_dir = dask.config.get("jobqueue.slurm.log-directory", default=None)
    log_dir = os.path.expandvars(os.path.expanduser(log_dir)) if log_dir else None
    name = dask.config.get("jobqueue.slurm.name", default=None) or "worker"
    return log_tail(str(job), log_dir, name)


# --------------------------------------------------------------------------- worker side

def _train_task(topic, images_path, truth_path, out_path, kwargs) -> dict:
    """The task: train, sending log lines and progress as events on ``topic``."""
    import socket

    from distributed import Event, get_worker

    from volseg.engine.cluster.walltime import job_minutes_left
    from volseg.models.backend import configure_threads
    from volseg.training import StopSignal, train

    worker = get_worker()
    counter = itertools.count()
    cancel = Event(f"{topic}-stop")
    stop = StopSignal()

    def send(kind, **data):
        worker.log_event(topic, {"seq": next(counter), "kind": kind, **data})

    job_id = os.environ.get("SLURM_JOB_ID")
    send("start", host=socket.gethostname(), job_id=job_id)
    send("log", text=f"training on {socket.gethostname()}"
                     + (f" in Slurm job {job_id}" if job_id else "")
                     + f" (worker {worker.address})")
    # TensorFlow would size its thread pool to the node, not to the job's cores.
    configure_threads()

    left = job_minutes_left(job_id) if job_id else None
    if left is not None:
        cap = max(0.5, left - WALLTIME_RESERVE_MIN - 0.05 * left)
        limit = kwargs.get("time_limit")
        if limit is None or limit > cap:
            kwargs = {**kwargs, "time_limit": cap}
            send("log", text=f"the job ends in {left:.0f} min: training stops after "
                             f"{cap:.1f} min to save the best model in time")

    state = {"sent": 0.0, "checked": time.monotonic()}

    def progress(done, total):
        now = time.monotonic()
        if done >= total or done <= 1 or now - state["sent"] >= PROGRESS_EVERY:
            state["sent"] = now
            send("progress", done=int(done), total=int(total))
        if done >= 1 and now - state["checked"] >= 1.0:
            state["checked"] = now
            if cancel.is_set():
                # The client's Ctrl-C: stop after this step and keep the best model so
                # far, as Ctrl-C does locally.
                stop.request()

    try:
        summary = train(images_path, truth_path, out_path, progress=progress, stop=stop,
                        log=lambda text: send("log", text=str(text)), **kwargs)
    except KeyboardInterrupt:
        return {"interrupted": True}
    return {"summary": summary}
