"""Prediction: a Dask graph streaming tiles of an image store through the U-Net.

One task per block (one shard of the output: a few frames of one time point, whole
frames up to 4096 x 4096). The task reads its frames (plus a halo when a block is part
of a larger frame) straight from Zarr, runs the model over the tiles of its tile plan in
batches, and writes the probability and mask of its block, then records the block as
done. Output shards equal the image's, so no two tasks write the same chunk, and the
graph has one small task per block whatever the dataset size.

The model is loaded once per worker process (cached by file hash and precision) and is
called through ``predict_on_batch`` (a compiled call: MEASURED.md shows
``model.predict`` adds 30-55 ms per call).

Probabilities are stored as uint8 (value / 255; ``volseg.probability_scale`` = 255).
The mask is ``probability_u8 >= ceil(255 * threshold)`` (``metrics.threshold_bin``), so
mask and stored probability always agree exactly, by evaluate's own rule.
"""

from __future__ import annotations

import functools
import os
import threading
from pathlib import Path

import numpy as np

from . import store as st
from .errors import InputError
from .metrics import quantise, threshold_bin
from .model import file_sha256, read_model_info
from .tiling import default_tile, predict_frames, tile_plan

PRECISIONS = ("float32", "bfloat16")

# Worker-process cache: (sha, precision) -> keras model. One load per worker process.
_MODELS: dict = {}
_MODEL_LOCK = threading.Lock()
LOADS = {"count": 0}


def configure_threads() -> None:
    """Size TensorFlow's thread pool to the cores given to this worker process.

    MEASURED.md: 2 intra-op threads on 2 cores is best, 1 halves throughput, so one
    model per process uses every core it is given. VOLSEG_THREADS (cores per worker
    process) is set by open_client; it must reach TensorFlow before TensorFlow starts,
    hence environment variables rather than tf.config.
    """
    n = os.environ.get("VOLSEG_THREADS")
    if n:
        os.environ.setdefault("TF_NUM_INTRAOP_THREADS", n)
        os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")


def cached_model(model_path: str, sha: str, precision: str):
    """The model for ``(sha, precision)``, loaded at most once in this process."""
    key = (sha, precision)
    with _MODEL_LOCK:
        if key not in _MODELS:
            from ._quiet import import_keras
            from .model import load_model

            configure_threads()
            import_keras()
            model, _ = load_model(model_path, precision=precision)
            _MODELS[key] = model
            LOADS["count"] += 1
        return _MODELS[key]


def model_loads() -> int:
    """How many times this process loaded a model (for tests and benchmarks)."""
    return LOADS["count"]


def predict_batch_fn(model):
    """A ``(b, H, W, 1) float32 -> (b, H, W, 1) float32`` callable for the tiling code."""

    def run(batch: np.ndarray) -> np.ndarray:
        out = model.predict_on_batch(batch)
        return np.asarray(out, dtype=np.float32)

    return run


def predict_block(i: int, *, images: str, out: str, model_path: str, sha: str, precision: str,
                  tile, halo: int, blend: int | None, multiple: int, threshold: float,
                  probability: bool, block_shape, n_blocks: int, batch_size: int) -> int:
    """Predict block ``i`` of ``images`` into the prediction store ``out``; returns pixels."""
    model = cached_model(model_path, sha, precision)
    src = st.open_image(images).array
    shape = src.shape
    region = st.block_slices(shape, block_shape, i)
    t, zs, ys, xs = region
    ry0, ry1 = max(0, ys.start - halo), min(shape[2], ys.stop + halo)
    rx0, rx1 = max(0, xs.start - halo), min(shape[3], xs.stop + halo)
    if (ry0, ry1, rx0, rx1) == (0, shape[2], 0, shape[3]):
        ry0 = rx0 = 0  # whole frames: no halo needed
    frames = np.asarray(src[t.start, zs, ry0:ry1, rx0:rx1], dtype=np.float32)
    plan = tile_plan(ry1 - ry0, rx1 - rx0, tile=tile, halo=halo, blend=blend, multiple=multiple)
    prob = predict_frames(frames, predict_batch_fn(model), plan, batch_size=batch_size)
    prob = prob[:, ys.start - ry0: ys.stop - ry0, xs.start - rx0: xs.stop - rx0]
    p8 = quantise(prob)
    level = threshold_bin(threshold)  # evaluate's rule, so mask and histogram agree
    pred = st.open_prediction(out, require_complete=False, mode="r+")
    if probability:
        pred.probability.array[region] = p8[None]
    pred.mask.array[region] = (p8 >= level).astype(np.uint8)[None]
    st.BlockLedger(pred.group, n_blocks).mark_done(i)
    return int(p8.size)


def predict(images, model, out, *, threshold="auto", probability: bool = True,
            precision: str = "float32", tile=None, halo: int | None = None,
            blend: int | None = None, batch_size: int = 4, overwrite: bool = False,
            client=None, resources: dict | None = None, progress=None,
            command: str | None = None, log=None) -> dict:
    """Predict every frame of the image store ``images`` with ``model`` into ``out``.

    Parameters
    ----------
    images : path-like
        A complete image store (``volseg convert``).
    model : path-like
        A volseg ``.keras`` model file.
    out : path-like
        The prediction store to write (``probability`` and ``mask`` image groups).
    threshold : float or "auto"
        Probability threshold of the mask; "auto" uses the model's stored threshold.
    probability : bool
        Write the probability array (False: the mask only).
    precision : {"float32", "bfloat16"}
        Inference precision (mixed bfloat16 is ~1.5x faster on AVX-512 BF16 CPUs).
    tile, halo, blend :
        Tiling (see :func:`volseg.tiling.tile_plan`); defaults: whole frames up to
        ~1.1 Mpx, the model's margin as halo.
    batch_size : int
        Tiles per model call.
    client : distributed.Client, optional
        Default: a local cluster (one worker process, one block at a time, TensorFlow
        on every core).
    resources : dict, optional
        Worker resources each block needs (e.g. ``{"GPU": 1}`` on a GPU cluster).
    progress : callable, optional
        ``progress(done, total)`` per block.

    Returns
    -------
    dict
        Summary: blocks, blocks computed now, threshold, pixels, output path.
    """
    image = st.open_image(images)
    info = read_model_info(model)
    if precision not in PRECISIONS:
        raise InputError(f"--precision: must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if threshold in (None, "auto"):
        threshold = float(info.get("threshold", 0.5))
    else:
        try:
            threshold = float(threshold)
        except ValueError:
            raise InputError(f"--threshold: {threshold!r} is not a number or 'auto'") from None
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"--threshold: must be within [0, 1], got {threshold}")
    if batch_size < 1:
        raise InputError(f"--batch: must be at least 1, got {batch_size}")
    multiple = int(info.get("multiple", 16))
    halo = int(info.get("margin", 32)) if halo is None else int(halo)
    if halo < 0:
        raise InputError(f"--halo: must be >= 0, got {halo}")
    shape = image.shape
    block_shape = image.block_shape
    if tile is None:
        tile = default_tile(min(shape[2], block_shape[2] + 2 * halo),
                            min(shape[3], block_shape[3] + 2 * halo), multiple=multiple)
    tile = tuple(int(v) for v in tile)
    if log and str(image.dtype) != info.get("input_dtype", str(image.dtype)):
        log(f"warning: {images} is {image.dtype} but the model was trained on "
            f"{info.get('input_dtype')} images; predicting anyway (raw intensities go "
            f"through the model's normalisation {info.get('normalization')})")
    model = str(Path(model).resolve())
    sha = file_sha256(model)
    parameters = {"model_sha256": sha, "threshold": threshold, "probability": probability,
                  "precision": precision, "tile": list(tile), "halo": halo, "blend": blend,
                  "batch_size": batch_size}
    sources = [{"path": str(Path(images).resolve()),
                "fingerprint": image.volseg.get("job", {}).get("fingerprint")}]
    job = st.make_job("predict", parameters=parameters, sources=sources, command=command)
    state = st.prepare_output(out, job=job, overwrite=overwrite, what="prediction")
    plan_desc = tile_plan(min(shape[2], block_shape[2]), min(shape[3], block_shape[3]),
                          tile=tile, halo=halo, blend=blend, multiple=multiple).as_dict()
    if state == "new":
        try:
            st.create_prediction(out, shape=shape, chunks=image.chunks, shards=image.shards,
                                 job=job, probability=probability, threshold=threshold,
                                 extra={"model": {"path": model, "sha256": sha,
                                                  "training": info.get("training", {}),
                                                  "provenance": info.get("provenance", {})},
                                        "tiling": plan_desc, "precision": precision,
                                        "mask_rule": f"probability_u8 >= {threshold_bin(threshold)}"})
        except OSError as exc:
            raise InputError(f"{out}: cannot write there ({exc.strerror or exc})") from None
    pred = st.open_prediction(out, require_complete=False, mode="r+")
    n = st.n_blocks(shape, block_shape)
    ledger = st.BlockLedger(pred.group, n)
    todo = np.flatnonzero(~ledger.done()).tolist()
    if log:
        verb = "resuming" if state == "resume" else "writing"
        log(f"{verb} {out}: {shape[0]} x {shape[1]} frames of {shape[2]} x {shape[3]}, "
            f"{len(todo)} of {n} blocks to predict (threshold {threshold:g}, {precision}, "
            f"tiles {plan_desc['tile_shape']} per frame grid {plan_desc['grid']})")
    task = functools.partial(predict_block, images=str(images), out=str(out), model_path=model,
                             sha=sha, precision=precision, tile=tile, halo=halo, blend=blend,
                             multiple=multiple, threshold=threshold, probability=probability,
                             block_shape=block_shape, n_blocks=n, batch_size=batch_size)
    from .blocks import run_blocks
    from .cluster import open_client

    kw = dict(progress=progress, resources=resources, done_before=n - len(todo), total=n)
    if client is None:
        with open_client("local", threads=1) as own:
            run_blocks(own, task, todo, **kw)
    else:
        run_blocks(client, task, todo, **kw)
    pred = st.open_prediction(out, require_complete=False, mode="r+")
    if pred.probability is not None:
        st.finish(pred.probability.group)
    st.finish(pred.mask.group)
    st.finish(pred.group, ledger)
    return {"path": str(out), "shape": shape, "blocks": n, "computed": len(todo),
            "skipped": n - len(todo), "threshold": threshold, "pixels": int(np.prod(shape)),
            "precision": precision, "tiling": plan_desc}
