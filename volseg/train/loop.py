"""The epoch loop: train steps, validate, keep the best weights, decide when to stop.

Steps run with ``train_on_batch`` (Keras' compiled train step) fed by worker threads
that read and augment the next batches while the current one trains: as fast as
``fit(PyDataset)`` and faster than ``fit`` on the same patches in memory (docs/decisions.md,
section "Training step"; benchmarks/bench_train_loop.py re-measures), and one step at a
time is what the time limit, Ctrl-C and the per-step schedule need. After each
epoch the validation frames are predicted whole (:mod:`volseg.train.validation`): the
Dice at the epoch's own best threshold (:func:`selection_dice`) picks the best epoch and
drives early stopping (and, with the ``plateau`` schedule, learning-rate halving). The
``cosine`` schedule sets the rate before every step from the share of the run done
(:mod:`volseg.train.schedule`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError
from .schedule import RunClock, cosine_rate
from .stop import INTERRUPTED, TIME_LIMIT, StopSignal

#: Validation counts as better only above the best so far by more than this.
MIN_IMPROVEMENT = 1e-4
#: The learning rate is halved down to this floor, never below.
MIN_LEARNING_RATE = 1e-5


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


class EpochLoop:
    """Run epochs of ``model`` on ``dataset`` until a stop, validating with ``validator``.

    Parameters
    ----------
    model : keras.Model
        Compiled.
    dataset : volseg.sampler.PatchDataset
    validator : volseg.train.validation.Validator
    config : volseg.train.config.TrainConfig
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
        self.run_clock = RunClock(int(config.epochs) * int(config.steps_per_epoch),
                                  deadline=stop.deadline, reserve=self._reserve(0.0),
                                  clock=stop.clock)

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
        from ..sampler import prefetch

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
                self.run_clock.reserve = self._reserve(per_step)
                if self.stop.would_overrun(self._reserve(per_step)):
                    break
        return losses, time.monotonic() - t0

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
