"""Which frames to annotate next: the model's uncertainty per frame, picks spread out.

:func:`frame_scores` reads a prediction's probabilities block by block (whole frames of
one time point, the store's own shards) and keeps three numbers per (t, z) frame, so
memory is a few floats per frame whatever the store's size:

* ``entropy``: the mean binary entropy of the probability, in bits (0 where the model is
  sure, 1 at p = 0.5). The score that ranks frames (``benchmarks/bench_annotation.py``
  measures what it buys against random and evenly spaced choices);
* ``uncertain``: the share of voxels whose probability lies within
  :data:`UNCERTAIN_BAND` of the threshold;
* ``structure``: the share predicted as structure.

:func:`pick_frames` takes the best-scored frames not yet annotated, but never two close
neighbours (adjacent slices, or the same slice at adjacent time points, look alike): a
pick suppresses the frames within a distance that shrinks until ``n`` picks are found.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from volseg.engine.blocks import BlockGrid, frame_runs, run_blocks
from volseg.engine.outputs import write_text_atomic
from volseg.errors import InputError
from volseg.io import store as st

__all__ = ["UNCERTAIN_BAND", "entropy_table", "frame_scores", "pick_frames", "suggest",
           "write_templates"]

#: A voxel is "uncertain" when its probability is within this of the threshold.
UNCERTAIN_BAND = 0.15


def entropy_table(levels: int = 256) -> np.ndarray:
    """Binary entropy (bits) of the probability ``k / (levels - 1)`` for each level ``k``."""
    p = np.linspace(0.0, 1.0, levels)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return np.nan_to_num(h, nan=0.0).astype(np.float64)


def _frame_stats(i: int, *, probability, mask, grid: BlockGrid, scale: float,
                 threshold: float) -> tuple[int, int, np.ndarray]:
    """Process function: (t, first z, (n, 3) stats) of block ``i``'s frames."""
    t, zs = grid.region(i)[:2]
    prob = np.asarray(probability[t.start, zs])
    if prob.dtype == np.uint8 and scale == 255.0:
        h = entropy_table()[prob].mean(axis=(1, 2))
        p = prob.astype(np.float32) / 255.0
    else:
        p = np.clip(prob.astype(np.float32) / scale, 0.0, 1.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
        h = np.nan_to_num(ent, nan=0.0).mean(axis=(1, 2))
    uncertain = (np.abs(p - threshold) < UNCERTAIN_BAND).mean(axis=(1, 2))
    structure = (np.asarray(mask[t.start, zs]) != 0).mean(axis=(1, 2))
    return t.start, zs.start, np.stack([h, uncertain, structure], axis=1)


def frame_scores(prediction: st.Prediction, *, client=None, progress=None) -> np.ndarray:
    """(t, z, 3) float64: ``entropy``, ``uncertain``, ``structure`` of every frame."""
    prob = prediction.probability
    if prob is None:
        raise InputError(f"{prediction.path} holds only a mask, no probabilities; predict "
                         "again keeping them (the default) to rank frames by uncertainty")
    scale = float(prediction.probability_scale() or 1.0)
    threshold = float(prediction.threshold if prediction.threshold is not None else 0.5)
    shape = tuple(int(s) for s in prob.shape)
    grid = frame_runs(shape, prob.block_shape[1])
    scores = np.zeros(shape[:2] + (3,), np.float64)

    def keep(_, result):
        t, z0, stats = result
        scores[t, z0:z0 + len(stats)] = stats

    run_blocks(functools.partial(_frame_stats, probability=prob.array,
                                 mask=prediction.mask.array, grid=grid, scale=scale,
                                 threshold=threshold),
               range(len(grid)), client=client, progress=progress, on_result=keep, grid=grid)
    return scores


def pick_frames(score: np.ndarray, n: int, *, exclude=None) -> list[tuple[int, int]]:
    """Up to ``n`` frames (t, z) in order of ``score`` (a (t, z) array), spread out.

    A pick suppresses the frames within Chebyshev distance ``r`` of it, measured in
    units of the store's extent (t / T and z / Z); ``r`` starts at ``0.5 / sqrt(n + k)``
    (``k`` frames excluded) and halves whenever no frame is left, down to 0 (then the
    plain ranking). Frames in ``exclude`` (a boolean (t, z) array, e.g. the annotated
    ones) are never picked, and suppress their neighbours as picks do: what is
    annotated already covers its surroundings.
    """
    score = np.asarray(score, np.float64)
    T, Z = score.shape
    excluded = np.zeros(score.shape, bool) if exclude is None else np.asarray(exclude, bool)
    free = ~excluded & np.isfinite(score)
    order = np.argsort(-score, axis=None, kind="stable")
    anchors = [tuple(int(v) for v in f) for f in np.argwhere(excluded)]
    picks: list[tuple[int, int]] = []
    radius = 0.5 / math.sqrt(max(n + len(anchors), 1))
    while len(picks) < n and free.any():
        for flat in order:
            if len(picks) >= n:
                break
            t, z = divmod(int(flat), Z)
            if not free[t, z]:
                continue
            if any(max(abs(t - a) / T, abs(z - b) / Z) < radius for a, b in picks + anchors):
                continue
            picks.append((t, z))
            free[t, z] = False
        if radius == 0:
            break
        # halve the spacing; below one frame in both axes it is the plain ranking
        radius = radius / 2 if radius / 2 >= min(1 / T, 1 / Z) else 0.0
    return picks


def _annotated(truth_path, shape, select) -> np.ndarray:
    """Boolean (t, z): frames of the truth store that hold any annotation.

    Raises
    ------
    InputError
        Not a truth store of the prediction's shape, or every frame annotated (a
        complete truth, or a store that is not a truth at all): nothing to suggest.
    """
    from volseg.io.truth import annotation_counts, not_annotated
    from volseg.ops.annotation import check_mask_dtype

    truth = st.open_image(truth_path, what="truth store", **select)
    if tuple(truth.shape) != tuple(shape):
        raise InputError(f"shape {tuple(truth.shape)} differs from the prediction's "
                         f"{tuple(shape)}", param="truth")
    check_mask_dtype(truth.dtype, name=str(truth_path), param="truth")
    if not_annotated(truth) is None:
        raise InputError(f"{truth_path} records no not-annotated voxels, so every frame counts "
                         "as annotated (a complete truth, or not a truth store): nothing to "
                         "suggest; give the partial truth of `volseg convert --mask --like`",
                         param="truth")
    annotated = annotation_counts(truth) > 0
    if annotated.all():
        raise InputError(f"{truth_path}: all {annotated.size} frames hold annotations: "
                         "nothing left to suggest", param="truth")
    return annotated


def _images_of(prediction: st.Prediction):
    sources = (prediction.volseg.get("job") or {}).get("sources") or []
    return sources[0].get("path") if sources and isinstance(sources[0], dict) else None


def check_templates(folder, *, overwrite: bool) -> None:
    """Refuse a templates folder that holds label files already (an earlier round's,
    perhaps corrected and not yet given back), unless ``overwrite``; before any work."""
    from volseg.io.tiff import TIFF_SUFFIXES

    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder} exists and is not a folder", param="templates")
    if overwrite or not folder.is_dir():
        return
    found = sorted(p for p in folder.iterdir() if p.suffix.lower() in TIFF_SUFFIXES)
    if found:
        raise InputError(f"{found[0]} exists ({len(found)} label file(s) in {folder}, perhaps "
                         "corrections not given back yet); give them back with `volseg "
                         "convert --mask --update`, then use a new folder, or give --overwrite",
                         param="templates")


def write_templates(prediction: st.Prediction, picks, folder, *, overwrite: bool = False,
                    scribbles: bool = False) -> list[Path]:
    """For each pick, the predicted mask as a label file ``tTTT_zZZZ.tif`` (uint8 0/1) in
    ``folder``: the form ``volseg convert --mask --update`` reads back. An existing file
    is refused unless ``overwrite`` (it may hold corrections)."""
    import tifffile

    from volseg.io.tiff import frame_file_name

    folder = Path(folder)
    check_templates(folder, overwrite=overwrite)
    folder.mkdir(parents=True, exist_ok=True)
    T, Z = prediction.mask.shape[:2]
    paths = [folder / frame_file_name(t, z, timepoints=T, depth=Z) for t, z in picks]
    for (t, z), path in zip(picks, paths):
        frame = (np.asarray(prediction.mask.array[t, z]) != 0).astype(np.uint8)
        part = path.with_name(f".{path.name}.part")
        tifffile.imwrite(part, frame, photometric="minisblack",
                         metadata={"volseg": f"predicted mask of frame t={t} z={z}: correct it "
                                             "(1 structure, 0 background) and give it back"})
        part.replace(path)
    return paths


def suggest(prediction, *, truth=None, n: int = 10, images=None, csv=None, plots=None,
            templates=None, overwrite: bool = False, channel: int | None = None,
            series: int | None = None, client=None, progress=None) -> dict:
    """Rank the frames not yet annotated by the model's uncertainty and pick ``n``.

    Parameters
    ----------
    prediction : path-like
        A prediction store with probabilities (``volseg predict``).
    truth : path-like, optional
        The truth store so far: frames holding any annotation are never suggested.
    n : int
        How many frames to suggest.
    images : path-like, optional
        The image store, for ``plots``; default the one the prediction was made from.
    csv : path-like, optional
        Write the picks (rank, t, z, score and the other statistics) as CSV.
    plots : path-like, optional
        A folder: one preview (image, probability, mask) per pick.
    templates : path-like, optional
        A folder: each pick's predicted mask as a label file to correct
        (:func:`write_templates`).
    overwrite : bool
        Replace the CSV, figures and templates of an earlier run.

    Returns
    -------
    dict
        ``picks`` (rows with ``rank t z score uncertain structure``), ``candidates``
        (frames that could be picked), ``annotated_frames``, ``frames``, the files written.
    """
    from volseg.engine.outputs import check_report_files

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"must be a whole number >= 1, got {n!r}", param="n")
    select = {"channel": channel, "series": series}
    pred = st.open_prediction(prediction)
    shape = tuple(int(s) for s in pred.mask.shape)
    check_report_files(csv=csv, plots=plots, overwrite=overwrite)
    if templates is not None:
        check_templates(templates, overwrite=overwrite)
    image = None if plots is None else _plot_images(pred, images, select)
    annotated = None if truth is None else _annotated(truth, shape, select)
    scores = frame_scores(pred, client=client, progress=progress)
    picks = pick_frames(scores[..., 0], int(n), exclude=annotated)
    figures = [] if plots is None else _figure_paths(picks, plots, image.shape,
                                                     overwrite=overwrite)
    # every refusal above, before anything is written
    rows = [{"rank": k + 1, "t": t, "z": z, "score": float(scores[t, z, 0]),
             "uncertain": float(scores[t, z, 1]), "structure": float(scores[t, z, 2])}
            for k, (t, z) in enumerate(picks)]
    report = {"prediction": str(prediction), "truth": None if truth is None else str(truth),
              "score": "mean binary entropy of the probability (bits)",
              "frames": shape[0] * shape[1],
              "annotated_frames": 0 if annotated is None else int(annotated.sum()),
              "candidates": int(shape[0] * shape[1] - (0 if annotated is None else annotated.sum())),
              "picks": rows, "files": []}
    if csv is not None:
        _write_csv(rows, csv)
        report["files"].append(str(csv))
    if templates is not None:
        report["files"] += [str(p) for p in write_templates(pred, picks, templates,
                                                            overwrite=overwrite)]
        report["templates"] = str(templates)
    if plots is not None:
        from volseg.stages.preview import preview_figure, read_frame, save_figure

        Path(plots).mkdir(parents=True, exist_ok=True)
        for (t, z), path in zip(picks, figures):
            save_figure(preview_figure([read_frame(pred, image, t, z)]), path)
        report["files"] += [str(p) for p in figures]
    return report


def _write_csv(rows, path) -> None:
    import csv
    import io

    text = io.StringIO(newline="")
    w = csv.writer(text)
    w.writerow(["rank", "t", "z", "score", "uncertain", "structure"])
    for r in rows:
        w.writerow([r["rank"], r["t"], r["z"], f"{r['score']:.6f}", f"{r['uncertain']:.6f}",
                    f"{r['structure']:.6f}"])
    write_text_atomic(path, text.getvalue())


def _plot_images(pred, images, select):
    """The image store the figures show (``images``, or the prediction's own)."""
    images = images or _images_of(pred)
    if images is None:
        raise InputError("the prediction does not record its images; give them", param="images")
    image = st.open_image(images, **select)
    if tuple(image.shape) != tuple(pred.mask.shape):
        raise InputError(f"shape {tuple(image.shape)} differs from the prediction's "
                         f"{tuple(pred.mask.shape)}", param="images")
    return image


def _figure_paths(picks, folder, shape, *, overwrite: bool) -> list[Path]:
    """The figure of each pick; one that exists is refused unless ``overwrite``."""
    from volseg.stages.preview import frame_path

    paths = [frame_path(Path(folder) / "suggest.png", t, z, shape) for t, z in picks]
    for path in paths:
        if path.exists() and not overwrite:
            raise InputError(f"{path} exists; give --overwrite to replace it", param="plots")
    return paths
