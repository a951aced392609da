"""``volseg measure``: the structure per time point, in physical units.

A mask is a means; what biologists follow over time is the structure: how much of it
there is (``volume``), how long its centre lines are (``skeleton_length``), how it
branches (``branches``, ``branch_points``, ``end_points``), in how many pieces
(``components``), how thick (``mean_diameter``, ``median_diameter``) and how winding
(``tortuosity``). :func:`measure_volume` measures one (z, y, x) volume;
:func:`measure` runs it over every time point of a store, and beside it over a truth
store, with the relative error of each number.

How each number is made, and why:

* **Anisotropy.** Microscope stacks are sampled 2-5x more coarsely in z than in plane.
  Thinning works on the voxel grid, so at native sampling a tube along z would be
  eroded from its ends by as many *slices* as it is *pixels* wide: its centre line
  comes out shorter than the same tube along x by ``2 r (z_step / pixel - 1)``. The mask
  is therefore resampled in z to near-isotropic voxels first (``k = round(z_step /
  pixel)`` planes per slice, :func:`upsample_z`), by shape-based interpolation (the
  signed in-plane distance to the surface interpolated linearly between slices), so a
  tube that dives through the slices stays a smooth tube rather than a staircase that
  grows spurs. Lengths are then summed with the true spacing ``(z_step / k, y, x)``.
* **Skeleton and graph.** scikit-image's 3D ``skeletonize`` (Lee's thinning, keeps
  topology: a ring stays a ring) and skan's ``Skeleton`` with ``spacing``: the path
  graph of the skeleton, its branch lengths in physical units and the degree of every
  skeleton voxel. skan is maintained and handles nD images with spacing;
  kimimaro (TEASAR) is faster on huge label volumes but builds trees, so a ring
  of ducts would lose its loop.
* **Counting.** ``end_points``: skeleton voxels with one neighbour. ``branch_points``:
  junctions, counted as 26-connected clusters of voxels with three or more neighbours
  (a thick junction thins to a few adjacent junction voxels: one branch point).
  ``branches``: skeleton paths, leaving out the tiny paths inside a junction cluster.
  ``components``: 26-connected pieces of the mask.
* **Pruning.** Thinning a tube with a bumpy wall leaves spurs from the centre line to
  the bumps, about one radius long. Tip branches (junction to end point) shorter than
  ``prune`` are removed, repeatedly until none is left (removing one spur can make
  another junction disappear and merge two paths). Where every branch of a junction
  but one is a short tip (a forked end), the longest of those tips is kept, so pruning
  never shortens a tube. The default ``prune`` is :data:`PRUNE_DIAMETERS` times the
  median diameter of the unpruned centre line of that volume: scale-free, and a spur
  reaches from the axis to the wall (a radius) while a real side branch shorter than
  its parent is wide cannot be told from a bump. See docs/decisions.md for the
  measurement on synthetic data.
* **Diameter.** Twice the Euclidean distance to the nearest background voxel (the
  ``edt`` package: anisotropic, float32, no feature transform, so a fifth of scipy's
  memory) on the resampled mask, read at every centre-line voxel. It reaches the
  centre of the first background voxel, so a digital tube reads up to a pixel wide
  (+1.4 % at radius 6 pixels); a tube lying between the slices of a coarse stack
  reads thinner than it is (-15 % at a radius of two z steps): z sampling loses that.
* **Length.** The sum over skeleton paths of their polyline length after a running
  mean of :data:`SMOOTH_WINDOW` points: summing the digital steps would add up to 8 %
  for lines at 22.5 degrees (16 % on the synthetic network, 4 % after smoothing). A
  branch that leaves the field is extended to its edge (:func:`edge_extension`): the
  skeleton stops about a radius short of the flat cut there (3 to 8 % short for a tube
  crossing the field). A tube that ends flat *inside* the field is still about a radius
  short at that end (thinning cannot tell a flat end from a rounded one it shortened);
  rounded ends, the usual case, come out right.
* **Tortuosity.** The mean over branches (cycles left out) of path length /
  end-to-end distance; 1 for straight branches.

Memory and how larger volumes would be cut
------------------------------------------
A time point's z-stack is measured whole, in one task (a skeleton is not local). A task
needs about ``task_bytes(shape, spacing)`` = ``(MEMORY_BASE + MEMORY_PER_PLANE * k) *
z * y * x + MEMORY_PER_FRAME_PIXEL * y * x`` bytes (measured: 4 + 23 k per voxel on a
64 x 1024 x 1024 stack: the resampled mask, its float32 distance map and the thinning's
working copies; and up to 168 bytes per pixel of one frame, the in-plane distance
transforms of the z resampling and the skeleton graph, which dominate a flat stack: 2 x
3000 x 3000 peaked at 1.95 GiB where the per-voxel term alone said 0.54), and :func:`measure`
refuses a stack whose estimate exceeds ``max_bytes`` before any work starts. With
threads of one process, ``threads`` tasks run at once. Volumes beyond one
worker would be cut into overlapping slabs in y and x (a halo of a few diameters), each
skeletonised on its own, with the graph joined where slabs meet: lengths and diameters
add, and end points created by a cut are matched across it. That is not built; no
stack the microscope writes today needs it.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import edt
import numpy as np
from scipy import ndimage
from skimage.morphology import skeletonize as thin

from volseg.io import store as _store
from volseg.engine.blocks import BlockGrid, run_blocks, usable_cores
from volseg.errors import InputError
from volseg.ops.annotation import check_mask, check_mask_dtype, inside_roi
from volseg.engine.outputs import write_text_atomic

#: The measures of one volume, in the order of tables and CSV columns.
KEYS = ("volume", "skeleton_length", "branches", "branch_points", "end_points", "components",
        "mean_diameter", "median_diameter", "tortuosity")
#: Default tip-branch prune length, in median diameters of the volume's centre line.
PRUNE_DIAMETERS = 1.0
#: Bytes a task needs per voxel of the z-stack: ``MEMORY_BASE + MEMORY_PER_PLANE * k``
#: with ``k`` the planes per slice of the z resampling (measured, docs/decisions.md).
MEMORY_BASE = 8
MEMORY_PER_PLANE = 24
#: And bytes per pixel of one frame, whatever the depth (measured on flat stacks, 98 to
#: 168; docs/decisions.md): what a 2-slice stack of large frames needs beyond the above.
MEMORY_PER_FRAME_PIXEL = 176
#: Default memory a task may use: a typical worker's share of a cluster node.
DEFAULT_MAX_BYTES = 8 * 2**30
#: How far a structure reaches towards an empty slice in the z resampling: 1 / (1 + this)
#: of the way at its thickest. 2 makes a capsule along z as long as the same one along x
#: (half-way, 1, made it 6 % longer; see tests/test_measure.py).
END_DOME = 2.0
#: Points of the running mean that smooths the staircase of a digital centre line
#: before its length is summed (see :func:`path_length`).
SMOOTH_WINDOW = 5
_FULL = np.ones((3, 3, 3), bool)  # 26-connectivity


# --------------------------------------------------------------------------- spacing

def parse_spacing(text) -> tuple[float, float, float]:
    """``"3,1,1"`` (z, y, x) or a sequence of three numbers -> three positive floats."""
    if isinstance(text, str):
        parts = [p.strip() for p in text.split(",")]
    else:
        parts = list(text)
    try:
        values = tuple(float(p) for p in parts)
    except (TypeError, ValueError):
        raise InputError(f"expected three numbers Z,Y,X (e.g. 3,1,1), got {text!r}",
                         param="spacing") from None
    if len(values) != 3:
        raise InputError(f"expected three numbers Z,Y,X (e.g. 3,1,1), got {text!r}",
                         param="spacing")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise InputError(f"every voxel size must be a positive number, got {text!r}",
                         param="spacing")
    if not all(MIN_SIZE <= v <= MAX_SIZE for v in values):
        raise InputError(f"voxel sizes {text!r} are outside {MIN_SIZE:g}..{MAX_SIZE:g}; give "
                         "them in a unit that fits the data (e.g. micrometer)", param="spacing")
    if values[0] / min(values[1:]) > MAX_ANISOTROPY:
        raise InputError(f"the z step {values[0]:g} is more than {MAX_ANISOTROPY} times the "
                         f"pixel size {min(values[1:]):g} (give all three in one unit)",
                         param="spacing")
    return values


#: Voxel sizes outside this range (in any unit) are a mistake, not a microscope; volumes
#: and lengths from them overflow to inf.
MIN_SIZE, MAX_SIZE = 1e-9, 1e9
#: measure resamples each slice z step / pixel size times: beyond this it is a unit mix-up.
MAX_ANISOTROPY = 1000


def z_factor(spacing) -> int:
    """Planes per slice that make the z step near the in-plane pixel size (>= 1)."""
    sz, sy, sx = spacing
    return max(1, int(round(sz / min(sy, sx))))


def task_bytes(shape, spacing) -> int:
    """Estimated peak memory (bytes) of measuring one (z, y, x) stack of ``shape``."""
    z, y, x = (int(n) for n in shape)
    return int((MEMORY_BASE + MEMORY_PER_PLANE * z_factor(spacing)) * z * y * x
               + MEMORY_PER_FRAME_PIXEL * y * x)


# --------------------------------------------------------------------------- one volume

def _signed_distance(plane: np.ndarray, sampling) -> np.ndarray | None:
    """In-plane signed distance to the surface (positive inside), float32; None if empty."""
    if not plane.any():
        return None
    if plane.all():
        return np.full(plane.shape, np.float32(1e9))
    inside = ndimage.distance_transform_edt(plane, sampling=sampling)
    outside = ndimage.distance_transform_edt(~plane, sampling=sampling)
    half = 0.5 * min(sampling)  # the wall lies half a pixel beyond the last voxel centre
    return np.where(plane, inside - half, half - outside).astype(np.float32)


def _between(below, above, f: float) -> np.ndarray:
    """The mask at fraction ``f`` of the way from one slice's signed distance to the next.

    An empty slice gets the constant ``-END_DOME * max`` of its neighbour: the
    structure ends in a dome that reaches a third of the way to the empty slice at its
    thickest point (a tube's rounded end), not in a flat cut at the last slice.
    """
    if below is None:
        below = np.full_like(above, -END_DOME * above.max())
    if above is None:
        above = np.full_like(below, -END_DOME * below.max())
    return (1 - np.float32(f)) * below + np.float32(f) * above > 0


def upsample_z(mask: np.ndarray, k: int, sampling=(1.0, 1.0)) -> np.ndarray:
    """Resample a (z, y, x) mask to ``k`` planes per slice by shape-based interpolation.

    Plane ``j`` lies at slice ``j / k``; the original slices are planes ``0, k, 2k, ...``
    (``(z - 1) * k + 1`` planes). Between two slices the signed in-plane distance to
    the surface is interpolated linearly, so a tube that shifts from slice to slice is
    morphed, not stacked as a staircase.
    """
    mask = np.asarray(mask, bool)
    if k <= 1 or mask.shape[0] < 2:
        return mask
    depth = mask.shape[0]
    out = np.zeros(((depth - 1) * k + 1,) + mask.shape[1:], bool)
    below = _signed_distance(mask[0], sampling)
    for i in range(depth - 1):
        above = _signed_distance(mask[i + 1], sampling)
        out[i * k] = mask[i]
        if below is not None or above is not None:
            for j in range(1, k):
                out[i * k + j] = _between(below, above, j / k)
        below = above
    out[-1] = mask[-1]
    return out


def _neighbour_counts(skel: np.ndarray) -> np.ndarray:
    """Number of 26-neighbours of every skeleton voxel (0 off the skeleton), uint8."""
    counts = ndimage.convolve(skel.astype(np.uint8), _FULL.astype(np.uint8), mode="constant")
    return np.where(skel, counts - 1, 0).astype(np.uint8)


def _skeleton_graph(skel: np.ndarray, spacing):
    import skan

    return skan.Skeleton(skel, spacing=spacing, keep_images=False)


def path_length(points: np.ndarray, window: int = SMOOTH_WINDOW) -> float:
    """Length of a skeleton path (physical ``(n, 3)`` points) after smoothing its staircase.

    A digital line is a staircase of straight and diagonal steps: summing the steps
    overestimates a straight line at 22.5 degrees by 8 % (and a centre line that hops
    between planes by more). A running mean of ``window`` points, ends held fixed, follows
    the line instead; a path whose ends meet (a cycle) is smoothed around.
    """
    n = len(points)
    if n < 3 or window < 2:
        return float(np.linalg.norm(np.diff(points, axis=0), axis=1).sum())
    closed = np.array_equal(points[0], points[-1])
    smooth = ndimage.uniform_filter1d(points[:-1] if closed else points, min(window, n),
                                      axis=0, mode="wrap" if closed else "nearest")
    if closed:
        smooth = np.vstack([smooth, smooth[:1]])
    else:
        smooth[0], smooth[-1] = points[0], points[-1]
    return float(np.linalg.norm(np.diff(smooth, axis=0), axis=1).sum())


def _junction_clusters(graph, shape) -> tuple[np.ndarray, int]:
    """Label (per skeleton node) of the junction cluster it belongs to (0: none), count."""
    coords = np.round(graph.coordinates).astype(np.intp)
    junction = graph.degrees > 2
    image = np.zeros(shape, bool)
    image[tuple(coords[junction].T)] = True
    labels, n = ndimage.label(image, structure=_FULL)
    node_cluster = np.where(junction, labels[tuple(coords.T)], 0)
    return node_cluster, int(n)


def _prune_once(skel: np.ndarray, spacing, prune: float) -> bool:
    """Remove the tip branches shorter than ``prune`` from ``skel`` in place.

    At a junction where all branches but one are short tips, the longest tip stays.
    Returns whether anything was removed.
    """
    if not (_neighbour_counts(skel) > 0).any():
        return False  # isolated voxels only (specks): no branches, and skan cannot graph it
    graph = _skeleton_graph(skel, spacing)
    lengths = graph.path_lengths()
    degrees = graph.degrees
    tips = {}  # junction node -> [(length, path)] of short tips ending there
    n_branches = {}  # junction node -> number of paths touching it
    for p in range(graph.n_paths):
        nodes = graph.path(p)
        ends = (nodes[0], nodes[-1])
        for e in ends:
            if degrees[e] > 2:
                n_branches[e] = n_branches.get(e, 0) + 1
        a, b = (degrees[e] for e in ends)
        if lengths[p] < prune and min(a, b) == 1 and max(a, b) > 2:
            junction = ends[0] if a > 2 else ends[1]
            tips.setdefault(junction, []).append((lengths[p], p))
    removed = False
    coords = graph.coordinates
    for junction, short in tips.items():
        short.sort()
        if len(short) >= n_branches[junction] - 1:
            short = short[:-1]  # a forked end: keep its longest prong
        for _, p in short:
            nodes = graph.path(p)
            nodes = nodes[degrees[nodes] <= 2]  # junction voxels stay
            skel[tuple(np.round(coords[nodes]).astype(np.intp).T)] = False
            removed = True
    return removed


def _diameters(distance: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Twice the distance map at the skeleton points ``(n, 3)``."""
    return 2.0 * distance[tuple(points.T)].astype(np.float64)


@dataclass
class Centreline:
    """The pruned skeleton of a volume and what was counted on it (for figures)."""

    skeleton: np.ndarray  # bool, on the resampled grid
    junctions: np.ndarray  # (n, 3) voxel coordinates on that grid
    end_points: np.ndarray  # (n, 3)
    k: int  # planes per slice


def measure_volume(mask, spacing=(1.0, 1.0, 1.0), *, prune=None, surface=False,
                   keep_centreline=False) -> dict:
    """Measure the tubular structure of one (z, y, x) binary volume in physical units.

    Parameters
    ----------
    mask : ndarray, shape (z, y, x)
        Nonzero = structure.
    spacing : sequence of 3 floats
        Voxel size (z, y, x) in physical units.
    prune : float, optional
        Tip branches shorter than this (physical length) are removed. Default
        :data:`PRUNE_DIAMETERS` x the median diameter of the unpruned centre line; 0
        keeps every branch.
    surface : bool
        Also measure the surface area (marching cubes).
    keep_centreline : bool
        Also return the pruned skeleton and its junctions and end points
        (``centreline``, a :class:`Centreline`).

    Returns
    -------
    dict
        :data:`KEYS` (diameters and tortuosity None when there is no centre line),
        ``prune_length`` (the one used), ``surface`` when asked.
    """
    spacing = parse_spacing(spacing)
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"expected a (z, y, x) volume, got shape {mask.shape}", param="mask")
    mask = mask.astype(bool, copy=False)
    out = {"volume": float(mask.sum()) * float(np.prod(spacing))}
    if surface:
        out["surface"] = surface_area(mask, spacing)
    out["components"] = int(ndimage.label(mask, structure=_FULL)[1]) if mask.any() else 0
    k = z_factor(spacing)
    sk_spacing = (spacing[0] / k, spacing[1], spacing[2])
    up = upsample_z(mask, k, sampling=spacing[1:])
    del mask
    # Distance to the nearest background voxel on the near-isotropic grid (edt: float32,
    # no feature transform, so 4 bytes a voxel where scipy's needs 20).
    distance = edt.edt(up, anisotropy=sk_spacing, black_border=False, parallel=1)
    skel = thin(up).astype(bool)
    del up
    if prune is None:
        d0 = _diameters(distance, np.argwhere(skel))
        d0 = d0[np.isfinite(d0)]
        prune = PRUNE_DIAMETERS * float(np.median(d0)) if d0.size else 0.0
        del d0
    elif not (isinstance(prune, (int, float)) and math.isfinite(prune) and prune >= 0):
        raise InputError(f"must be a length >= 0, got {prune!r}", param="prune")
    out["prune_length"] = float(prune)
    if prune > 0 and skel.any():
        while _prune_once(skel, sk_spacing, prune):
            # Thin again: the junction voxels left behind by a removed tip may still
            # touch each other in a clump that would count as a junction.
            skel = thin(skel).astype(bool)

    out.update(_graph_measures(skel, sk_spacing, distance=distance))
    diam = _diameters(distance, np.argwhere(skel))
    diam = diam[np.isfinite(diam)]  # no background in the whole field: no wall, no diameter
    del distance
    out["mean_diameter"] = float(diam.mean()) if diam.size else None
    out["median_diameter"] = float(np.median(diam)) if diam.size else None
    if keep_centreline:
        out["centreline"] = _centreline(skel, sk_spacing, k)
    return out


def _graph_measures(skel: np.ndarray, spacing, *, distance=None) -> dict:
    """Length, branches, junctions, end points and tortuosity of a skeleton.

    With ``distance`` (to the nearest background voxel, physical units), a branch that
    ends within a tube radius of the field's edge, heading out of it, is extended to the
    edge (:func:`edge_extension`).
    """
    empty = {"skeleton_length": 0.0, "branches": 0, "branch_points": 0, "end_points": 0,
             "tortuosity": None}
    if not skel.any():
        return empty
    neighbours = _neighbour_counts(skel)
    end_points = int(np.count_nonzero(neighbours == 1))
    if not (neighbours > 0).any():  # isolated voxels only: dots, no lines
        return empty
    graph = _skeleton_graph(skel, spacing)
    cluster, n_junctions = _junction_clusters(graph, skel.shape)
    sp = np.asarray(spacing)
    branches, ratios, total = 0, [], 0.0
    for p in range(graph.n_paths):
        nodes = graph.path(p)
        points = graph.coordinates[nodes] * sp
        length = path_length(points)
        total += length
        for end in (0, -1) if distance is not None and len(nodes) > 1 else ():
            voxel = tuple(graph.coordinates[nodes[end]].astype(int))
            if neighbours[voxel] == 1:  # an end point, not a junction
                # the length only: tortuosity compares the skeleton with its own chord
                total += edge_extension(points, end, skel.shape, sp, distance[voxel])
        a, b = cluster[nodes[0]], cluster[nodes[-1]]
        if a and a == b and nodes[0] != nodes[-1] and len(nodes) <= 3:
            continue  # a step inside one junction cluster
        branches += 1
        chord = float(np.linalg.norm(points[-1] - points[0]))
        if chord > 0:  # a cycle has no end-to-end distance
            ratios.append(length / chord)
    return {"skeleton_length": total, "branches": branches,
            "branch_points": n_junctions, "end_points": end_points,
            "tortuosity": float(np.mean(ratios)) if ratios else None}


def edge_extension(points: np.ndarray, end: int, shape, spacing, radius: float) -> float:
    """How far a branch ending at ``points[end]`` runs on to the edge of the field.

    Thinning stops a centre line about a radius short of a flat end, and a tube that
    leaves the field ends flat there: its measured length came out 3-8 % short (a tube
    crossing the field). When the edge lies ahead of the end point (along the branch's
    last :data:`SMOOTH_WINDOW` points) within ``radius`` plus a voxel, the distance to it
    is added; a rounded end inside the field (a real tip) is left as it is.
    """
    inner = points[min(SMOOTH_WINDOW, len(points) - 1)] if end == 0 else \
        points[max(len(points) - 1 - SMOOTH_WINDOW, 0)]
    tip = points[end]
    direction = tip - inner
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return 0.0
    direction = direction / norm
    last = (np.asarray(shape) - 1) * np.asarray(spacing)
    ahead = np.inf
    for a in range(3):
        if direction[a] > 1e-6:
            ahead = min(ahead, (last[a] - tip[a]) / direction[a])
        elif direction[a] < -1e-6:
            ahead = min(ahead, tip[a] / -direction[a])
    return float(ahead) if ahead <= radius + max(spacing) else 0.0


def _centreline(skel, spacing, k) -> Centreline:
    neighbours = _neighbour_counts(skel)
    labels, n = ndimage.label(neighbours > 2, structure=_FULL)
    junctions = (np.array(ndimage.center_of_mass(labels > 0, labels, range(1, n + 1)))
                 if n else np.empty((0, 3)))
    return Centreline(skel, junctions.reshape(-1, 3), np.argwhere(neighbours == 1), k)


def surface_area(mask: np.ndarray, spacing) -> float:
    """Area of the mask's surface (marching cubes at 0.5, physical units)."""
    from skimage import measure as skm

    if not mask.any():
        return 0.0
    padded = np.pad(mask, 1).astype(np.float32)
    verts, faces, _, _ = skm.marching_cubes(padded, 0.5, spacing=tuple(spacing))
    return float(skm.mesh_surface_area(verts, faces))


def relative_error(value, truth):
    """``(value - truth) / truth``; None when either is missing or the truth is 0."""
    if value is None or truth is None or truth == 0:
        return None
    return (float(value) - float(truth)) / float(truth)


def compare_volumes(mask, truth, spacing=(1.0, 1.0, 1.0), *, prune=None) -> dict:
    """Measure a mask and its truth (both (z, y, x)) and the relative error of each measure.

    Returns ``{"mask": {...}, "truth": {...}, "relative_error": {key: ...}}`` with the
    keys of :func:`measure_volume` (:data:`KEYS`).
    """
    a = measure_volume(mask, spacing, prune=prune)
    b = measure_volume(truth, spacing, prune=prune)
    return {"mask": a, "truth": b,
            "relative_error": {key: relative_error(a[key], b[key]) for key in KEYS}}


# --------------------------------------------------------------------------- stores

def open_binary(path, *, what: str = "mask store", channel=None, series=None) -> _store.ImageStore:
    """A prediction store's mask (``PRED`` or ``PRED/mask``), or any image store of 0/1
    (``channel`` and ``series`` as :func:`volseg.io.store.open_image` takes them)."""
    from volseg.io.location import locate

    path = locate(path)
    if _store.is_prediction(path):
        return _store.open_prediction(path).mask
    return _store.open_image(path, what=what, channel=channel, series=series)


def _physical(image) -> tuple[tuple | None, str | None]:
    """(z, y, x) pixel size and length unit recorded in a store (None, None if none)."""
    from volseg.stages.export import physical_size

    scale, units = physical_size(image)
    spacing = tuple(float(scale.get(a, 1.0)) for a in "zyx")
    unit_set = {units.get(a) for a in "zyx"} - {None}
    if len(unit_set) > 1:
        raise InputError(f"{image.path}: axes z, y, x have different units {sorted(unit_set)}; "
                         "give the voxel size in one unit", param="spacing")
    unit = unit_set.pop() if unit_set else None
    if unit is None and spacing == (1.0, 1.0, 1.0):
        return None, None
    return spacing, unit


def resolve_spacing(spacing, images) -> tuple[tuple, str | None, str]:
    """The voxel size to measure with, its unit, and where it came from.

    ``spacing`` (Z,Y,X text or numbers) wins; else the scale the stores record (they
    must agree: a mask and truth of different voxel sizes are refused, not settled by
    their order); else 1 x 1 x 1 voxel.
    """
    recorded = [(image, *_physical(image)) for image in images if image is not None]
    unit = next((u for _, _, u in recorded if u), None)
    if spacing is not None:
        return parse_spacing(spacing), unit, "--spacing"
    recorded = [(image, sp, u) for image, sp, u in recorded if sp is not None]
    for image, sp, u in recorded:
        if not all(math.isfinite(v) and v > 0 for v in sp):
            raise InputError(f"{image.path}: records the voxel size {_size(sp, u)}, which is "
                             "not positive; give the real one with --spacing Z,Y,X")
    if recorded:
        first, sp0, u0 = recorded[0]
        for other, sp, u in recorded[1:]:
            if u != u0 or not np.allclose(sp, sp0, rtol=1e-6):
                raise InputError(f"{other.path}: records the voxel size {_size(sp, u)}, "
                                 f"{first.path} {_size(sp0, u0)}; give the right one with "
                                 "--spacing Z,Y,X")
        return parse_spacing(sp0), u0, f"scale of {first.path}"
    return (1.0, 1.0, 1.0), None, ("none recorded in the stores: 1 x 1 x 1 voxel (z counted "
                                   "as one pixel; give the real voxel size)")


def _size(spacing, unit) -> str:
    return " x ".join(f"{v:g}" for v in spacing) + (f" {unit}" if unit else "")


@dataclass(frozen=True)
class _Job:
    """What a task needs: array handles (they pickle as store + metadata) and parameters."""

    mask: object
    truth: object | None
    roi: object | None
    spacing: tuple
    prune: float | None
    surface: bool
    picture_t: int | None
    truth_timepoints: frozenset | None = None  # compared time points (None: every one)


_MASK_HINT = ("measure needs a 0/1 mask (a prediction store or a store made with "
              "`volseg convert --mask`)")


def read_binary(array, t: int) -> np.ndarray:
    """Time point ``t`` of a 0/1 array as a bool (z, y, x) volume (checked read)."""
    volume = np.asarray(array[t])
    check_mask(volume, name=f"{array.label} at t={t}", hint=_MASK_HINT)
    return volume.astype(bool, copy=False)


def _picture(volume: np.ndarray, centreline: Centreline) -> dict:
    """Maximum projections of a volume and its centre line, with junctions and end points."""
    return {"mask": volume.any(axis=0), "skeleton": centreline.skeleton.any(axis=0),
            "junctions": centreline.junctions[:, 1:], "end_points": centreline.end_points[:, 1:]}


def measure_timepoint(i: int, *, job: _Job, grid: BlockGrid) -> dict:
    """Process function: measure time point ``i`` (its z-stack read whole) of mask and truth."""
    t = grid.region(i)[0].start
    start = time.perf_counter()
    roi = None
    if job.roi is not None:  # nonzero is inside, as for evaluate and predict; an ROI of
        # one time point or slice applies to all of them
        ti, zi = _store.roi_index(job.roi.shape, t, slice(None))
        roi = inside_roi(job.roi[ti, zi])
    row: dict = {"t": int(t)}
    truth = job.truth if job.truth_timepoints is None or t in job.truth_timepoints else None
    for name, array in (("mask", job.mask), ("truth", truth)):
        if array is None:
            continue
        volume = read_binary(array, t)
        if roi is not None:
            volume = volume & roi
        picture = name == "mask" and t == job.picture_t
        values = measure_volume(volume, job.spacing, prune=job.prune, surface=job.surface,
                                keep_centreline=picture)
        if picture:
            row["picture"] = _picture(volume, values.pop("centreline"))
        del volume
        if name == "mask":
            row.update(values)
        else:
            row["truth"] = values
    if "truth" in row:
        row["relative_error"] = {key: relative_error(row[key], row["truth"][key])
                                 for key in _keys(job.surface)}
    row["seconds"] = time.perf_counter() - start
    return row


def _keys(surface: bool) -> tuple:
    return KEYS + (("surface",) if surface else ())


def _check_same_shape(shape, image, path, what) -> None:
    if image is not None and tuple(image.shape) != tuple(shape):
        raise InputError(f"{path}: {what} shape {tuple(image.shape)} differs from the mask's "
                         f"{tuple(shape)}; (t, z, y, x) must match")


def prepare(mask_path, *, truth_path=None, roi_path=None, spacing=None, prune=None,
            surface=False, max_bytes=DEFAULT_MAX_BYTES, picture_t=None, channel=None,
            series=None) -> tuple[_Job, dict]:
    """Open and check the stores and parameters (cheap: call before starting a cluster).

    Raises :class:`InputError` for missing or incomplete stores, shapes that differ, a
    non-integer store, a bad spacing or prune length, or a z-stack whose estimated
    memory (:func:`task_bytes`) exceeds ``max_bytes``. (Values other than 0/1 are found
    while measuring.)
    """
    if prune is not None:
        try:
            prune = float(prune)
        except (TypeError, ValueError):
            raise InputError(f"must be a length >= 0, got {prune!r}", param="prune") from None
        if not (math.isfinite(prune) and prune >= 0):
            raise InputError(f"must be a length >= 0, got {prune!r}", param="prune")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, (int, np.integer)) \
            or max_bytes < 1:
        raise InputError(f"must be a positive number of bytes, got {max_bytes!r}",
                         param="max_bytes")
    select = {"channel": channel, "series": series}
    mask = open_binary(mask_path, **select)
    truth = None if truth_path is None else open_binary(truth_path, what="truth store", **select)
    roi = None if roi_path is None else open_binary(roi_path, what="ROI store", **select)
    shape = tuple(mask.shape)
    _check_same_shape(shape, truth, truth_path, "truth")
    if roi is not None:
        _store.check_roi_fits(roi.shape, shape, name=str(roi_path), against="the mask's")
    for image, path in ((mask, mask_path), (truth, truth_path), (roi, roi_path)):
        if image is not None:
            check_mask_dtype(image.dtype, name=str(path), hint=_MASK_HINT)
    from volseg.io.truth import not_annotated

    if isinstance(mask, _store.ImageStore) and not_annotated(mask) is not None:
        raise InputError(f"{mask_path} is a partly annotated truth ({not_annotated(mask)} = "
                         "not annotated): measure needs a mask of every voxel; measure a "
                         "prediction, with this store as --truth")
    sp, unit, source = resolve_spacing(spacing, (mask, truth, roi))
    need = task_bytes(shape[1:], sp)
    if need > max_bytes:
        raise InputError(
            f"one time point ({shape[1]} x {shape[2]} x {shape[3]} voxels) needs about "
            f"{need / 2**30:.1f} GiB to measure, more than the {max_bytes / 2**30:.1f} GiB "
            "allowed per task; raise the limit on a larger worker, or crop the stack",
            param="max_bytes")
    if picture_t is None:
        picture_t = shape[0] // 2
    elif not (isinstance(picture_t, (int, np.integer)) and 0 <= picture_t < shape[0]):
        raise InputError(f"{picture_t} is not a time point of {mask_path} (0..{shape[0] - 1})",
                         param="picture_t")
    compared = _fully_annotated(truth, truth_path)
    job = _Job(mask=mask.array, truth=None if truth is None else truth.array,
               roi=None if roi is None else roi.array, spacing=sp, prune=prune,
               surface=surface, picture_t=picture_t, truth_timepoints=compared)
    info = {"mask": str(mask_path), "truth": None if truth_path is None else str(truth_path),
            "roi": None if roi_path is None else str(roi_path), "shape": list(shape),
            "spacing": dict(zip("zyx", sp)), "units": unit, "spacing_source": source,
            "prune": prune, "prune_rule": (f"tip branches shorter than {prune:g}" if prune
                                           is not None else
                                           f"tip branches shorter than {PRUNE_DIAMETERS:g} x "
                                           "the median diameter of each volume"),
            "task_bytes": need, "picture_t": picture_t}
    if compared is not None:
        left = sorted(set(range(shape[0])) - compared)
        info["truth_timepoints"] = sorted(compared)
        info["note"] = (f"{truth_path} is partly annotated: compared at the {len(compared)} "
                        f"fully annotated time point(s) only; not compared: "
                        f"{_ranges(left)}")
    return job, info


def _ranges(values) -> str:
    from volseg.ops.indices import format_ranges

    return format_ranges(values) if values else "none"


def _fully_annotated(truth, truth_path) -> frozenset | None:
    """The time points of a partly annotated truth whose every voxel is annotated (a
    structure is measured whole, so a time point with any gap is not compared); None
    for a truth without not-annotated voxels."""
    from volseg.io.truth import annotation_counts, not_annotated

    if truth is None or not_annotated(truth) is None:
        return None
    counts = annotation_counts(truth)
    full = frozenset(int(t) for t in np.flatnonzero((counts == truth.shape[2] * truth.shape[3])
                                                    .all(axis=1)))
    if not full:
        raise InputError(f"{truth_path}: no time point is fully annotated; measure compares "
                         "whole z-stacks (annotate every slice of a time point, or measure "
                         "without --truth)", param="truth_path")
    return full


def summarize(rows: list[dict], keys=KEYS) -> dict:
    """Mean over time points of each measure (None values left out), with the truth's and
    the relative errors of the means when the rows carry a truth."""
    def mean(values):
        values = [v for v in values if v is not None]
        return float(np.mean(values)) if values else None

    out = {key: mean(r.get(key) for r in rows) for key in keys}
    compared = [r for r in rows if "truth" in r]
    if compared:
        out["truth"] = {key: mean(r["truth"].get(key) for r in compared) for key in keys}
        # the mask's means over the same time points the truth has
        same = {key: mean(r.get(key) for r in compared) for key in keys}
        out["relative_error"] = {key: relative_error(same[key], out["truth"][key])
                                 for key in keys}
    return out


def measure(mask_path, *, truth_path=None, roi_path=None, spacing=None, prune=None,
            surface=False, max_bytes=DEFAULT_MAX_BYTES, picture_t=None, channel=None,
            series=None, client=None, threads=None, progress=None) -> dict:
    """Measure the structure of every time point of a 0/1 store (and of a truth store).

    One task per time point (:func:`measure_timepoint` on ``BlockGrid(shape, (1, Z, Y,
    X))``): its z-stack is read whole through the checked array (missing or damaged
    chunks are refused), measured by :func:`measure_volume`, and a small dict comes back.

    Parameters
    ----------
    mask_path : path
        A prediction store (its mask is measured) or any 0/1 image store (a truth store).
    truth_path : path, optional
        A 0/1 store of the same shape, measured alike; each row then carries ``truth``
        and ``relative_error`` (``(mask - truth) / truth``, None where the truth is 0).
    roi_path : path, optional
        A mask store (nonzero inside) of the same shape, or of one time point and/or
        slice for all: only structure inside it is measured.
    spacing : str or sequence of 3 floats, optional
        Voxel size (z, y, x). Default: the stores' NGFF scale, else 1 x 1 x 1.
    prune : float, optional
        Tip branches shorter than this (physical length) are removed; default
        :data:`PRUNE_DIAMETERS` x each volume's median diameter.
    surface : bool
        Also measure the surface area.
    max_bytes : int
        Memory one task may use; a z-stack whose :func:`task_bytes` is larger is refused.
    picture_t : int, optional
        The time point whose skeleton projection is kept (``picture``; default the
        middle one).
    channel, series : int, optional
        The channel and bioformats2raw series of stores made by other tools.
    client : distributed.Client, optional
        Run on this Dask cluster; None: ``threads`` threads of this process.
    threads : int, optional
        Local threads (default every core). Memory: ``threads * task_bytes``.
    progress : callable, optional
        ``progress(done, total)`` in time points.

    Returns
    -------
    dict
        ``per_timepoint`` (rows with ``t`` and :data:`KEYS`, ``prune_length``,
        ``seconds``, and ``truth``, ``relative_error`` with a truth), ``summary``
        (:func:`summarize`), ``spacing``, ``units``, what was measured, ``picture``
        (projections of one time point, for :func:`plot_skeleton`), ``seconds``.
    """
    job, info = prepare(mask_path, truth_path=truth_path, roi_path=roi_path, spacing=spacing,
                        prune=prune, surface=surface, max_bytes=max_bytes, picture_t=picture_t,
                        channel=channel, series=series)
    shape = tuple(info["shape"])
    grid = BlockGrid(shape, (1,) + shape[1:])
    rows: dict[int, dict] = {}
    start = time.perf_counter()
    run_blocks(functools.partial(measure_timepoint, job=job, grid=grid), range(len(grid)),
               client=client, progress=progress, grid=grid,
               threads=threads or (usable_cores() if client is None else None),
               on_result=lambda _, row: rows.__setitem__(row["t"], row))
    seconds = time.perf_counter() - start
    per_t = [rows[t] for t in sorted(rows)]
    picture = next((r.pop("picture") for r in per_t if "picture" in r), None)
    report = dict(info)
    report["per_timepoint"] = per_t
    report["summary"] = summarize(per_t, _keys(surface))
    report["seconds"] = seconds
    report["seconds_per_timepoint"] = seconds / len(per_t) if per_t else None
    report["picture"] = picture
    return report


# --------------------------------------------------------------------------- reports

def csv_rows(report: dict) -> tuple[list[str], list[list]]:
    """Header and one row per time point: the measures, then ``truth_*`` and ``error_*``."""
    rows = report.get("per_timepoint") or []
    if not rows:
        return ["t"], []
    keys = [k for k in (*KEYS, "surface", "prune_length") if k in rows[0]]
    header = ["t", *keys]
    with_truth = next((r for r in rows if "truth" in r), None)
    errors = [] if with_truth is None else [k for k in keys if k in with_truth["relative_error"]]
    if with_truth is not None:
        header += [f"truth_{k}" for k in keys] + [f"error_{k}" for k in errors]
    out = []
    for r in rows:
        line = [r["t"], *(r.get(k) for k in keys)]
        if with_truth is not None:  # a time point not compared leaves its truth cells empty
            line += [(r.get("truth") or {}).get(k) for k in keys]
            line += [(r.get("relative_error") or {}).get(k) for k in errors]
        out.append(line)
    return header, out


def write_json(report: dict, path) -> None:
    """The report (without the picture arrays) as JSON, written whole or not at all."""
    import json

    data = {k: v for k, v in report.items() if k != "picture"}
    write_text_atomic(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_csv(report: dict, path) -> None:
    """One row per time point as CSV (:func:`csv_rows`), written whole or not at all."""
    from volseg.stages.evaluate import write_csv as write_rows

    header, rows = csv_rows(report)
    write_rows({"per_timepoint": [dict(zip(header, row)) for row in rows]}, path)


#: The files :func:`measure_figures` writes.
MEASURE_FIGURES = ("measures.png", "skeleton.png")


def plot_measures(report: dict, path):
    """Each measure over time: the mask's and (dashed) the truth's on one axis."""
    from volseg.viz.figures import pyplot, save_figure

    plt = pyplot()
    rows = report["per_timepoint"]
    t = np.array([r["t"] for r in rows])
    unit = report.get("units") or "voxel"
    labels = {"volume": f"volume ({unit}³)", "skeleton_length": f"skeleton length ({unit})",
              "mean_diameter": f"mean diameter ({unit})",
              "median_diameter": f"median diameter ({unit})"}
    fig, axes = plt.subplots(3, 3, figsize=(12, 9), dpi=100, sharex=True)
    for ax, key in zip(axes.ravel(), KEYS):
        def series(get):
            return np.array([np.nan if get(r) is None else get(r) for r in rows], float)

        ax.plot(t, series(lambda r: r[key]), marker=".", label="mask")
        if any("truth" in r for r in rows):
            ax.plot(t, series(lambda r: (r.get("truth") or {}).get(key)), marker=".", ls="--",
                    label="truth")
        ax.set_title(labels.get(key, key.replace("_", " ")), fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("time point")
    axes[0, 0].legend(fontsize=8)
    fig.suptitle(f"Structure per time point: {report['mask']}", fontsize=11)
    return save_figure(fig, plt, path)


def plot_skeleton(picture: dict, path, *, title: str = ""):
    """Maximum projection of the mask and its centre line, junctions and end points marked."""
    from volseg.viz.figures import pyplot, save_figure

    plt = pyplot()
    mask, skel = picture["mask"], picture["skeleton"]
    h, w = mask.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 10 * w / max(h, w)), max(3.0, 10 * h / max(h, w))),
                           dpi=100)
    rgb = np.zeros((h, w, 3), np.float32)
    rgb[mask] = 0.35
    rgb[skel] = (1.0, 0.2, 0.2)
    ax.imshow(rgb, interpolation="nearest")
    j, e = np.asarray(picture["junctions"]), np.asarray(picture["end_points"])
    if len(j):
        ax.plot(j[:, 1], j[:, 0], "o", mfc="none", mec="deepskyblue", ms=7,
                label=f"branch points ({len(j)})")
    if len(e):
        ax.plot(e[:, 1], e[:, 0], "o", mfc="none", mec="gold", ms=5,
                label=f"end points ({len(e)})")
    ax.set_axis_off()
    if len(j) or len(e):
        ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title or "centre line (maximum projection over z)", fontsize=10)
    return save_figure(fig, plt, path)


def measure_figures(report: dict, folder) -> list:
    """measures.png and skeleton.png (the picture's time point) into ``folder``."""
    from pathlib import Path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = [plot_measures(report, folder / "measures.png")]
    if report.get("picture") is not None:
        out.append(plot_skeleton(report["picture"], folder / "skeleton.png",
                                 title=f"{report['mask']}: centre line at "
                                       f"t={report['picture_t']} (maximum projection over z)"))
    return out
