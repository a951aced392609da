"""Partial annotations: truth values for "structure", "background" and "not annotated".

A truth store holds uint8 labels: 0 background, 1 structure, and, when the store records
it (:mod:`volseg.io.truth`), :data:`NOT_ANNOTATED` for voxels nobody annotated. Every
reader treats a not-annotated voxel as outside the region it counts or learns from; it is
never background and never structure. A 0/255 mask made by another tool records nothing,
so its 255 keeps its old meaning (refused, or "structure" where a mask is read as
nonzero): the value alone never decides.

Scribbles (napari and ilastik labels layers) use other values: 0 not annotated, 1
structure, 2 background; :func:`from_scribbles` maps them to the stored ones.
"""

from __future__ import annotations

import numpy as np

from volseg.errors import InputError

__all__ = ["NOT_ANNOTATED", "SCRIBBLE_VALUES", "TRUTH_HINT", "annotated", "check_mask",
           "check_mask_dtype", "from_scribbles", "inside_roi", "known_labels",
           "labels_from_mask"]

#: The stored value of a voxel nobody annotated.
NOT_ANNOTATED = 255
#: Scribble value -> stored value (0 not annotated, 1 structure, 2 background).
SCRIBBLE_VALUES = {0: NOT_ANNOTATED, 1: 1, 2: 0}


#: What a refused truth should be, said after the problem.
TRUTH_HINT = "the truth must be a 0/1 mask (make it with `volseg convert --mask`)"


def inside_roi(values) -> np.ndarray:
    """The one ROI rule, for every stage: a voxel is inside where the ROI is nonzero.

    ROI values of any dtype are read the same way (uint8 0/1 or 0/255 from volseg, a
    label image, a float mask from another tool), so an ROI means the same region to
    train, predict, evaluate and measure.
    """
    return np.asarray(values) != 0


def check_mask_dtype(dtype, *, name: str, hint: str = TRUTH_HINT, param=None) -> None:
    """Refuse a truth or mask whose dtype cannot hold 0/1 labels (float, for instance), in
    :func:`check_mask`'s words, before anything is read."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biu":
        raise InputError(f"{name}: {dtype}, not an integer mask; {hint}", param=param)


def check_mask(values, *, name: str, hint: str = TRUTH_HINT, param=None) -> None:
    """The one 0/1 rule of truth read by train, evaluate, preview and measure (and of
    the masks measure reads): integer (or bool) values 0 and 1 only.

    Raises
    ------
    InputError
        ``"{name}: {problem}; {hint}"``: a float dtype, or the values found (an intensity
        image, 0/255 from another tool, -1 for "unlabelled").
    """
    values = np.asarray(values)
    check_mask_dtype(values.dtype, name=name, hint=hint, param=param)
    if values.size == 0 or values.dtype == bool:
        return
    if values.max() > 1 or values.min() < 0:
        found = np.unique(values)
        shown = ", ".join(str(v) for v in found[:6].tolist()) + (", ..." if found.size > 6 else "")
        raise InputError(f"{name}: values {shown}, not 0/1; {hint}", param=param)


def annotated(labels: np.ndarray, not_annotated: int | None) -> np.ndarray:
    """Boolean array: where ``labels`` holds an annotation (every voxel when the store
    records no not-annotated value)."""
    labels = np.asarray(labels)
    if not_annotated is None:
        return np.ones(labels.shape, bool)
    return labels != not_annotated


def known_labels(labels: np.ndarray, not_annotated: int | None) -> np.ndarray:
    """``labels`` with not-annotated voxels set to 0; combine with :func:`annotated`,
    which says where the 0s mean background."""
    labels = np.asarray(labels)
    if not_annotated is None:
        return labels
    return np.where(labels == not_annotated, np.zeros((), labels.dtype), labels)


def from_scribbles(frame: np.ndarray, *, name: str) -> np.ndarray:
    """Scribble labels (0 not annotated, 1 structure, 2 background) as stored truth
    (255 / 1 / 0), uint8.

    Raises
    ------
    InputError
        Naming ``name`` and the values that are not 0, 1 or 2.
    """
    frame = np.asarray(frame)
    if frame.dtype.kind == "f" and not np.all(np.isfinite(frame) & (frame == np.round(frame))):
        raise InputError(f"{name}: scribbles must be integer labels 0, 1, 2 (not annotated, "
                         "structure, background); found fractional or NaN values")
    values = np.unique(frame)
    bad = [v for v in values.tolist() if v not in SCRIBBLE_VALUES]
    if bad:
        shown = ", ".join(str(v) for v in bad[:6]) + (" ..." if len(bad) > 6 else "")
        raise InputError(f"{name}: scribble value(s) {shown}; scribbles use 0 = not annotated, "
                         "1 = structure, 2 = background (relabel the layer, or drop "
                         "--scribbles for a full mask)")
    lut = np.full(3, NOT_ANNOTATED, np.uint8)
    for value, stored in SCRIBBLE_VALUES.items():
        lut[value] = stored
    return lut[frame.astype(np.intp)]


def labels_from_annotation(frame: np.ndarray, *, name: str) -> np.ndarray:
    """A mask frame given for a truth that holds not-annotated voxels (``convert --like``
    or ``--update``) as stored values, uint8.

    Besides the masks :func:`labels_from_mask` reads, it takes a truth store's own
    values as ``volseg export`` writes them: 0, 1 and :data:`NOT_ANNOTATED`, and a frame
    that is :data:`NOT_ANNOTATED` everywhere (a frame nobody annotated; a mask of
    structure only would be an odd thing to annotate). A 0/255 mask without 1s stays a
    0/255 mask: its 255 is structure.
    """
    frame = np.asarray(frame)
    if frame.dtype.kind in "iu" and frame.size:
        values = np.unique(frame)
        if values[-1] == NOT_ANNOTATED and set(values.tolist()) <= {0, 1, NOT_ANNOTATED} \
                and (1 in values or values.size == 1):
            return frame.astype(np.uint8)
    return labels_from_mask(frame, name=name)


def labels_from_mask(frame: np.ndarray, *, name: str) -> np.ndarray:
    """A fully annotated mask frame (0/1 or 0/255, or bool) as stored truth 0/1, uint8.

    Raises
    ------
    InputError
        Naming ``name`` and the values, when the frame holds anything else.
    """
    frame = np.asarray(frame)
    if frame.dtype == np.bool_:
        return frame.astype(np.uint8)
    if frame.size and frame.dtype.kind in "iu" and np.all(frame == NOT_ANNOTATED):
        # what `volseg export` writes for a frame nobody annotated; never all structure
        raise InputError(f"{name}: every pixel is {NOT_ANNOTATED}: a frame exported as not "
                         "annotated, or a mask of structure only? Give annotations with "
                         "frames not annotated through --like IMAGES.zarr (or --update); "
                         "a frame of structure only as 1s")
    nonzero = np.unique(frame[frame != 0])
    if nonzero.size == 0 or (nonzero.size == 1 and nonzero[0] in (1, 255)):
        return (frame != 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in nonzero[:6].tolist()) + (" ..." if nonzero.size > 6 else "")
    hint = ("; a truth exported with not-annotated voxels (255) goes back with --like "
            "IMAGES.zarr or --update" if set(nonzero.tolist()) == {1, NOT_ANNOTATED} else "")
    raise InputError(f"{name}: mask has values {{0, {shown}}}; masks must be 0/1 or 0/255 "
                     "(threshold or relabel it first, use --scribbles for 0/1/2 labels, or "
                     f"drop --mask for an image){hint}")
