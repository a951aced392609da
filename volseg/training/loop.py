"""The epoch loop: train steps, validate, keep the best weights, decide when to stop.

Steps run with ``train_on_batch`` (Keras' compiled train step) fed by worker threads
that read and augment the next batches while the current one trains: as fast as
``fit(PyDataset)`` and faster than ``fit`` on the same patches in memory (docs/decisions.md,
section "Training step"; benchmarks/bench_train_loop.py re-measures), and one step at a
time is what the time limit, Ctrl-C and the per-step schedule need. After each
epoch the validation frames are predicted whole (:mod:`volseg.training.validation`): the
Dice at the epoch's own best threshold (:func:`selection_dice`) picks the best epoch and
drives early stopping (and, with the ``plateau`` schedule, learning-rate halving). The
``cosine`` schedule sets the rate before every step from the share of the run done
(:mod:`volseg.training.schedule`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from volseg.errors import InputError
from volseg.training.schedule import RunClock, cosine_rate
from volseg.training.stop import INTERRUPTED, TIME_LIMIT, StopSignal

#: Validation counts as better only above the best so far by more than this.
MIN_IMPROVEMENT = 1e-4
#: The learning rate is halved down to this floor, never below.
MIN_LEARNING_RATE = 1e-5
#: Steps timed (after the first, which traces the graph) before the speed is reported.
RATE_STEPS = 5
#: A time limit that stops a run before this share of its steps cuts it short.
USEFUL_SHARE = 0.5


@dataclass
class LoopResult:
    """What the loop leaves behind: the history and the best epoch's weights."""

    history: list = field(default_factory=list)
    best_dice: float = -1.0
    best_epoch: int = 0
    best_weights: list | None = None
    stop_reason: str = "epochs"
    steps: int = 0
    train_seconds: float = 0.0
    #: one line when the run stopped before it could learn what it was asked to (a time
    #: limit while the validation Dice still rose): said at the end, kept in the model
    warning: str | None = None


class EpochLoop:
    """Run epochs of ``model`` on ``dataset`` until a stop, validating with ``validator``.

    Parameters
    ----------
    model : keras.Model
        Compiled.
    dataset : volseg.training.sampler.PatchDataset
    validator : volseg.training.validation.Validator
    config : volseg.training.config.TrainConfig
    stop : StopSignal
        Checked after every step (Ctrl-C, time limit, remote cancellation).
    progress : callable(done, total), optional
        ``(0, steps)`` when an epoch starts, then after each step.
    say : callable(str)
        One line per epoch and the reason for stopping.
    on_epoch : callable(list of dict), optional
        Called with the history after each validated epoch (writes it to disk).
    """

    def __init__(self, model, dataset, validator, config, *, stop: StopSignal, progress,
                 say, on_epoch=None):
        self.model, self.dataset, self.validator = model, dataset, validator
        self.config, self.stop = config, stop
        self.progress, self.say = progress, say
        self.on_epoch = on_epoch or (lambda history: None)
        self.result = LoopResult()
        self.learning_rate = float(config.learning_rate)
        self.since_best = 0
        # Seconds one validation takes, for the time limit; replaced by the measured time.
        self.val_seconds = validator.pixels / 1.0e6
        self.planned_steps = int(config.epochs) * int(config.steps_per_epoch)
        self.run_clock = RunClock(self.planned_steps, deadline=stop.deadline,
                                  reserve=self._reserve(0.0), clock=stop.clock)
        self.rate_said = False
        self.per_step = None

    def _reserve(self, per_step: float) -> float:
        """Seconds kept free at the end: a step, this epoch's validation, the final
        float32 one and saving."""
        return per_step + 2.2 * self.val_seconds + 3

    def _schedule_step(self) -> None:
        """Set the rate for the next step (``cosine``; ``plateau`` changes it per epoch)."""
        if self.config.schedule != "cosine":
            return
        rate = cosine_rate(self.run_clock.fraction(self.result.steps),
                           base=float(self.config.learning_rate))
        if abs(rate - self.learning_rate) > 1e-3 * self.learning_rate or not self.result.steps:
            self.learning_rate = rate
            self.model.optimizer.learning_rate.assign(rate)

    def run(self) -> LoopResult:
        """Epochs until the last one, early stopping or a stop request."""
        from volseg.training.sampler import prefetch

        cfg = self.config
        for epoch in range(1, int(cfg.epochs) + 1):
            self.dataset.epoch = epoch - 1
            batches = prefetch(self.dataset, workers=cfg.workers, depth=max(2, 2 * cfg.workers))
            try:
                losses, seconds = self._train_epoch(batches)
            finally:
                batches.close()
            self.result.train_seconds += seconds
            if not losses:  # stopped before the first step of this epoch
                self.result.stop_reason = self.stop.reason
                if self.result.best_weights is not None:
                    break
                if self.stop.reason == INTERRUPTED:
                    raise KeyboardInterrupt  # nothing validated: nothing to keep
                raise InputError("too short to train a single step and validate",
                                 param="time_limit")
            with self.stop.interruptible():
                self._validate(epoch, losses, seconds)
            if self._should_stop():
                break
        self.warn_if_cut_short()
        return self.result

    def _train_epoch(self, batches) -> tuple[list[float], float]:
        """Steps of one epoch until its end or a stop request: (losses, seconds)."""
        steps = self.config.steps_per_epoch
        losses: list[float] = []
        t0, start = time.monotonic(), self.stop.clock()
        if self.progress is not None:
            self.progress(0, steps)  # a new epoch starts
        with self.stop.interruptible():
            for step, (x, y) in enumerate(batches, 1):
                self._schedule_step()
                value = self.model.train_on_batch(x, y)
                losses.append(float(np.asarray(value).ravel()[0]))
                self.result.steps += 1
                if self.progress is not None:
                    self.progress(step, steps)
                now = self.stop.clock()
                # the first step of a run also traces the graph: time the others
                if step == 1:
                    t1 = now
                    if not self.result.history:  # so will the first validation
                        self.val_seconds = max(self.val_seconds, now - start)
                per_step = (now - t1) / (step - 1) if step > 1 else now - start
                if step > 1:  # the first step's time is mostly tracing
                    self.per_step = per_step
                if step == RATE_STEPS + 1 and not self.rate_said:
                    self._say_rate(per_step)
                # The run's first step is mostly tracing: its time says nothing of the next
                # one's, so the second step is always taken and measured.
                next_step = per_step if self.per_step else 0.0
                self.run_clock.reserve = self._reserve(next_step)
                if self.stop.would_overrun(self._reserve(next_step)):
                    break
        if not self.rate_said and self.per_step:  # an epoch shorter than RATE_STEPS
            self._say_rate(self.per_step)
        return losses, time.monotonic() - t0

    def _say_rate(self, per_step: float) -> None:
        """Once, after the first steps: this machine's speed and how long the run takes."""
        self.rate_said = True
        cfg = self.config
        left = self.planned_steps - self.result.steps
        epochs_left = int(cfg.epochs) - len(self.result.history)
        # A validation pixel costs about a third of a training one (no backward pass);
        # the first validation's time would also count tracing.
        val_seconds = self.validator.pixels * per_step / (3 * cfg.batch * np.prod(cfg.patch))
        seconds = left * per_step + epochs_left * val_seconds
        line = (f"{cfg.batch / per_step:.1f} samples/s on this machine: the "
                f"{self.planned_steps} steps ({cfg.epochs} epochs) take about "
                f"{_duration(seconds)} more")
        if self.stop.deadline is not None:
            available = self.stop.deadline - self.stop.clock()
            if seconds > available:
                share = max(0.0, available - epochs_left * val_seconds) / per_step
                line += (f"; the time limit allows about {min(left, int(share))} of them "
                         "(the schedule ends with it)")
        self.say(line)

    def warn_if_cut_short(self) -> None:
        """After the run: a warning (said, and kept in :attr:`LoopResult.warning`) when a
        time limit ended it while the validation Dice was still rising."""
        res, cfg = self.result, self.config
        if res.stop_reason != TIME_LIMIT or not res.history:
            return
        done = res.steps / max(self.planned_steps, 1)
        rising = res.best_epoch == len(res.history) and len(res.history) > 1
        if not rising and done >= USEFUL_SHARE:
            return
        scores = [h["val_best_dice"] for h in res.history[-3:]]
        shown = ", ".join("n/a" if v is None else f"{v:.3f}" for v in scores)
        seconds = res.steps * self.per_step if self.per_step else res.train_seconds
        rate = f"{res.steps * cfg.batch / seconds:.1f}" if seconds else "?"
        need = (f"all {self.planned_steps} would take about "
                f"{_duration(self.planned_steps * self.per_step)} here; "
                if self.per_step else "")
        res.warning = (f"the time limit stopped training after {res.steps} of "
                       f"{self.planned_steps} steps ({100 * done:.0f} %), "
                       f"{'with the validation Dice still rising' if rising else 'early'}"
                       f" ({shown}), at {rate} samples/s: the model is undertrained ({need}"
                       "give more --time-limit, fewer --epochs, or train on a GPU)")
        self.say(f"warning: {res.warning}")

    def _validate(self, epoch: int, losses: list[float], seconds: float) -> None:
        """Validate, keep the weights if best, record the epoch in the history."""
        res = self.result
        val = self.validator.run(self.model)
        self.val_seconds = val["seconds"]
        score = selection_dice(val)
        improved = not math.isnan(score) and score > res.best_dice + MIN_IMPROVEMENT
        if improved or res.best_weights is None:
            res.best_dice, res.best_epoch = score, epoch
            res.best_weights = self.model.get_weights()
            self.since_best = 0
        else:
            self.since_best += 1
        record = {"epoch": epoch, "steps": len(losses), "loss": float(np.mean(losses)),
                  "val_dice": rounded(val["dice"]), "val_best_dice": rounded(val["best_dice"]),
                  "val_best_threshold": val["best_threshold"],
                  "learning_rate": self.learning_rate, "train_seconds": round(seconds, 2),
                  "val_seconds": round(val["seconds"], 2),
                  "samples_per_s": round(len(losses) * self.config.batch / seconds, 3)}
        res.history.append(record)
        self.on_epoch(res.history)
        self.say(f"epoch {epoch}/{self.config.epochs}: loss {record['loss']:.4f}, val Dice "
                 f"{score:.4f} at {val['best_threshold']:.2f} ({val['dice']:.4f} at 0.5; best "
                 f"{res.best_dice:.4f} at epoch {res.best_epoch}), "
                 f"{record['samples_per_s']:.1f} samples/s, {seconds:.0f}+{val['seconds']:.0f} s")

    def _should_stop(self) -> bool:
        """After an epoch: stop requested, early stopping, or halve the learning rate."""
        cfg = self.config
        if self.stop.reason == INTERRUPTED:
            self.result.stop_reason = INTERRUPTED
            self.say("interrupted: keeping the best model so far")
            return True
        if self.stop.reason == TIME_LIMIT:
            self.result.stop_reason = TIME_LIMIT
            limit = f" of {cfg.time_limit:g} min" if cfg.time_limit else ""
            self.say(f"time limit{limit} reached: keeping the best model")
            return True
        if self.since_best >= cfg.patience:
            self.result.stop_reason = "early stopping"
            self.say(f"no better validation Dice for {cfg.patience} epochs: stopping")
            return True
        if (cfg.schedule == "plateau" and self.since_best
                and self.since_best % cfg.lr_patience == 0
                and self.learning_rate > MIN_LEARNING_RATE):
            self.learning_rate = max(self.learning_rate / 2, MIN_LEARNING_RATE)
            self.model.optimizer.learning_rate.assign(self.learning_rate)
            self.say(f"learning rate -> {self.learning_rate:g}")
        return False


def selection_dice(val: dict) -> float:
    """The validation Dice that picks the best epoch: at the epoch's best threshold, or
    at 0.5 when the validation frames hold no foreground (no threshold is better)."""
    best = val["best_dice"]
    return val["dice"] if best is None or math.isnan(best) else float(best)


def rounded(value, digits: int = 6):
    """``value`` rounded for the history and model info; None for NaN or None."""
    return None if value is None or (isinstance(value, float) and math.isnan(value)) \
        else round(float(value), digits)


def _duration(seconds: float) -> str:
    """``seconds`` for people: "40 s", "7 min", "2.5 h"."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
