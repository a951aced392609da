"""Tile plans for prediction: split 2D frames into tiles, and blend tile outputs back.

A frame small enough for the model (like 523 x 821) is one tile: the whole frame,
reflect-padded at its end to the model's multiple (528 x 832). A larger frame is cut
into a grid of tiles that all share **one** input shape (``plan.tile_shape``), so a
compiled model sees a single shape and tiles of any frames can be batched together.

Layout along each axis (y and x are planned independently, then combined):

* Tiles start at multiples of ``multiple``, so every tile sees the same pooling grid
  as a whole-frame pass of a U-Net (translation equivariance holds only for shifts
  that are multiples of ``2**levels``); wherever a tile has enough context its
  output equals the whole-frame output.
* Neighbouring tiles overlap by ``2 * halo`` rounded up to ``multiple``; the tile
  size is shrunk (never grown past ``tile``) so the tiles cover the frame with as
  little waste as possible. The last tile may reach past the frame's end: that part
  is reflect-padded, like the padding of a whole frame.
* Each tile *owns* an output region (the regions partition the frame; the border
  between two tiles is the middle of their overlap).

Blending: linear ramps (a partition of unity), not nnU-Net's Gaussian. The overlaps
here are narrow (``2 * halo``, not half a tile), so the weights should change only
inside them: a tile's weight is 1 everywhere except across an overlap with a
neighbour, where it ramps linearly over ``blend`` pixels centred on the border
between the two tiles while the neighbour's weight ramps the other way (the two sum
to 1). Consequences:

* at the frame border a tile's weight is 1 (a Gaussian would fall to almost 0 there
  and rely on renormalising tiny numbers);
* the ``halo - blend / 2`` pixels of a tile nearest its inner edges, which have the
  least context, get weight 0; so tiled output is *exactly* the whole-frame output
  for a model whose receptive radius is at most ``halo - blend / 2``, and for a
  model with a larger receptive field (a U-Net) any small difference between two
  tiles is faded out over ``blend`` pixels instead of showing as a seam;
* ``blend=0`` is plain "keep the central part" stitching.

(Near the frame's far end a tile may carry more reflect padding than the whole
frame padded to ``multiple`` does; a model that zero-pads its own borders, like a
U-Net, can then differ there within its receptive field. Neither is more right.)

The accumulated result is still divided by the sum of the weights, so it stays
correct whatever the weights are.

Everything here is numpy only: no stores, no model. ``predict_frames`` runs any
``predict_batch`` callable over the tiles of a block of frames in batches, adding
each batch into the output as it comes, so memory is one output block plus one batch
of tiles, whatever the frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

__all__ = [
    "Tile",
    "TilePlan",
    "default_tile",
    "tile_plan",
    "extract_tiles",
    "assemble",
    "predict_frames",
    "predict_stack",
    "window_length",
    "z_windows",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_TILE_SIDE",
]

#: A whole padded frame up to this many pixels is predicted as one tile. Measured
#: (docs/decisions.md, "predict"): the U-Net's throughput on 2 CPU cores is flat from
#: 256^2 to 1024^2 (1.7-1.85 Mpx/s fp32), so one tile per frame costs nothing in speed
#: and needs no overlap at all;
#: 1.1 Mpx keeps peak memory near the measured 1024^2 figures (3.7 GB at batch 8 fp32).
DEFAULT_MAX_PIXELS = 1_100_000

#: Side of the tiles of frames larger than DEFAULT_MAX_PIXELS. Large tiles cost the
#: same per pixel as small ones (see above) but waste less on overlaps: with halo 32
#: the overlap overhead is (1024 / 960)^2 = 1.14x, against (512 / 448)^2 = 1.31x for
#: 512^2 tiles; GPUs also prefer large tiles.
DEFAULT_TILE_SIDE = 1024


def _ceil_to(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _floor_to(value: int, multiple: int) -> int:
    return value // multiple * multiple


@dataclass(frozen=True)
class Tile:
    """One tile of a :class:`TilePlan`. Boxes are ``(y0, y1, x0, x1)`` in frame coordinates.

    Attributes
    ----------
    index : int
        Position in ``plan.tiles`` (row-major: ``row * plan.grid[1] + col``).
    row, col : int
        Position in the tile grid.
    window : tuple of int
        The model's input window, of exactly ``plan.tile_shape``. It never starts
        before the frame, but may end past it; that part is reflect-padded.
    region : tuple of int
        The output pixels this tile owns. The regions of a plan partition the frame;
        blending also uses a tile's output a little way into its neighbours' regions.
    """

    index: int
    row: int
    col: int
    window: tuple[int, int, int, int]
    region: tuple[int, int, int, int]

    def read_box(self, height: int, width: int) -> tuple[int, int, int, int]:
        """The window clipped to a ``height x width`` frame: the pixels to read."""
        y0, y1, x0, x1 = self.window
        return (max(y0, 0), min(y1, height), max(x0, 0), min(x1, width))

    def pad_width(self, height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """``np.pad`` widths (reflect) that turn the read box into the window."""
        y0, y1, x0, x1 = self.window
        return ((max(-y0, 0), max(y1 - height, 0)), (max(-x0, 0), max(x1 - width, 0)))


@dataclass(frozen=True)
class TilePlan:
    """How frames of one size are cut into tiles and blended back. Build with :func:`tile_plan`.

    Attributes
    ----------
    height, width : int
        Frame size.
    tile_shape : (int, int)
        The one padded input shape shared by every tile (multiples of ``multiple``).
    halo : int
        Context margin: neighbouring windows overlap by at least ``2 * halo``.
    blend : int
        Width of the linear ramps across overlaps (0 = hard crop at the border).
    multiple : int
        Tile shape and tile starts are multiples of this (the model's requirement).
    y_starts, x_starts : tuple of int
        Window starts along each axis; tiles are their product, row-major.
    y_bounds, x_bounds : tuple of int
        Borders of the owned regions along each axis (``len(starts) + 1`` values,
        from 0 to the frame size).
    tiles : tuple of Tile
        All tiles, row-major.
    """

    height: int
    width: int
    tile_shape: tuple[int, int]
    halo: int
    blend: int
    multiple: int
    y_starts: tuple[int, ...]
    x_starts: tuple[int, ...]
    y_bounds: tuple[int, ...]
    x_bounds: tuple[int, ...]
    tiles: tuple[Tile, ...] = field(repr=False)

    @property
    def n_tiles(self) -> int:
        return len(self.tiles)

    @property
    def grid(self) -> tuple[int, int]:
        """``(rows, cols)`` of the tile grid."""
        return (len(self.y_starts), len(self.x_starts))

    @property
    def shape(self) -> tuple[int, int]:
        """The frame shape ``(height, width)``."""
        return (self.height, self.width)

    def axis_weights(self, axis: int, k: int) -> np.ndarray:
        """1D blending weights (float64, length of the tile along ``axis``) of tile row/col ``k``."""
        starts, bounds = (self.y_starts, self.y_bounds) if axis == 0 else (self.x_starts, self.x_bounds)
        return _ramp_weights(starts[k], self.tile_shape[axis], bounds, k, self.blend)

    def weights(self, index: int) -> np.ndarray:
        """Blending weights of tile ``index``, shape ``tile_shape``, float32.

        Separable: the outer product of the row and column ramps. 1 except across
        overlaps with neighbouring tiles, so never 0 at the frame border.
        """
        t = self.tiles[index]
        return np.multiply.outer(self.axis_weights(0, t.row), self.axis_weights(1, t.col)).astype(np.float32)

    def weight_sum(self) -> np.ndarray:
        """Sum of all tiles' weights over the frame, shape ``(height, width)``, float32 (about 1)."""
        wy = np.zeros(self.height)
        for k, s in enumerate(self.y_starts):
            _add_clipped(wy, s, self.axis_weights(0, k))
        wx = np.zeros(self.width)
        for k, s in enumerate(self.x_starts):
            _add_clipped(wx, s, self.axis_weights(1, k))
        return np.multiply.outer(wy.astype(np.float32), wx.astype(np.float32))

    def as_dict(self) -> dict:
        """JSON-friendly description for provenance attributes."""
        return {
            "frame": [self.height, self.width],
            "tile_shape": list(self.tile_shape),
            "grid": list(self.grid),
            "halo": self.halo,
            "blend": self.blend,
            "blending": "linear" if self.blend else "crop",
            "multiple": self.multiple,
        }


def _add_clipped(acc: np.ndarray, start: int, values: np.ndarray) -> None:
    end = min(start + len(values), len(acc))
    acc[start:end] += values[: end - start]


def _ramp_weights(start: int, size: int, bounds: tuple[int, ...], k: int, blend: int) -> np.ndarray:
    """Weights of the k-th tile along one axis: ramps centred on its inner borders."""
    pos = np.arange(start, start + size, dtype=np.float64) + 0.5  # pixel centres
    w = np.ones(size)
    n = len(bounds) - 1
    if k > 0:  # ramp up across the border with the previous tile
        b = bounds[k]
        w *= np.clip((pos - (b - blend / 2)) / blend, 0.0, 1.0) if blend else (pos > b)
    if k < n - 1:  # ramp down across the border with the next tile (1 - the neighbour's ramp up)
        b = bounds[k + 1]
        w *= np.clip(((b + blend / 2) - pos) / blend, 0.0, 1.0) if blend else (pos < b)
    return w


def _axis_layout(length: int, max_tile: int, halo: int, multiple: int,
                 smallest: int = 1) -> tuple[int, tuple[int, ...], tuple[int, ...]]:
    """Tile size, window starts and owned-region borders along one axis."""
    whole = max(_ceil_to(length, multiple), smallest)
    if whole <= max_tile:
        return whole, (0,), (0, length)
    overlap = _ceil_to(2 * halo, multiple)
    if max_tile - overlap < multiple:
        raise ValueError(
            f"tile {max_tile} is too small for halo {halo}: tiles must exceed the "
            f"overlap of {overlap} px by at least {multiple} px"
        )
    # Fewest tiles of at most max_tile that cover the frame with steps of
    # (size - overlap); then the smallest size (a multiple) that still covers it,
    # which spreads the rounding over all tiles instead of wasting a whole last tile.
    n = 1 + math.ceil((length - max_tile) / (max_tile - overlap))
    size = _ceil_to(math.ceil((length + (n - 1) * overlap) / n), multiple)
    size = min(max(size, _ceil_to(smallest, multiple)), max_tile)  # a network's fixed size
    step = size - overlap
    starts = tuple(i * step for i in range(n))
    bounds = (0,) + tuple(s + overlap // 2 for s in starts[1:]) + (length,)
    # Every tile owns something and fits (checked over many sizes in the tests).
    assert size <= max_tile and all(a < b for a, b in zip(bounds, bounds[1:])), (length, max_tile, halo)
    return size, starts, bounds


def default_tile(
    height: int, width: int, *, multiple: int = 16, max_pixels: int = DEFAULT_MAX_PIXELS,
    side: int = DEFAULT_TILE_SIDE,
) -> tuple[int, int]:
    """Largest tile shape to use for frames of ``height x width``.

    The whole frame (padded to ``multiple``) when that has at most ``max_pixels``
    pixels: throughput does not depend on tile size (docs/decisions.md), and one tile per
    frame needs no overlap. Otherwise ``side x side`` tiles (1024 by default: same
    speed as smaller tiles, less overlap overhead); an axis that fits within ``side``
    is kept whole and the other axis gets the rest of the ``max_pixels`` budget.

    Returns
    -------
    (int, int)
        Maximum tile shape, multiples of ``multiple``; pass it to :func:`tile_plan`.
    """
    if height < 1 or width < 1 or multiple < 1:
        raise ValueError(f"bad frame {height}x{width} or multiple {multiple}")
    hp, wp = _ceil_to(height, multiple), _ceil_to(width, multiple)
    if hp * wp <= max_pixels:
        return (hp, wp)
    side = max(_floor_to(side, multiple), multiple)
    budget = lambda other: max(_floor_to(max_pixels // other, multiple), side)  # noqa: E731
    if hp <= side:
        return (hp, min(wp, budget(hp)))
    if wp <= side:
        return (min(hp, budget(wp)), wp)
    return (side, side)


def tile_plan(
    height: int,
    width: int,
    *,
    tile: tuple[int, int] | None = None,
    halo: int = 32,
    blend: int | None = None,
    multiple: int = 16,
    min_tile: int = 1,
) -> TilePlan:
    """Plan the tiles of ``height x width`` frames.

    Parameters
    ----------
    height, width : int
        Frame size, any positive values (1 x 1 works).
    tile : (int, int), optional
        Largest tile (model input) shape; rounded down to ``multiple``. Default:
        :func:`default_tile`, i.e. the whole frame when it has at most ~1.1 Mpx.
        An axis whose padded length fits in the tile is one tile, padded to
        ``multiple`` at its end.
    halo : int
        Context margin in pixels: neighbouring tile windows overlap by
        ``2 * halo`` rounded up to ``multiple``. Unused when the frame is one tile.
    blend : int, optional
        Width of the linear blending ramp, ``0 <= blend <= 2 * halo``; default
        ``halo``. Tiled output equals whole-frame output for a model whose receptive
        radius is at most ``halo - blend / 2``; 0 means keep each tile's central
        part (hard borders).
    multiple : int
        The model needs input sizes that are multiples of this (16 for 4 poolings).
    min_tile : int
        The model's smallest input side (a model zoo package may declare one): a frame
        smaller than that is reflect-padded up to it, as a frame is padded to
        ``multiple``.

    Returns
    -------
    TilePlan
    """
    if height < 1 or width < 1:
        raise ValueError(f"frame must be at least 1x1, got {height}x{width}")
    if multiple < 1 or halo < 0:
        raise ValueError(f"need multiple >= 1 and halo >= 0, got {multiple} and {halo}")
    blend = halo if blend is None else int(blend)
    if not 0 <= blend <= 2 * halo:
        raise ValueError(f"blend must be within 0..2*halo = {2 * halo}, got {blend}")
    if tile is None:
        tile = default_tile(height, width, multiple=multiple)
    smallest = _ceil_to(max(int(min_tile), 1), multiple)
    th, tw = (max(_floor_to(int(t), multiple), smallest) for t in tile)
    size_y, y_starts, y_bounds = _axis_layout(height, th, halo, multiple, smallest)
    size_x, x_starts, x_bounds = _axis_layout(width, tw, halo, multiple, smallest)
    tiles = tuple(
        Tile(
            index=r * len(x_starts) + c,
            row=r,
            col=c,
            window=(ys, ys + size_y, xs, xs + size_x),
            region=(y_bounds[r], y_bounds[r + 1], x_bounds[c], x_bounds[c + 1]),
        )
        for r, ys in enumerate(y_starts)
        for c, xs in enumerate(x_starts)
    )
    return TilePlan(
        height=height, width=width, tile_shape=(size_y, size_x), halo=halo, blend=blend,
        multiple=multiple, y_starts=y_starts, x_starts=x_starts, y_bounds=y_bounds,
        x_bounds=x_bounds, tiles=tiles,
    )


def _as_stack(frames: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Frames as (n, H, W), or (n, H, W, K) for K input channels (depth context)."""
    frames = np.asarray(frames)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim not in (3, 4) or frames.shape[1:3] != plan.shape:
        raise ValueError(f"frames of shape {frames.shape} do not match the plan's {plan.shape} frames")
    return frames


def _channels(frames: np.ndarray) -> int:
    """Input channels of a frame stack from :func:`_as_stack`."""
    return frames.shape[3] if frames.ndim == 4 else 1


def _tile_input(frame: np.ndarray, tile: Tile, out: np.ndarray) -> None:
    """Write tile's window of one frame, (H, W) or (H, W, K), into ``out`` (tile_shape
    or tile_shape + (K,), float32), reflect-padded in y and x."""
    h, w = frame.shape[:2]
    y0, y1, x0, x1 = tile.read_box(h, w)
    pad = tile.pad_width(h, w)
    if pad == ((0, 0), (0, 0)):
        out[...] = frame[y0:y1, x0:x1]
    else:
        pad = pad + ((0, 0),) * (frame.ndim - 2)
        out[...] = np.pad(frame[y0:y1, x0:x1].astype(np.float32, copy=False), pad, mode="reflect")


def _input_view(buf: np.ndarray, i: int, frames: np.ndarray) -> np.ndarray:
    """Where tile ``i``'s input goes in ``buf`` (b, Hp, Wp, K): the channel axis is
    dropped for 2D frames."""
    return buf[i] if frames.ndim == 4 else buf[i, ..., 0]


def _iter_pairs(n_frames: int, plan: TilePlan) -> Iterator[tuple[int, Tile]]:
    # frame-major: all tiles of frame 0, then frame 1, ...
    for f in range(n_frames):
        for t in plan.tiles:
            yield f, t


def extract_tiles(frames: np.ndarray, plan: TilePlan) -> np.ndarray:
    """Cut frames into the plan's tiles.

    Parameters
    ----------
    frames : array (n, H, W), (H, W) or (n, H, W, K)
        Any real dtype; already normalised as the model expects. K: input channels.
    plan : TilePlan

    Returns
    -------
    ndarray, shape (n * plan.n_tiles, Hp, Wp, K), float32 (K = 1 for 2D frames)
        Frame-major: tile ``t`` of frame ``f`` is at ``f * plan.n_tiles + t``.
        Parts of a window beyond the frame are reflect-padded.
    """
    frames = _as_stack(frames, plan)
    out = np.empty((len(frames) * plan.n_tiles, *plan.tile_shape, _channels(frames)), np.float32)
    for i, (f, t) in enumerate(_iter_pairs(len(frames), plan)):
        _tile_input(frames[f], t, _input_view(out, i, frames))
    return out


class _Blender:
    """Accumulates weighted tile outputs into (n, H, W) float32, then normalises.

    Weights are separable, so only the 1D ramps of each tile row and column are
    kept (holding a 2D weight array per tile would cost as much as all tiles).
    """

    def __init__(self, plan: TilePlan, n_frames: int, channels: int = 1):
        self.plan = plan
        extra = () if channels == 1 else (channels,)
        self.out = np.zeros((n_frames, plan.height, plan.width) + extra, np.float32)
        self.single = plan.n_tiles == 1  # one tile per frame: weights are all 1
        self.wy = [plan.axis_weights(0, k).astype(np.float32) for k in range(plan.grid[0])]
        self.wx = [plan.axis_weights(1, k).astype(np.float32) for k in range(plan.grid[1])]

    def add(self, f: int, tile: Tile, values: np.ndarray) -> None:
        y0, _, x0, _ = tile.window
        ry0, ry1, rx0, rx1 = tile.read_box(self.plan.height, self.plan.width)
        v = values[ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0]
        if self.single:
            self.out[f] = v
            return
        extra = (None,) * (v.ndim - 2)  # output channels share the tile's weights
        wy = self.wy[tile.row][(slice(ry0 - y0, ry1 - y0), None) + extra]
        wx = self.wx[tile.col][(None, slice(rx0 - x0, rx1 - x0)) + extra]
        self.out[f, ry0:ry1, rx0:rx1] += v * wy * wx

    def result(self) -> np.ndarray:
        if not self.single:
            weight = self.plan.weight_sum()
            self.out /= weight.reshape(weight.shape + (1,) * (self.out.ndim - 3))
        return self.out


def _tile_values(a: np.ndarray, shape: tuple[int, int], channels: int = 1) -> np.ndarray:
    a = np.asarray(a)
    if channels == 1 and a.ndim == 4 and a.shape[-1] == 1:
        a = a[..., 0]
    want = shape if channels == 1 else shape + (channels,)
    if a.ndim != len(want) + 1 or a.shape[1:] != want:
        raise ValueError(f"tile outputs of shape {a.shape} do not match tiles of shape {shape} "
                         f"(x{channels} channel)")
    return a


def assemble(tile_outputs: np.ndarray, plan: TilePlan, n_frames: int) -> np.ndarray:
    """Blend tile outputs back into frames: the inverse of :func:`extract_tiles`.

    Parameters
    ----------
    tile_outputs : array (n_frames * plan.n_tiles, Hp, Wp, 1) or (..., Hp, Wp)
        Model outputs in :func:`extract_tiles` order.
    plan : TilePlan
    n_frames : int

    Returns
    -------
    ndarray, shape (n_frames, H, W), float32
        Weighted mean of the overlapping tiles, cropped to the frame.
    """
    values = _tile_values(tile_outputs, plan.tile_shape)
    if len(values) != n_frames * plan.n_tiles:
        raise ValueError(f"expected {n_frames * plan.n_tiles} tile outputs, got {len(values)}")
    blender = _Blender(plan, n_frames)
    for i, (f, t) in enumerate(_iter_pairs(n_frames, plan)):
        blender.add(f, t, values[i])
    return blender.result()


def predict_frames(
    frames: np.ndarray,
    predict_batch: Callable[[np.ndarray], np.ndarray],
    plan: TilePlan,
    *,
    batch_size: int = 4,
    channels_out: int = 1,
) -> np.ndarray:
    """Run ``predict_batch`` over all tiles of a block of frames, blending as it goes.

    Tiles of all frames are batched together (frame-major), so a block of small
    frames fills a batch. At most ``batch_size`` tiles (inputs and outputs) exist at
    once besides the (n, H, W) result: memory does not grow with the frame size
    beyond the result itself.

    Parameters
    ----------
    frames : array (n, H, W), (H, W) or (n, H, W, K)
        Already normalised as the model expects; cast to float32 per tile. K: input
        channels (the z-slices of depth context, :mod:`volseg.ops.context`).
    predict_batch : callable
        ``(b, Hp, Wp, K) float32 -> (b, Hp, Wp, 1)`` (or ``(b, Hp, Wp)``) array-like,
        with ``1 <= b <= batch_size``; the last batch may be smaller (pad it in the
        callable if a compiled model must see one batch shape).
    plan : TilePlan
    batch_size : int
    channels_out : int
        Channels of each tile's output, ``(b, Hp, Wp, C)``, blended alike (a 3D network's
        z-slices, :func:`predict_stack`).

    Returns
    -------
    ndarray, shape (n, H, W), or (n, H, W, C) for ``channels_out`` C > 1, float32
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    frames = _as_stack(frames, plan)
    blender = _Blender(plan, len(frames), channels_out)
    buf = np.empty((batch_size, *plan.tile_shape, _channels(frames)), np.float32)
    pending: list[tuple[int, Tile]] = []

    def flush() -> None:
        b = len(pending)
        values = _tile_values(predict_batch(buf[:b]), plan.tile_shape, channels_out)
        if len(values) != b:
            raise ValueError(f"predict_batch returned {len(values)} tiles for {b}")
        for (f, t), v in zip(pending, values):
            blender.add(f, t, v)
        pending.clear()

    for f, t in _iter_pairs(len(frames), plan):
        _tile_input(frames[f], t, _input_view(buf, len(pending), frames))
        pending.append((f, t))
        if len(pending) == batch_size:
            flush()
    if pending:
        flush()
    return blender.result()


# --------------------------------------------------------------------------- z windows


def window_length(n: int, *, fixed: int | None, minimum: int = 1, step: int = 1) -> int:
    """The z size a 3D network takes for ``n`` slices: ``fixed``, or the smallest
    ``minimum + k * step`` that holds ``n`` (``step`` 0: exactly ``minimum``)."""
    if fixed is not None:
        return int(fixed)
    if step <= 0 or n <= minimum:
        return int(minimum)
    return int(minimum + -(-(n - minimum) // step) * step)


def z_windows(length: int, start: int, stop: int, *, size: int,
              halo: int) -> list[tuple[int, int, int, int]]:
    """The z windows of a 3D network over a read box of ``length`` slices whose slices
    ``start:stop`` are wanted (the rest is the z halo), as ``(w0, w1, o0, o1)``: the
    window (``size`` slices, reflect-padded where it reaches past the box) and the output
    slices it owns. One window when ``size`` holds the box; else windows whose owned
    slices each have ``halo`` slices of context on both sides, like y/x tiles.

    Raises
    ------
    ValueError
        ``size`` too small to own a slice inside a ``halo`` on each side.
    """
    if size >= length:
        return [(0, size, start, stop)]
    owned = size - 2 * halo
    if owned < 1:
        raise ValueError(f"z windows of {size} slices leave none inside a z halo of {halo}")
    windows, o0 = [], start
    while o0 < stop:
        o1 = min(stop, o0 + owned)
        w0 = min(max(o0 - halo, 0), max(length - size, 0))
        windows.append((w0, w0 + size, o0, o1))
        o0 = o1
    return windows


def _z_window(stack: np.ndarray, w0: int, w1: int) -> np.ndarray:
    """Slices ``w0:w1`` of ``stack`` (z, H, W), reflect-padded past its ends."""
    z = len(stack)
    part = stack[max(w0, 0):min(w1, z)]
    pad = (max(-w0, 0), max(w1 - z, 0))
    if pad == (0, 0):
        return part
    return np.pad(part, (pad, (0, 0), (0, 0)), mode="reflect" if len(part) > 1 else "edge")


def predict_stack(stack: np.ndarray, predict_batch: Callable[[np.ndarray], np.ndarray],
                  plan: TilePlan, *, start: int, stop: int, size: int, halo: int,
                  batch_size: int = 4) -> np.ndarray:
    """A 3D network's output for slices ``start:stop`` of ``stack`` (z, H, W).

    The network sees z windows (:func:`z_windows`) of y/x tiles (``plan``), a window's
    slices as the tile's last axis: ``predict_batch`` maps (b, Hp, Wp, size) to
    (b, Hp, Wp, size). Tiles are blended in y and x as for 2D frames.

    Returns
    -------
    ndarray, shape (stop - start, H, W), float32
    """
    out = np.empty((stop - start, *plan.shape), np.float32)
    for w0, w1, o0, o1 in z_windows(len(stack), start, stop, size=size, halo=halo):
        window = np.moveaxis(_z_window(stack, w0, w1), 0, -1)[None]
        prob = predict_frames(window, predict_batch, plan, batch_size=batch_size,
                              channels_out=w1 - w0)[0].reshape(*plan.shape, w1 - w0)
        out[o0 - start:o1 - start] = np.moveaxis(prob[..., o0 - w0:o1 - w0], -1, 0)
    return out
