"""Depth context (2.5D): the network sees K neighbouring z-slices as channels.

A model trained with ``context=K`` (odd, at least 1) takes, for the frame (t, z), the
slices ``z - (K-1)/2 .. z + (K-1)/2`` of the same time point as K input channels and
predicts the centre slice. Training (:class:`volseg.training.sampler.PatchSampler`), validation
(:class:`volseg.training.Validator`) and ``volseg predict`` all build the channels with the
functions of this module, so the three cannot disagree.

The end-of-stack rule is **clamp to the edge slice** (numpy's ``mode="edge"``): a slice
index below 0 reads slice 0, one past the last reads the last. On a stack of one slice
every channel is that slice (a K>1 model still runs on single-frame data, as if its
neighbours were copies), and on two slices the rule stays defined, where reflection
would need at least ``(K-1)/2 + 1`` slices. K = 1 reads exactly the frame itself.
"""

from __future__ import annotations

import numpy as np

from volseg.errors import InputError


def check_context(context) -> int:
    """``context`` as an int, or :class:`InputError` naming it unless odd and >= 1."""
    try:
        k = int(context)
    except (TypeError, ValueError):
        raise InputError(f"must be an odd number of slices (1, 3, 5, ...), not {context!r}",
                         param="context") from None
    if k != context or k < 1 or k % 2 == 0:
        raise InputError(f"must be an odd number of slices (1, 3, 5, ...), got {context}",
                         param="context")
    return k


def radius(context: int) -> int:
    """Slices read on each side of the centre: ``(K - 1) / 2`` (the z-halo)."""
    return (int(context) - 1) // 2


def context_slices(z: int, depth: int, context: int) -> np.ndarray:
    """The z indices of the K channels of slice ``z`` in a stack of ``depth`` slices.

    Parameters
    ----------
    z : int
        The centre slice.
    depth : int
        Slices in the stack (its z size).
    context : int
        K, odd.

    Returns
    -------
    ndarray of int, shape (K,)
        ``z - r .. z + r`` clamped to ``[0, depth - 1]`` (the end-of-stack rule).
    """
    r = radius(context)
    return np.clip(np.arange(z - r, z + r + 1), 0, int(depth) - 1)


def slab_span(z: int, depth: int, context: int) -> slice:
    """The contiguous z range holding every channel of slice ``z`` (one read)."""
    r = radius(context)
    return slice(max(0, z - r), min(int(depth), z + r + 1))


def channels_from_slab(slab: np.ndarray, z0: int, zs, depth: int,
                       context: int) -> np.ndarray:
    """The channel stacks of slices ``zs`` from a slab of slices read from ``z0``.

    Parameters
    ----------
    slab : array (n, H, W)
        Slices ``z0 .. z0 + n - 1`` of one time point; must hold every
        :func:`context_slices` of every ``z`` in ``zs``.
    z0 : int
        The z index of ``slab[0]``.
    zs : iterable of int
        The centre slices wanted.
    depth, context : int
        The stack's z size and K.

    Returns
    -------
    ndarray, shape (len(zs), H, W, K), the slab's dtype
    """
    idx = np.stack([context_slices(z, depth, context) for z in zs]) - int(z0)
    if idx.min() < 0 or idx.max() >= len(slab):
        raise ValueError(f"slab of {len(slab)} slices from z={z0} misses context slices "
                         f"{sorted(set((idx + z0).ravel().tolist()))}")
    return np.moveaxis(slab[idx], 1, -1)


def read_context(array, t: int, z: int, ys=slice(None), xs=slice(None), *,
                 context: int) -> np.ndarray:
    """Read the K channels of frame (t, z) from a (t, z, y, x) array in one read.

    Returns
    -------
    ndarray, shape (h, w, K), the array's dtype
    """
    depth = int(array.shape[1])
    span = slab_span(z, depth, context)
    slab = np.asarray(array[t, span, ys, xs])
    return channels_from_slab(slab, span.start, [z], depth, context)[0]
