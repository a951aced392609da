"""Prediction: a Dask graph streaming tiles of an image store through the U-Net.

One task per block (one shard of the output: a few frames of one time point, whole
frames up to 4096 x 4096). The task reads its frames (plus a halo when a block is part
of a larger frame) straight from Zarr, runs the model over the tiles of its tile plan in
batches, and writes the probability and mask of its block, then records the block as
done. Output shards equal the image's, so no two tasks write the same chunk, and the
graph has one small task per block whatever the dataset size.

The model is loaded once per worker process (cached by file hash and precision) and is
called through ``predict_on_batch``, a compiled call (``model.predict`` adds 30-55 ms
per call: docs/decisions.md, "predict").

Probabilities are stored as uint8 (value / 255; ``volseg.probability_scale`` = 255).
The mask is ``probability_u8 >= ceil(255 * threshold)`` (``metrics.threshold_bin``), so
mask and stored probability always agree exactly, by evaluate's own rule.
"""

from __future__ import annotations

import contextlib
import functools
import os
import posixpath
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from volseg.engine import labels as lb
from volseg.io import store as st
from volseg.engine.blocks import MODEL_THREADS, BlockGrid, BlockLedger, usable_cores
from volseg.errors import DamagedDataError, InputError
from volseg.models import zoo
from volseg.models.onnx import session as onnx_session
from volseg.models.forest import FeatureSpec, forest_probabilities, load_forest, tile_features
from volseg.io.integrity import nonfinite_counts
from volseg.io.location import RemotePath, is_remote, locate
from volseg.io.location import text as location_text
from volseg.ops.annotation import inside_roi
from volseg.ops.metrics import quantise, threshold_bin
from volseg.models.unet import (check_precision, check_record, file_sha256, gpu_capabilities,
                                keras_backend_name, read_model_info, resolve_precision)
from volseg.engine.outputs import open_output
from volseg.engine.pyramid import choose_levels
from volseg.engine.stage import StageRun
from volseg.ops.tiling import (default_tile, predict_frames, predict_stack, tile_plan,
                               window_length)


#: Dask threads per local worker process: one block at a time, because TensorFlow (or
#: the forest's thread pool) already uses every core the process has; two blocks in
#: flight ran 0.84x the bare model on an AVX2 CPU (each drives TensorFlow over every
#: core, so they slow each other) and added 700 MB (benchmarks/bench_predict.py).
LOCAL_THREADS = 1


def local_workers() -> int:
    """Worker processes of a local cluster for predict: one per MODEL_THREADS usable
    cores, since each process's TensorFlow runs that many threads whatever its cores."""
    return max(1, usable_cores() // MODEL_THREADS)


# Worker-process cache: (sha, precision) -> keras model. One load per worker process.
_MODELS: dict = {}
_MODEL_LOCK = threading.Lock()
_RESOLVED: dict = {}  # "auto" -> the precision this process uses
LOADS = {"count": 0}


def cached_model(model_path: str, sha: str, precision: str):
    """The model for ``(sha, precision)``, loaded at most once in this process.

    ``precision`` may be "auto": it is resolved here, on the machine that runs the model
    (a GPU worker's answer differs from the login node's); ``model.volseg_precision``
    says what was used. A float32 model runs on ONNX Runtime where it converts
    (:mod:`volseg.models.onnx`: 1.6x TensorFlow's speed on CPUs), else on Keras;
    ``model.volseg_runtime`` names the other runtime (None: Keras' backend).
    """
    with _MODEL_LOCK:
        from volseg.models.backend import fix_model_threads, import_keras

        fix_model_threads()
        import_keras()
        if precision not in _RESOLVED:
            _RESOLVED[precision] = resolve_precision(precision)
        precision = _RESOLVED[precision]
        key = (sha, precision)
        if key not in _MODELS:
            from volseg.models.unet import load_model

            model, _ = load_model(model_path, precision=precision)
            runtime = None  # the Keras backend's own
            if precision == "float32":
                from volseg.models.onnx import onnx_network, runtime_version

                converted = onnx_network(model, MODEL_THREADS)
                if converted is not None:
                    model, runtime = converted, runtime_version()
                else:  # a failed export may have changed the model: a fresh copy
                    model, _ = load_model(model_path, precision=precision)
            model.volseg_precision = precision
            model.volseg_runtime = runtime
            model.volseg_gpus = gpu_capabilities() if runtime is None else []
            if runtime is None and keras_backend_name() != "tensorflow":
                # Keras on JAX donates the model's state buffers to each call (on a GPU):
                # two threads calling at once passed a buffer the other call had freed
                # ("Array has been deleted"), so calls of one model take turns.
                model.volseg_call_lock = threading.Lock()
            _MODELS[key] = model
            LOADS["count"] += 1
        return _MODELS[key]


def model_loads() -> int:
    """How many times this process loaded a model (for tests and benchmarks)."""
    return LOADS["count"]


#: The 8 symmetries of a square (the dihedral group D4), as ``(quarter turns, flip)``:
#: identity, the 3 rotations by 90 degrees, and the mirror image (left-right) of each.
DIHEDRAL = tuple((k % 4, k >= 4) for k in range(8))


def dihedral(batch: np.ndarray, quarter_turns: int, flip: bool) -> np.ndarray:
    """Transform the frames of ``batch`` (b, H, W, ...): flip left-right, then rotate.

    An odd number of quarter turns swaps H and W.
    """
    out = np.flip(batch, axis=2) if flip else batch
    return np.rot90(out, quarter_turns, axes=(1, 2))


def undo_dihedral(batch: np.ndarray, quarter_turns: int, flip: bool) -> np.ndarray:
    """The inverse of :func:`dihedral`: rotate back, then flip back."""
    out = np.rot90(batch, -quarter_turns, axes=(1, 2))
    return np.flip(out, axis=2) if flip else out


def tta_average(run, batch: np.ndarray, *, batch_size: int | None = None) -> np.ndarray:
    """Test-time augmentation: the mean of ``run`` over the 8 dihedral transforms.

    Parameters
    ----------
    run : callable
        ``(b, H, W, 1) float32 -> (b, H, W, 1)`` probabilities; fully convolutional, so
        it also takes (b, W, H, 1) (tiles are multiples of the model's ``multiple`` on
        both axes, so rotated tiles still fit).
    batch : ndarray (b, H, W, 1)
    batch_size : int, optional
        Tiles per call of ``run`` (default ``b``): the transformed tiles of the same
        shape are stacked and cut into calls of this size, so each call is as full
        (and as large in memory) as a call without TTA.

    Returns
    -------
    ndarray (b, H, W, 1) float32
        Each transform's probabilities mapped back to the original orientation, averaged.
    """
    b = len(batch)
    size = max(1, batch_size or b)
    total = np.zeros(batch.shape[:3], np.float64)
    for odd in (False, True):  # transforms of one output shape go through run together
        group = [d for d in DIHEDRAL if (d[0] % 2 == 1) == odd]
        stack = np.ascontiguousarray(np.concatenate([dihedral(batch, *d) for d in group]))
        out = np.concatenate([np.asarray(run(stack[s:s + size]), np.float32).reshape(
            stack[s:s + size].shape[:3]) for s in range(0, len(stack), size)])
        for j, d in enumerate(group):
            total += undo_dihedral(out[j * b:(j + 1) * b], *d)
    return (total / len(DIHEDRAL)).astype(np.float32)[..., None]


def predict_batch_fn(model, *, tta: bool = False, batch_size: int | None = None):
    """A ``(b, H, W, K) float32 -> (b, H, W, 1) float32`` callable for the tiling code.

    The one place where tiles become probabilities. With ``tta`` each tile's
    probabilities are the mean over its 8 dihedral transforms (:func:`tta_average`,
    ``batch_size`` tiles per model call): 8x the model's work.
    """

    on_gpu = bool(getattr(model, "volseg_gpus", None))
    turns = getattr(model, "volseg_call_lock", None) or contextlib.nullcontext()

    def run(batch: np.ndarray) -> np.ndarray:
        with turns:
            return _run(batch)

    def _run(batch: np.ndarray) -> np.ndarray:
        if on_gpu:
            # A GPU computes a batch of tiles in one call (2.9x one tile per call for
            # whole frames on an H200); its last bits may then depend on --batch, which
            # the store's numerics_used records.
            return _one_output(model.predict_on_batch(batch))
        # One tile per call: oneDNN's work split depends on the batch, and a tile's
        # probabilities changed in the last bit with its place in a batch of 4. Alone,
        # a tile gives the same bits whatever --batch and its neighbours; whole-frame
        # tiles lose nothing (1.79 Mpx/s at batch 1 against 1.82 at 8 on 512x512).
        return np.concatenate([_one_output(model.predict_on_batch(batch[k:k + 1]))
                               for k in range(len(batch))])

    if not tta:
        return run
    return functools.partial(tta_average, run, batch_size=batch_size)


def _one_output(out) -> np.ndarray:
    """A model call's output as one float32 array: Keras gives a one-element list for a
    model whose outputs were declared as a list."""
    if isinstance(out, (list, tuple)) and len(out) == 1:
        out = out[0]
    return np.asarray(out, np.float32)


def read_block(images: str, grid: BlockGrid, i: int, select: dict | None = None) -> np.ndarray:
    """Block ``i``'s read box of the image store as float32 frames (z, y, x).

    ``select`` holds the ``channel`` and ``series`` options of :func:`volseg.io.store.open_image`.

    Raises
    ------
    DamagedDataError
        A missing or damaged chunk, or NaN / infinite pixels (the model would turn them
        into garbage around each one).
    """
    box = grid.read_box(i)
    array = _opened(images, select)
    frames = np.asarray(array[box], dtype=np.float32)[0]
    bad = nonfinite_counts(frames)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        raise DamagedDataError(f"{_label(images)}: frame t={box[0].start} z={box[1].start + k} holds "
                               f"{int(bad[k])} NaN or infinite pixel(s); the model would turn "
                               "them into garbage: fix the image store (e.g. `volseg convert "
                               "--nonfinite VALUE`)")
    return frames


def block_probabilities(frames: np.ndarray, run_model, *, grid: BlockGrid, i: int, tile,
                        blend: int | None, multiple: int, batch_size: int,
                        min_tile: int = 1, z_size: tuple | None = None) -> np.ndarray:
    """The uint8 probabilities (value / 255) of block ``i``'s region from its read box.

    ``frames`` are (n, H, W), or (n, H, W, K) context stacks (:func:`block_channels`);
    ``run_model`` maps a ``(b, H, W, K)`` float32 batch to probabilities
    (:func:`predict_batch_fn`). For a 3D network ``z_size`` is its z rule (fixed or None,
    minimum, step): ``frames`` are the read box's slices, seen in z windows with the
    grid's z halo (:func:`volseg.ops.tiling.predict_stack`).
    """
    region, box = grid.region(i), grid.read_box(i)
    plan = tile_plan(box[2].stop - box[2].start, box[3].stop - box[3].start, tile=tile,
                     halo=grid.halo[2], blend=blend, multiple=multiple, min_tile=min_tile)
    if z_size is None:
        prob = predict_frames(frames, run_model, plan, batch_size=batch_size)
    else:
        fixed, minimum, step = z_size
        start = region[1].start - box[1].start
        stop = region[1].stop - box[1].start
        size = window_length(len(frames), fixed=fixed, minimum=minimum, step=step)
        prob = predict_stack(frames, run_model, plan, start=start, stop=stop, size=size,
                             halo=grid.halo[1], batch_size=batch_size)
    ys, xs = region[2], region[3]
    prob = prob[:, ys.start - box[2].start: ys.stop - box[2].start,
                xs.start - box[3].start: xs.stop - box[3].start]
    return quantise(prob)


def write_block(out: str, grid: BlockGrid, i: int, p8: np.ndarray, *, threshold: float,
                probability: bool) -> None:
    """Write block ``i``'s probability and mask, then mark it done in the ledger."""
    region = grid.region(i)
    level = threshold_bin(threshold)  # evaluate's rule, so mask and histogram agree
    if isinstance(out, BlockTargets):
        if probability:
            out.probability[region] = p8[None]
        out.mask[region] = (p8 >= level).astype(np.uint8)[None]
        out.ledger[i] = 1
        return
    pred = st.open_prediction(out, require_complete=False, mode="r+")
    if probability:
        pred.probability.array[region] = p8[None]
    pred.mask.array[region] = (p8 >= level).astype(np.uint8)[None]
    BlockLedger(pred.group, len(grid)).mark_done(i)


@dataclass
class BlockTargets:
    """The opened arrays a block writes (a store at a URL): probability (or None), mask
    and the ledger. Tasks take them instead of the store's URL, so a block costs its data
    requests, not a dozen metadata reads to open the store again (they pickle as their
    store's URL and path, like evaluate's arrays)."""

    probability: object
    mask: object
    ledger: object


def _opened(store, select=None):
    """The (t, z, y, x) array of an image store given as its path, or already opened."""
    if isinstance(store, (str, os.PathLike)):
        return st.open_image(store, **(select or {})).array
    return store


def _label(store) -> str:
    return f"{store}/0" if isinstance(store, (str, os.PathLike)) else store.label


def block_channels(frames: np.ndarray, grid: BlockGrid, i: int, context: int) -> np.ndarray:
    """Block ``i``'s frames as K-slice context stacks (n, H, W, K) from its read box.

    ``frames`` is :func:`read_block`'s (z, y, x) read box, which holds the z-halo of
    ``(K - 1) / 2`` slices clipped at the stack's ends; the channels follow the
    end-of-stack rule of training (:mod:`volseg.ops.context`). K = 1 returns ``frames``.
    """
    if context == 1:
        return frames
    from volseg.ops.context import channels_from_slab

    zs, box_z = grid.region(i)[1], grid.read_box(i)[1]
    return channels_from_slab(frames, box_z.start, range(zs.start, zs.stop), grid.shape[1],
                              context)


def unet_block(i: int, *, images: str, grid: BlockGrid, model_path: str, sha: str,
               precision: str, tile, blend: int | None, multiple: int,
               batch_size: int, context: int = 1, select: dict | None = None,
               tta: bool = False) -> tuple[np.ndarray, dict]:
    """The U-Net's uint8 probabilities of block ``i`` (and the precision it used)."""
    model = cached_model(model_path, sha, precision)
    frames = block_channels(read_block(images, grid, i, select), grid, i, context)
    run_model = predict_batch_fn(model, tta=tta, batch_size=batch_size)
    p8 = block_probabilities(frames, run_model, grid=grid, i=i, tile=tile,
                             blend=blend, multiple=multiple, batch_size=batch_size)
    return p8, {"precision": model.volseg_precision,
                "numerics": numerics(model, batch_size=batch_size)}


#: Keras backends by the names the records use.
_BACKEND_NAMES = {"tensorflow": "TensorFlow", "jax": "JAX", "torch": "PyTorch"}


def numerics(model, *, batch_size: int | None = None) -> str:
    """What decides the last bits of a model's output in this process: precision, the
    runtime, the device (the CPU's widest instruction set, since kernels differ, or the
    GPUs and the tiles per call there) and the model's threads on a CPU."""
    from volseg.models.backend import model_threads
    from volseg.models.unet import cpu_isa

    runtime = getattr(model, "volseg_runtime", None)  # None: the Keras backend's own
    if runtime is not None:
        return f"{model.volseg_precision}, {runtime}, {cpu_isa()}, {MODEL_THREADS} threads"
    backend = keras_backend_name()
    runtime = _BACKEND_NAMES.get(backend, backend)
    gpus = getattr(model, "volseg_gpus", [])  # cached_model asks the backend once
    if gpus:
        shown = ", ".join(f"compute capability {a}.{b}" for a, b in gpus)
        per_call = f", {batch_size} tiles per call" if batch_size else ""
        return f"{model.volseg_precision}, {runtime}, {len(gpus)} GPU(s) ({shown}){per_call}"
    if backend == "tensorflow":
        threads = model_threads() or "TensorFlow default (every core)"
    else:
        threads = f"{runtime} default (every core)"
    return f"{model.volseg_precision}, {runtime}, {cpu_isa()}, {threads} threads"


def roi_inside(roi: str | None, grid: BlockGrid, i: int) -> np.ndarray | None:
    """Where block ``i`` lies inside the ROI store (bool, the block's z, y, x); None
    without an ROI. An ROI with one time point or slice applies to all."""
    if roi is None:
        return None
    array = st.open_image(roi, what="ROI store").array if isinstance(roi, str) else roi
    t, zs, ys, xs = grid.region(i)
    inside = inside_roi(array[(*st.roi_index(array.shape, t, zs), ys, xs)])[0]
    return np.broadcast_to(inside, (zs.stop - zs.start,) + inside.shape[1:])


def predict_block(i: int, *, compute, images: str, out: str, grid: BlockGrid,
                  threshold: float, probability: bool, roi: str | None = None, **kw) -> dict:
    """Process function: predict block ``i`` with ``compute`` and write it.

    A block entirely outside the ROI is written as zeros without running the model;
    inside a partly covered block, pixels outside the ROI are zero too.
    """
    inside = roi_inside(roi, grid, i)
    if inside is not None and not inside.any():
        write_block(out, grid, i, np.zeros(inside.shape, np.uint8), threshold=threshold,
                    probability=probability)
        return {"pixels": 0, "roi_skipped": 1}
    p8, extra = compute(i, images=images, grid=grid, **kw)
    if inside is not None:
        p8 = np.where(inside, p8, 0).astype(np.uint8)
    write_block(out, grid, i, p8, threshold=threshold, probability=probability)
    return {"pixels": int(p8.size), **extra}


def _check_parameters(precision, threshold, batch_size, halo, info) -> float:
    """Validate predict's parameters; returns the threshold to use."""
    check_precision(precision)
    if threshold in (None, "auto"):
        threshold = float(info.get("threshold", 0.5))
    else:
        try:
            threshold = float(threshold)
        except ValueError:
            raise InputError(f"{threshold!r} is not a number or 'auto'", param="threshold") from None
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"must be within [0, 1], got {threshold}", param="threshold")
    if batch_size < 1:
        raise InputError(f"must be at least 1, got {batch_size}", param="batch_size")
    if halo is not None and halo < 0:
        raise InputError(f"must be >= 0, got {halo}", param="halo")
    return threshold


def predict(images, model, out, *, channel: int | None = None, series: int | None = None,
            threshold="auto", probability: bool = True,
            precision: str = "auto", tile=None, halo: int | None = None,
            blend: int | None = None, batch_size: int = 4, roi=None,
            pyramid: bool | None = None, labels_into: str | None = None,
            tta: bool = False, overwrite: bool = False,
            client=None, resources: dict | None = None, progress=None,
            command: str | None = None, log=None) -> dict:
    """Predict every frame of the image store ``images`` with ``model`` into ``out``.

    Parameters
    ----------
    images : path-like
        A complete image store (``volseg convert``), or any OME-NGFF image (0.4 or 0.5,
        axes among t, c, z, y, x) or bioformats2raw root.
    channel, series : int, optional
        The channel (images with a ``c`` axis) and the bioformats2raw series to read.
    model : path-like
        A volseg model file (``.keras`` U-Net or forest), or a BioImage Model Zoo package
        (``.zip``, its folder or its ``rdf.yaml``; :mod:`volseg.models.zoo` says which ones
        run), predicted with ONNX Runtime.
    out : path-like
        The prediction store to write (``probability`` and ``mask`` image groups). An
        unfinished one of the same job is resumed; anything else is refused unless
        ``overwrite`` (then the new store replaces it only once complete).
    threshold : float or "auto"
        Probability threshold of the mask; "auto" uses the model's stored threshold.
    probability : bool
        Write the probability array (False: the mask only).
    precision : {"auto", "float32", "bfloat16"}
        Inference precision: mixed bfloat16 is ~1.5x faster where the hardware computes
        it natively; "auto" picks it there (on the machine that runs the model), float32
        elsewhere. The store records what was used (``volseg.precision_used``).
    tile, halo, blend :
        Tiling (see :func:`volseg.ops.tiling.tile_plan`); defaults: whole frames up to
        ~1.1 Mpx, the model's margin as halo.
    batch_size : int
        Tiles gathered per step (memory). The model sees one tile per call, so the
        probabilities do not depend on it.
    tta : bool
        Test-time augmentation (U-Net models only): each tile's probabilities are the
        mean over its 8 dihedral transforms (the rotations by 90 degrees and their
        mirror images), mapped back. 8x the model's work; recorded as ``volseg.tta``,
        and a resumed run must use the same setting. Refused for a random forest: its
        filter features are symmetric already, so TTA would give the same
        probabilities at 8x the cost.
    roi : path-like, optional
        A mask store (same y, x; t and z equal or 1): blocks entirely outside it are
        written as zeros without running the model, and pixels outside it are zero.
    pyramid : bool, optional
        Write downsampled levels of the probability (mean) and mask (max) for viewers
        (:mod:`volseg.engine.pyramid`). Default: only for frames larger than 1024 px on a side.
    labels_into : str, optional
        Also copy the finished mask into the image store as the NGFF label image
        ``IMAGES/labels/NAME`` (:mod:`volseg.engine.labels`), so viewers open both together.
        The image store's arrays and metadata are not changed; an existing label image
        of another prediction is replaced only with ``overwrite``.
    client : distributed.Client, optional
        Default: one block at a time in this process (TensorFlow uses every core).
    resources : dict, optional
        Worker resources each block needs (e.g. ``{"GPU": 1}`` on a GPU cluster).
    progress : callable, optional
        ``progress(done, total)`` per block.

    Returns
    -------
    dict
        Summary: blocks, blocks computed now, threshold, pixels, output path.
    """
    plan = _plan(images, model, out, channel=channel, series=series, threshold=threshold,
                 probability=probability, precision=precision, tile=tile, halo=halo,
                 blend=blend, batch_size=batch_size, roi=roi, pyramid=pyramid,
                 labels_into=labels_into, tta=tta, overwrite=overwrite, command=command,
                 log=log)
    return _write(plan, out, probability=probability, labels_into=labels_into,
                  overwrite=overwrite, client=client, resources=resources, progress=progress,
                  command=command, log=log)


def _write(plan, out, *, probability, labels_into, overwrite, client, resources, progress,
           command, log) -> dict:
    """The prediction store of ``plan``: created or resumed, every block written, the
    pyramid and the label copy made, committed; returns :func:`predict`'s summary."""
    image, info, threshold, tta, roi = plan.image, plan.info, plan.threshold, plan.tta, plan.roi
    mask, model, sha, method, grid = plan.mask, plan.model, plan.sha, plan.method, plan.grid
    chunks, shards, levels, job, select = plan.chunks, plan.shards, plan.levels, plan.job, plan.select
    label_path, label_job, shape = plan.label_path, plan.label_job, image.shape
    images = plan.images
    with open_output(out, job=job, overwrite=overwrite, what="prediction",
                     command=command) as dest:
        def create(path):
            st.create_prediction(path, shape=shape, chunks=chunks, shards=shards, job=job,
                                 probability=probability, threshold=threshold,
                                 source=_source_link(image.path, out),
                                 scale=image.scale, units=image.units, levels=levels,
                                 extra={"model": {"path": model, "sha256": sha,
                                                  "kind": info.get("kind", "unet"),
                                                  "training": info.get("training", {}),
                                                  "provenance": info.get("provenance", {})},
                                        **method["extra"], "tta": tta,
                                        "mask_rule": f"probability_u8 >= {threshold_bin(threshold)}"})
            return open_pred(path)

        def open_pred(path):
            return st.open_prediction(path, require_complete=False, mode="r+")

        pred = dest.open_or_create(open_pred, create)
        stage = StageRun(pred, grid)
        ledger, todo = stage.ledger, stage.todo
        if log:
            verb = "resuming" if dest.state == "resume" else "writing"
            log(f"{verb} {out}: {shape[0]} x {shape[1]} frames of {shape[2]} x {shape[3]}, "
                f"{len(todo)} of {len(grid)} blocks to predict (threshold {threshold:g}, "
                f"{method['describe']}" + (f", only inside {roi}" if roi else "") + ")")
        images_arg, out_arg, roi_arg = str(images), str(dest.write_path), roi
        if is_remote(images) or is_remote(out) or is_remote(roi):
            # at a URL, opening a store is a dozen requests: tasks take the open arrays
            images_arg = image.array
            out_arg = BlockTargets(pred.probability.array if probability else None,
                                   pred.mask.array, ledger.array)
            roi_arg = None if roi is None else mask.array
        task = functools.partial(predict_block, compute=method["compute"], images=images_arg,
                                 out=out_arg, grid=grid, threshold=threshold,
                                 probability=probability, roi=roi_arg, model_path=model,
                                 sha=sha, select=select, **method["kwargs"])
        used = set(pred.volseg.get("precision_used") or [])
        numerics_used = set(pred.volseg.get("numerics_used") or [])
        skipped = {"blocks": 0}

        def note(_, result):
            if result.get("precision"):
                used.add(result["precision"])
            if result.get("numerics"):
                numerics_used.add(result["numerics"])
            skipped["blocks"] += result.get("roi_skipped", 0)

        def copy_labels():
            if labels_into is not None:
                lb.write_label(locate(dest.write_path) / "mask", image, label_path.name,
                               job=label_job, overwrite=overwrite, client=client,
                               command=command)

        stage.run(task, client=client, progress=progress, parts=pred.parts,
                  codec_threads=True, before_finish=copy_labels,
                  threads=method["threads"] if client is None else None,
                  resources=resources, on_result=note,
                  finish_items=lambda: {"precision_used": sorted(used),
                                        "numerics_used": sorted(numerics_used)})
        dest.commit()
    return {"path": str(out), "shape": shape, "blocks": len(grid), "computed": len(todo),
            "skipped": len(grid) - len(todo), "threshold": threshold,
            "pixels": int(np.prod(shape)), "kind": info.get("kind", "unet"), "tta": tta,
            "roi_skipped": skipped["blocks"],
            "precision": method["extra"].get("precision"), "precision_used": sorted(used),
            "numerics_used": sorted(numerics_used),
            "tiling": method["extra"].get("tiling"), "levels": levels,
            "labels": str(label_path) if labels_into is not None else None}


@dataclass
class _Plan:
    """What one prediction run is: checked inputs, the method, the block grid, the job."""

    images: object  # where the images are, as given (workers open them there)
    image: object
    info: dict
    threshold: float
    tta: bool
    roi: str | None
    mask: object
    model: str
    sha: str
    chunks: tuple
    shards: tuple | None
    method: dict
    grid: BlockGrid
    levels: int
    job: dict
    select: dict
    label_path: object = None
    label_job: dict | None = None


def _plan(images, model, out, *, channel, series, threshold, probability, precision, tile,
          halo, blend, batch_size, roi, pyramid, labels_into, tta, overwrite, command,
          log) -> _Plan:
    """Everything :func:`predict` checks and decides before it writes: bad input is
    refused here, before a store is touched or a model loaded."""
    select = {k: v for k, v in (("channel", channel), ("series", series)) if v is not None}
    image = st.open_image(images, **select)
    package = zoo.read_package(model) if zoo.is_package(model) else None
    info = package.info() if package is not None else read_model_info(model)
    check_record(info, model)
    threshold = _check_parameters(precision, threshold, batch_size, halo, info)
    tta = _check_tta(tta, info)
    roi_record = None
    if roi is not None:
        mask = st.open_roi(roi, image.shape, param="roi")
        roi = str(roi)
        roi_record = {"path": location_text(roi),
                      "fingerprint": mask.volseg.get("job", {}).get("fingerprint")}
    if log and str(image.dtype) != info.get("input_dtype", str(image.dtype)):
        log(f"warning: {images} is {image.dtype} but the model was trained on "
            f"{info.get('input_dtype')} images; predicting anyway (raw intensities go "
            f"through the model's normalisation {info.get('normalization')})")
    model = str(Path(model).resolve())
    # a package given as its rdf.yaml: the weights beside it count too
    sha = zoo.package_sha256(model, package) if package is not None else file_sha256(model)
    chunks, shards = _output_chunks(image)
    block_shape = shards or chunks
    if package is not None:
        method = _zoo_method(package, image.shape, block_shape, precision=precision, tile=tile,
                             halo=halo, blend=blend, batch_size=batch_size, tta=tta, log=log)
    elif info.get("kind", "unet") == "forest":
        from volseg.models.forest import check_frame_size

        check_frame_size(image.shape, images)
        method = _forest_method(info, halo=halo)
    else:
        method = _unet_method(info, image.shape, block_shape, precision=precision,
                              tile=tile, halo=halo, blend=blend, batch_size=batch_size, tta=tta)
    shape = image.shape
    grid = BlockGrid(shape, block_shape,
                     halo=(0, method.get("z_halo", 0), method["halo"], method["halo"]))
    parameters = {"model_sha256": sha, "threshold": threshold, "probability": probability,
                  **select, **method["parameters"]}
    sources = [{"path": location_text(images),
                "fingerprint": image.volseg.get("job", {}).get("fingerprint")}]
    if roi_record is not None:
        parameters["roi"] = roi_record
    levels = choose_levels(shape, pyramid)
    if levels:  # absent when 0, so jobs without a pyramid keep their fingerprint
        parameters["pyramid_levels"] = levels
    if tta:  # likewise absent when off
        parameters["tta"] = True
    label_path = None
    if labels_into is not None:
        label_path = lb.target(image, labels_into)
        parameters["labels_into"] = label_path.name
    job = st.make_job("predict", parameters=parameters, sources=sources, command=command)
    label_job = None
    if labels_into is not None:
        label_job = st.make_job("labels", parameters={"name": label_path.name,
                                                      "pyramid_levels": lb.levels_of(image)},
                                sources=[{"path": location_text(out),
                                          "fingerprint": job["fingerprint"]}], command=command)
        # refused now, not after hours of prediction
        lb.preflight(label_path, label_job, overwrite)
    return _Plan(images=images, image=image, info=info, threshold=threshold, tta=tta, roi=roi,
                 mask=mask if roi is not None else None, model=model, sha=sha, chunks=chunks,
                 shards=shards, method=method, grid=grid, levels=levels, job=job,
                 select=select, label_path=label_path, label_job=label_job)


def _source_link(images, out) -> str:
    """The image store as seen from ``out/mask`` (NGFF ``image-label`` ``source``)."""
    images, out = locate(images), locate(out)
    if isinstance(images, RemotePath) or isinstance(out, RemotePath):
        a, b = str(images), str(out / "mask")
        if isinstance(images, RemotePath) and isinstance(out, RemotePath) and \
                images.protocol == out.protocol and images.bucket == out.bucket:
            return posixpath.relpath(a.split("://", 1)[1], b.split("://", 1)[1])
        return location_text(images)  # another bucket or file system: absolute
    return os.path.relpath(Path(images).resolve(), (Path(out) / "mask").resolve())


def _output_chunks(image) -> tuple[tuple, tuple | None]:
    """The prediction's chunks and shards: the images' own, or volseg's defaults for
    another tool's store or shards over several time points (its chunks may span several
    time points, or none of its frames whole; blocks are one shard of the output, one
    time point each)."""
    shards = image.shards or image.chunks
    if image.made_by_volseg and image.chunks[0] == 1 and shards[0] == 1:
        return tuple(image.chunks), image.shards and tuple(image.shards)
    return st.default_chunks(image.shape, "uint8")


def _check_tta(tta, info) -> bool:
    """``tta`` as a bool; refused for a forest (its features are symmetric already)."""
    if not isinstance(tta, (bool, np.bool_)):
        raise InputError(f"must be True or False, got {tta!r}", param="tta")
    if tta and info.get("kind", "unet") == "forest":
        raise InputError("only for U-Net models: a random forest's filter features do not "
                         "change under rotations and flips, so TTA would give the same "
                         "probabilities at 8x the cost; leave it out", param="tta")
    return bool(tta)


def _unet_method(info, shape, block_shape, *, precision, tile, halo, blend, batch_size,
                 tta=False) -> dict:
    """How a U-Net predicts: tiles through the model, one block at a time per process.

    A model with depth context K (its info's ``context``) reads a z-halo of
    ``(K - 1) / 2`` slices around each block and gets K slices per frame as channels.
    """
    from volseg.ops.context import radius
    from volseg.models.unet import model_context

    context = model_context(info)
    multiple = int(info.get("multiple", 16))
    halo = int(info.get("margin", 32)) if halo is None else int(halo)
    tile, plan = _tiles(shape, block_shape, tile=tile, halo=halo, blend=blend,
                        multiple=multiple)
    parameters = {"precision": precision, "tile": list(tile), "halo": halo,
                  "blend": blend, "batch_size": batch_size}
    describe = f"{precision}, tiles {plan['tile_shape']} per frame grid {plan['grid']}"
    if context > 1:  # absent for K = 1, so those jobs keep their fingerprint
        parameters["context"] = context
        describe += f", {context} z-slices per input"
    return {"halo": halo, "z_halo": radius(context), "compute": unet_block,
            "threads": 1,  # TF uses every core
            "kwargs": dict(precision=precision, tile=tile, blend=blend, multiple=multiple,
                           batch_size=batch_size, context=context, tta=tta),
            "parameters": parameters,
            "extra": {"tiling": plan, "precision": precision},
            "describe": describe + (", TTA: 8 transforms per tile" if tta else "")}


def _tiles(shape, block_shape, *, tile, halo, blend, multiple,
           min_tile: int = 1) -> tuple[tuple, dict]:
    """The tile shape (``tile``, or the default for the block and its halo) and the tile
    plan of a block's frames, as a dict; an impossible tiling is a ``--tile`` error.
    Frames smaller than ``min_tile`` (a package's smallest input) are padded up to it."""
    by, bx = min(shape[2], block_shape[2]), min(shape[3], block_shape[3])
    if tile is None:
        tile = default_tile(min(shape[2], by + 2 * halo), min(shape[3], bx + 2 * halo),
                            multiple=multiple)
    tile = tuple(int(v) for v in tile)
    try:
        plan = tile_plan(by, bx, tile=tile, halo=halo, blend=blend, multiple=multiple,
                         min_tile=min_tile).as_dict()
    except ValueError as exc:
        raise InputError(f"{exc}; give a larger --tile (or a smaller --halo)",
                         param="tile") from None
    return tile, plan


def _forest_method(info, *, halo) -> dict:
    """How a forest predicts: features per tile with their halo, blocks on every core."""
    spec = FeatureSpec.from_dict(info["features"])
    halo = spec.halo if halo is None else int(halo)
    if halo < spec.halo:
        raise InputError(f"must be at least {spec.halo} for this forest (its largest filter "
                         "reaches that far), or left out", param="halo")
    return {"halo": halo, "compute": forest_block, "threads": None,
            "kwargs": dict(spec=spec.as_dict()),
            "parameters": {"halo": halo, "features": spec.as_dict()},
            "extra": {"features": spec.as_dict()},
            "describe": f"random forest on {spec.n_features} features"}


_FORESTS: dict = {}


def cached_forest(model_path: str, sha: str):
    """The forest of ``sha``, loaded at most once in this process."""
    with _MODEL_LOCK:
        if sha not in _FORESTS:
            _FORESTS[sha] = load_forest(model_path)[0]
            LOADS["count"] += 1
        return _FORESTS[sha]


def forest_block(i: int, *, images: str, grid: BlockGrid, model_path: str, sha: str,
                 spec: dict, select: dict | None = None) -> tuple[np.ndarray, dict]:
    """A forest's uint8 probabilities of block ``i``."""
    forest = cached_forest(model_path, sha)
    spec = FeatureSpec.from_dict(spec)
    frames = read_block(images, grid, i, select)
    region, box = grid.region(i), grid.read_box(i)
    ys = slice(region[2].start - box[2].start, region[2].stop - box[2].start)
    xs = slice(region[3].start - box[3].start, region[3].stop - box[3].start)
    prob = np.empty((len(frames), ys.stop - ys.start, xs.stop - xs.start), np.float32)
    for k, frame in enumerate(frames):
        for ty, tx, feats in tile_features(lambda a, b: frame[a, b], *frame.shape, spec,
                                           ys=ys, xs=xs):
            prob[k, ty.start - ys.start: ty.stop - ys.start,
                 tx.start - xs.start: tx.stop - xs.start] = forest_probabilities(forest, feats)
    return quantise(prob), {}



def _zoo_method(package, shape, block_shape, *, precision, tile, halo, blend, batch_size,
                tta, log) -> dict:
    """How a model zoo package predicts: like a U-Net, tiles through ONNX Runtime, with
    the package's pre/postprocessing and its declared halo (measured when it declares
    none). A 3D package sees each block's slices with its z halo (the declared one, else
    the y/x halo) in z windows."""
    from volseg.ops.context import radius

    if precision not in ("auto", "float32"):
        raise InputError(f"a model zoo package runs in float32 (ONNX Runtime), not {precision}",
                         param="precision")
    if tta and package.is_3d:
        raise InputError(f"{package.path} is a 3D model; TTA (flips and rotations of 2D "
                         "tiles) is for 2D models: leave --tta out", param="tta")
    multiple = package.multiple
    if halo is None:
        halo = package.halo
    if halo is None:
        sess = onnx_session(package.onnx, MODEL_THREADS)
        depth = 1 if not package.is_3d else window_length(1, fixed=package.z_size[0],
                                                          minimum=package.z_size[1],
                                                          step=package.z_size[2])
        halo = zoo.measure_halo(lambda b: zoo.run_tiles(sess, package, b),
                                multiple=multiple, min_size=package.min_size, depth=depth,
                                fixed=package.fixed_size)
        if log:
            log(f"warning: {package.path} declares no halo; using {halo} px, where its output "
                "on noise stops changing with more context (give --halo to choose)")
    halo = int(halo)
    z_halo = radius(package.channels)
    if package.is_3d:
        z_halo = package.z_halo
        if z_halo is None:  # the y/x halo, within what fixed windows can own a slice inside
            fixed = package.z_size[0]
            z_halo = min(halo, shape[1] - 1, (fixed - 1) // 2 if fixed else halo)
            if log:
                log(f"warning: {package.path} declares no z halo; using {z_halo} slice(s)")
    by, bx = min(shape[2], block_shape[2]), min(shape[3], block_shape[3])
    if package.fixed_size is not None:
        if tile is not None and tuple(int(v) for v in tile) != (package.fixed_size,) * 2:
            raise InputError(f"the package takes tiles of exactly {package.fixed_size} px; "
                             "leave --tile out", param="tile")
        tile = (package.fixed_size, package.fixed_size)
        multiple = zoo.fixed_tile_step(package.fixed_size, halo)
    tile, plan = _tiles(shape, block_shape, tile=tile, halo=halo, blend=blend,
                        multiple=multiple, min_tile=package.min_size)
    if min(plan["tile_shape"]) < package.min_size:
        raise InputError(f"tiles of {plan['tile_shape']} px are smaller than the package's "
                         f"smallest input ({package.min_size} px); give a larger --tile",
                         param="tile")
    whole = zoo.whole_axes(package)
    if whole & {"y", "x"} and (by < shape[2] or bx < shape[3]):
        raise InputError(f"{package.path}: its preprocessing takes statistics over whole "
                         f"frames, and frames of {shape[2]} x {shape[3]} are split into "
                         "blocks; volseg cannot run it on them")
    if "z" in whole and package.is_3d and block_shape[1] < shape[1]:
        raise InputError(f"{package.path}: its preprocessing takes statistics over whole "
                         f"stacks, and stacks of {shape[1]} slices are split into blocks of "
                         f"{block_shape[1]}; volseg cannot run it on them (convert with "
                         "`--chunks=-1,Y,X`: blocks of whole stacks)")
    context = package.channels
    parameters = {"runtime": "onnxruntime", "tile": list(tile), "halo": halo, "blend": blend,
                  "batch_size": batch_size}
    if context > 1:
        parameters["context"] = context
    describe = (f"model zoo package {package.name!r} with ONNX Runtime, tiles "
                f"{plan['tile_shape']} per frame grid {plan['grid']}")
    if package.is_3d:  # absent for 2D packages, so those jobs keep their fingerprint
        parameters["z_halo"] = z_halo
        describe += f", 3D: z windows with a z halo of {z_halo}"
    return {"halo": halo, "z_halo": z_halo, "compute": zoo_block, "threads": 1,
            "kwargs": dict(tile=tile, blend=blend, multiple=multiple, batch_size=batch_size,
                           context=context, tta=tta, min_tile=package.min_size),
            "parameters": parameters,
            "extra": {"tiling": plan, "precision": "float32", "runtime": "onnxruntime"},
            "describe": describe + (", TTA: 8 transforms per tile" if tta else "")}


_PACKAGES: dict = {}


def cached_package(model_path: str, sha: str):
    """The package of ``sha`` and its ONNX Runtime session, made once in this process."""
    with _MODEL_LOCK:
        if sha not in _PACKAGES:
            package = zoo.read_package(model_path)
            _PACKAGES[sha] = (package, onnx_session(package.onnx, MODEL_THREADS))
            LOADS["count"] += 1
        return _PACKAGES[sha]


def zoo_block(i: int, *, images: str, grid: BlockGrid, model_path: str, sha: str, tile,
              blend: int | None, multiple: int, batch_size: int, context: int = 1,
              select: dict | None = None, tta: bool = False,
              min_tile: int = 1) -> tuple[np.ndarray, dict]:
    """A model zoo package's uint8 probabilities of block ``i``."""
    package, sess = cached_package(model_path, sha)
    frames = block_channels(read_block(images, grid, i, select), grid, i, context)
    if package.is_3d:  # the read box is one sample, its slices the z axis
        frames = np.moveaxis(zoo.apply_steps(np.moveaxis(frames, 0, -1)[None],
                                             package.preprocessing,
                                             layout=("batch", "y", "x", "z"))[0], -1, 0)
    else:
        frames = zoo.apply_steps(frames, package.preprocessing)

    def run(batch):
        out = zoo.run_tiles(sess, package, batch)
        if not zoo.finite_probability(out):
            raise InputError(f"{package.path}: the network's output is not a probability "
                             f"(values from {np.nanmin(out):.3g} to {np.nanmax(out):.3g}, or "
                             "NaN); volseg takes a foreground probability in [0, 1]")
        return out

    run_model = functools.partial(tta_average, run, batch_size=batch_size) if tta else run
    p8 = block_probabilities(frames, run_model, grid=grid, i=i, tile=tile, blend=blend,
                             multiple=multiple, batch_size=batch_size, min_tile=min_tile,
                             z_size=package.z_size)
    return p8, {"precision": "float32", "numerics": _zoo_numerics()}


def _zoo_numerics() -> str:
    from volseg.models.onnx import runtime_version
    from volseg.models.unet import cpu_isa

    return f"float32, {runtime_version()}, {cpu_isa()}, {MODEL_THREADS} threads"
