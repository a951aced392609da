"""Tile plans and blending: tiled prediction must equal whole-frame prediction, seamlessly.

The "model" is a local non-linear filter in numpy (box mean over (2r+1)^2, then tanh,
reflect boundary), so its receptive radius r is known exactly: with a margin
(halo - blend / 2) >= r tiling must reproduce whole-frame processing to float
rounding; with r larger than the margin, blending must hide the difference.
"""

import math
import tracemalloc

import numpy as np
import pytest

from volseg.ops.tiling import (
    predict_stack,
    window_length,
    z_windows,
    DEFAULT_MAX_PIXELS,
    assemble,
    default_tile,
    extract_tiles,
    predict_frames,
    tile_plan,
)

SIZES = [(37, 53), (523, 821), (1100, 700), (5, 7), (1, 1)]


def box_tanh_2d(frames, r):
    """(n, H, W) -> (n, H, W): tanh of the (2r+1)^2 box mean, reflect boundary."""
    x = np.asarray(frames, np.float64)
    p = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    c = np.pad(np.cumsum(np.cumsum(p, axis=1), axis=2), ((0, 0), (1, 0), (1, 0)))
    k = 2 * r + 1
    h, w = x.shape[1:]
    s = c[:, k : k + h, k : k + w] - c[:, :h, k : k + w] - c[:, k : k + h, :w] + c[:, :h, :w]
    return np.tanh(3 * (s / k**2 - 0.5)).astype(np.float32)


def box_tanh(r):
    """A predict_batch callable: (b, Hp, Wp, 1) -> (b, Hp, Wp, 1)."""

    def predict(batch):
        assert batch.dtype == np.float32 and batch.ndim == 4 and batch.shape[-1] == 1
        return box_tanh_2d(batch[..., 0], r)[..., None]

    return predict


def frames_for(n, h, w, seed=0):
    return np.random.default_rng(seed).random((n, h, w), dtype=np.float32)


def small_tile(h, w):
    """A tile that forces a grid of several tiles on frames of these sizes."""
    return (max(32, math.ceil(h / 3)), max(32, math.ceil(w / 3)))


# ---------------------------------------------------------------- the plan


def test_default_plan_is_the_whole_padded_frame():
    plan = tile_plan(523, 821)
    assert plan.n_tiles == 1 and plan.grid == (1, 1)
    assert plan.tile_shape == (528, 832)
    t = plan.tiles[0]
    assert t.window == (0, 528, 0, 832)
    assert t.region == (0, 523, 0, 821)
    assert t.read_box(523, 821) == (0, 523, 0, 821)
    assert t.pad_width(523, 821) == ((0, 5), (0, 11))
    assert tile_plan(1100, 700).tile_shape == (1104, 704)
    assert tile_plan(5, 7).tile_shape == (16, 16)
    assert tile_plan(1, 1, multiple=8).tile_shape == (8, 8)


def test_default_tile_sizes():
    assert default_tile(523, 821, multiple=16) == (528, 832)
    assert default_tile(1024, 1072, multiple=16) == (1024, 1072)  # 1.098 Mpx: still whole
    assert default_tile(2048, 2048, multiple=16) == (1024, 1024)
    # a thin axis stays whole; the long one gets the rest of the pixel budget
    th, tw = default_tile(600, 5000, multiple=16)
    assert th == 608 and tw % 16 == 0 and th * tw <= DEFAULT_MAX_PIXELS and tw > 1024
    th, tw = default_tile(5000, 100, multiple=16)
    assert tw == 112 and th * tw <= DEFAULT_MAX_PIXELS
    plan = tile_plan(2100, 2100)
    assert plan.grid == (3, 3) and max(plan.tile_shape) <= 1024


@pytest.mark.parametrize("size", SIZES + [(2100, 1500), (64, 4000)])
@pytest.mark.parametrize("tiled", [False, True])
def test_plan_invariants(size, tiled):
    h, w = size
    halo, blend, m = 8, 8, 16
    plan = tile_plan(h, w, tile=small_tile(h, w) if tiled else None, halo=halo, blend=blend, multiple=m)
    hp, wp = plan.tile_shape
    assert hp % m == 0 and wp % m == 0
    owned = np.zeros((h, w), np.int32)
    for t in plan.tiles:
        y0, y1, x0, x1 = t.window
        assert (y1 - y0, x1 - x0) == plan.tile_shape
        assert y0 % m == 0 and x0 % m == 0 and y0 >= 0 and x0 >= 0
        ry0, ry1, rx0, rx1 = t.region
        owned[ry0:ry1, rx0:rx1] += 1
        # the owned region keeps the full halo from every inner window edge
        assert ry0 - y0 >= (halo if ry0 > 0 else 0) and y1 - ry1 >= (halo if ry1 < h else 0)
        assert rx0 - x0 >= (halo if rx0 > 0 else 0) and x1 - rx1 >= (halo if rx1 < w else 0)
        assert plan.tiles[t.index] is t and t.index == t.row * plan.grid[1] + t.col
    assert (owned == 1).all(), "output regions must partition the frame"
    if tiled and max(h, w) > 64:
        assert plan.n_tiles > 1
    np.testing.assert_allclose(plan.weight_sum(), 1.0, atol=1e-6)


def test_plan_sweep_partitions_every_axis_length():
    # Many lengths and tile sizes against one axis: the rounding in the layout must
    # never leave a tile owning nothing, a gap, a tile above the limit or an overlap
    # below 2 * halo.
    for m, halo, tile in [(16, 8, 32), (16, 32, 80), (16, 32, 256), (8, 5, 24), (1, 3, 10), (32, 16, 64)]:
        for length in list(range(1, 400)) + [523, 821, 1100, 4097]:
            plan = tile_plan(length, 1, tile=(tile, 16), halo=halo, multiple=m)
            starts, bounds, size = plan.y_starts, plan.y_bounds, plan.tile_shape[0]
            assert bounds[0] == 0 and bounds[-1] == length
            assert all(a < b for a, b in zip(bounds, bounds[1:]))
            assert starts[-1] + size >= length and size % m == 0
            if len(starts) > 1:
                assert size <= tile
                assert all(a + size - b >= 2 * halo for a, b in zip(starts, starts[1:]))
                # fewest tiles: one fewer tiles of the full size could not cover it
                step = tile - math.ceil(2 * halo / m) * m
                assert (len(starts) - 2) * step + tile < length


def test_weights_only_fall_inside_overlaps():
    h, w = 523, 821
    plan = tile_plan(h, w, tile=(128, 128), halo=16, blend=16)
    assert plan.grid[0] > 2 and plan.grid[1] > 2
    for t in plan.tiles:
        wt = plan.weights(t.index)
        assert wt.shape == plan.tile_shape and wt.dtype == np.float32
        y0, y1, x0, x1 = t.window
        ry0, ry1, rx0, rx1 = t.region
        # full weight in the owned region away from the ramps
        core = wt[ry0 - y0 + 8 : ry1 - y0 - 8, rx0 - x0 + 8 : rx1 - x0 - 8]
        assert core.size and (core == 1).all()
        # at the frame border weight stays 1 (only overlaps fade)
        if t.row == 0:
            assert (wt[0, rx0 - x0 + 8 : rx1 - x0 - 8] == 1).all()
        if t.col == plan.grid[1] - 1:
            assert (wt[ry0 - y0 + 8 : ry1 - y0 - 8, w - 1 - x0] == 1).all()
        # the pixels nearest an inner window edge (least context) get no weight
        if t.row > 0:
            assert (wt[: 16 - 8] == 0).all()
        if t.col > 0:
            assert (wt[:, : 16 - 8] == 0).all()
    # blend=0 is a hard crop: weights are the owned region's indicator
    crop = tile_plan(h, w, tile=(128, 128), halo=16, blend=0)
    t = crop.tiles[crop.n_tiles // 2]
    ind = np.zeros(crop.tile_shape, np.float32)
    ry0, ry1, rx0, rx1 = t.region
    ind[ry0 - t.window[0] : ry1 - t.window[0], rx0 - t.window[2] : rx1 - t.window[2]] = 1
    np.testing.assert_array_equal(crop.weights(t.index), ind)


def test_bad_arguments():
    with pytest.raises(ValueError, match="too small for halo"):
        tile_plan(1000, 1000, tile=(64, 64), halo=32)
    with pytest.raises(ValueError, match="blend"):
        tile_plan(100, 100, halo=4, blend=9)
    with pytest.raises(ValueError):
        tile_plan(0, 10)
    plan = tile_plan(10, 12)
    with pytest.raises(ValueError, match="do not match"):
        extract_tiles(np.zeros((2, 12, 10)), plan)
    with pytest.raises(ValueError, match="expected 2 tile outputs"):
        assemble(np.zeros((1, 16, 16, 1)), plan, 2)


# ---------------------------------------------------------------- extraction and assembly


def test_extract_tiles_reflect_pads_past_the_frame():
    frame = np.arange(35, dtype=np.uint8).reshape(5, 7)
    plan = tile_plan(5, 7)
    tiles = extract_tiles(frame, plan)  # a 2D frame is a stack of one
    assert tiles.shape == (1, 16, 16, 1) and tiles.dtype == np.float32
    np.testing.assert_array_equal(tiles[0, ..., 0], np.pad(frame, ((0, 11), (0, 9)), mode="reflect"))
    assert (extract_tiles(np.full((1, 1), 7.0), tile_plan(1, 1)) == 7).all()


@pytest.mark.parametrize("size", SIZES)
def test_assemble_inverts_extract(size):
    h, w = size
    frames = frames_for(3, h, w)
    plan = tile_plan(h, w, tile=small_tile(h, w), halo=8)
    tiles = extract_tiles(frames, plan)
    assert tiles.shape == (3 * plan.n_tiles, *plan.tile_shape, 1)
    # frame-major order
    np.testing.assert_array_equal(tiles[plan.n_tiles], extract_tiles(frames[1], plan)[0])
    back = assemble(tiles, plan, 3)
    assert back.shape == (3, h, w) and back.dtype == np.float32
    np.testing.assert_allclose(back, frames, atol=1e-6)


# ---------------------------------------------------------------- tiled == whole frame


@pytest.mark.parametrize("size", SIZES)
def test_tiled_equals_whole_frame_when_halo_covers_receptive_field(size):
    h, w = size
    r = 2  # 5x5 box: margin halo - blend/2 = 8 - 4 >= r
    frames = frames_for(2, h, w)
    expected = box_tanh_2d(frames, r)  # the filter on the frame itself
    for tile in (None, small_tile(h, w)):
        plan = tile_plan(h, w, tile=tile, halo=8, blend=8)
        got = predict_frames(frames, box_tanh(r), plan, batch_size=3)
        assert got.shape == (2, h, w) and got.dtype == np.float32
        np.testing.assert_allclose(got, expected, atol=1e-5)
        # the same through extract_tiles -> model -> assemble
        via = assemble(box_tanh(r)(extract_tiles(frames, plan)), plan, 2)
        np.testing.assert_allclose(via, got, atol=1e-6)


def _mean_jumps(img, axis):
    """Mean |difference| between neighbouring lines: index i is between lines i and i+1."""
    return np.abs(np.diff(img, axis=axis)).mean(axis=tuple(a for a in range(img.ndim) if a != axis))


def _border_lines(starts, bounds, size, length):
    """Lines next to which a tile starts, ends or hands over: where a seam would show."""
    lines = {b - 1 for b in bounds[1:-1]} | {s - 1 for s in starts[1:]} | {s + size - 1 for s in starts[:-1]}
    return sorted(i for i in lines if 0 <= i < length - 1)


def _seam_ratio(out, plan):
    """Largest mean jump across tile-border lines / largest across all other lines (both axes)."""
    worst = 0.0
    for axis, starts, bounds in ((1, plan.y_starts, plan.y_bounds), (2, plan.x_starts, plan.x_bounds)):
        jumps = _mean_jumps(out, axis)
        lines = _border_lines(starts, bounds, plan.tile_shape[axis - 1], out.shape[axis])
        worst = max(worst, jumps[lines].max() / np.delete(jumps, lines).max())
    return worst


def test_blending_hides_a_receptive_field_larger_than_the_halo():
    # Receptive radius 24 > halo 16: tiles cannot reproduce the whole frame exactly.
    h, w, r = 523, 821, 24
    frames = frames_for(2, h, w, seed=1)
    whole = predict_frames(frames, box_tanh(r), tile_plan(h, w))  # one tile per frame
    blended_plan = tile_plan(h, w, tile=(128, 128), halo=16, blend=16)
    blended = predict_frames(frames, box_tanh(r), blended_plan, batch_size=8)
    assert np.abs(blended - whole).mean() < 1e-2
    assert _seam_ratio(blended, blended_plan) <= 1.0  # no border line jumps more than any other line
    # the check is sharp: keeping only the central parts (blend=0) leaves visible seams
    crop_plan = tile_plan(h, w, tile=(128, 128), halo=16, blend=0)
    cropped = predict_frames(frames, box_tanh(r), crop_plan, batch_size=8)
    assert _seam_ratio(cropped, crop_plan) > 2.0


@pytest.mark.parametrize("size", [(37, 53), (1100, 700)])
def test_no_seam_with_exact_filter(size):
    h, w = size
    frames = frames_for(1, h, w, seed=2)
    plan = tile_plan(h, w, tile=small_tile(h, w), halo=8)
    assert plan.n_tiles > 1
    out = predict_frames(frames, box_tanh(2), plan)
    assert _seam_ratio(out, plan) <= 1.0


def test_stack_equals_frames_one_by_one():
    h, w = 300, 200
    frames = frames_for(5, h, w, seed=3)
    plan = tile_plan(h, w, tile=(128, 96), halo=8)
    stacked = predict_frames(frames, box_tanh(3), plan, batch_size=4)  # batches mix frames
    for i in range(len(frames)):
        np.testing.assert_array_equal(stacked[i], predict_frames(frames[i], box_tanh(3), plan, batch_size=4)[0])


def test_uint8_frames_and_channelless_outputs():
    frames = (frames_for(2, 40, 50) * 255).astype(np.uint8)
    plan = tile_plan(40, 50, tile=(32, 32), halo=4)
    got = predict_frames(frames, lambda b: b[..., 0] / 255.0, plan, batch_size=5)  # (b, Hp, Wp)
    np.testing.assert_allclose(got, frames / 255.0, atol=1e-6)


# ---------------------------------------------------------------- bounded memory


def test_predict_frames_calls_in_bounded_batches():
    h, w, n, bs = 523, 821, 3, 5
    plan = tile_plan(h, w, tile=(128, 128), halo=16)
    sizes = []

    def predict(batch):
        sizes.append(len(batch))
        assert batch.shape[1:] == (*plan.tile_shape, 1)
        return batch

    predict_frames(frames_for(n, h, w), predict, plan, batch_size=bs)
    assert sum(sizes) == n * plan.n_tiles
    assert max(sizes) <= bs and len(sizes) == math.ceil(n * plan.n_tiles / bs)


def test_predict_frames_memory_does_not_hold_all_tiles():
    # 961 tiny tiles hold 3.75x the frame; streaming holds the output, the weight sum
    # and one batch.
    h = w = 512
    frames = frames_for(1, h, w)
    plan = tile_plan(h, w, tile=(32, 32), halo=4, multiple=16)
    assert plan.n_tiles >= 900
    all_tiles_bytes = plan.n_tiles * 32 * 32 * 4
    frame_bytes = h * w * 4
    assert all_tiles_bytes >= 3.5 * frame_bytes
    tracemalloc.start()
    try:
        out = predict_frames(frames, box_tanh(1), plan, batch_size=16)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (1, h, w)
    assert peak < 2 * frame_bytes + 1_000_000, peak


# --------------------------------------------------------------------------- z windows


@pytest.mark.parametrize("fixed, minimum, step, n, want", [
    (None, 4, 2, 3, 4), (None, 4, 2, 7, 8), (None, 4, 0, 9, 4), (6, 1, 1, 2, 6)])
def test_window_length_follows_the_networks_z_rule(fixed, minimum, step, n, want):
    assert window_length(n, fixed=fixed, minimum=minimum, step=step) == want


@pytest.mark.parametrize("length, start, stop, size, halo", [
    (10, 2, 8, 4, 1), (10, 0, 9, 5, 2), (6, 1, 5, 3, 1), (12, 3, 9, 7, 3), (8, 2, 6, 8, 2)])
def test_z_windows_own_every_wanted_slice_once_with_its_halo(length, start, stop, size, halo):
    windows = z_windows(length, start, stop, size=size, halo=halo)
    owned = [z for _, _, o0, o1 in windows for z in range(o0, o1)]
    assert owned == list(range(start, stop))
    for w0, w1, o0, o1 in windows:
        assert w1 - w0 == size
        # context on both sides, unless the window is clipped by the box (the stack's end)
        assert o0 - w0 >= halo or w0 == 0
        assert w1 - o1 >= halo or w1 >= length


def test_z_windows_refuse_a_size_that_owns_nothing_inside_its_halo():
    with pytest.raises(ValueError, match="leave none inside a z halo of 2"):
        z_windows(10, 2, 8, size=4, halo=2)


def test_predict_stack_equals_the_whole_stack_for_a_network_within_its_halo():
    """A 'network' that averages 3 slices (zero beyond its window): tiled in y/x and cut
    into fixed z windows it gives the whole stack's result wherever the window had the
    real neighbours, i.e. everywhere inside the stack's two end slices."""
    rng = np.random.default_rng(0)
    stack = rng.random((9, 20, 30)).astype(np.float32)

    def net(batch):  # (b, H, W, Z) -> (b, H, W, Z)
        padded = np.pad(batch, ((0, 0), (0, 0), (0, 0), (1, 1)))
        return (padded[..., :-2] + padded[..., 1:-1] + padded[..., 2:]) / 3

    whole = net(np.moveaxis(stack, 0, -1)[None])[0]
    plan = tile_plan(20, 30, tile=(16, 16), halo=4, multiple=8)
    got = predict_stack(stack, net, plan, start=0, stop=9, size=4, halo=1, batch_size=3)
    assert got.shape == (9, 20, 30)
    np.testing.assert_allclose(got[1:-1], np.moveaxis(whole, -1, 0)[1:-1], atol=1e-6)
