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
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from volseg.engine.blocks import BlockGrid
from volseg.errors import InputError

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

def save_forest(path, forest, *, info: dict) -> None:
    """Write a forest model file: a zip of ``volseg.json`` and the forest in skops format.

    Written under a temporary name and renamed, so a failed save leaves no half file.
    """
    import skops.io as sio

    from volseg.models.unet import INFO_MEMBER

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

    from volseg.models.unet import read_model_info

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
    _check_forest(forest, info, path)
    forest.n_jobs = 1  # blocks are the parallelism; one job also sums trees in one order
    return forest, info


def _check_forest(forest, info: dict, path) -> None:
    """A scikit-learn forest of two classes over exactly the record's features."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    if not isinstance(forest, (RandomForestClassifier, ExtraTreesClassifier)):
        raise InputError(f"{path}: holds a {type(forest).__name__}, not a scikit-learn "
                         "random forest; it was not written by volseg or was tampered with")
    classes = [int(c) for c in getattr(forest, "classes_", [])]
    if classes != [0, 1]:
        raise InputError(f"{path}: the forest has classes {classes}, not 0/1 (background, "
                         "structure); it was not written by volseg or was tampered with")
    try:
        expected = FeatureSpec.from_dict(info["features"]).n_features
    except (KeyError, TypeError, ValueError):
        raise InputError(f"{path}: its record has no valid feature description; the model "
                         "record is damaged") from None
    if getattr(forest, "n_features_in_", expected) != expected:
        raise InputError(f"{path}: the forest takes {forest.n_features_in_} features but its "
                         f"record describes {expected}; the model file is damaged")


def model_kind(path) -> str:
    """``"forest"`` or ``"unet"``: from the file's content, whatever its name."""
    from volseg.models.unet import read_model_info

    return read_model_info(path).get("kind", "unet")


# --------------------------------------------------------------------------- prediction

def forest_probabilities(forest, feats: np.ndarray) -> np.ndarray:
    """Foreground probability of each pixel of a (..., F) feature array, float32."""
    shape = feats.shape[:-1]
    proba = forest.predict_proba(feats.reshape(-1, feats.shape[-1]))
    classes = list(forest.classes_)
    p = proba[:, classes.index(1)] if 1 in classes else np.zeros(len(proba))
    return p.reshape(shape).astype(np.float32)


def probability_levels(forest, image, t: int, z: int, spec: FeatureSpec) -> np.ndarray:
    """The uint8 probability levels of frame (t, z), exactly as ``volseg predict`` makes them."""
    from volseg.ops.thresholds import quantise

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
