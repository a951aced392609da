"""The random-forest baseline: a pixel classifier on multiscale filter features.

The approach of ilastik and Weka, and of the report's first system, done so that it
scales: features are computed per block with a halo (never the whole array), training
pixels are a bounded class-balanced sample streamed from every training frame, the
model file is safe to load, and prediction goes through the same block graph and the
same probability + mask store as the U-Net's.

Features (:class:`FeatureSpec`): scikit-image's ``multiscale_basic_features`` on the
image normalised to [0, 1] by the training data's percentiles: for each of 4 scales
(Gaussian sigma 1, 2, 4, 8 px) the smoothed intensity, its edge magnitude (Sobel) and
the two eigenvalues of its Hessian: 16 features per pixel. Hessian eigenvalues respond
to tubes whose radius is near sigma, and ducts here are 2-10 px in radius, so the scales
cover them with one scale per octave.

A feature at a pixel depends on input within ``halo`` pixels (Gaussian radius
``int(4 sigma + 0.5)``, plus 1 for Sobel and 2 for the Hessian's finite differences),
so features of a block read with that halo equal those of the whole frame: no seams.

Memory of training: the sample (``max_samples x 16 x 4`` bytes, 13 MB for 200,000
pixels) plus one tile's features (``(tile + 2 halo)^2 x 16 x 4`` bytes, 78 MB for a
1024^2 tile) plus the forest itself: bounded by the sample size, not the dataset.
"""

from __future__ import annotations

import json
import math
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .blocks import BlockGrid
from .errors import InputError
from .location import text as location_text
from .store import roi_index

#: The model file member holding the forest, in skops' format (no pickle).
FOREST_MEMBER = "forest.skops"
#: Types a forest file may hold beyond skops' default-trusted ones; anything else is refused.
ALLOWED_TYPES = ("sklearn.tree._tree.Tree",)
#: Frames larger than this many pixels on a side get their features computed in tiles.
FEATURE_TILE = 1024


@dataclass(frozen=True)
class FeatureSpec:
    """How features are computed: scales and the intensity normalisation."""

    sigma_min: float = 1.0
    sigma_max: float = 8.0
    num_sigma: int = 4
    normalization: tuple = (0.0, 255.0)  # raw intensities lo, hi -> 0, 1

    @property
    def halo(self) -> int:
        """Input pixels a feature depends on, on each side."""
        return int(4 * self.sigma_max + 0.5) + 3

    @property
    def n_features(self) -> int:
        return 4 * self.num_sigma

    def as_dict(self) -> dict:
        d = asdict(self)
        d["normalization"] = [float(v) for v in self.normalization]
        d["halo"] = self.halo
        d["features"] = "intensity, Sobel edges, 2 Hessian eigenvalues per scale"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSpec":
        return cls(sigma_min=float(d["sigma_min"]), sigma_max=float(d["sigma_max"]),
                   num_sigma=int(d["num_sigma"]),
                   normalization=tuple(float(v) for v in d["normalization"]))


def check_frame_size(shape, where) -> None:
    """Refuse frames too small for the filter features (their gradients need 2 pixels
    along each axis)."""
    h, w = shape[-2:]
    if min(h, w) < 2:
        raise InputError(f"{where}: frames of {h} x {w} pixels are too small for the forest's "
                         "filter features (2 x 2 at least)")


def features(frame: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Features of a 2D frame: (y, x, n_features) float32."""
    from skimage.feature import multiscale_basic_features

    lo, hi = spec.normalization
    image = (np.asarray(frame, dtype=np.float32) - lo) / max(hi - lo, 1e-12)
    out = multiscale_basic_features(image, sigma_min=spec.sigma_min, sigma_max=spec.sigma_max,
                                    num_sigma=spec.num_sigma, workers=1)
    return out.astype(np.float32, copy=False)


def tile_features(get, height: int, width: int, spec: FeatureSpec, *, ys=None, xs=None,
                  tile: int = FEATURE_TILE):
    """Features of region ``ys, xs`` of a frame, one tile at a time.

    Parameters
    ----------
    get : callable
        ``get(ys, xs)`` returns the frame's pixels in that box (from a store or from
        memory).
    height, width : int
        The frame's size (the halo is clipped at its edges).
    ys, xs : slice, optional
        The region (default: the whole frame).
    tile : int
        Tiles are at most this many pixels on a side, so memory stays bounded for any
        frame.

    Yields
    ------
    (ys, xs, features)
        Each tile's box in frame coordinates and its (y, x, F) features, computed with
        ``spec.halo`` of context so they equal the whole frame's.
    """
    ys = ys or slice(0, height)
    xs = xs or slice(0, width)
    grid = BlockGrid((1, 1, ys.stop - ys.start, xs.stop - xs.start), (1, 1, tile, tile))
    h = spec.halo
    for region in grid:
        y0, y1 = ys.start + region[2].start, ys.start + region[2].stop
        x0, x1 = xs.start + region[3].start, xs.start + region[3].stop
        ry0, ry1 = max(0, y0 - h), min(height, y1 + h)
        rx0, rx1 = max(0, x0 - h), min(width, x1 + h)
        f = features(np.asarray(get(slice(ry0, ry1), slice(rx0, rx1))), spec)
        yield slice(y0, y1), slice(x0, x1), f[y0 - ry0: y1 - ry0, x0 - rx0: x1 - rx0]


# --------------------------------------------------------------------------- sampling

def class_quota(max_samples: int, n_frames: int) -> int:
    """Pixels of each class taken from each frame: the sample never exceeds ``max_samples``."""
    return max(1, math.floor(max_samples / 2 / max(1, n_frames)))


def sample_pixels(feats: np.ndarray, labels: np.ndarray, roi, *, quota: int, rng) -> tuple:
    """Up to ``quota`` random pixels of each class (inside ``roi``) of one tile.

    Returns
    -------
    (X, y) : (n, F) float32 and (n,) uint8
    """
    inside = np.ones(labels.shape, bool) if roi is None else np.asarray(roi) != 0
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

def save_forest(path, forest, *, info: dict) -> None:
    """Write a forest model file: a zip of ``volseg.json`` and the forest in skops format.

    Written under a temporary name and renamed, so a failed save leaves no half file.
    """
    import skops.io as sio

    from .model import INFO_MEMBER

    path = Path(path)
    part = path.with_name(f".{path.name}.part")
    try:
        with zipfile.ZipFile(part, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(INFO_MEMBER, json.dumps(info, indent=2))
            zf.writestr(FOREST_MEMBER, sio.dumps(forest))
        part.replace(path)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def load_forest(path):
    """Load a forest model file safely: only scikit-learn's forest types are accepted.

    Returns
    -------
    (RandomForestClassifier, dict)

    Raises
    ------
    InputError
        Not a forest file, damaged, or holding types outside the allowed ones.
    """
    import skops.io as sio

    from .model import read_model_info

    info = read_model_info(path)
    if info.get("kind") != "forest":
        raise InputError(f"{path}: not a forest model (kind {info.get('kind', 'unet')!r})")
    try:
        with zipfile.ZipFile(path) as zf:
            data = zf.read(FOREST_MEMBER)
    except (KeyError, zipfile.BadZipFile, OSError) as exc:
        raise InputError(f"{path}: damaged forest model file ({exc})") from None
    try:
        untrusted = sio.get_untrusted_types(data=data)
    except Exception as exc:  # skops raises several types for a damaged payload
        raise InputError(f"{path}: damaged forest model file ({type(exc).__name__})") from None
    unexpected = sorted(set(untrusted) - set(ALLOWED_TYPES))
    if unexpected:
        raise InputError(f"{path}: the model file holds types volseg does not load "
                         f"({', '.join(unexpected[:3])}); it was not written by volseg or "
                         "was tampered with")
    try:
        forest = sio.loads(data, trusted=list(untrusted))
    except Exception as exc:
        raise InputError(f"{path}: damaged forest model file ({type(exc).__name__})") from None
    forest.n_jobs = 1  # blocks are the parallelism; one job also sums trees in one order
    return forest, info


def model_kind(path) -> str:
    """``"forest"`` or ``"unet"``: from the file's content, whatever its name."""
    from .model import read_model_info

    return read_model_info(path).get("kind", "unet")


# --------------------------------------------------------------------------- prediction

def forest_probabilities(forest, feats: np.ndarray) -> np.ndarray:
    """Foreground probability of each pixel of a (..., F) feature array, float32."""
    shape = feats.shape[:-1]
    proba = forest.predict_proba(feats.reshape(-1, feats.shape[-1]))
    classes = list(forest.classes_)
    p = proba[:, classes.index(1)] if 1 in classes else np.zeros(len(proba))
    return p.reshape(shape).astype(np.float32)


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


def probability_levels(forest, image, t: int, z: int, spec: FeatureSpec) -> np.ndarray:
    """The uint8 probability levels of frame (t, z), exactly as ``volseg predict`` makes them."""
    from .thresholds import quantise

    Y, X = image.shape[2:]
    prob = np.empty((Y, X), np.float32)
    get = lambda a, b: image.array[t, z, a, b]  # noqa: E731
    for ty, tx, feats in tile_features(get, Y, X, spec):
        prob[ty, tx] = forest_probabilities(forest, feats)
    return quantise(prob)


def check_forest_context(context) -> None:
    """:class:`InputError` naming ``context`` unless it is 1: the forest's features are
    filters of one slice (depth context is a U-Net option)."""
    if context != 1:
        raise InputError(f"the random forest reads one slice per pixel; depth context "
                         f"({context} slices) needs the U-Net (method unet)", param="context")


def train_forest(images_path, truth_path, out_path, *, roi_path=None, channel=None, series=None,
                 val_fraction: float = 0.2,
                 val_timepoints=None, val_frames=None, trees: int = 30,
                 max_depth: int | None = 14, min_samples_leaf: int = 5,
                 max_samples: int = 200_000,
                 spec: FeatureSpec | None = None, seed: int = 0, overwrite: bool = False,
                 command: str | None = None, progress=None, log=None) -> dict:
    """Train a random forest on filter features of pixels sampled from Zarr stores.

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
        The validation split, as for the U-Net (:func:`volseg.sampler.split_frames`).
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

    from . import __version__
    from .model import FORMAT, FORMAT_VERSION
    from .sampler import split_frames
    from .thresholds import best_threshold, class_histograms
    from .train.config import open_stores

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
    split = split_frames(image.shape, val_fraction=val_fraction, val_timepoints=val_timepoints,
                         val_frames=val_frames)
    start = time.monotonic()
    lo, hi = intensity_range(image.array, split.train)
    spec = FeatureSpec(**{**asdict(spec or FeatureSpec()), "normalization": (lo, hi)})
    if log:
        log(f"forest: sampling up to {max_samples:,} pixels from {len(split.train)} training "
            f"frames ({spec.n_features} features, scales {spec.sigma_min:g}-{spec.sigma_max:g} "
            f"px; sample memory {sample_bytes(max_samples, spec) / 2**20:.0f} MiB)")
    X, y = collect_sample(image, truth, roi, split.train, spec=spec, max_samples=max_samples,
                          seed=seed, progress=progress)
    if np.bincount(y, minlength=2).min() == 0:
        raise InputError(f"{truth_path}: the training frames hold only one class (no "
                         "structure, or nothing else) inside the ROI; a classifier needs both")
    forest = RandomForestClassifier(n_estimators=trees, max_depth=max_depth,
                                    min_samples_leaf=min_samples_leaf, n_jobs=-1,
                                    random_state=seed)
    forest.fit(X, y)
    forest.n_jobs = 1
    fit_seconds = time.monotonic() - start
    hist = np.zeros((2, 256), np.int64)
    for t, z in split.val:
        levels = probability_levels(forest, image, t, z, spec)
        labels = np.asarray(truth.array[t, z]) != 0
        if roi is not None:
            inside = np.asarray(roi.array[roi_index(roi.shape, t, z)]) != 0
            levels, labels = levels[inside], labels[inside]
        hist += class_histograms(levels, labels)
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
                     "val_dice": val_dice, "seconds": round(time.monotonic() - start, 3),
                     "fit_seconds": round(fit_seconds, 3), "command": command},
        "provenance": {"images": location_text(images_path),
                       "truth": location_text(truth_path),
                       "roi": None if roi_path is None else location_text(roi_path)},
    }
    save_forest(out, forest, info=info)
    return {"path": str(out), "samples": int(len(y)), "threshold": float(threshold),
            "val_dice": val_dice, "seconds": info["training"]["seconds"],
            "fit_seconds": fit_seconds}
