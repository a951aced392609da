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

__all__ = ["NOT_ANNOTATED", "SCRIBBLE_VALUES", "annotated", "from_scribbles", "known_labels",
           "labels_from_mask"]

#: The stored value of a voxel nobody annotated.
NOT_ANNOTATED = 255
#: Scribble value -> stored value (0 not annotated, 1 structure, 2 background).
SCRIBBLE_VALUES = {0: NOT_ANNOTATED, 1: 1, 2: 0}


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
    nonzero = np.unique(frame[frame != 0])
    if nonzero.size == 0 or (nonzero.size == 1 and nonzero[0] in (1, 255)):
        return (frame != 0).astype(np.uint8)
    shown = ", ".join(str(v) for v in nonzero[:6].tolist()) + (" ..." if nonzero.size > 6 else "")
    raise InputError(f"{name}: mask has values {{0, {shown}}}; masks must be 0/1 or 0/255 "
                     "(threshold or relabel it first, use --scribbles for 0/1/2 labels, or "
                     "drop --mask for an image)")
