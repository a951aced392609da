"""What a training run is asked to do, validated once, before any data is read.

:class:`TrainConfig` checks every parameter's value when it is made (each
:class:`~volseg.errors.InputError` names the parameter); :func:`open_inputs` then checks
what needs the file system but no pixel data: the output path, the stores' shapes and
types, the model to continue from and the patch size against its depth. ``volseg
train`` runs both in its own process, and ``--cluster slurm`` runs both on the
submitting machine before a job waits in the queue, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from volseg.ops.context import check_context
from volseg.errors import InputError
from volseg.models.unet import COMPILE_CHOICES, check_precision
from volseg.training.sampler import check_foreground_share
from volseg.training.schedule import check_schedule

LOSSES = ("bce", "dice", "bce+dice", "bce+dice+cldice", "bce+dice+skeleton")


def check_loss(loss: str) -> None:
    """:class:`InputError` naming ``loss`` unless it is one of :data:`LOSSES`."""
    if loss not in LOSSES:
        raise InputError(f"must be one of {', '.join(LOSSES)}, not {loss!r}", param="loss")


def sampler_threads(*, gpus: bool, cores: int) -> int:
    """Threads sampling patches when ``--workers`` is not given: 2 where the CPU also runs
    the training step (more would take its cores), up to 8 where a GPU runs it. On an
    H200 two threads fed the default step at 0.53-0.67x the speed it trains batches
    already in memory, eight at 0.77-0.85x (benchmarks/bench_gpu.py)."""
    return max(1, min(8, cores)) if gpus else 2


def parse_patch(patch) -> tuple[int, int]:
    """``256``, ``"256"``, ``"128,256"``, ``"128x256"`` or ``(128, 256)`` as (h, w)."""
    if isinstance(patch, (int, np.integer)):
        return (int(patch), int(patch))
    if isinstance(patch, str):
        try:
            values = [int(p) for p in patch.replace("x", ",").split(",")]
        except ValueError:
            raise InputError(f"{patch!r} is not N or H,W", param="patch") from None
        return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])
    return (int(patch[0]), int(patch[1]))


def output_paths(out_path) -> dict:
    """Where training writes: the model and its history and curves beside it."""
    out = Path(out_path)
    stem = out.with_suffix("")
    return {"model": out, "history_csv": Path(f"{stem}.history.csv"),
            "history_json": Path(f"{stem}.history.json"),
            "curves": Path(f"{stem}.curves.png")}


@dataclass(frozen=True)
class TrainConfig:
    """The parameters of one training run, checked when the object is made.

    Parameters
    ----------
    images_path, truth_path : path
        Image and truth stores (t, z, y, x) of one shape; truth is 0/1.
    out_path : path
        Model file to write (``.keras``); history and curves go beside it.
    roi_path : path, optional
        Mask store of where labels are valid (t and z may be 1 to apply everywhere):
        patches are centred inside it, the loss and validation count only inside it.
    channel, series : int, optional
        The channel and the bioformats2raw series to read from stores made by other
        tools (:func:`volseg.io.store.open_image`); stores without them ignore them.
    init : path, optional
        A volseg model to continue from (its architecture and normalisation are kept).
    val_fraction, val_timepoints, val_frames
        Validation split (see :func:`volseg.training.sampler.split_frames`).
    loss : "bce", "dice", "bce+dice", "bce+dice+cldice" or "bce+dice+skeleton"
        See :func:`volseg.training.losses.make_loss`.
    epochs, steps_per_epoch, patch, batch
        Training length and batch geometry. ``patch`` must be multiples of 2**depth.
    filters, depth, dropout, batch_norm
        U-Net architecture (ignored with ``init``).
    context : int
        Depth context (2.5D): the network sees this many neighbouring z-slices of the
        same time point as channels (odd; 1 = the slice alone, exactly as without the
        option). At the stack's ends the edge slice is repeated (:mod:`volseg.ops.context`).
        With ``init`` it must equal the model's own.
    learning_rate : float
        Adam's peak rate.
    schedule : "cosine" or "plateau"
        ``cosine``: warm-up, then cosine decay that ends when the run must end (the time
        limit, else the last epoch); ``plateau``: halve after ``lr_patience`` epochs
        without a better validation Dice (:mod:`volseg.training.schedule`).
    foreground_share : float
        Share of patches centred on foreground.
    augment : bool
        Flips, 90-degree rotations, intensity jitter.
    patience : int
        Early stopping: epochs without a better validation Dice.
    seed : int
        Seeds weights, dropout and patch sampling.
    time_limit : float, optional
        Minutes; training stops in time to validate, and the best model is kept.
    precision : "auto", "float32" or "bfloat16"
        Training precision (``mixed_bfloat16`` policy); "auto": bfloat16 where the
        hardware computes it natively (resolved on the machine that trains, and recorded
        in the model). The saved model is float32.
    compile : "auto", "graph" or "xla"
        How the training step is compiled (:func:`volseg.models.unet.resolve_compile`): "auto"
        picks XLA for float32 on CPUs without AVX-512 (1.3-1.5x faster there), the
        TensorFlow graph elsewhere; resolved on the machine that trains and recorded in
        the model. The two give the same training within rounding, not bit for bit.
    workers : int, optional
        Threads preparing patches ahead of the training step. None: 2 where the CPU also
        trains, up to 8 where a GPU does (:func:`sampler_threads`).
    max_val_pixels : int, optional
        Cap on validation pixels per epoch (whole frames evenly spread).
    percentiles : (low, high)
        Intensity percentiles (in %) mapped to 0 and 1 by the model.
    overwrite : bool
        Replace an existing model file.
    command : str, optional
        Command line, for provenance.
    """

    images_path: Any
    truth_path: Any
    out_path: Any
    roi_path: Any = None
    channel: int | None = None
    series: int | None = None
    init: Any = None
    val_fraction: float = 0.2
    val_timepoints: str | None = None
    val_frames: str | None = None
    loss: str = "bce+dice+skeleton"
    epochs: int = 100
    steps_per_epoch: int = 100
    patch: Any = (256, 256)
    batch: int = 8
    filters: int = 8
    depth: int = 4
    dropout: float = 0.0
    batch_norm: bool = True
    context: int = 1
    learning_rate: float = 3e-3
    schedule: str = "cosine"
    foreground_share: float = 1 / 3
    augment: bool = True
    patience: int = 10
    lr_patience: int = 3
    seed: int = 0
    time_limit: float | None = None
    precision: str = "auto"
    compile: str = "auto"
    workers: int | None = None
    max_val_pixels: int | None = 16_000_000
    percentiles: tuple = (0.5, 99.5)
    overwrite: bool = False
    command: str | None = None

    def __post_init__(self):
        check_loss(self.loss)
        check_schedule(self.schedule)
        check_precision(self.precision)
        if self.compile not in COMPILE_CHOICES:
            raise InputError(f"must be one of {', '.join(COMPILE_CHOICES)}, not "
                             f"{self.compile!r}", param="compile")
        for name in ("epochs", "steps_per_epoch", "batch", "filters", "depth", "workers"):
            value = getattr(self, name)
            if value is not None and int(value) < 1:
                raise InputError(f"must be at least 1, got {value}", param=name)
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)
                and self.learning_rate > 0):
            raise InputError(f"must be a positive number, got {self.learning_rate!r}",
                             param="learning_rate")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise InputError(f"must be in [0, 1), got {self.dropout!r}", param="dropout")
        if self.time_limit is not None and not (
                isinstance(self.time_limit, (int, float)) and math.isfinite(self.time_limit)):
            raise InputError(f"must be a number of minutes, got {self.time_limit!r}",
                             param="time_limit")
        if self.time_limit is not None and self.time_limit <= 0:
            raise InputError(f"must be positive minutes, got {self.time_limit}",
                             param="time_limit")
        check_foreground_share(self.foreground_share)
        object.__setattr__(self, "patch", parse_patch(self.patch))
        object.__setattr__(self, "context", check_context(self.context))

    @classmethod
    def option_names(cls) -> tuple[str, ...]:
        """The keyword options (every field but the three paths)."""
        return tuple(f.name for f in dataclasses.fields(cls))[3:]

    @property
    def paths(self) -> dict:
        """:func:`output_paths` of ``out_path``."""
        return output_paths(self.out_path)


class Inputs(NamedTuple):
    """The opened stores and the architecture a run trains (from ``init`` if given)."""

    image: Any
    truth: Any
    roi: Any
    init_info: dict | None
    architecture: dict

    @property
    def multiple(self) -> int:
        """Patch and tile sides must be multiples of this (2**depth)."""
        return 2 ** int(self.architecture["depth"])


def open_stores(images_path, truth_path, roi_path=None, *, channel=None, series=None):
    """The training stores, checked: complete, one shape, an integer truth, an ROI that fits.

    Shared by every training method (the U-Net and the forest).

    Returns
    -------
    (ImageStore, ImageStore, ImageStore or None)
    """
    from volseg.io.store import open_image, open_roi
    from volseg.ops.annotation import check_mask_dtype

    select = dict(channel=channel, series=series)
    image = open_image(images_path, what="image store (--images)", **select)
    truth = open_image(truth_path, what="truth store (--truth)", **select)
    if tuple(truth.shape) != tuple(image.shape):
        raise InputError(f"shape {tuple(truth.shape)} differs from the images' "
                         f"{tuple(image.shape)}; both must be (t, z, y, x) of one size",
                         param="truth_path")
    check_mask_dtype(truth.dtype, name=str(truth_path), param="truth_path")
    roi = None
    if roi_path is not None:
        roi = open_roi(roi_path, image.shape, param="roi_path", what="ROI store (--roi)",
                       **select)
    return image, truth, roi


def check_init_context(context: int, init_info: dict | None) -> None:
    """:class:`InputError` naming ``context`` unless it equals the init model's (models
    without the key take one slice)."""
    if init_info is None:
        return
    theirs = int(init_info.get("context", 1))
    if theirs != context:
        raise InputError(f"must be {theirs}, the context of the model to continue from, "
                         f"not {context}", param="context")


def open_inputs(config: TrainConfig) -> Inputs:
    """Check everything about ``config`` that needs files but no pixel data.

    The output path (``.keras``, its folder exists, not there unless ``overwrite``),
    the stores (complete, one shape, an integer truth, an ROI that fits), the model to
    continue from, and the patch size against the depth. :class:`InputError` naming
    the parameter on the first problem.
    """
    from volseg.models.unet import read_model_info

    out = Path(config.out_path)
    if out.suffix != ".keras":
        raise InputError(f"the model file must end in .keras, not {out.name!r}",
                         param="out_path")
    if not out.parent.is_dir():
        raise InputError(f"folder {out.parent} does not exist", param="out_path")
    if out.is_dir():
        raise InputError(f"{out} is a folder; give a model file name", param="out_path")
    if out.exists() and not config.overwrite:
        raise InputError(f"{out} exists; use --overwrite to replace it", param="out_path")
    image, truth, roi = open_stores(config.images_path, config.truth_path, config.roi_path,
                                    channel=config.channel, series=config.series)
    init_info = read_model_info(config.init) if config.init is not None else None
    if init_info is not None and "architecture" not in init_info:
        raise InputError(f"{config.init}: a {init_info.get('kind', 'non-U-Net')} model, not a "
                         "U-Net; --init continues from a U-Net (.keras)", param="init")
    if init_info is not None:
        architecture = dict(init_info["architecture"])
    else:
        architecture = {"base_filters": int(config.filters), "depth": int(config.depth),
                        "dropout": float(config.dropout), "batch_norm": bool(config.batch_norm)}
    check_init_context(config.context, init_info)
    inputs = Inputs(image, truth, roi, init_info, architecture)
    h, w = config.patch
    m = inputs.multiple
    if h % m or w % m or min(h, w) < m:
        raise InputError(f"{h}x{w} must be multiples of {m} (2**depth for depth "
                         f"{architecture['depth']})", param="patch")
    return inputs


#: Bytes a training step holds per patch pixel and base filter (activations kept for the
#: backward pass, their gradients, the optimizer's work): measured with
#: benchmarks/bench_train_memory.py (the slope of peak memory over the batch size: 92-94
#: on a 2-core AVX2 machine, patches 128 and 256, 8 and 16 filters; rounded up).
STEP_BYTES_PER_PIXEL_FILTER = 100


def step_bytes(*, patch, batch: int, filters: int, context: int = 1) -> int:
    """Estimated memory of one training step beyond the model: a U-Net keeps about
    :data:`STEP_BYTES_PER_PIXEL_FILTER` bytes per patch pixel and base filter (the sum
    over its levels of channels x pixels converges to twice the top level's)."""
    h, w = patch
    per_sample = h * w * (STEP_BYTES_PER_PIXEL_FILTER * filters + 4 * (context + 3))
    return int(batch) * per_sample


def available_memory() -> int | None:
    """Bytes this process may still use: the cgroup's limit (a Slurm job's) or the
    machine's available memory, whichever is smaller; None if neither can be read."""
    found = []
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = open(path).read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            used = 0
            for current in ("/sys/fs/cgroup/memory.current",
                            "/sys/fs/cgroup/memory/memory.usage_in_bytes"):
                try:
                    used = int(open(current).read().strip())
                    break
                except (OSError, ValueError):
                    continue
            found.append(max(0, int(text) - used))
    return min(found) if found else None


def check_step_memory(config: "TrainConfig", architecture: dict) -> None:
    """Refuse a batch whose training step cannot fit in this machine's memory, before
    anything is built (one line naming --batch and the largest batch that fits)."""
    free = available_memory()
    if free is None:
        return
    filters = int(architecture.get("base_filters") or config.filters)
    need = step_bytes(patch=config.patch, batch=config.batch, filters=filters,
                      context=config.context)
    if need <= free:
        return
    one = step_bytes(patch=config.patch, batch=1, filters=filters, context=config.context)
    fits = max(0, free // max(one, 1))
    h, w = config.patch
    advice = (f"use --batch {fits} or less" if fits >= 1
              else "even one patch does not fit: use a smaller --patch")
    raise InputError(f"{config.batch} patches of {h}x{w} ({filters} base filters) need about "
                     f"{need / 2**30:.1f} GiB per training step, and {free / 2**30:.1f} GiB "
                     f"are available here; {advice}", param="batch")

