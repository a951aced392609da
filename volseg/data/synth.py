"""Synthetic stand-in for the microscope data: ducts in mouse pancreas over time.

The generator builds a branching network of tubes in 3D (one network per seed), lets it
grow and drift slowly over time, and renders each time point as a (z, y, x) uint8 stack
the way a fluorescence microscope would see it: an anisotropic point-spread function
(blurrier in z), uneven illumination that fades with depth and bleaches over time,
background texture, out-of-focus haze, Poisson photon noise and Gaussian read noise.
Bright round blobs of about the tubes' brightness are scattered through the volume and
are *not* labelled, as annotators remove such round noise objects from the real data;
together with faint thin tubes and the uneven illumination they make a global intensity
threshold a poor segmentation (see :func:`threshold_baseline`), while the tubular shape
stays easy to see.

Everything is deterministic by ``seed``; each time point is generated on its own
(:func:`synthesize_timepoint`), so memory is bounded by one time point whatever the
number of time points.
"""

from __future__ import annotations

import functools
import json
import math
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from volseg.errors import InputError
from volseg.ops.thresholds import best_level, class_histograms
from volseg.io.tiff import frame_file_name

__all__ = [
    "synthesize",
    "synthesize_timepoint",
    "write_synth",
    "threshold_baseline",
    "threshold_histograms",
    "best_intensity",
    "frame_name",
]

# Physical z step in units of the x/y pixel size: confocal stacks are sampled much more
# coarsely in depth than in plane, so a tube of radius r spans about 2r/Z_STEP slices.
Z_STEP = 3.0
# Point-spread function, as Gaussian sigmas in (slices, pixels, pixels): blurrier in z.
PSF_SIGMA = (0.6, 1.3, 1.3)
# Centreline sampling step (pixels) and tube radius range (pixels).
STEP = 2.5
R_MIN, R_MAX = 2.0, 8.0
# Aimed-at labelled fraction of the volume; sets how much tube length is generated.
FG_TARGET = 0.032

# Tags that keep the random streams of the different parts independent.
_NETWORK, _TISSUE, _FRAME = 0, 1, 2


#: File names of the frames (``tTTT_zZZZ.tif``): the naming ``volseg convert`` reads.
frame_name = frame_file_name


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise InputError(f"{name}: must be a positive integer, got {value!r}")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise InputError(f"seed: must be a non-negative integer, got {seed!r}")


# --------------------------------------------------------------------------- network

def _fold(v: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Reflect values into [lo, hi] (a tube that reaches a bound turns back)."""
    if hi <= lo:
        return np.full_like(v, lo)
    period = 2.0 * (hi - lo)
    u = np.mod(v - lo, period)
    return lo + np.where(u > hi - lo, period - u, u)


def _smooth_noise(rng, n: int, sigma: float) -> np.ndarray:
    """Smooth random signal of unit standard deviation along a centreline."""
    raw = rng.standard_normal(n + 8 * int(sigma) + 1)
    sm = ndimage.gaussian_filter1d(raw, sigma, mode="wrap")[: n]
    sd = sm.std()
    return sm / sd if sd > 0 else sm


def _walk(rng, start, theta0, slope0, length, *, height, width, zlo, zhi):
    """Centreline of one branch: a persistent random walk in 3D, (n, 3) points in (z, y, x)."""
    n = max(int(length / STEP), 2)
    # Smooth curvature: ducts bend gently and wiggle a little.
    dtheta = 0.022 * _smooth_noise(rng, n, 5.0) + rng.normal(0, 0.004)
    theta = theta0 + np.cumsum(dtheta)
    # Slope in z drifts slowly, so tubes dive through the depth slices.
    slope = np.clip(slope0 + np.cumsum(rng.normal(0, 0.008, n)), -0.18, 0.18)
    dz = STEP * slope
    pts = np.empty((n + 1, 3))
    pts[0] = start
    pts[1:, 0] = start[0] + np.cumsum(dz)
    pts[1:, 1] = start[1] + np.cumsum(STEP * np.sin(theta))
    pts[1:, 2] = start[2] + np.cumsum(STEP * np.cos(theta))
    pts[:, 0] = _fold(pts[:, 0], zlo, zhi)
    margin = 12.0
    inside = ((pts[:, 1] > -margin) & (pts[:, 1] < height + margin)
              & (pts[:, 2] > -margin) & (pts[:, 2] < width + margin))
    out = np.flatnonzero(~inside)
    if out.size:
        pts = pts[: max(out[0], 2)]
    return pts


@functools.lru_cache(maxsize=4)
def _network(depth: int, height: int, width: int, seed: int) -> tuple:
    """The branching tube network of a seed, independent of time.

    Over 100 lines: one random process (trunks, branches, their radii and motion over
    time) whose steps share a dozen values; split, they would only pass them around.

    One long function on purpose: the branches are grown from one random stream in a
    fixed order, so the network of a seed stays the same; split into pieces, that
    order (and a dozen shared values) would have to be threaded through them.

    Returns a tuple of branches; each is a dict with ``points`` (n, 3) in physical
    (z, y, x) pixel units, ``radius`` (n,), ``arc`` (n,) arc length, ``brightness``,
    ``l0`` and ``speed`` (visible length at phase 0 and its growth over the series, so
    the visible length at phase ``s`` (0..1) is ``clip(l0 + speed * s, 0, arc[-1])``),
    and ``phase`` (for the slow radius change).  Arrays are read-only: the result is
    cached.
    """
    rng = np.random.default_rng([seed, _NETWORK])
    zext = (depth - 1) * Z_STEP
    # Tubes may run a little above and below the stack and fade out of it.
    zlo, zhi = -3.0, zext + 3.0
    zspan = max(zext, 2 * R_MAX)
    target = FG_TARGET * height * width * zspan / (math.pi * 4.5 ** 2)
    scale = math.sqrt(height * width)  # lengths scale with the frame

    branches = []
    total = 0.0
    queue = []
    n_roots = 0
    while total < target and n_roots < 200:
        n_roots += 1
        # A root (trunk) enters from a random edge ...
        edge = rng.integers(4)
        if edge == 0:
            y, x = 0.0, rng.uniform(0.05, 0.95) * width
        elif edge == 1:
            y, x = float(height), rng.uniform(0.05, 0.95) * width
        elif edge == 2:
            y, x = rng.uniform(0.05, 0.95) * height, 0.0
        else:
            y, x = rng.uniform(0.05, 0.95) * height, float(width)
        # ... towards a point in the middle of the frame, so it crosses the field of view.
        ty, tx = rng.uniform(0.2, 0.8) * height, rng.uniform(0.2, 0.8) * width
        th = math.atan2(ty - y, tx - x)
        z = rng.uniform(0.2, 0.8) * zext
        # Trunks exist from the start (80-95 % grown) and their tips keep growing slowly.
        queue.append(dict(start=np.array([z, y, x]), theta=th, slope=rng.uniform(-0.08, 0.08),
                          r0=rng.uniform(5.0, R_MAX), brightness=rng.uniform(0.75, 1.0),
                          length=rng.uniform(0.7, 1.4) * scale, gen=0, birth=None,
                          f0=rng.uniform(0.8, 0.95), fspeed=rng.uniform(0.05, 0.2)))
        while queue and total < target * 1.15:
            b = queue.pop(0)
            pts = _walk(rng, b["start"], b["theta"], b["slope"], b["length"],
                        height=height, width=width, zlo=zlo, zhi=zhi)
            seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
            arc = np.concatenate([[0.0], np.cumsum(seg)])
            length = arc[-1]
            if b["birth"] is None:  # there at the start
                l0, speed = b["f0"] * length, b["fspeed"] * length
            else:  # appears at phase `birth` and grows to full length within the series
                speed = b["fspeed"] * length
                l0 = -speed * b["birth"]
            # Radius tapers along the branch and varies smoothly (+-15 %).
            taper = 1.0 - rng.uniform(0.1, 0.35) * arc / max(length, 1.0)
            radius = b["r0"] * taper * (1.0 + 0.15 * _smooth_noise(rng, len(pts), 6.0))
            radius = np.clip(radius, R_MIN, R_MAX)
            branch = dict(points=pts, radius=radius, arc=arc, brightness=b["brightness"],
                          l0=l0, speed=speed, phase=rng.uniform(0, 2 * math.pi))
            for v in branch.values():
                if isinstance(v, np.ndarray):
                    v.flags.writeable = False
            branches.append(branch)
            # Count what is visible mid-series and runs through the stack.
            mid = np.clip(l0 + 0.5 * speed, 0, length)
            in_stack = (pts[1:, 0] > -2.0) & (pts[1:, 0] < zext + 2.0) & (arc[1:] <= mid)
            total += float(seg[in_stack].sum())
            if b["gen"] >= 3 or length < 30:
                continue
            # Side branches, thinner and (often) fainter; some appear during the series.
            n_children = rng.poisson(length / 80.0)
            for _ in range(n_children):
                late = rng.random() < 0.3
                # Early side branches leave what exists at the start, late ones what
                # exists by the end of the series.
                avail = np.clip(l0 + (0.9 * speed if late else 0.0), 0, length)
                if avail < 20:
                    continue
                i = int(np.searchsorted(arc, rng.uniform(0.1, 0.95) * avail))
                i = min(max(i, 1), len(pts) - 2)
                side = rng.choice([-1.0, 1.0])
                d = pts[i + 1] - pts[i - 1]
                th = math.atan2(d[1], d[2]) + side * rng.uniform(0.6, 1.3)
                r0 = float(np.clip(radius[i] * rng.uniform(0.45, 0.85), R_MIN, R_MAX - 1))
                bright = float(np.clip(b["brightness"] * rng.uniform(0.45, 0.95)
                                       * (0.7 + 0.3 * r0 / R_MAX), 0.3, 1.0))
                child = dict(start=pts[i].copy(), theta=th, slope=rng.uniform(-0.12, 0.12),
                             r0=r0, brightness=bright, length=length * rng.uniform(0.3, 0.7),
                             gen=b["gen"] + 1)
                if late:
                    # Not before the parent's tip has passed the branching point.
                    reach = max((arc[i] - l0) / speed, 0.0) if speed > 0 else 0.0
                    if reach > 0.8:
                        continue
                    child.update(birth=rng.uniform(max(reach, 0.0), 0.85),
                                 fspeed=rng.uniform(1.2, 3.0))
                else:
                    child.update(birth=None, f0=rng.uniform(0.75, 1.0),
                                 fspeed=rng.uniform(0.0, 0.25))
                queue.append(child)
        queue.clear()
    return tuple(branches)


def _segments(branches, phase: float, height: int, width: int, seed: int):
    """Capsule segments of the network at a phase (0..1): what has grown, drifted, swelled."""
    rng = np.random.default_rng([seed, _NETWORK, 1])
    # A slow smooth drift of the whole tissue: a few pixels over the series.
    k = rng.uniform(0.5, 1.5, size=(2, 2)) * 2 * math.pi / np.array([height, width])
    ph = rng.uniform(0, 2 * math.pi, size=(2,))
    amp = rng.uniform(2.0, 5.0, size=(2,))
    p0s, p1s, r0s, r1s, bs = [], [], [], [], []
    for b in branches:
        arc = b["arc"]
        vis = min(b["l0"] + b["speed"] * phase, arc[-1])
        if vis <= 0:
            continue
        n = int(np.searchsorted(arc, vis, side="right"))
        if n < 1:
            continue
        pts = b["points"][:n].copy()
        rad = b["radius"][:n].copy()
        if n < len(arc) and vis > arc[n - 1]:  # interpolated growing tip
            w = (vis - arc[n - 1]) / (arc[n] - arc[n - 1])
            pts = np.vstack([pts, (1 - w) * b["points"][n - 1] + w * b["points"][n]])
            rad = np.append(rad, (1 - w) * b["radius"][n - 1] + w * b["radius"][n])
        if len(pts) < 2:
            continue
        if vis < arc[-1]:
            # A growing tip is a narrower bud.
            dist_tip = vis - np.append(arc[: len(pts) - 1], vis)
            rad = rad * np.clip(0.55 + dist_tip / 20.0, 0.55, 1.0)
        # Radii swell or shrink a little over time (+-8 %).
        rad = np.clip(rad * (1.0 + 0.08 * math.sin(2 * math.pi * phase * 0.7 + b["phase"])),
                      R_MIN * 0.9, R_MAX)
        y, x = pts[:, 1], pts[:, 2]
        pts[:, 1] += phase * amp[0] * np.sin(k[0, 0] * y + k[0, 1] * x + ph[0])
        pts[:, 2] += phase * amp[1] * np.sin(k[1, 0] * y + k[1, 1] * x + ph[1])
        p0s.append(pts[:-1]), p1s.append(pts[1:])
        r0s.append(rad[:-1]), r1s.append(rad[1:])
        bs.append(np.full(len(pts) - 1, b["brightness"]))
    if not p0s:
        e = np.empty((0, 3))
        return e, e, np.empty(0), np.empty(0), np.empty(0)
    return (np.concatenate(p0s), np.concatenate(p1s), np.concatenate(r0s),
            np.concatenate(r1s), np.concatenate(bs))


def centreline_length(t: int, *, timepoints: int = 4, depth: int = 8, height: int = 523,
                      width: int = 821, seed: int = 0) -> float:
    """Length (pixels) of the generator's centre lines inside the stack at time point ``t``.

    The same capsule segments :func:`synthesize_timepoint` renders, each counted when its
    midpoint lies inside the imaged box (half a voxel beyond the outer voxel centres, z
    in physical pixels: ``Z_STEP`` per slice): what a skeleton of the labels can find.
    """
    phase = t / (timepoints - 1) if timepoints > 1 else 0.0
    p0, p1, _, _, _ = _segments(_network(depth, height, width, seed), phase, height, width, seed)
    mid = (p0 + p1) / 2
    lo = np.array([-Z_STEP / 2, -0.5, -0.5])
    hi = np.array([(depth - 0.5) * Z_STEP, height - 0.5, width - 0.5])
    inside = np.all((mid >= lo) & (mid <= hi), axis=1)
    return float(np.linalg.norm(p1 - p0, axis=1)[inside].sum())


def _render_tubes(shape, segments):
    """Signed distance to the tube surface (physical px), relative radius, radius, brightness.

    Loops over capsule segments (not voxels); each updates only its bounding box.
    """
    depth, height, width = shape
    p0, p1, r0, r1, bright = segments
    pad = 3.0  # room for the anti-aliased edge
    sd = np.full(shape, 1e3, np.float32)
    rel = np.ones(shape, np.float32)
    rad = np.zeros(shape, np.float32)
    br = np.zeros(shape, np.float32)
    zc = np.arange(depth, dtype=np.float32) * Z_STEP
    yc = np.arange(height, dtype=np.float32)
    xc = np.arange(width, dtype=np.float32)
    lo = np.minimum(p0, p1) - (np.maximum(r0, r1) + pad)[:, None]
    hi = np.maximum(p0, p1) + (np.maximum(r0, r1) + pad)[:, None]
    z0 = np.clip(np.ceil(lo[:, 0] / Z_STEP), 0, depth).astype(int)
    z1 = np.clip(np.floor(hi[:, 0] / Z_STEP) + 1, 0, depth).astype(int)
    y0 = np.clip(np.ceil(lo[:, 1]), 0, height).astype(int)
    y1 = np.clip(np.floor(hi[:, 1]) + 1, 0, height).astype(int)
    x0 = np.clip(np.ceil(lo[:, 2]), 0, width).astype(int)
    x1 = np.clip(np.floor(hi[:, 2]) + 1, 0, width).astype(int)
    keep = np.flatnonzero((z1 > z0) & (y1 > y0) & (x1 > x0))
    v = (p1 - p0).astype(np.float32)
    vv = np.maximum((v ** 2).sum(axis=1), 1e-6)
    half = np.float32(Z_STEP / 2)
    for i in keep:
        box = (slice(z0[i], z1[i]), slice(y0[i], y1[i]), slice(x0[i], x1[i]))
        gz = zc[box[0], None, None] - np.float32(p0[i, 0])
        gy = yc[None, box[1], None] - np.float32(p0[i, 1])
        gx = xc[None, None, box[2]] - np.float32(p0[i, 2])
        # Position of the closest point along the segment (0..1), then distance to it.
        u = np.clip((gz * v[i, 0] + gy * v[i, 1] + gx * v[i, 2]) / vv[i], 0, 1)
        # A slice shows the optical section of thickness Z_STEP around its centre, so
        # the z offset within half a step counts as zero: a tube that runs between two
        # slices still shows (and is labelled) in both, as an annotator would see it.
        dz = np.maximum(np.abs(gz - u * v[i, 0]) - half, 0)
        d = np.sqrt(dz ** 2 + (gy - u * v[i, 1]) ** 2 + (gx - u * v[i, 2]) ** 2)
        r = np.float32(r0[i]) + u * np.float32(r1[i] - r0[i])
        s = d - r
        cur = sd[box]
        better = s < cur
        cur[better] = s[better]
        rel[box][better] = (d / r)[better]
        rad[box][better] = r[better]
        br[box][better] = bright[i]
    return sd, rel, rad, br


def _smooth_field(rng, shape, sigma) -> np.ndarray:
    """Gaussian-filtered white noise of unit standard deviation (float32)."""
    f = ndimage.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma,
                                mode="reflect")
    sd = float(f.std())
    return f / sd if sd > 0 else f


def _blur_coarse(a: np.ndarray, sigma, factor: int = 4) -> np.ndarray:
    """Wide Gaussian blur of a (z, y, x) array, computed at 1/factor resolution in y, x.

    A blur many pixels wide has no fine detail left, so doing it on a block-averaged
    copy and interpolating back is ~factor^2 cheaper and looks the same.
    """
    d, h, w = a.shape
    ph, pw = -h % factor, -w % factor
    padded = np.pad(a, ((0, 0), (0, ph), (0, pw)), mode="edge")
    blocks = padded.reshape(d, (h + ph) // factor, factor, (w + pw) // factor, factor)
    small = blocks.mean(axis=(2, 4))
    small = ndimage.gaussian_filter(small, (sigma[0], sigma[1] / factor, sigma[2] / factor),
                                    mode="nearest")
    # Block centres sit at (i + 0.5) * factor - 0.5 in full-resolution coordinates.
    yy = (np.arange(h, dtype=np.float32) + 0.5) / factor - 0.5
    xx = (np.arange(w, dtype=np.float32) + 0.5) / factor - 0.5
    out = np.empty_like(a)
    for z in range(d):  # one slice at a time keeps the coordinate arrays small
        out[z] = _bilinear(small[z], yy, xx)
    return out


def _bilinear(img: np.ndarray, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Separable linear interpolation of a 2D array at rows yy and columns xx."""
    def weights(c, n):
        c = np.clip(c, 0, n - 1)
        i0 = np.minimum(np.floor(c).astype(int), max(n - 2, 0))
        i1 = np.minimum(i0 + 1, n - 1)
        return i0, i1, (c - i0).astype(np.float32)
    y0, y1, wy = weights(yy, img.shape[0])
    x0, x1, wx = weights(xx, img.shape[1])
    rows = img[y0] * (1 - wy)[:, None] + img[y1] * wy[:, None]
    return rows[:, x0] * (1 - wx)[None, :] + rows[:, x1] * wx[None, :]


def _coarse_field(rng, shape, cells) -> np.ndarray:
    """Very smooth random 2D field, made on a coarse grid and interpolated up (fast)."""
    h, w = shape
    ch, cw = max(2, int(cells * h / max(h, w)) + 2), max(2, int(cells * w / max(h, w)) + 2)
    coarse = rng.standard_normal((ch, cw))
    yy = np.linspace(0, ch - 1, h)
    xx = np.linspace(0, cw - 1, w)
    f = ndimage.map_coordinates(coarse, np.meshgrid(yy, xx, indexing="ij"), order=3,
                                mode="nearest")
    sd = f.std()
    return (f / sd if sd > 0 else f).astype(np.float32)


def _blobs(rng, shape, count, brightness=(0.55, 1.1)):
    """Round noise objects: soft ellipsoids, ~tube brightness, never labelled."""
    depth, height, width = shape
    out = np.zeros(shape, np.float32)
    zc = np.arange(depth, dtype=np.float32) * Z_STEP
    yc = np.arange(height, dtype=np.float32)
    xc = np.arange(width, dtype=np.float32)
    zext = (depth - 1) * Z_STEP
    for _ in range(count):
        c = np.array([rng.uniform(-2, zext + 2), rng.uniform(0, height), rng.uniform(0, width)])
        r = rng.uniform(3.0, 9.0)
        ax = r * np.array([rng.uniform(0.8, 1.2), rng.uniform(0.85, 1.15),
                           rng.uniform(0.85, 1.15)])
        b = rng.uniform(*brightness)
        lo = c - ax - 3
        hi = c + ax + 3
        zs = slice(int(np.clip(np.ceil(lo[0] / Z_STEP), 0, depth)),
                   int(np.clip(np.floor(hi[0] / Z_STEP) + 1, 0, depth)))
        ys = slice(int(np.clip(np.ceil(lo[1]), 0, height)),
                   int(np.clip(np.floor(hi[1]) + 1, 0, height)))
        xs = slice(int(np.clip(np.ceil(lo[2]), 0, width)),
                   int(np.clip(np.floor(hi[2]) + 1, 0, width)))
        if zs.stop <= zs.start or ys.stop <= ys.start or xs.stop <= xs.start:
            continue
        q = np.sqrt(((zc[zs, None, None] - c[0]) / ax[0]) ** 2
                    + ((yc[None, ys, None] - c[1]) / ax[1]) ** 2
                    + ((xc[None, None, xs] - c[2]) / ax[2]) ** 2)
        # Soft edge about one pixel wide; a slightly brighter core (a cell or debris).
        val = b * np.clip(0.5 - (q - 1.0) * r, 0, 1) * (1.0 + 0.25 * np.clip(1 - q, 0, 1))
        np.maximum(out[zs, ys, xs], val.astype(np.float32), out=out[zs, ys, xs])
    return out


def synthesize_timepoint(t: int, *, timepoints: int = 4, depth: int = 8, height: int = 523,
                         width: int = 821, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate one time point of the synthetic data set.

    Long because it is one imaging model applied in order (tubes, PSF, illumination,
    texture, haze, noise), each step a few lines on the previous step's arrays.

    Parameters
    ----------
    t : int
        Time point, ``0 <= t < timepoints``.
    timepoints : int
        Number of time points of the whole series; the network's growth and drift are
        spread over it (phase ``t / (timepoints - 1)``).
    depth, height, width : int
        Size of the stack: depth slices of height x width pixels.
    seed : int
        Random seed (non-negative); the same seed gives the same data.

    Returns
    -------
    image : ndarray of uint8, shape (depth, height, width)
    label : ndarray of uint8, shape (depth, height, width)
        1 inside the tubes, 0 elsewhere (the blobs are 0).

    Notes
    -----
    Slices are ``Z_STEP`` pixels apart in depth. A voxel is labelled when a tube passes
    within the optical section of its slice (half a step either side), so a tube that
    runs between two slices is labelled, and seen, in both; the point-spread function
    then spreads some of its light, unlabelled, into the slices around.
    """
    _check_sizes(timepoints=timepoints, depth=depth, height=height, width=width)
    _check_seed(seed)
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or not 0 <= t < timepoints:
        raise InputError(f"t: must be an integer in 0..{timepoints - 1}, got {t!r}")
    t, seed = int(t), int(seed)
    timepoints, depth, height, width = map(int, (timepoints, depth, height, width))
    shape = (depth, height, width)
    phase = t / (timepoints - 1) if timepoints > 1 else 0.0
    network = _network(depth, height, width, seed)
    sd, rel, rad, br = _render_tubes(shape, _segments(network, phase, height, width, seed))
    label = (sd <= 0).astype(np.uint8)

    # One random stream per component, so changing one part leaves the others alone.
    def tissue(part):  # the same tissue at every time point
        return np.random.default_rng([seed, _TISSUE, part])

    def frame(part):  # what changes from time point to time point
        return np.random.default_rng([seed, _FRAME, t, part])

    # Tube signal: anti-aliased edge, a darker lumen in wide tubes, uneven epithelium.
    occ = np.clip(0.5 - sd, 0, 1)
    lumen = 0.45 * np.clip((rad - 3.5) / 3.0, 0, 1) * np.clip(1.0 - rel / 0.6, 0, 1) ** 0.7
    texture = _smooth_field(tissue(0), shape, (0.6, 1.5, 1.5))
    signal = occ * br * (1.0 - lumen) * (1.0 + 0.22 * texture)
    del sd, rel, rad, br, occ, lumen

    # Round noise objects; about half stay put (debris), the others come and go.
    n_blobs = max(1, int(round(150 * height * width / (523 * 821) * max(depth, 4) / 8)))
    blobs = np.maximum(_blobs(tissue(1), shape, n_blobs // 2 + 1),
                       _blobs(frame(0), shape, n_blobs - n_blobs // 2))
    signal = np.maximum(signal, blobs)
    del blobs

    # Background: tissue autofluorescence with structure at two scales.
    coarse = _blur_coarse(tissue(2).standard_normal(shape, dtype=np.float32), (1.0, 14.0, 14.0))
    coarse /= max(float(coarse.std()), 1e-6)
    background = (0.10 + 0.045 * _smooth_field(tissue(3), shape, (0.5, 3.0, 3.0)) + 0.06 * coarse)
    del coarse
    signal = signal + np.clip(background, 0.0, None)

    # Optics: anisotropic PSF, out-of-focus haze, illumination and depth attenuation.
    img = ndimage.gaussian_filter(signal, PSF_SIGMA, mode="nearest")
    img += 0.25 * _blur_coarse(signal, (2.0, 10.0, 10.0))
    del signal
    yy = (np.arange(height, dtype=np.float32) - (height - 1) / 2) / max(height / 2, 1)
    xx = (np.arange(width, dtype=np.float32) - (width - 1) / 2) / max(width / 2, 1)
    vignette = 1.0 - 0.45 * (yy[:, None] ** 2 + xx[None, :] ** 2) / 2
    illum = vignette * np.exp(0.3 * _coarse_field(tissue(4), (height, width), 3.0))
    # Mean illumination 0.7 whatever the seed, so every data set uses the 8 bits alike.
    illum = np.clip(illum * (0.7 / float(illum.mean())), 0.2, 1.25)
    attenuation = np.exp(-np.arange(depth, dtype=np.float32) * Z_STEP / 70.0)
    bleach = 1.0 - 0.12 * phase
    img *= illum[None] * attenuation[:, None, None] * np.float32(bleach)

    # Detector: Poisson photon noise, then Gaussian read noise, offset, 8-bit.
    photons_per_unit = 25.0
    gray_per_photon = 260.0 / photons_per_unit
    counts = frame(1).poisson(img * photons_per_unit).astype(np.float32)
    del img
    out = 12.0 + gray_per_photon * counts + frame(2).normal(0.0, 3.0, size=shape).astype(np.float32)
    image = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return image, label


def synthesize(*, timepoints: int = 4, depth: int = 8, height: int = 523, width: int = 821,
               seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Generate the whole synthetic series in memory.

    For large series use :func:`write_synth` (or :func:`synthesize_timepoint` in a
    loop), which hold one time point at a time.

    Parameters
    ----------
    timepoints, depth, height, width : int
        Size of the series (t, z, y, x).
    seed : int
        Random seed (non-negative); the same seed gives the same data.

    Returns
    -------
    images : ndarray of uint8, shape (timepoints, depth, height, width)
    labels : ndarray of uint8, same shape, 0/1
    """
    _check_sizes(timepoints=timepoints, depth=depth, height=height, width=width)
    _check_seed(seed)
    images = np.empty((timepoints, depth, height, width), np.uint8)
    labels = np.empty_like(images)
    for t in range(timepoints):
        images[t], labels[t] = synthesize_timepoint(t, timepoints=timepoints, depth=depth,
                                                    height=height, width=width, seed=seed)
    return images, labels


# --------------------------------------------------------------------------- baseline

def threshold_histograms(images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Class histograms of uint8 intensities: outside (row 0) and inside (row 1) the labels.

    Parameters
    ----------
    images : ndarray of uint8
    labels : ndarray of 0/1 (any integer or bool dtype), same shape

    Returns
    -------
    ndarray of int64, shape (2, 256)
        :func:`volseg.ops.thresholds.class_histograms` with intensities as the levels. Add
        histograms of several pieces to treat them as one data set.
    """
    from volseg.ops.metrics import check_binary

    images = np.asarray(images)
    labels = np.asarray(labels)
    if images.shape != labels.shape:
        raise ValueError(f"images {images.shape} and labels {labels.shape} differ in shape")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    check_binary(labels, name="labels")
    return class_histograms(images, labels)


def threshold_baseline(images: np.ndarray, labels: np.ndarray) -> tuple[int | None, float]:
    """Dice of the best global intensity threshold: how far plain thresholding gets.

    Parameters
    ----------
    images : ndarray of uint8
        Any shape.
    labels : ndarray of 0/1, same shape as ``images``

    Returns
    -------
    threshold : int or None
        The threshold (0..255) whose prediction ``images >= threshold`` has the best
        Dice (:func:`volseg.ops.thresholds.best_level`, ties nearest the middle level);
        None when ``labels`` has no structure.
    dice : float
        That Dice (exact; NaN when ``labels`` has no structure).
    """
    return best_intensity(threshold_histograms(images, labels))


def best_intensity(hist: np.ndarray) -> tuple[int | None, float]:
    """:func:`volseg.ops.thresholds.best_level` of intensity histograms, (None, NaN) when
    there is no structure at all."""
    return best_level(hist) or (None, float("nan"))


# --------------------------------------------------------------------------- writing

def _tiffs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.suffix.lower() in (".tif", ".tiff"))


def write_synth(out_dir, *, timepoints: int = 4, depth: int = 8, height: int = 523,
                width: int = 821, seed: int = 0, overwrite: bool = False,
                progress=None) -> dict:
    """Write a synthetic series as per-frame TIFF files.

    Writes ``out_dir/images/tTTT_zZZZ.tif`` (uint8) and ``out_dir/labels/tTTT_zZZZ.tif``
    (uint8 0/1), zlib-compressed, one time point at a time (memory bounded by one time
    point), and ``out_dir/synth.json`` with the summary.

    Parameters
    ----------
    out_dir : str or Path
        Output folder (created if missing).
    timepoints, depth, height, width : int
        Size of the series (t, z, y, x).
    seed : int
        Random seed (non-negative).
    overwrite : bool
        Replace TIFF files already in ``images/`` or ``labels/`` (all of them, so no
        stale frame of an earlier, larger series is left behind). Without it, existing
        TIFF files there are an error.
    progress : callable, optional
        ``progress(done, total)`` in frames.

    Returns
    -------
    dict
        ``out_dir, images_dir, labels_dir, shape, seed, frames, files, voxels,
        foreground_voxels, foreground_fraction, threshold, threshold_dice,
        centreline_length`` (per time point, pixels; :func:`centreline_length`),
        ``z_step, seconds``.

    Raises
    ------
    InputError
        Bad sizes or seed, output not writable, or existing TIFF files without
        ``overwrite``.
    """
    _check_sizes(timepoints=timepoints, depth=depth, height=height, width=width)
    _check_seed(seed)
    import tifffile

    timepoints, depth, height, width, seed = map(int, (timepoints, depth, height, width, seed))

    start = time.monotonic()
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(f"{out}: exists and is not a folder; choose another output folder")
    img_dir, lab_dir = out / "images", out / "labels"
    existing = _tiffs(img_dir) + _tiffs(lab_dir)
    if existing and not overwrite:
        raise InputError(f"{out}: already holds {len(existing)} TIFF files in images/ or "
                         "labels/; use --overwrite to replace them or choose another folder")
    try:
        img_dir.mkdir(parents=True, exist_ok=True)
        lab_dir.mkdir(parents=True, exist_ok=True)
        for p in existing:
            p.unlink()
    except OSError as exc:
        raise InputError(f"{out}: cannot write there ({exc.strerror or exc})") from exc

    hist = np.zeros((2, 256), np.int64)
    total = timepoints * depth
    done = 0
    for t in range(timepoints):
        image, label = synthesize_timepoint(t, timepoints=timepoints, depth=depth,
                                            height=height, width=width, seed=seed)
        hist += threshold_histograms(image, label)
        for z in range(depth):
            name = frame_name(t, z, timepoints=timepoints, depth=depth)
            tifffile.imwrite(img_dir / name, image[z], compression="zlib")
            tifffile.imwrite(lab_dir / name, label[z], compression="zlib")
            done += 1
            if progress is not None:
                progress(done, total)
    thr, dice = best_intensity(hist)
    voxels = int(hist.sum())
    fg = int(hist[1].sum())
    summary = dict(
        out_dir=str(out), images_dir=str(img_dir), labels_dir=str(lab_dir),
        shape=[timepoints, depth, height, width], seed=int(seed), frames=total, files=2 * total,
        voxels=voxels, foreground_voxels=fg, foreground_fraction=fg / voxels,
        threshold=thr, threshold_dice=None if math.isnan(dice) else dice,
        # Ground truth for `volseg measure`: centre-line length per time point, in x/y
        # pixels, z counted as Z_STEP pixels per slice.
        centreline_length=[centreline_length(t, timepoints=timepoints, depth=depth,
                                             height=height, width=width, seed=seed)
                           for t in range(timepoints)],
        z_step=Z_STEP,
        seconds=round(time.monotonic() - start, 3),
    )
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
