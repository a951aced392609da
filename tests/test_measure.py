"""volseg measure against geometry whose answer is known, and the command's contract."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest

from volseg.stages.measure import measure_volume, upsample_z

from volseg.testing import make_image_store


def tube(shape, spacing, p0, p1, radius, out=None):
    """Voxels within ``radius`` of the segment p0-p1 (a capsule; physical (z, y, x) units).

    A capsule's centre line is the segment: its length is known exactly.
    """
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    g = np.stack(grids, axis=-1)
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    v = p1 - p0
    u = np.clip(((g - p0) @ v) / (v @ v), 0.0, 1.0)
    inside = np.linalg.norm(g - p0 - u[..., None] * v, axis=-1) <= radius
    return inside if out is None else out | inside


ISO = (1.0, 1.0, 1.0)
ANISO = (3.0, 1.0, 1.0)  # z step 3x the pixel size, as in the microscope data


def test_straight_tube_length_diameter_and_ends():
    mask = tube((24, 24, 240), ISO, (12, 12, 20), (12, 12, 220), 6.0)
    r = measure_volume(mask, ISO)
    assert r["skeleton_length"] == pytest.approx(200.0, rel=0.03)
    assert r["median_diameter"] == pytest.approx(12.0, rel=0.10)
    assert r["mean_diameter"] == pytest.approx(12.0, rel=0.10)
    assert (r["branch_points"], r["end_points"], r["branches"], r["components"]) == (0, 2, 1, 1)
    assert r["tortuosity"] == pytest.approx(1.0, abs=0.02)
    assert r["volume"] == pytest.approx(np.pi * 36 * 200 + 4 / 3 * np.pi * 216, rel=0.03)


def test_tube_along_z_with_coarse_z_has_the_length_of_the_tube_along_x():
    along_x = measure_volume(tube((24, 24, 240), ISO, (12, 12, 20), (12, 12, 220), 6.0), ISO)
    along_z = measure_volume(tube((80, 24, 24), ANISO, (20, 12, 12), (220, 12, 12), 6.0), ANISO)
    assert along_z["skeleton_length"] == pytest.approx(200.0, rel=0.03)
    assert along_z["skeleton_length"] == pytest.approx(along_x["skeleton_length"], rel=0.03)
    assert along_z["median_diameter"] == pytest.approx(12.0, rel=0.10)
    assert (along_z["branch_points"], along_z["end_points"]) == (0, 2)
    # Measured as cubes, the same voxels would give a third of the length.
    as_cubes = measure_volume(tube((80, 24, 24), ANISO, (20, 12, 12), (220, 12, 12), 6.0), ISO)
    assert as_cubes["skeleton_length"] < 0.4 * along_z["skeleton_length"]


def test_y_of_three_tubes_has_one_branch_point_and_three_ends():
    shape, c = (12, 120, 120), (18.0, 60.0, 60.0)
    mask = None
    for angle in (90.0, 210.0, 330.0):
        a = np.radians(angle)
        end = (18.0, 60 + 50 * np.sin(a), 60 + 50 * np.cos(a))
        mask = tube(shape, ANISO, c, end, 5.0, out=mask)
    r = measure_volume(mask, ANISO)
    assert (r["branch_points"], r["end_points"], r["branches"], r["components"]) == (1, 3, 3, 1)
    assert r["skeleton_length"] == pytest.approx(150.0, rel=0.05)


def test_ring_has_no_end_points():
    shape = (24, 100, 100)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    ring = np.hypot(np.hypot(y - 50, x - 50) - 35, z - 12) <= 5
    r = measure_volume(ring, ISO)
    assert (r["end_points"], r["branch_points"], r["components"]) == (0, 0, 1)
    assert r["skeleton_length"] == pytest.approx(2 * np.pi * 35, rel=0.03)


def test_two_separate_tubes_are_two_components():
    mask = tube((10, 60, 160), ANISO, (15, 15, 20), (15, 15, 140), 5.0)
    mask = tube((10, 60, 160), ANISO, (15, 45, 20), (15, 45, 140), 5.0, out=mask)
    r = measure_volume(mask, ANISO)
    assert (r["components"], r["end_points"], r["branch_points"]) == (2, 4, 0)
    assert r["skeleton_length"] == pytest.approx(240.0, rel=0.03)


def test_spurs_shorter_than_the_prune_length_are_not_counted():
    shape = (24, 48, 240)
    mask = tube(shape, ISO, (12, 24, 20), (12, 24, 220), 6.0)
    # Three bumps on the wall, each ending 5 voxels beyond it: spurs about 8 long.
    for x in (70.0, 120.0, 170.0):
        mask = tube(shape, ISO, (12, 24, x), (12, 35, x), 2.5, out=mask)
    kept = measure_volume(mask, ISO, prune=0)
    assert kept["end_points"] > 2 and kept["branch_points"] > 0  # the spurs are there...
    pruned = measure_volume(mask, ISO, prune=15.0)
    assert (pruned["branch_points"], pruned["end_points"]) == (0, 2)  # ... and pruned away
    assert pruned["skeleton_length"] == pytest.approx(200.0, rel=0.03)
    default = measure_volume(mask, ISO)  # the default prune length also removes them
    assert (default["branch_points"], default["end_points"]) == (0, 2)
    # A real side branch longer than the prune length stays.
    branched = tube(shape, ISO, (12, 24, 120), (12, 47, 120), 4.0, out=mask)
    assert measure_volume(branched, ISO, prune=15.0)["branch_points"] == 1


def test_upsample_keeps_the_original_slices_and_morphs_between():
    mask = np.zeros((2, 20, 20), bool)
    mask[0, 5:10, 5:10] = True
    mask[1, 9:14, 9:14] = True
    up = upsample_z(mask, 4)
    assert up.shape == (5, 20, 20)
    assert np.array_equal(up[0], mask[0]) and np.array_equal(up[-1], mask[1])
    centre = np.argwhere(up[2]).mean(axis=0)  # half-way, the square sits half-way
    assert centre == pytest.approx((9.0, 9.0), abs=0.6)


def test_empty_volume_measures_zero():
    r = measure_volume(np.zeros((4, 16, 16), np.uint8), ANISO)
    assert (r["volume"], r["skeleton_length"], r["components"], r["end_points"]) == (0, 0, 0, 0)
    assert r["median_diameter"] is None and r["tortuosity"] is None


@pytest.mark.parametrize("specks", [[(1, 10, 10)], [(1, 10, 10), (2, 40, 70)]])
def test_specks_only_have_no_skeleton_length(specks):
    """A nearly empty time point (a few isolated voxels) with the default pruning."""
    mask = np.zeros((3, 64, 96), np.uint8)
    for z, y, x in specks:
        mask[z, y, x] = 1
    r = measure_volume(mask, (1.0, 1.0, 1.0))
    assert r["components"] == len(specks) and r["volume"] == len(specks)
    assert r["skeleton_length"] == 0 and r["branches"] == 0 and r["branch_points"] == 0


def test_synth_truth_length_matches_the_generator(tmp_path, cli):
    """The labels of `volseg synth`, measured, against the generator's own centre lines."""
    assert cli("synth", "-o", tmp_path / "d", "--timepoints", "2", "--depth", "6", "--height",
               "200", "--width", "260", "--seed", "3", "-q")[0] == 0
    record = json.loads((tmp_path / "d" / "synth.json").read_text())
    assert cli("convert", tmp_path / "d" / "labels", "--mask", "-o", tmp_path / "t.zarr",
               "-q")[0] == 0
    from volseg.stages.measure import measure

    z_step = record["z_step"]
    report = measure(tmp_path / "t.zarr", spacing=(z_step, 1, 1), threads=1)
    for row, length in zip(report["per_timepoint"], record["centreline_length"]):
        assert length > 300
        assert row["skeleton_length"] == pytest.approx(length, rel=0.10)


# --------------------------------------------------------------------------- command

@pytest.fixture
def stores(tmp_path):
    """A 'truth' of two time points (a Y, then the Y with a longer arm) and a 'prediction'
    that misses one arm at t=1; z step 3."""
    shape, c = (8, 100, 100), (10.5, 50.0, 50.0)
    truth = np.zeros((2,) + shape, np.uint8)
    pred = np.zeros_like(truth)
    for t in range(2):
        arms = [(10.5, 50 + 40 * np.sin(a), 50 + 40 * np.cos(a))
                for a in np.radians((90.0, 210.0, 330.0))]
        m = None
        for end in arms:
            m = tube(shape, ANISO, c, end, 4.0, out=m)
        truth[t] = m
        pred[t] = m if t == 0 else tube(shape, ANISO, arms[0], arms[1], 4.0)
    make_image_store(tmp_path / "truth.zarr", truth, mask=True)
    make_image_store(tmp_path / "pred.zarr", pred, mask=True)
    return tmp_path


def test_cli_truth_json_csv_plots(stores, cli):
    d = stores
    code, out, err = cli("measure", d / "pred.zarr", "--truth", d / "truth.zarr",
                         "--spacing", "3,1,1", "--json", d / "m.json", "--csv", d / "m.csv",
                         "--plots", d / "figs")
    assert code == 0, err
    report = json.loads((d / "m.json").read_text())
    assert {"per_timepoint", "summary", "spacing", "units"} <= set(report)
    assert report["spacing"] == {"z": 3.0, "y": 1.0, "x": 1.0}
    keys = {"t", "volume", "skeleton_length", "branches", "branch_points", "end_points",
            "components", "mean_diameter", "median_diameter", "tortuosity"}
    rows = report["per_timepoint"]
    assert [r["t"] for r in rows] == [0, 1] and all(keys <= set(r) for r in rows)
    # t=0: identical masks, no error; t=1: the prediction is one straight tube.
    assert rows[0]["relative_error"]["skeleton_length"] == pytest.approx(0.0, abs=1e-9)
    assert rows[1]["branch_points"] == 0 and rows[1]["truth"]["branch_points"] == 1
    assert rows[1]["relative_error"]["branch_points"] == pytest.approx(-1.0)
    assert rows[1]["relative_error"]["end_points"] == pytest.approx(-1 / 3)
    assert rows[1]["relative_error"]["skeleton_length"] < -0.1
    s = report["summary"]
    assert s["relative_error"]["branch_points"] == pytest.approx(-0.5)
    assert s["truth"]["end_points"] == pytest.approx(3.0)
    with open(d / "m.csv", newline="") as fh:
        table = list(csv.DictReader(fh))
    assert [r["t"] for r in table] == ["0", "1"]
    assert float(table[1]["truth_branch_points"]) == 1.0
    assert float(table[1]["error_branch_points"]) == pytest.approx(-1.0)
    for name in ("measures.png", "skeleton.png"):
        assert (d / "figs" / name).read_bytes().startswith(b"\x89PNG")
    assert "error" in out and "-100.0%" in out
    # Reports volseg wrote are replaced without asking; a user's file is not.
    assert cli("measure", d / "pred.zarr", "--spacing", "3,1,1", "--json", d / "m.json",
               "-q")[0] == 0
    (d / "mine.csv").write_text("name,value\n")
    code, _, err = cli("measure", d / "pred.zarr", "--csv", d / "mine.csv", "-q")
    assert code == 2 and "--overwrite" in err


@pytest.mark.parametrize("extra, needle", [
    (["--spacing", "3,1"], "--spacing: expected three numbers"),
    (["--spacing", "3,0,1"], "--spacing: every voxel size must be a positive number"),
    (["--spacing", "a,b,c"], "--spacing: expected three numbers"),
    (["--prune", "-1"], "--prune: must be a length >= 0"),
    (["--max-bytes", "1000"], "--max-bytes: one time point"),
    (["--picture-t", "2"], "--picture-t: 2 is not a time point of"),
    (["--picture-t", "-1"], "--picture-t: -1 is not a time point of"),
])
def test_cli_bad_parameters_exit_2_with_one_line(stores, cli, extra, needle):
    code, out, err = cli("measure", stores / "pred.zarr", *extra)
    assert code == 2 and needle in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def _scaled_mask(path, array, scale, unit="micrometer"):
    from volseg.io import store as st

    image = st.create_image(path, shape=array.shape, dtype=np.uint8, scale=scale,
                            units={a: unit for a in "zyx"},
                            job=st.make_job("test", parameters={"mask": True}),
                            extra={"content": "mask"})
    image.array[...] = array
    st.finish(image.group)
    return path


@pytest.mark.no_ngff_check  # a scale of 0 does not validate, on purpose
def test_voxel_sizes_recorded_differently_refused(stores, cli):
    """A mask and a truth of different voxel sizes: which is right is the user's call."""
    from volseg.io.store import open_image

    truth = np.asarray(open_image(stores / "truth.zarr").array[:])
    mask = _scaled_mask(stores / "m3.zarr", truth, (1.0, 3.0, 1.0, 1.0))
    for scale, unit in [((1.0, 1.0, 0.5, 0.5), "micrometer"), ((1.0, 3.0, 1.0, 1.0), "nanometer")]:
        other = _scaled_mask(stores / "t.zarr", truth, scale, unit)
        code, out, err = cli("measure", mask, "--truth", other, "-q")
        assert code == 2 and "t.zarr: records the voxel size" in err and "--spacing" in err, err
        shutil.rmtree(other)
    same = _scaled_mask(stores / "t.zarr", truth, (1.0, 3.0, 1.0, 1.0))
    code, out, err = cli("measure", mask, "--truth", same, "--json", stores / "r.json", "-q")
    assert code == 0, err
    assert json.loads((stores / "r.json").read_text())["spacing"] == {"z": 3.0, "y": 1.0, "x": 1.0}
    # a scale of 0 recorded in the store: named, not blamed on --spacing
    flat = _scaled_mask(stores / "flat.zarr", truth, (1.0, 1.0, 1.0, 1.0))
    import zarr

    group = zarr.open_group(flat, mode="r+")
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"][1] = 0.0
    group.attrs["ome"] = ome
    code, out, err = cli("measure", flat, "-q")
    assert code == 2 and "flat.zarr: the NGFF scale" in err and "not a positive" in err, err


def test_roi_0_255_of_one_time_point_applies_to_all(stores):
    """The ROIs evaluate and predict take (nonzero inside, one time point for all)."""
    from volseg.stages.measure import measure

    half = np.zeros((1, 8, 100, 100), np.uint8)
    half[..., :50] = 255
    make_image_store(stores / "half.zarr", half)
    whole = measure(stores / "truth.zarr", spacing="3,1,1", threads=1)
    inside = measure(stores / "truth.zarr", roi_path=stores / "half.zarr", spacing="3,1,1",
                     threads=1)
    from volseg.io.store import open_image

    truth = np.asarray(open_image(stores / "truth.zarr").array[:]).astype(bool)
    for t, (a, b) in enumerate(zip(whole["per_timepoint"], inside["per_timepoint"])):
        assert b["volume"] == int(truth[t][..., :50].sum()) * 3 < a["volume"]


def test_cli_bad_stores_exit_2_with_one_line(stores, cli, tmp_path):
    d = stores
    grey = np.zeros((2, 8, 100, 100), np.uint8)
    grey[:, :, 10:20, 10:20] = 7
    make_image_store(d / "grey.zarr", grey)
    make_image_store(d / "small.zarr", np.zeros((2, 8, 50, 100), np.uint8), mask=True)
    from volseg.io import store as st

    part = st.create_image(d / "part.zarr", shape=(2, 8, 100, 100), dtype=np.uint8,
                           job=st.make_job("test", parameters={}))  # never finished
    part.array[...] = 0
    for args, needle in [
        ((d / "grey.zarr",), "not 0/1; measure needs a 0/1 mask"),
        ((d / "pred.zarr", "--truth", d / "small.zarr"), "differs from the mask's"),
        ((d / "pred.zarr", "--roi", d / "small.zarr"), "ROI shape"),
        ((d / "part.zarr",), "part.zarr"),
        ((d / "nothing.zarr",), "nothing.zarr"),
    ]:
        code, out, err = cli("measure", *args, "-q")
        assert code == 2, (args, err)
        assert needle in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.mark.no_ngff_check  # its store's metadata is damaged on purpose
def test_edge_cases_are_finite_or_refused(tmp_path, cli):
    from volseg.errors import InputError
    from volseg.stages.measure import parse_spacing
    from volseg.testing import assert_refused

    # a field full of structure has no wall: no diameter (None), never inf, and JSON works
    full = measure_volume(np.ones((4, 20, 20), np.uint8))
    assert full["mean_diameter"] is None and full["median_diameter"] is None
    make_image_store(tmp_path / "full.zarr", np.ones((1, 4, 20, 20), np.uint8), mask=True)
    code, _, err = cli("measure", tmp_path / "full.zarr", "--json", tmp_path / "m.json")
    assert code == 0, err
    assert json.loads((tmp_path / "m.json").read_text())["per_timepoint"][0]["volume"] == 1600
    # voxel sizes that overflow, or a z step that is a unit mix-up, are the option's fault
    for bad in ("1e308,1,1", "1e300,1,1", "1,1e-12,1"):
        with pytest.raises(InputError, match="outside"):
            parse_spacing(bad)
    with pytest.raises(InputError, match="1000 times the pixel size"):
        parse_spacing("5000,1,1")
    # a store whose NGFF scale holds a string or null: one line from info and measure
    import zarr

    group = zarr.open_group(tmp_path / "full.zarr", mode="r+")
    ome = dict(group.attrs["ome"])
    ome["multiscales"][0]["datasets"][0]["coordinateTransformations"][0]["scale"] = \
        ["x", 1, None, 1]
    group.attrs["ome"] = ome
    for command in ("info", "measure"):
        assert_refused(cli(command, tmp_path / "full.zarr"), "NGFF scale", "not a positive number")


def test_memory_estimate_covers_flat_stacks_of_large_frames():
    # measured peaks above the interpreter's (benchmarks/bench_measure.py --flat): the
    # per-voxel term alone said 0.54 GiB for 2 x 3000 x 3000, which peaked at 1.95 GiB
    from volseg.stages.measure import task_bytes

    for shape, spacing, peak_mib in (((2, 3000, 3000), (1, 1, 1), 1993),
                                     ((8, 1500, 1500), (1, 1, 1), 767),
                                     ((2, 2000, 2000), (3, 1, 1), 984)):
        assert peak_mib * 2**20 <= task_bytes(shape, spacing) <= 1.6 * peak_mib * 2**20


@pytest.mark.parametrize("shape, spacing, p0, p1, radius, length", [
    ((24, 24, 240), ISO, (12, 12, -50), (12, 12, 290), 6.0, 239.0),  # along x
    ((24, 100, 100), ISO, (12, -20, -20), (12, 120, 120), 5.0, 99 * 2 ** 0.5),  # diagonal
    ((8, 120, 120), ANISO, (12, 60, -10), (12, 60, 130), 6.0, 119.0),  # coarse z
])
def test_a_tube_crossing_the_field_has_its_whole_length(shape, spacing, p0, p1, radius,
                                                       length):
    # the skeleton stops about a radius short of each flat cut at the field's edge (3-8 %
    # short before the edge extension); tortuosity stays that of a straight line
    r = measure_volume(tube(shape, spacing, p0, p1, radius), spacing)
    assert r["skeleton_length"] == pytest.approx(length, rel=0.01)
    assert r["tortuosity"] == pytest.approx(1.0, abs=0.02)
    assert r["end_points"] == 2
