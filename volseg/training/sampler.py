"""Training patches sampled straight from Zarr arrays (t, z, y, x), never whole arrays.

The pieces, in the order training uses them:

* :func:`split_frames` holds out whole time points (whole z-frames when there is one
  time point) for validation, so no validation pixel has a neighbour in training.
* :func:`scan_training_data` reads the training frames once, block by block, and keeps
  what sampling needs in bounded memory: a histogram of image intensities (for robust
  percentiles), and per (frame, block) the number of foreground (and ROI) pixels with a
  bounded random sample of their coordinates.
* :class:`PatchSampler` draws one patch: a third of them (by default) centred on a
  foreground pixel chosen uniformly over all foreground pixels, as nnU-Net does; the
  others centred anywhere (inside the ROI when there is one). Each draw reads exactly
  one region of each array: the patch, or with a warp (rotation by any angle, scaling,
  elastic deformation) the window the warped patch is resampled from. Augmentation:
  flips, 90-degree rotations, mild contrast and brightness jitter; warps when asked.
* :class:`PatchDataset` (a ``keras.utils.PyDataset``) makes batch ``i`` of epoch ``e``
  from its own random stream ``(seed, e, i)``, so batches are the same whatever order
  worker threads finish in; :func:`prefetch` runs it on worker threads ahead of the
  training loop.

Patches are raw intensities (float32): the model's first layer does the normalisation.
Targets carry two channels, ``[truth, weight]``: the weight is 0 on reflect padding and
outside the ROI, so losses and metrics ignore those pixels. For the skeleton-recall loss
a third channel holds the truth's skeleton, thickened into a tube (:func:`tubed_skeleton`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import math
from dataclasses import dataclass, field

import numpy as np

from volseg.engine.blocks import BlockGrid, read_unit
from volseg.errors import InputError
from volseg.ops.annotation import check_mask, inside_roi
from volseg.ops.indices import parse_indices
from volseg.io.store import roi_index

__all__ = [
    "Augment", "CoordinateTable", "check_truth", "PatchDataset", "PatchSampler", "Split", "TrainingIndex",
    "check_foreground_share", "percentiles_from_histogram",
    "prefetch", "resample", "scan_training_data", "split_frames", "tubed_skeleton",
    "warp_offsets",
]

#: Bound on the foreground (and ROI) coordinates kept in memory, over all blocks.
COORD_BUDGET = 4_000_000


# --------------------------------------------------------------------------- split

@dataclass
class Split:
    """Training and validation frames, as lists of (t, z)."""

    train: list[tuple[int, int]]
    val: list[tuple[int, int]]
    by: str  # "timepoints" or "frames"
    val_indices: list[int]  # the held-out time points (or z indices when by == "frames")
    annotated: int | None = None  # frames holding annotations, for a partial truth


def split_frames(shape, *, val_fraction: float = 0.2, val_timepoints: str | None = None,
                 val_frames: str | None = None, annotated=None) -> Split:
    """Hold out whole time points (or whole z-frames when T == 1) for validation.

    Without an explicit list, the *last* ``ceil(val_fraction * n)`` time points (or
    frames) are held out, as one block: a held-out frame then has at most one
    neighbour in training, so correlation between adjacent frames leaks as little as
    possible into the validation score.

    ``annotated`` (a collection of (t, z), for a truth with not-annotated voxels) limits
    both sides to the frames that hold annotations: ``n`` counts the time points that
    hold any (or, when they all lie in one time point, its annotated slices).
    """
    if annotated is not None:
        return _split_annotated(shape, sorted({(int(t), int(z)) for t, z in annotated}),
                                val_fraction=val_fraction, val_timepoints=val_timepoints,
                                val_frames=val_frames)
    t_count, z_count = int(shape[0]), int(shape[1])
    if val_timepoints is not None and val_frames is not None:
        raise InputError("give held-out time points or held-out frames, not both",
                         param="val_frames")
    if val_frames is not None and t_count > 1:
        raise InputError(f"the images have {t_count} time points; hold out whole time points "
                         "instead (z-frames of one time point are only held out when there is "
                         "a single time point)", param="val_frames")
    by = "timepoints" if (t_count > 1 or val_timepoints is not None) else "frames"
    n = t_count if by == "timepoints" else z_count
    if n < 2:
        raise InputError("a single frame (1 time point, 1 z-slice) cannot be split into "
                         "training and validation; give at least two frames",
                         param="images_path")
    if val_timepoints is not None:
        held = sorted(parse_indices(val_timepoints, t_count, param="val_timepoints",
                                    axis="time point"))
    elif val_frames is not None:
        held = sorted(parse_indices(val_frames, z_count, param="val_frames", axis="slice"))
    else:
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"must be between 0 and 1, got {val_fraction}",
                             param="val_fraction")
        k = min(n - 1, max(1, math.ceil(val_fraction * n)))
        held = list(range(n - k, n))
    if len(held) >= n:
        raise InputError("nothing left for training",
                         param="val_timepoints" if by == "timepoints" else "val_frames")
    held_set = set(held)
    frames = [(t, z) for t in range(t_count) for z in range(z_count)]
    key = (lambda f: f[0]) if by == "timepoints" else (lambda f: f[1])
    return Split(train=[f for f in frames if key(f) not in held_set],
                 val=[f for f in frames if key(f) in held_set], by=by, val_indices=held)


def _split_annotated(shape, frames, *, val_fraction, val_timepoints, val_frames) -> Split:
    """:func:`split_frames` over the annotated frames only."""
    if len(frames) < 2:
        raise InputError(f"{len(frames)} annotated frame(s): training needs at least two "
                         "(one to learn from, one to validate on); annotate another frame",
                         param="truth_path")
    times = sorted({t for t, _ in frames})
    if val_frames is not None and len(times) > 1:
        raise InputError(f"the annotations span {len(times)} time points; hold out whole time "
                         "points instead", param="val_frames")
    by = "timepoints" if (len(times) > 1 or val_timepoints is not None) else "frames"
    key = (lambda f: f[0]) if by == "timepoints" else (lambda f: f[1])
    present = sorted({key(f) for f in frames})
    axis, param = (("time point", "val_timepoints") if by == "timepoints"
                   else ("slice", "val_frames"))
    if val_timepoints is not None or val_frames is not None:
        held = sorted(parse_indices(val_timepoints if by == "timepoints" else val_frames,
                                    int(shape[0 if by == "timepoints" else 1]), param=param,
                                    axis=axis))
        empty = [h for h in held if h not in present]
        if empty:
            raise InputError(f"{axis} {format_list(empty)} hold(s) no annotation; hold out "
                             f"annotated ones ({format_list(present)})", param=param)
    else:
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"must be between 0 and 1, got {val_fraction}", param="val_fraction")
        if len(present) < 2:
            raise InputError("the annotations lie in one frame; annotate another frame to "
                             "validate on", param="truth_path")
        k = min(len(present) - 1, max(1, math.ceil(val_fraction * len(present))))
        held = present[-k:]
    held_set = set(held)
    train = [f for f in frames if key(f) not in held_set]
    if not train:
        raise InputError("nothing left for training: every annotated frame is held out",
                         param=param)
    return Split(train=train, val=[f for f in frames if key(f) in held_set], by=by,
                 val_indices=held, annotated=len(frames))


def where_learned(annotated, roi) -> str:
    """The words that say where the trainers look, for their messages."""
    if annotated is not None:
        return " where annotated"
    return " inside the ROI" if roi is not None else ""


def format_list(values) -> str:
    shown = ", ".join(str(v) for v in list(values)[:8])
    return shown + (" ..." if len(values) > 8 else "")


# --------------------------------------------------------------------------- scanning

@dataclass
class CoordinateTable:
    """Per (frame, block) counts of pixels with a property, and a bounded sample of them.

    ``frame[i]`` indexes the training frame list, ``count[i]`` is the true number of
    pixels in entry ``i``, ``coords[start[i]:start[i + 1]]`` are up to ``cap`` of them
    (y, x within the frame), chosen uniformly at random.
    """

    frame: list = field(default_factory=list)
    count: list = field(default_factory=list)
    chunks: list = field(default_factory=list)

    def add(self, frame_index: int, ys: np.ndarray, xs: np.ndarray, y0: int, x0: int,
            cap: int, rng: np.random.Generator) -> None:
        n = ys.size
        if n == 0:
            return
        if n > cap:
            keep = rng.choice(n, size=cap, replace=False)
            ys, xs = ys[keep], xs[keep]
        self.frame.append(frame_index)
        self.count.append(n)
        self.chunks.append(np.stack([ys + y0, xs + x0], axis=1).astype(np.int32))

    def freeze(self) -> None:
        self.frame = np.asarray(self.frame, dtype=np.int64)
        self.count = np.asarray(self.count, dtype=np.int64)
        sizes = [len(c) for c in self.chunks]
        self.start = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.coords = (np.concatenate(self.chunks) if self.chunks
                       else np.zeros((0, 2), np.int32))
        self.chunks = []
        self._cum = np.cumsum(self.count)

    @property
    def total(self) -> int:
        return int(np.sum(self.count)) if len(self.count) else 0

    def draw(self, rng: np.random.Generator) -> tuple[int, int, int]:
        """A (frame index, y, x), uniform over all counted pixels (exactly so when an
        entry's pixels all fit under the cap, otherwise uniform over its sample)."""
        i = int(np.searchsorted(self._cum, rng.integers(self._cum[-1]), side="right"))
        j = int(rng.integers(self.start[i], self.start[i + 1]))
        y, x = self.coords[j]
        return int(self.frame[i]), int(y), int(x)


@dataclass
class TrainingIndex:
    """What :func:`scan_training_data` learned about the training frames."""

    frames: list[tuple[int, int]]
    frame_shape: tuple[int, int]
    foreground: CoordinateTable
    roi: CoordinateTable | None
    histogram: np.ndarray  # counts of image values (inside the ROI)
    histogram_offset: float  # value of bin 0
    histogram_step: float  # width of a bin
    pixels: int  # training pixels counted (inside the ROI when there is one)

    @property
    def foreground_fraction(self) -> float:
        return self.foreground.total / self.pixels if self.pixels else 0.0

    def percentiles(self, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
        """Robust intensity range from the histogram (``high > low`` guaranteed)."""
        return percentiles_from_histogram(self.histogram, (low, high),
                                          offset=self.histogram_offset,
                                          step=self.histogram_step)


def percentiles_from_histogram(hist, q, *, offset: float = 0.0,
                               step: float = 1.0) -> tuple[float, float]:
    """Percentiles ``q = (low, high)`` (in %) of the values a histogram counts.

    Bin ``i`` counts the value ``offset + i * step``. The result is the smallest value
    whose cumulative count reaches the percentile; ``high`` is raised to at least
    ``low + step`` so a constant image still gives a usable range.
    """
    hist = np.asarray(hist, dtype=np.float64)
    total = hist.sum()
    if total <= 0:
        raise InputError("no training pixels to compute the intensity range from "
                         "(empty ROI?)", param="images_path")
    cum = np.cumsum(hist)
    lo_i = int(np.searchsorted(cum, total * q[0] / 100.0, side="left"))
    hi_i = int(np.searchsorted(cum, total * q[1] / 100.0, side="left"))
    lo, hi = offset + lo_i * step, offset + hi_i * step
    if hi <= lo:
        hi = lo + step
    return float(lo), float(hi)


def _read(array, sel):
    return np.asarray(array[sel])


def _roi_sel(roi, t_sel: slice, z_sel: slice, ys: slice, xs: slice):
    return (*roi_index(roi.shape, t_sel, z_sel), ys, xs)


def _histogram_layout(image, frames, progress=None):
    """(offset, step, nbins) of the intensity histogram for ``image``'s dtype."""
    dtype = np.dtype(image.dtype)
    if dtype.kind in "ub" and dtype.itemsize <= 2:
        return 0.0, 1.0, 2 ** (8 * dtype.itemsize) if dtype.kind == "u" else 2
    if dtype.kind == "i" and dtype.itemsize <= 2:
        return float(np.iinfo(dtype).min), 1.0, 2 ** (8 * dtype.itemsize)
    # Wider or float types: a first pass for the range, then 65536 bins over it.
    lo, hi = np.inf, -np.inf
    for region, _ in BlockGrid(image.shape, read_unit(image)).frame_spans(frames):
        block = _read(image, region)
        finite = block[np.isfinite(block)] if dtype.kind == "f" else block
        if finite.size:
            lo, hi = min(lo, float(finite.min())), max(hi, float(finite.max()))
    if not np.isfinite(lo):
        raise InputError("no finite intensity values in the training frames",
                         param="images_path")
    nbins = 65536
    step = (hi - lo) / (nbins - 1) if hi > lo else 1.0
    return lo, step, nbins


def check_truth(labels: np.ndarray, where: str = "") -> None:
    """The one truth rule of every trainer (U-Net and forest, training and validation
    frames): integers 0 or 1. :class:`InputError` naming the truth and the first value
    that breaks it (an intensity image, 0/255, or -1 for "unlabelled" are refused)."""
    check_mask(labels, name=f"truth ({where})" if where else "truth", param="truth_path")


def scan_training_data(image, truth, frames, *, roi=None, seed: int = 0,
                       coord_budget: int = COORD_BUDGET, progress=None) -> TrainingIndex:
    """Read the training frames once, block by block, and index them for sampling.

    Parameters
    ----------
    image, truth : array-like (t, z, y, x)
        Zarr arrays (or anything with ``shape``, ``dtype`` and numpy slicing) of the
        same shape. ``truth`` must hold only 0 and 1.
    frames : list of (t, z)
        The training frames.
    roi : array-like (t or 1, z or 1, y, x), optional
        Where labels are valid; only pixels inside it are counted or sampled.
    seed : int
        Seed of the random choice of kept coordinates.
    coord_budget : int
        At most this many coordinates are kept for each of foreground and ROI (memory
        bound: 8 bytes each); each (frame, block) keeps ``budget / entries`` of them
        (at least 16, at most 4096).
    progress : callable(done, total), optional

    Returns
    -------
    TrainingIndex
    """
    shape = tuple(image.shape)
    frames = list(frames)
    if not frames:
        raise InputError("no training frames", param="images_path")
    block = read_unit(truth)
    regions = list(BlockGrid(shape, block).frame_spans(frames))
    yx_blocks = math.ceil(shape[2] / block[2]) * math.ceil(shape[3] / block[3])
    entries = len(frames) * yx_blocks  # (frame, block) pairs: one table entry each at most
    cap = int(np.clip(coord_budget // max(1, entries), 16, 4096))
    offset, step, nbins = _histogram_layout(image, frames)
    hist = np.zeros(nbins, dtype=np.int64)
    fg = CoordinateTable()
    roi_table = CoordinateTable() if roi is not None else None
    rng = np.random.default_rng([seed, 0x5CA9])
    frame_pos = {f: i for i, f in enumerate(frames)}
    pixels = 0
    for done, (sel, members) in enumerate(regions, 1):
        t_sel, z_sel, ys, xs = sel
        img = _read(image, sel)
        lab = _read(truth, sel)
        check_truth(lab)
        mask = _read(roi, _roi_sel(roi, *sel)) if roi is not None else None
        for t, z in members:
            i, j = t - t_sel.start, z - z_sel.start
            frame_img = img[i, j]
            frame_lab = lab[i, j].astype(bool)
            if mask is not None:
                inside = inside_roi(mask[min(i, mask.shape[0] - 1), min(j, mask.shape[1] - 1)])
                frame_lab &= inside
                ry, rx = np.nonzero(inside)
                roi_table.add(frame_pos[(t, z)], ry, rx, ys.start, xs.start, cap, rng)
                values = frame_img[inside]
            else:
                values = frame_img.ravel()
            pixels += values.size
            fy, fx = np.nonzero(frame_lab)
            fg.add(frame_pos[(t, z)], fy, fx, ys.start, xs.start, cap, rng)
            hist += _bin_values(values, offset, step, nbins)
        if progress is not None:
            progress(done, len(regions))
    fg.freeze()
    if roi_table is not None:
        roi_table.freeze()
        if roi_table.total == 0:
            raise InputError("the ROI is empty in every training frame", param="roi_path")
    return TrainingIndex(frames=frames, frame_shape=(shape[2], shape[3]), foreground=fg,
                         roi=roi_table, histogram=hist, histogram_offset=offset,
                         histogram_step=step, pixels=pixels)


def _bin_values(values: np.ndarray, offset: float, step: float, nbins: int) -> np.ndarray:
    if values.dtype.kind in "ub" and offset == 0 and step == 1:
        return np.bincount(values.astype(np.intp, copy=False), minlength=nbins)[:nbins]
    if values.dtype.kind == "f":
        values = values[np.isfinite(values)]
    idx = np.clip(np.round((values.astype(np.float64) - offset) / step), 0, nbins - 1)
    return np.bincount(idx.astype(np.intp), minlength=nbins)


# --------------------------------------------------------------------------- sampling

@dataclass
class Augment:
    """Random augmentation parameters (all mild: the structures keep their look)."""

    flips: bool = True
    rotations: bool = True
    contrast: float = 0.15  # multiply deviations from mid-range by U(1 - c, 1 + c)
    brightness: float = 0.10  # shift by U(-b, b) times the intensity range
    gamma: float = 0.0  # normalised intensity ** exp(U(-g, g)): other mid-tone responses
    noise: float = 0.0  # add Gaussian noise of sigma U(0, n) times the intensity range
    # Warps, resampled from a window read around the patch (see :func:`warp_offsets`):
    angle: float = 0.0  # rotate by U(-a, a) degrees, on top of the 90-degree turns
    scale: float = 0.0  # magnify by exp(U(-s, s)): other sizes of the same structures
    elastic: float = 0.0  # smooth random displacement, root mean square in pixels

    @classmethod
    def none(cls) -> "Augment":
        return cls(flips=False, rotations=False, contrast=0.0, brightness=0.0)

    @property
    def warps(self) -> bool:
        return bool(self.angle or self.scale or self.elastic)


class PatchSampler:
    """Draw training patches from Zarr arrays, reading one region per array and patch.

    Parameters
    ----------
    image, truth : array-like (t, z, y, x)
    index : TrainingIndex
        From :func:`scan_training_data` over the same arrays.
    patch : (h, w)
    roi : array-like, optional
        The ROI the index was made with.
    foreground_share : float
        Probability that a patch is centred on a foreground pixel (the others are centred
        anywhere, inside the ROI when there is one).
    normalization : (low, high)
        Intensity range, used to scale the brightness jitter.
    augment : Augment or None
    context : int
        K, odd: the image patch holds the K slices around the frame's (same time point,
        clamped at the stack's ends: :mod:`volseg.ops.context`) as channels; the truth and
        weight stay the centre slice's. 1: the frame alone.
    skeleton : bool
        Add a third target channel: :func:`tubed_skeleton` of the (augmented) truth patch,
        for the skeleton-recall loss. Made here, in the worker threads, so the training
        step does not pay for it.
    """

    def __init__(self, image, truth, index: TrainingIndex, *, patch=(256, 256), roi=None,
                 foreground_share: float = 1 / 3, normalization=(0.0, 255.0),
                 augment: Augment | None = None, context: int = 1, skeleton: bool = False):
        from volseg.ops.context import check_context

        check_foreground_share(foreground_share)
        self.context = check_context(context)
        self.image, self.truth, self.roi, self.index = image, truth, roi, index
        self.patch = (int(patch[0]), int(patch[1]))
        self.foreground_share = float(foreground_share)
        self.normalization = (float(normalization[0]), float(normalization[1]))
        self.augment = augment if augment is not None else Augment()
        self.skeleton = bool(skeleton)
        if index.foreground.total == 0:
            self.foreground_share = 0.0  # nothing to centre on; plain sampling still trains

    def _centre(self, rng: np.random.Generator, forced: bool) -> tuple[int, int, int]:
        if forced:
            return self.index.foreground.draw(rng)
        if self.index.roi is not None:
            return self.index.roi.draw(rng)
        h, w = self.index.frame_shape
        return (int(rng.integers(len(self.index.frames))), int(rng.integers(h)),
                int(rng.integers(w)))

    def draw(self, rng: np.random.Generator):
        """One patch.

        Returns
        -------
        image : (h, w, K) float32, raw intensities (augmented), K = ``context``
        target : (h, w, 2) float32, channels truth (0/1) and weight (0/1); (h, w, 3)
            with ``skeleton``, the third channel the truth's tubed skeleton (0/1)
        info : dict with ``frame`` (t, z), ``origin`` (y, x) in the frame (before
            augmentation), ``centre`` (y, x) in the patch, ``forced`` (bool)
        """
        forced = bool(rng.random() < self.foreground_share)
        fi, cy, cx = self._centre(rng, forced)
        t, z = self.index.frames[fi]
        (h, w), (fh, fw) = self.patch, self.index.frame_shape
        # the patch's origin in the frame: negative when the frame is smaller than the patch
        top, left = (a - pad[0] for a, _, pad in (_window(cy, h, fh), _window(cx, w, fw)))
        if self.augment.warps:
            offsets = warp_offsets(rng, self.patch, angle=self.augment.angle,
                                   scale=self.augment.scale, elastic=self.augment.elastic)
            # source coordinates in the frame, and the window of the frame they lie in
            coords = offsets + np.array([top + (h - 1) / 2, left + (w - 1) / 2],
                                        np.float32)[:, None, None]
            ya, xa = (int(np.floor(c.min())) - 1 for c in coords)
            yb, xb = (int(np.ceil(c.max())) + 2 for c in coords)
            img, lab, weight = self._read_region(t, z, (ya, yb), (xa, xb))
            coords -= np.array([ya, xa], np.float32)[:, None, None]
            img, lab, weight = (resample(img, coords, order=1), resample(lab, coords, order=0),
                                resample(weight, coords, order=0))
        else:
            img, lab, weight = self._read_region(t, z, (top, top + h), (left, left + w))
        img, lab, weight = self._augment(rng, img, lab, weight)
        channels = [lab, weight] + ([tubed_skeleton(lab)] if self.skeleton else [])
        target = np.stack(channels, axis=-1)
        info = {"frame": (t, z), "origin": (top, left), "centre": (cy - top, cx - left),
                "forced": forced}
        return (img if img.ndim == 3 else img[..., None]), target, info

    def _read_region(self, t: int, z: int, ys: tuple[int, int], xs: tuple[int, int]):
        """Image (float32), truth and weight over rows ``ys`` and columns ``xs`` of frame
        (t, z), in one read of each array. The region may reach beyond the frame: the
        image and truth are reflected there, and the weight is 0."""
        fh, fw = self.index.frame_shape
        y0, y1, x0, x1 = max(ys[0], 0), min(ys[1], fh), max(xs[0], 0), min(xs[1], fw)
        py, px = (y0 - ys[0], ys[1] - y1), (x0 - xs[0], xs[1] - x1)
        img = self._read_image(t, z, slice(y0, y1), slice(x0, x1))
        lab = _read(self.truth, (t, z, slice(y0, y1), slice(x0, x1))).astype(np.float32)
        if self.roi is not None:
            rt, rz = roi_index(self.roi.shape, t, z)
            weight = inside_roi(_read(self.roi, (rt, rz, slice(y0, y1), slice(x0, x1))))
            weight = weight.astype(np.float32)
        else:
            weight = np.ones_like(lab)
        if py != (0, 0) or px != (0, 0):
            img = _reflect(img, py, px)
            lab = _reflect(lab, py, px)
            weight = np.pad(weight, (py, px), mode="constant")
        return img, lab, weight

    def _read_image(self, t: int, z: int, ys: slice, xs: slice) -> np.ndarray:
        """The image window of frame (t, z) as float32: (h, w), or (h, w, K) with the
        K context slices when ``context`` > 1 (one read of the slab holding them)."""
        if self.context == 1:
            return _read(self.image, (t, z, ys, xs)).astype(np.float32)
        from volseg.ops.context import read_context

        return read_context(self.image, t, z, ys, xs, context=self.context).astype(np.float32)

    def _augment(self, rng, img, lab, weight):
        a = self.augment
        arrays = [img, lab, weight]
        if a.rotations:
            square = self.patch[0] == self.patch[1]
            k = int(rng.integers(4)) if square else 2 * int(rng.integers(2))
            if k:
                arrays = [np.rot90(v, k) for v in arrays]
        if a.flips:
            if rng.random() < 0.5:
                arrays = [v[::-1] for v in arrays]
            if rng.random() < 0.5:
                arrays = [v[:, ::-1] for v in arrays]
        img, lab, weight = (np.ascontiguousarray(v) for v in arrays)
        if a.contrast or a.brightness:
            low, high = self.normalization
            mid = 0.5 * (low + high)
            c = rng.uniform(1 - a.contrast, 1 + a.contrast)
            b = rng.uniform(-a.brightness, a.brightness) * (high - low)
            img = (img - mid) * np.float32(c) + np.float32(mid + b)
        if a.gamma or a.noise:
            img = self._gamma_noise(rng, img)
        return img.astype(np.float32, copy=False), lab, weight

    def _gamma_noise(self, rng, img):
        a = self.augment
        low, high = self.normalization
        span = np.float32(max(high - low, 1e-6))
        if a.gamma:
            g = np.float32(np.exp(rng.uniform(-a.gamma, a.gamma)))
            unit = np.clip((img - np.float32(low)) / span, 0.0, None)
            img = np.float32(low) + span * unit ** g
        if a.noise:
            sigma = np.float32(rng.uniform(0.0, a.noise)) * span
            img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
        return img

    def batch(self, rng: np.random.Generator, size: int):
        """``size`` patches: images (n, h, w, K) and targets (n, h, w, 2 or 3)."""
        xs, ys = [], []
        for _ in range(size):
            x, y, _ = self.draw(rng)
            xs.append(x)
            ys.append(y)
        return np.stack(xs), np.stack(ys)


def tubed_skeleton(truth: np.ndarray) -> np.ndarray:
    """The skeleton of a 2D 0/1 ``truth`` patch, thickened into a tube inside it, float32.

    The target of the skeleton-recall loss (Kirchhoff et al., "Skeleton Recall Loss for
    Connectivity Conserving and Resource Efficient Segmentation of Thin Tubular
    Structures", ECCV 2024), made as they make it: the skeleton dilated twice by a 3x3
    cross, then cut back to the truth. The tube makes the recall term less sensitive to
    which pixel the thinning kept; inside a thin tube it is the whole tube, inside a wide
    one a band about 5 pixels wide along the centre line. Tubes cut by the patch border
    end there.
    """
    from scipy.ndimage import binary_dilation
    from skimage.morphology import skeletonize

    mask = np.asarray(truth) > 0.5
    if not mask.any():
        return np.zeros(mask.shape, np.float32)
    tube = binary_dilation(skeletonize(mask), iterations=2)
    return (tube & mask).astype(np.float32)


#: Spacing in pixels of the random displacements an elastic warp is interpolated from:
#: the warp bends structures over tens of pixels, not pixel by pixel.
ELASTIC_SPACING = 32


def warp_offsets(rng: np.random.Generator, shape, *, angle: float = 0.0, scale: float = 0.0,
                 elastic: float = 0.0) -> np.ndarray:
    """Where each pixel of a warped patch comes from, relative to the patch's centre.

    Parameters
    ----------
    rng : numpy.random.Generator
    shape : (h, w)
        The patch.
    angle : float
        Rotation by U(-angle, angle) degrees.
    scale : float
        Magnification by exp(U(-scale, scale)) (structures look larger above 1).
    elastic : float
        Root-mean-square length in pixels of a smooth random displacement: normal draws
        every :data:`ELASTIC_SPACING` pixels, smoothed by Gaussian weights.

    Returns
    -------
    (2, h, w) float32
        Row and column offsets into the source, from the patch's centre.
    """
    h, w = int(shape[0]), int(shape[1])
    theta = np.deg2rad(rng.uniform(-angle, angle)) if angle else 0.0
    shrink = np.exp(-rng.uniform(-scale, scale)) if scale else 1.0
    yy, xx = _centred_grid(h, w)
    c, s = np.float32(np.cos(theta) * shrink), np.float32(np.sin(theta) * shrink)
    offsets = np.stack([c * yy - s * xx, s * yy + c * xx])
    if elastic:
        ky, kx = _smoothing_matrix(h), _smoothing_matrix(w)
        knots = rng.standard_normal((2, ky.shape[1], kx.shape[1])).astype(np.float32)
        field = ky @ knots @ kx.T
        rms = float(np.sqrt(np.mean(field ** 2)))
        offsets += field * np.float32(elastic / max(rms, 1e-6))
    return offsets


@functools.lru_cache(maxsize=4)
def _centred_grid(h: int, w: int) -> np.ndarray:
    """(2, h, w) float32 row and column offsets of each pixel from the patch's centre."""
    grid = np.mgrid[0:h, 0:w].astype(np.float32)
    grid[0] -= (h - 1) / 2
    grid[1] -= (w - 1) / 2
    grid.flags.writeable = False  # shared between calls and threads
    return grid


@functools.lru_cache(maxsize=8)
def _smoothing_matrix(n: int) -> np.ndarray:
    """(n, m) float32 Gaussian weights from m knots :data:`ELASTIC_SPACING` apart (one
    beyond each end) to n pixels: ``K @ knots @ K.T`` is a smooth field (a few ms, where
    spline zooming takes about 90 ms a patch)."""
    knots = np.arange(-1, n // ELASTIC_SPACING + 2) * ELASTIC_SPACING
    d = (np.arange(n)[:, None] - knots[None, :]) / ELASTIC_SPACING
    weights = np.exp(-0.5 * d ** 2)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def resample(array: np.ndarray, coords: np.ndarray, *, order: int) -> np.ndarray:
    """``array`` (h, w) or (h, w, K) at fractional positions ``coords`` (2, ...), float32:
    linear interpolation (``order=1``) for images, nearest (``order=0``) for labels and
    weights, which must stay 0/1. Positions outside are clamped to the border.

    Gathers with numpy: 10x faster than ``scipy.ndimage.map_coordinates``, which took
    about 12 ms per 256 px patch and array.
    """
    a = np.asarray(array, np.float32)
    hi = np.array(a.shape[:2], np.float32)[:, None, None] - 1
    if order == 0:
        iy, ix = np.clip(np.rint(coords), 0, hi).astype(np.intp)
        return a[iy, ix]
    base = np.clip(np.floor(coords), 0, np.maximum(hi - 1, 0))
    fy, fx = np.clip(coords - base, 0, 1)
    iy, ix = base.astype(np.intp)
    jy, jx = np.minimum(iy + 1, int(hi[0, 0, 0])), np.minimum(ix + 1, int(hi[1, 0, 0]))
    if a.ndim == 3:
        fy, fx = fy[..., None], fx[..., None]
    top = a[iy, ix] * (1 - fx) + a[iy, jx] * fx
    bottom = a[jy, ix] * (1 - fx) + a[jy, jx] * fx
    return top * (1 - fy) + bottom * fy


def check_foreground_share(value: float) -> None:
    """:class:`InputError` naming ``foreground_share`` unless it is within [0, 1]."""
    if not 0.0 <= value <= 1.0:
        raise InputError(f"must be in [0, 1], got {value}", param="foreground_share")


def _window(centre: int, size: int, extent: int):
    """Read window [a, b) of a patch of ``size`` centred at ``centre`` in ``extent``,
    shifted to lie inside the frame, and the (before, after) padding when the frame is
    smaller than the patch."""
    if extent <= size:
        pad = size - extent
        return 0, extent, (pad // 2, pad - pad // 2)
    a = min(max(centre - size // 2, 0), extent - size)
    return a, a + size, (0, 0)


def _reflect(a: np.ndarray, py, px) -> np.ndarray:
    """Pad y and x (the first two axes; channels, if any, are not padded)."""
    pad = (py, px) + ((0, 0),) * (a.ndim - 2)
    if min(a.shape[:2]) < 2:
        return np.pad(a, pad, mode="edge")
    return np.pad(a, pad, mode="reflect")


# --------------------------------------------------------------------------- pipeline

def _make_dataset_class():
    # Keras (and TensorFlow) load only when a dataset is made, so that checking inputs
    # and scanning data (and failing fast on bad input) does not wait for them.
    from volseg.models.backend import import_keras

    keras = import_keras()

    class PatchDataset(keras.utils.PyDataset):
        """Batches of patches for Keras: batch ``i`` of epoch ``e`` is drawn from the
        random stream ``(seed, e, i)``, so content does not depend on thread scheduling.

        Works with ``model.fit`` (which runs ``workers`` threads) and with
        :func:`prefetch`. Targets are ``(n, h, w, 2)``: truth and weight (the losses in
        :mod:`volseg.train` read both), and ``(n, h, w, 3)`` with the sampler's skeleton.
        """

        def __init__(self, sampler: PatchSampler, *, batch_size: int, steps: int,
                     seed: int = 0, epoch: int = 0, workers: int = 2,
                     max_queue_size: int = 8):
            super().__init__(workers=workers, use_multiprocessing=False,
                             max_queue_size=max_queue_size)
            self.sampler, self.batch_size = sampler, int(batch_size)
            self.steps, self.seed, self.epoch = int(steps), int(seed), int(epoch)

        def __len__(self) -> int:
            return self.steps

        def __getitem__(self, idx: int):
            if not 0 <= idx < self.steps:
                raise IndexError(idx)
            rng = np.random.default_rng([self.seed, self.epoch, int(idx)])
            return self.sampler.batch(rng, self.batch_size)

        def on_epoch_end(self) -> None:
            self.epoch += 1

    PatchDataset.__module__ = __name__
    return PatchDataset


def __getattr__(name):
    # ``PatchDataset`` (a keras.utils.PyDataset subclass) is built on first access.
    if name == "PatchDataset":
        cls = _make_dataset_class()
        globals()["PatchDataset"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prefetch(dataset, *, indices=None, workers: int | None = None, depth: int | None = None):
    """Yield ``dataset[i]`` for ``i`` in ``indices`` (default all), in order, computed by
    ``workers`` threads up to ``depth`` batches ahead (zarr decoding and numpy release
    the GIL, so reading overlaps with the training step)."""
    indices = range(len(dataset)) if indices is None else indices
    workers = max(1, int(workers or getattr(dataset, "workers", 1) or 1))
    depth = max(1, int(depth or getattr(dataset, "max_queue_size", 2 * workers)))
    pending = collections.deque()
    it = iter(indices)
    with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="volseg-patches") as pool:
        try:
            for i in it:
                pending.append(pool.submit(dataset.__getitem__, i))
                if len(pending) >= depth:
                    break
            while pending:
                result = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(dataset.__getitem__, nxt))
                yield result
        finally:
            for f in pending:
                f.cancel()
