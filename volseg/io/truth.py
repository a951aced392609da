"""Truth stores with partial annotations, seen by readers as labels and a region.

A truth store records that its value 255 means "not annotated" in its NGFF
``image-label`` metadata: a ``properties`` entry for label value 255 with class
``"not annotated"`` (and its own colour, so napari shows it apart). :func:`not_annotated`
reads that record; a store without it (every complete truth volseg wrote before, and a
0/255 mask from another tool) has no not-annotated value, and its 255 is never taken as
one.

Readers use two array views of such a store, both of the truth's full shape, so code
written for a complete truth and an ROI works unchanged:

* :class:`KnownLabels`: the labels with not-annotated voxels read as 0;
* :class:`AnnotatedRegion`: 1 where a voxel is annotated *and* inside the ROI, if any.
"""

from __future__ import annotations

import numpy as np

from volseg.io.store import MASK_COLOURS, NGFF_VERSION, ImageStore, roi_index
from volseg.ops.annotation import NOT_ANNOTATED, annotated, inside_roi, known_labels

__all__ = ["AnnotatedRegion", "KnownLabels", "annotation_counts", "frame_masks", "not_annotated",
           "other_images",
           "truth_label"]

#: napari and other viewers draw not-annotated voxels in a dim grey, apart from both classes.
NOT_ANNOTATED_COLOUR = {"label-value": NOT_ANNOTATED, "rgba": [128, 128, 128, 96]}
NOT_ANNOTATED_CLASS = "not annotated"


def truth_label() -> dict:
    """The NGFF ``image-label`` metadata of a truth store that may hold not-annotated
    voxels: 0 background, 1 structure, 255 not annotated, each with a colour."""
    return {"image-label": {
        "version": NGFF_VERSION,
        "colors": MASK_COLOURS + [NOT_ANNOTATED_COLOUR],
        # validators require properties for exactly the values that have colours
        "properties": [{"label-value": 0, "class": "background"},
                       {"label-value": 1, "class": "structure"},
                       {"label-value": NOT_ANNOTATED, "class": NOT_ANNOTATED_CLASS}]}}


def not_annotated(store: ImageStore) -> int | None:
    """The value that marks not-annotated voxels in ``store``, when its metadata records
    one (an ``image-label`` property of class "not annotated"); None otherwise."""
    attrs = store.group.attrs
    label = (attrs.get("ome") or {}).get("image-label") or attrs.get("image-label") or {}
    for prop in label.get("properties") or []:
        if isinstance(prop, dict) and str(prop.get("class", "")).lower() == NOT_ANNOTATED_CLASS:
            try:
                return int(prop["label-value"])
            except (KeyError, TypeError, ValueError):
                return None
    return None


class _View:
    """An array-like over a (t, z, y, x) array: shape, chunks and shards pass through."""

    def __init__(self, array):
        self._array = array

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self._array, name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)


class KnownLabels(_View):
    """The labels of a truth array, not-annotated voxels read as 0 (uint8)."""

    def __init__(self, array, value: int):
        super().__init__(array)
        self.value = int(value)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    def __getitem__(self, key):
        return known_labels(np.asarray(self._array[key]), self.value)


class AnnotatedRegion(_View):
    """1 where a truth voxel is annotated and inside ``roi`` (an ROI array of (t or 1,
    z or 1, y, x), or None), else 0; the truth's shape, uint8."""

    def __init__(self, truth, value: int, roi=None):
        super().__init__(truth)
        self.value = int(value)
        self.roi = roi

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint8)

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = key + (slice(None),) * (4 - len(key))
        inside = annotated(np.asarray(self._array[key]), self.value)
        if self.roi is not None:
            where = roi_index(self.roi.shape, key[0], key[1]) + tuple(key[2:])
            inside &= inside_roi(self.roi[where])
        return inside.astype(np.uint8)


def other_images(truth: ImageStore, images: ImageStore) -> str | None:
    """Where ``truth`` (made with ``convert --like``) says its images are, when ``images``
    is another conversion (their job fingerprints differ); None when they match or
    nothing is recorded. Not a refusal: the same frames converted again (other chunks)
    are another conversion too."""
    made_for = ((truth.volseg.get("job") or {}).get("parameters") or {}).get("like") or {}
    theirs = (images.volseg.get("job") or {}).get("fingerprint")
    if made_for.get("fingerprint") and theirs and made_for["fingerprint"] != theirs:
        return str(made_for.get("path"))
    return None


def frame_masks(region, t: int, z: int, shape) -> tuple[np.ndarray, np.ndarray | None]:
    """``(annotated, counted)`` of frame (t, z), from what a trainer reads as its region
    (:func:`learning_views`: an :class:`AnnotatedRegion`, a plain ROI array, or None),
    the ROI read once. ``annotated``: where labels are known and inside the ROI;
    ``counted``: where pixels count, annotated or not (inside the ROI), or None for a
    complete truth, whose pixels count exactly where they are annotated. ``shape`` is
    the frame's (y, x)."""
    if region is None:
        return np.ones(tuple(shape), bool), None
    if not isinstance(region, AnnotatedRegion):
        return inside_roi(region[roi_index(region.shape, t, z)]), None
    counted = (np.ones(tuple(shape), bool) if region.roi is None
               else inside_roi(region.roi[roi_index(region.roi.shape, t, z)]))
    return annotated(np.asarray(region._array[t, z]), region.value) & counted, counted


def annotation_counts(store: ImageStore, *, progress=None) -> np.ndarray:
    """Annotated voxels per frame, a (t, z) int64 array, read shard row by shard row
    (bounded memory). Every voxel counts when the store records no not-annotated value
    (nothing is read then)."""
    array = store.array
    T, Z, Y, X = (int(s) for s in array.shape)
    value = not_annotated(store)
    if value is None:
        return np.full((T, Z), Y * X, np.int64)
    bt, bz = (int(b) for b in (store.block_shape or (1, 1))[:2])
    counts = np.zeros((T, Z), np.int64)
    steps = [(t, z) for t in range(0, T, bt) for z in range(0, Z, bz)]
    for done, (t, z) in enumerate(steps, 1):
        block = np.asarray(array[t:t + bt, z:z + bz])
        counts[t:t + bt, z:z + bz] = (block != value).sum(axis=(2, 3))
        if progress is not None:
            progress(done, len(steps))
    return counts


class ArrayStore:
    """The face of a store that trainers read: ``array``, ``shape`` and ``path``."""

    def __init__(self, array, path):
        self.array, self.path = array, path

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.array.shape)


def learning_views(truth: ImageStore, roi: ImageStore | None):
    """What a trainer reads of a truth store and an optional ROI store.

    Returns ``(labels, region, annotated)``: the truth and ROI unchanged and None for a
    truth without not-annotated voxels; otherwise the labels with not-annotated voxels
    as 0 (:class:`KnownLabels`), the region to learn from (annotated and inside the ROI:
    :class:`AnnotatedRegion`) and the list of (t, z) frames that hold annotations.

    Raises
    ------
    InputError
        The truth store holds no annotated voxel at all.
    """
    from volseg.errors import InputError

    value = not_annotated(truth)
    if value is None:
        return truth, roi, None
    counts = annotation_counts(truth)
    if not counts.any():
        raise InputError(f"{truth.path}: no voxel is annotated (every value is {value}, "
                         "not annotated); add annotated frames with `volseg convert --mask "
                         "--update`", param="truth_path")
    frames = [(int(t), int(z)) for t, z in zip(*np.nonzero(counts))]
    labels = ArrayStore(KnownLabels(truth.array, value), truth.path)
    region = ArrayStore(AnnotatedRegion(truth.array, value,
                                        None if roi is None else roi.array),
                        truth.path if roi is None else roi.path)
    return labels, region, frames
