"""Train the U-Net on patches streamed from Zarr stores: ``volseg train``.

:func:`train` runs these steps, each in a module of this package:

1. :mod:`~volseg.training.config`: the parameters (:class:`TrainConfig`, checked when
   made) and the inputs (:func:`open_inputs`: output path, stores, init model, patch
   size), all before any pixel is read.
2. Hold out whole time points (whole z-frames when T == 1) for validation
   (:func:`volseg.training.sampler.split_frames`).
3. Scan the training frames once, block by block (:mod:`volseg.training.sampler`): intensity
   histogram -> robust percentiles (the model's built-in normalisation), and where the
   foreground is, for foreground oversampling.
4. Build and compile the model (:func:`build_model`).
5. :mod:`~volseg.training.loop`: epochs of ``train_on_batch`` steps, each followed by
   whole-frame validation (:mod:`~volseg.training.validation`); a :class:`StopSignal`
   (Ctrl-C, time limit, remote cancellation) ends it after the current step.
6. :mod:`~volseg.training.output`: restore the best weights, re-validate with the float32
   model that is saved, pick the threshold maximising validation Dice over the 256
   uint8 levels (:mod:`volseg.ops.thresholds`; ties nearest 0.5), and write the model,
   ``<stem>.history.csv``/``.json`` and ``<stem>.curves.png`` beside it.
"""

from __future__ import annotations

import dataclasses
import time

from volseg.errors import InputError
from volseg.ops.indices import format_ranges
from volseg.models.unet import PRECISIONS, resolve_compile, resolve_precision
from volseg.training.config import (LOSSES, Inputs, TrainConfig, check_step_memory, open_inputs,
                                    output_paths, sampler_threads)
from volseg.training.losses import SKELETON_TARGET_LOSSES, make_loss
from volseg.training.loop import EpochLoop, LoopResult
from volseg.training.output import plot_history, write_history
from volseg.training.stop import StopSignal
from volseg.training.validation import Validator, choose_val_frames

__all__ = ["LOSSES", "PRECISIONS", "EpochLoop", "Inputs", "LoopResult", "StopSignal",
           "TrainConfig", "Validator", "build_model", "choose_val_frames", "make_loss",
           "open_inputs", "output_paths", "plot_history", "train", "write_history"]


def train(images_path, truth_path, out_path, *, progress=None, log=None,
          stop: StopSignal | None = None, **options) -> dict:
    """Train a U-Net on Zarr image/truth stores and write a volseg model file.

    Parameters
    ----------
    images_path, truth_path, out_path, **options
        The fields of :class:`TrainConfig` (the same names and defaults): stores,
        model file, validation split, loss, training length, architecture, time limit,
        precision and the rest.
    progress : callable(done, total), optional
        Called with ``(0, steps)`` when an epoch starts and after each training step
        with the step within the epoch.
    log : callable(str), optional
        Receives one line per epoch and a few status lines.
    stop : StopSignal, optional
        Lets another party end training early (see :mod:`volseg.training.stop`); its
        time limit is set from ``time_limit``. Ctrl-C requests a stop either way.

    Returns
    -------
    dict
        Summary: paths, best epoch, validation Dice, threshold, stop reason, timings.

    Raises
    ------
    KeyboardInterrupt
        Interrupted before a single epoch was validated: nothing was saved.
    """
    config = TrainConfig(images_path, truth_path, out_path, **options)
    return run(config, progress=progress, log=log, stop=stop)


def _learning_split(config: TrainConfig, inputs, say):
    """What training reads of the truth (labels, and the region to learn from: annotated
    and inside the ROI, as an array or None) and the split over the annotated frames:
    ``(truth, roi array, split, annotated frames or None)``."""
    from volseg.io.truth import learning_views, other_images
    from volseg.training.sampler import split_frames

    shape = inputs.image.shape
    made_for = other_images(inputs.truth, inputs.image)
    if made_for:
        say(f"warning: {config.truth_path} was annotated on {made_for}, another conversion "
            f"than {config.images_path}; make sure they hold the same frames")
    truth, region, annotated = learning_views(inputs.truth, inputs.roi)
    split = split_frames(shape, val_fraction=config.val_fraction,
                         val_timepoints=config.val_timepoints, val_frames=config.val_frames,
                         annotated=annotated)
    if annotated is not None:
        say(f"{config.truth_path}: {len(annotated)} annotated frame(s) of "
            f"{shape[0] * shape[1]}; learning from annotated pixels only")
    return truth, (region.array if region is not None else None), split, annotated


def run(config: TrainConfig, *, progress=None, log=None, stop: StopSignal | None = None) -> dict:
    """:func:`train` for a made :class:`TrainConfig`.

    The orchestration only: every step is a function or class of its own module. It
    runs a little over 80 lines because the steps share a dozen values (stores, split,
    index, normalisation, validator) that a further split would only pass around.
    """
    from volseg.training.sampler import (Augment, PatchDataset, PatchSampler, scan_training_data,
                                         where_learned)
    from volseg.training.output import provenance_record, training_record, write_model

    say = log or (lambda message: None)
    t_start = time.monotonic()
    config = resolve_machine_choices(config, say)
    stop = stop or StopSignal()
    stop.set_time_limit(config.time_limit)
    inputs = open_inputs(config)
    check_step_memory(config, inputs.architecture)
    image = inputs.image
    truth, roi, split, annotated = _learning_split(config, inputs, say)
    say(f"images {tuple(image.shape)} {image.dtype}: {len(split.train)} training and "
        f"{len(split.val)} validation frames (held out by {split.by}: "
        f"{format_ranges(split.val_indices)})")

    index = scan_training_data(image.array, truth.array, split.train, roi=roi, seed=config.seed)
    if index.foreground.total == 0:
        raise InputError(f"{config.truth_path}: the training frames hold no structure (no 1)"
                         f"{where_learned(annotated, roi)}: there is nothing "
                         "to learn; annotate structure, or hold out other time points",
                         param="truth_path")
    normalization = index.percentiles(*config.percentiles)
    lo, hi = config.percentiles
    say(f"foreground {100 * index.foreground_fraction:.2f} % of training pixels; intensity "
        f"{lo}-{hi} percentiles {normalization[0]:g}..{normalization[1]:g}")
    if config.context > 1:
        say(context_note(config.context, image.shape[1]))

    keras, model, normalization = build_model(config, inputs, normalization, say)
    sampler = PatchSampler(image.array, truth.array, index, patch=config.patch, roi=roi,
                           foreground_share=config.foreground_share,
                           normalization=normalization,
                           augment=Augment() if config.augment else Augment.none(),
                           context=config.context,
                           skeleton=config.loss in SKELETON_TARGET_LOSSES)
    dataset = PatchDataset(sampler, batch_size=config.batch, steps=config.steps_per_epoch,
                           seed=config.seed, workers=config.workers,
                           max_queue_size=max(2, 2 * config.workers))
    val_list = choose_val_frames(split.val, image.shape[2] * image.shape[3],
                                 config.max_val_pixels)
    if len(val_list) < len(split.val):
        say(f"validating on {len(val_list)} of {len(split.val)} validation frames "
            f"(max_val_pixels={config.max_val_pixels})")
    from volseg.models.unet import base_info, default_margin, with_precision

    arch = inputs.architecture
    margin = default_margin(arch["depth"])
    validator = Validator(image.array, truth.array, val_list, roi=roi,
                          multiple=inputs.multiple, margin=margin, context=config.context)
    paths = config.paths
    loop = EpochLoop(model, dataset, validator, config, stop=stop, progress=progress, say=say,
                     on_epoch=lambda history: write_history(history, paths)).run()

    # The best weights, in the float32 model that is saved, validated once more: the
    # threshold is chosen on exactly the model that predict will load.
    if loop.best_weights is None:
        raise KeyboardInterrupt  # interrupted before any validation: nothing to keep
    model.set_weights(loop.best_weights)
    final = with_precision(model, "float32", info={"architecture": arch})
    val = validator.run(final)
    threshold = val["best_threshold"]
    if val["note"]:
        say(val["note"])
    training = training_record(config, inputs, split, val_list, loop, val,
                               fg_fraction=index.foreground_fraction,
                               seconds=time.monotonic() - t_start)
    info = base_info(depth=arch["depth"], base_filters=arch["base_filters"],
                     dropout=arch["dropout"], batch_norm=arch["batch_norm"],
                     normalization=normalization, patch=config.patch, threshold=threshold,
                     input_dtype=str(image.dtype), training=training,
                     provenance=provenance_record(config, inputs, keras),
                     context=config.context)
    info["margin"] = margin
    write_model(final, paths, info, loop.history, loop.best_epoch)
    say(f"saved {paths['model']}: best epoch {loop.best_epoch}, val Dice "
        f"{val['best_dice']:.4f} at threshold {threshold:.4f} ({val['dice']:.4f} at 0.5); "
        f"stopped by {loop.stop_reason}")
    return {"model": str(paths["model"]), "history_csv": str(paths["history_csv"]),
            "history_json": str(paths["history_json"]), "curves": str(paths["curves"]),
            "best_epoch": loop.best_epoch, "epochs_run": len(loop.history),
            "steps": loop.steps, "val_dice": val["best_dice"],
            "val_dice_at_0.5": val["dice"], "threshold": threshold,
            "stop_reason": loop.stop_reason, "warning": loop.warning,
            "normalization": list(normalization),
            "seconds": time.monotonic() - t_start,
            "samples_per_s": training["samples_per_s"], "history": loop.history}


def resolve_machine_choices(config: TrainConfig, say) -> TrainConfig:
    """``config`` with "auto" precision and step compilation resolved here, on the
    machine that trains (a Slurm job's), and one line saying what was chosen and why."""
    from volseg.models.backend import import_keras

    import_keras()  # the backend, to see GPUs
    asked = (config.precision, config.compile)
    from volseg.engine.blocks import usable_cores
    from volseg.models.unet import gpu_capabilities, machine

    gpus = gpu_capabilities()
    precision = resolve_precision(config.precision, gpus=gpus)
    compile = resolve_compile(config.compile, precision, gpus=gpus)
    workers = config.workers or sampler_threads(gpus=bool(gpus), cores=usable_cores())
    config = dataclasses.replace(config, precision=precision, compile=compile, workers=workers)
    where = machine() + (f"; {workers} threads sample patches" if gpus else "")
    say(f"training in {precision}{' (auto)' if asked[0] == 'auto' else ''}, "
        f"{_step_words(compile, asked[1])}; {where}")
    return config


def _step_words(compile: str, asked: str) -> str:
    from volseg.models.unet import keras_backend_name

    backend = keras_backend_name()
    if compile == "xla":
        how = "step compiled by XLA"
        if backend == "jax" and asked == "graph":
            return how + " (JAX has no graph mode: a step not compiled runs op by op)"
    elif backend == "tensorflow":
        how = "step compiled as a TensorFlow graph"
    else:
        how = f"step run by {backend} without compiling"
    return how + (" (auto)" if asked == "auto" else "")


def build_model(config: TrainConfig, inputs: Inputs, normalization, say):
    """The compiled model to train: ``(keras, model, normalization)``.

    A new U-Net with ``normalization`` from the training data, or the ``init`` model
    (whose own normalisation is kept and returned), built under the training precision.
    Keras is imported only here, so bad input found earlier fails fast.
    """
    from volseg.models.backend import import_keras
    from volseg.models.unet import build_unet, load_model, model_normalization, with_precision

    keras = import_keras()
    keras.utils.set_random_seed(int(config.seed))
    arch = inputs.architecture
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(PRECISIONS[config.precision])
    try:
        if config.init is not None:
            base, _ = load_model(config.init)
            normalization = model_normalization(base)
            model = with_precision(base, config.precision, info=inputs.init_info)
            say(f"continuing from {config.init} (its normalisation {normalization[0]:g}.."
                f"{normalization[1]:g} is kept)")
        else:
            model = build_unet(base_filters=arch["base_filters"], depth=arch["depth"],
                               dropout=arch["dropout"], batch_norm=arch["batch_norm"],
                               normalization=normalization, channels=config.context)
        optimizer = keras.optimizers.Adam(learning_rate=config.learning_rate)
        model.compile(optimizer=optimizer, loss=make_loss(config.loss),
                      jit_compile=config.compile == "xla")
    finally:
        keras.config.set_dtype_policy(previous_policy)
    return keras, model, normalization


def context_note(context: int, depth: int) -> str:
    """The status line of a run with depth context K > 1 on a stack of ``depth`` slices."""
    note = (f"depth context: {context} slices per input (the slice and {(context - 1) // 2} "
            "on each side; the edge slice repeated at the stack's ends)")
    if depth == 1:
        note += "; the images have one slice, so every channel repeats it"
    return note

