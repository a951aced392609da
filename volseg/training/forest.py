"""Training the random-forest baseline (``volseg train --method forest``).

Training pixels are a bounded class-balanced sample streamed from every training frame
(:func:`collect_sample`), so memory is bounded by the sample size, not the dataset; the
features and the model file are :mod:`volseg.models.forest`'s.
"""

from __future__ import annotations

import math
from dataclasses import asdict
from pathlib import Path

import numpy as np

from volseg.errors import InputError
from volseg.io.location import text as location_text
from volseg.io.store import roi_index
from volseg.ops.annotation import inside_roi
from volseg.training.sampler import check_truth
from volseg.models.forest import (FeatureSpec, check_frame_size, probability_levels,
                                  save_forest, tile_features)


def class_quota(max_samples: int, n_frames: int) -> int:
    """Pixels of each class taken from each frame: the sample never exceeds ``max_samples``."""
    return max(1, math.floor(max_samples / 2 / max(1, n_frames)))


def sample_pixels(feats: np.ndarray, labels: np.ndarray, roi, *, quota: int, rng) -> tuple:
    """Up to ``quota`` random pixels of each class (inside ``roi``) of one tile.

    Returns
    -------
    (X, y) : (n, F) float32 and (n,) uint8
    """
    inside = np.ones(labels.shape, bool) if roi is None else inside_roi(roi)
    take = []
    for cls in (0, 1):
        idx = np.flatnonzero(((labels != 0) == cls) & inside)
        if idx.size > quota:
            idx = rng.choice(idx, size=quota, replace=False)
        take.append(idx)
    idx = np.concatenate(take)
    flat = feats.reshape(-1, feats.shape[-1])
    return flat[idx], (labels.reshape(-1)[idx] != 0).astype(np.uint8)


def balance(X: np.ndarray, y: np.ndarray, *, rng) -> tuple[np.ndarray, np.ndarray]:
    """Subsample the larger class to the size of the smaller (equal class shares)."""
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        return X, y
    keep = []
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        if idx.size > counts.min():
            idx = rng.choice(idx, size=counts.min(), replace=False)
        keep.append(idx)
    keep = np.sort(np.concatenate(keep))
    return X[keep], y[keep]


# --------------------------------------------------------------------------- model file

def sample_bytes(max_samples: int, spec: FeatureSpec) -> int:
    """Memory of the training sample (features float32 + labels)."""
    return int(max_samples) * (spec.n_features * 4 + 1)


# --------------------------------------------------------------------------- training

def intensity_range(array, frames, *, max_values: int = 2_000_000,
                    percentiles=(0.5, 99.5)) -> tuple[float, float]:
    """Robust intensity range of the training frames: percentiles of a strided sample.

    Every frame contributes an evenly strided subset of its pixels, so the sample holds
    at most about ``max_values`` values whatever the number of frames.
    """
    Y, X = array.shape[2:]
    per_frame = max(1, max_values // max(1, len(frames)))
    step = max(1, int(math.sqrt(Y * X / per_frame)))
    values = np.concatenate([np.asarray(array[t, z, ::step, ::step], np.float32).ravel()
                             for t, z in frames])
    lo, hi = (float(v) for v in np.percentile(values, percentiles))
    return (lo, hi) if hi > lo else (lo, lo + 1.0)


def collect_sample(image, truth, roi, frames, *, spec: FeatureSpec, max_samples: int, seed: int,
                   progress=None) -> tuple[np.ndarray, np.ndarray]:
    """A class-balanced sample of feature vectors from every training frame.

    Each frame gives up to :func:`class_quota` pixels of each class (inside the ROI),
    tile by tile in proportion to the tile's area, so the sample holds at most
    ``max_samples`` pixels; then the larger class is subsampled to the smaller one's
    size. Memory: the sample plus one tile's features (see the module docstring).
    """
    rng = np.random.default_rng(seed)
    quota = class_quota(max_samples, len(frames))
    Y, X = image.shape[2:]
    xs_, ys_ = [], []
    for n, (t, z) in enumerate(frames):
        labels = np.asarray(truth.array[t, z])
        check_truth(labels, f"frame t={t} z={z}")
        mask = None if roi is None else np.asarray(roi.array[roi_index(roi.shape, t, z)])
        get = lambda a, b, t=t, z=z: image.array[t, z, a, b]  # noqa: E731
        for ty, tx, feats in tile_features(get, Y, X, spec):
            share = math.ceil(quota * feats.shape[0] * feats.shape[1] / (Y * X))
            X_, y_ = sample_pixels(feats, labels[ty, tx], None if mask is None else mask[ty, tx],
                                   quota=share, rng=rng)
            xs_.append(X_)
            ys_.append(y_)
        if progress:
            progress(n + 1, len(frames))
    return balance(np.concatenate(xs_), np.concatenate(ys_), rng=rng)


def train_forest(images_path, truth_path, out_path, *, roi_path=None, channel=None, series=None,
                 val_fraction: float = 0.2,
                 val_timepoints=None, val_frames=None, trees: int = 30,
                 max_depth: int | None = 14, min_samples_leaf: int = 5,
                 max_samples: int = 200_000,
                 spec: FeatureSpec | None = None, seed: int = 0, overwrite: bool = False,
                 command: str | None = None, progress=None, log=None) -> dict:
    """Train a random forest on filter features of pixels sampled from Zarr stores.

    Over 100 lines, most of them its docstring: the steps (checks, split, sample, fit,
    validate, save) share the stores and the feature spec.

    Parameters
    ----------
    images_path, truth_path, roi_path : path-like
        Complete image and binary truth stores of one shape, and an optional ROI (only
        pixels inside it are sampled and validated).
    channel, series : int, optional
        The channel and bioformats2raw series of stores made by other tools.
    out_path : path-like
        The model file (any name: volseg tells models apart by content).
    val_fraction, val_timepoints, val_frames :
        The validation split, as for the U-Net (:func:`volseg.training.sampler.split_frames`).
    trees, max_depth, min_samples_leaf :
        The forest (scikit-learn's ``RandomForestClassifier``). The defaults (30 trees
        of depth 14) predict 5x faster than 100 unbounded trees at a validation Dice
        0.004 lower on CHASE_DB1 (docs/decisions.md, "Random forest").
    max_samples : int
        Training pixels at most (half of each class where the data allows).
    spec : FeatureSpec, optional
        Feature scales; the normalisation is measured on the training frames.

    Returns
    -------
    dict
        Summary: samples, seconds, validation Dice at the stored threshold, threshold.
    """
    import time

    from sklearn.ensemble import RandomForestClassifier

    from volseg.version import __version__
    from volseg.models.unet import FORMAT, FORMAT_VERSION
    from volseg.training.sampler import split_frames, where_learned
    from volseg.ops.thresholds import ValidationHistogram, best_threshold
    from volseg.io.truth import frame_masks, learning_views, other_images
    from volseg.training.config import open_stores

    if trees < 1:
        raise InputError(f"must be at least 1, got {trees}", param="trees")
    if max_samples < 2:
        raise InputError(f"must be at least 2, got {max_samples}", param="max_samples")
    out = Path(out_path)
    if not out.parent.is_dir():
        raise InputError(f"folder {out.parent} does not exist", param="out_path")
    if out.exists() and not overwrite:
        raise InputError(f"{out} exists; use --overwrite to replace it", param="out_path")
    image, truth, roi = open_stores(images_path, truth_path, roi_path, channel=channel,
                                    series=series)
    check_frame_size(image.shape, images_path)
    made_for = other_images(truth, image)
    if log and made_for:
        log(f"warning: {truth_path} was annotated on {made_for}, another conversion than "
            f"{images_path}; make sure they hold the same frames")
    truth, roi, annotated = learning_views(truth, roi)
    split = split_frames(image.shape, val_fraction=val_fraction, val_timepoints=val_timepoints,
                         val_frames=val_frames, annotated=annotated)
    start = time.monotonic()
    lo, hi = intensity_range(image.array, split.train)
    spec = FeatureSpec(**{**asdict(spec or FeatureSpec()), "normalization": (lo, hi)})
    if log:
        log(f"forest: sampling up to {max_samples:,} pixels from {len(split.train)} training "
            f"frames ({spec.n_features} features, scales {spec.sigma_min:g}-{spec.sigma_max:g} "
            f"px; sample memory {sample_bytes(max_samples, spec) / 2**20:.0f} MiB)")
    X, y = collect_sample(image, truth, roi, split.train, spec=spec, max_samples=max_samples,
                          seed=seed, progress=progress)
    counts = np.bincount(y, minlength=2)
    if counts.min() == 0:
        missing = "no structure (no 1)" if counts[1] == 0 else "no background (no 0)"
        raise InputError(f"{truth_path}: the training frames hold only one class, "
                         f"{missing}{where_learned(annotated, roi)}: there is "
                         "nothing to learn; a classifier needs both", param="truth_path")
    forest = RandomForestClassifier(n_estimators=trees, max_depth=max_depth,
                                    min_samples_leaf=min_samples_leaf, n_jobs=-1,
                                    random_state=seed)
    forest.fit(X, y)
    forest.n_jobs = 1
    fit_seconds = time.monotonic() - start
    frames = ValidationHistogram()
    region = None if roi is None else roi.array
    for t, z in split.val:
        levels = probability_levels(forest, image, t, z, spec)
        labels = np.asarray(truth.array[t, z])
        check_truth(labels, f"validation frame t={t} z={z}")
        inside, counted = frame_masks(region, t, z, labels.shape)
        frames.add(levels, labels, annotated=inside, counted=counted)
    hist = frames.histogram()
    note = frames.note()
    if log and note:
        log(f"forest: {note}")
    best = best_threshold(hist)
    threshold, val_dice = (0.5, None) if best is None else best
    info = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "volseg_version": __version__,
        "kind": "forest", "threshold": float(threshold),
        "features": spec.as_dict(), "input_dtype": str(image.dtype),
        "normalization": {"low": lo, "high": hi},
        "training": {"method": "forest", "trees": trees, "max_depth": max_depth,
                     "min_samples_leaf": min_samples_leaf,
                     "max_samples": max_samples, "samples": int(len(y)),
                     "class_counts": np.bincount(y, minlength=2).tolist(), "seed": seed,
                     "train_frames": len(split.train), "val_frames": len(split.val),
                     "val_split": split.by, "val_indices": split.val_indices,
                     **({"annotated_frames": split.annotated} if split.annotated else {}),
                     "val_dice": val_dice,
                     **({"val_structure_share": round(frames.share, 6)}
                        if frames.share is not None else {}),
                     "seconds": round(time.monotonic() - start, 3),
                     "fit_seconds": round(fit_seconds, 3), "command": command},
        "provenance": {"images": location_text(images_path),
                       "truth": location_text(truth_path),
                       "roi": None if roi_path is None else location_text(roi_path)},
    }
    save_forest(out, forest, info=info)
    return {"path": str(out), "samples": int(len(y)), "threshold": float(threshold),
            "val_dice": val_dice, "seconds": info["training"]["seconds"],
            "fit_seconds": fit_seconds}
