"""volseg export: stores back to TIFF, round trips through `volseg convert`, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from volseg.testing import assert_refused, make_image_store, make_prediction
from volseg.stages import export as ex
from volseg.io import store as st
from volseg.io.tiff import frame_file_name
from volseg.stages.convert import convert
from volseg.errors import InputError


def read_back(path):
    return st.open_image(path).array[:]


@pytest.fixture
def images(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, size=(3, 4, 21, 34), dtype=np.uint8)
    return make_image_store(tmp_path / "images.zarr", arr), arr


# ----------------------------------------------------------------- round trips

@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_frames_round_trip_through_convert(tmp_path, cli, dtype):
    info = np.iinfo(dtype)
    arr = np.random.default_rng(1).integers(0, info.max, size=(2, 3, 19, 27), dtype=dtype)
    make_image_store(tmp_path / "in.zarr", arr)
    code, out, err = cli("export", tmp_path / "in.zarr", "-o", tmp_path / "tiffs")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "tiffs").iterdir() if not p.name.startswith("."))
    assert names == [f"t{t:03d}_z{z:03d}.tif" for t in range(2) for z in range(3)]
    assert "wrote" in out and "6 frame files" in out
    assert cli("convert", tmp_path / "tiffs", "-o", tmp_path / "back.zarr", "-q")[0] == 0
    back = read_back(tmp_path / "back.zarr")
    assert back.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(back, arr)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_hyperstack_round_trip_through_convert(tmp_path, cli, dtype):
    info = np.iinfo(dtype)
    arr = np.random.default_rng(2).integers(0, info.max, size=(3, 4, 17, 23), dtype=dtype)
    make_image_store(tmp_path / "in.zarr", arr)
    code, out, err = cli("export", tmp_path / "in.zarr", "-o", tmp_path / "stack.tif",
                         "--hyperstack")
    assert code == 0, err
    with tifffile.TiffFile(tmp_path / "stack.tif") as tif:
        assert tif.is_imagej
        assert tif.series[0].axes == "TZYX"
        assert tif.series[0].shape == arr.shape
        assert tif.imagej_metadata["frames"] == 3 and tif.imagej_metadata["slices"] == 4
    assert not list(tmp_path.glob(".*part"))  # the temporary file was renamed
    assert cli("convert", tmp_path / "stack.tif", "-o", tmp_path / "back.zarr", "-q")[0] == 0
    np.testing.assert_array_equal(read_back(tmp_path / "back.zarr"), arr)


@pytest.mark.parametrize("shape", [(1, 5, 9, 11), (4, 1, 9, 11), (1, 1, 9, 11)])
def test_hyperstack_singleton_axes_round_trip(tmp_path, shape):
    arr = np.random.default_rng(3).integers(0, 255, size=shape, dtype=np.uint8)
    make_image_store(tmp_path / "in.zarr", arr)
    ex.export_tiff(tmp_path / "in.zarr", tmp_path / "s.tif", hyperstack=True)
    convert([tmp_path / "s.tif"], tmp_path / "back.zarr")
    np.testing.assert_array_equal(read_back(tmp_path / "back.zarr"), arr)


def test_pixel_sizes_and_units_survive(tmp_path):
    arr = np.arange(2 * 3 * 8 * 10, dtype=np.uint16).reshape(2, 3, 8, 10)
    job = st.make_job("test", parameters={})
    image = st.create_image(tmp_path / "in.zarr", shape=arr.shape, dtype=arr.dtype, job=job,
                            units={"t": "second", "z": "micrometer", "y": "micrometer",
                                   "x": "micrometer"}, scale=(30.0, 2.0, 0.5, 0.5))
    image.array[...] = arr
    st.finish(image.group)
    summary = ex.export_tiff(tmp_path / "in.zarr", tmp_path / "s.tif", hyperstack=True)
    assert summary["units"]["x"] == "micrometer"
    with tifffile.TiffFile(tmp_path / "s.tif") as tif:
        ij = tif.imagej_metadata
        assert ij["unit"] == "micron" and ij["spacing"] == 2.0 and ij["finterval"] == 30.0
        xres = tif.pages.first.tags["XResolution"].value
        assert xres[0] / xres[1] == pytest.approx(2.0)  # 2 pixels per micron
    convert([tmp_path / "s.tif"], tmp_path / "back.zarr")
    back_scale, back_units = ex.physical_size(st.open_image(tmp_path / "back.zarr"))
    assert back_units == {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}
    assert [back_scale[a] for a in "tzyx"] == pytest.approx([30.0, 2.0, 0.5, 0.5])
    # per-frame files carry the same sizes, so a converted folder keeps them too
    ex.export_tiff(tmp_path / "in.zarr", tmp_path / "frames")
    convert([tmp_path / "frames"], tmp_path / "back2.zarr")
    scale2, units2 = ex.physical_size(st.open_image(tmp_path / "back2.zarr"))
    assert units2["x"] == "micrometer" and scale2["z"] == pytest.approx(2.0)


@pytest.mark.parametrize("unit, want", [("µm", ("micrometer", 0.5)), ("nm", ("nanometer", 0.5))])
def test_ome_tiff_pixel_sizes_are_read(tmp_path, unit, want):
    # OME-XML's PhysicalSize* and TimeIncrement (Bio-Formats, Zeiss and Nikon exports)
    arr = np.arange(2 * 3 * 8 * 10, dtype=np.uint16).reshape(2, 3, 8, 10)
    tifffile.imwrite(tmp_path / "s.ome.tif", arr, ome=True, metadata={
        "axes": "TZYX", "PhysicalSizeX": 0.5, "PhysicalSizeXUnit": unit,
        "PhysicalSizeY": 0.5, "PhysicalSizeYUnit": unit, "PhysicalSizeZ": 2.0,
        "PhysicalSizeZUnit": unit, "TimeIncrement": 30.0, "TimeIncrementUnit": "s"})
    convert([tmp_path / "s.ome.tif"], tmp_path / "o.zarr")
    scale, units = ex.physical_size(st.open_image(tmp_path / "o.zarr"))
    assert units == {"t": "second", "z": want[0], "y": want[0], "x": want[0]}
    assert [scale[a] for a in "tzyx"] == pytest.approx([30.0, 2.0, want[1], want[1]])
    np.testing.assert_array_equal(read_back(tmp_path / "o.zarr"), arr)


def test_frame_names_pad_beyond_three_digits():
    assert frame_file_name(7, 3, timepoints=10, depth=5) == "t007_z003.tif"
    assert frame_file_name(7, 3, timepoints=1001, depth=5) == "t0007_z003.tif"
    assert frame_file_name(7, 3, timepoints=1000, depth=5) == "t007_z003.tif"  # 0..999 fit


def test_many_groups_run_in_order_with_progress(tmp_path):
    # 40 slices make two shard rows per time point: several tasks, and frames in T, Z order
    arr = np.random.default_rng(4).integers(0, 255, size=(2, 40, 6, 7), dtype=np.uint8)
    make_image_store(tmp_path / "in.zarr", arr)
    calls = []
    summary = ex.export_tiff(tmp_path / "in.zarr", tmp_path / "s.tif", hyperstack=True,
                             progress=lambda d, n: calls.append((d, n)))
    assert summary["files"] == 1 and calls[-1] == (80, 80)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "s.tif"), arr)
    calls.clear()
    ex.export_tiff(tmp_path / "in.zarr", tmp_path / "f", progress=lambda d, n: calls.append((d, n)))
    assert calls[-1][0] == calls[-1][1] > 1
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "f" / "t001_z039.tif"), arr[1, 39])


def test_large_hyperstack_is_written_like_imagej(tmp_path, monkeypatch):
    # Over the classic-TIFF limit ImageJ writes one directory and then every frame; lower
    # the limit so a small file takes that path, and check tifffile/convert still read it.
    arr = np.random.default_rng(5).integers(0, 255, size=(2, 3, 16, 16), dtype=np.uint8)
    make_image_store(tmp_path / "in.zarr", arr)
    monkeypatch.setattr(ex, "IMAGEJ_CLASSIC_LIMIT", 100)
    summary = ex.export_tiff(tmp_path / "in.zarr", tmp_path / "big.tif", hyperstack=True)
    assert summary["truncated"] and any("4 GiB" in n for n in summary["notes"])
    with tifffile.TiffFile(tmp_path / "big.tif") as tif:
        assert len(tif.pages) == 1 and tif.series[0].shape == arr.shape
    convert([tmp_path / "big.tif"], tmp_path / "back.zarr")
    np.testing.assert_array_equal(read_back(tmp_path / "back.zarr"), arr)


# ----------------------------------------------------------------- predictions

def test_prediction_mask_and_probability(tmp_path, cli):
    prob = np.random.default_rng(6).integers(0, 256, size=(2, 3, 12, 14), dtype=np.uint8)
    pred = make_prediction(tmp_path / "pred.zarr", prob)
    mask = pred.mask.array[:]
    assert mask.max() == 1  # the fixture has both classes

    code, out, err = cli("export", tmp_path / "pred.zarr", "-o", tmp_path / "m")
    assert code == 0, err
    assert "exporting its mask" in out  # a bare prediction store means the mask: say so
    assert cli("convert", tmp_path / "m", "--mask", "-o", tmp_path / "m.zarr", "-q")[0] == 0
    np.testing.assert_array_equal(read_back(tmp_path / "m.zarr"), mask)

    code, out, err = cli("export", tmp_path / "pred.zarr" / "mask", "-o", tmp_path / "m.tif",
                         "--hyperstack")
    assert code == 0, err
    assert "exporting its mask" not in out
    with tifffile.TiffFile(tmp_path / "m.tif") as tif:
        assert tif.imagej_metadata["max"] == 1  # display range 0..1: a 0/1 mask is visible
        np.testing.assert_array_equal(tif.asarray(), mask)

    code, out, err = cli("export", f"{tmp_path / 'pred.zarr'}/probability", "-o", tmp_path / "p")
    assert code == 0, err
    assert cli("convert", tmp_path / "p", "-o", tmp_path / "p.zarr", "-q")[0] == 0
    np.testing.assert_array_equal(read_back(tmp_path / "p.zarr"), prob)


def test_mask_only_prediction_has_no_probability(tmp_path, cli):
    prob = np.zeros((1, 2, 5, 6), np.uint8)
    make_prediction(tmp_path / "pred.zarr", prob, with_probability=False)
    code, out, err = cli("export", tmp_path / "pred.zarr" / "probability", "-o", tmp_path / "p")
    assert code == 2 and "no probabilities" in err and len(err.strip().splitlines()) == 1


# ----------------------------------------------------------------- bad input and overwrite

def test_bad_inputs_exit_2_with_one_line(tmp_path, cli, images):
    store = tmp_path / "images.zarr"
    assert_refused(cli("export", tmp_path / "nope.zarr", "-o", tmp_path / "o"), "nope.zarr")
    assert_refused(cli("export", store / "mask", "-o", tmp_path / "o"), "mask")
    assert_refused(cli("export", store, "-o", tmp_path / "o.png", "--hyperstack"), ".tif")
    assert_refused(cli("export", store, "-o", tmp_path / "no" / "dir"), "does not exist")
    (tmp_path / "notes.txt").write_text("keep me")
    assert_refused(cli("export", store, "-o", tmp_path / "notes.txt"), "not a folder")
    # an incomplete store is refused
    arr = np.zeros((1, 1, 4, 4), np.uint8)
    st.create_image(tmp_path / "half.zarr", shape=arr.shape, dtype=arr.dtype,
                    job=st.make_job("test", parameters={}))
    assert_refused(cli("export", tmp_path / "half.zarr", "-o", tmp_path / "h"), "incomplete")
    assert not (tmp_path / "h").exists()


def test_hyperstack_refuses_types_imagej_cannot_read(tmp_path, cli):
    make_image_store(tmp_path / "u32.zarr", np.arange(12, dtype=np.uint32).reshape(1, 1, 3, 4))
    assert_refused(cli("export", tmp_path / "u32.zarr", "-o", tmp_path / "s.tif", "--hyperstack"),
                    "uint32", "--hyperstack")
    # per-frame files take it, as plain TIFF (and round-trip)
    code, out, err = cli("export", tmp_path / "u32.zarr", "-o", tmp_path / "f")
    assert code == 0 and "not an ImageJ type" in out
    assert tifffile.imread(tmp_path / "f" / "t000_z000.tif").dtype == np.uint32


def test_existing_outputs_need_overwrite_and_only_volseg_files_go(tmp_path, cli, images):
    store = tmp_path / "images.zarr"
    _, arr = images
    assert cli("export", store, "-o", tmp_path / "f", "-q")[0] == 0
    assert_refused(cli("export", store, "-o", tmp_path / "f"), "--overwrite")
    # a stale extra frame (from a bigger earlier export) is removed on --overwrite
    tifffile.imwrite(tmp_path / "f" / "t099_z000.tif", arr[0, 0])
    assert cli("export", store, "-o", tmp_path / "f", "--overwrite", "-q")[0] == 0
    assert not (tmp_path / "f" / "t099_z000.tif").exists()
    assert len(list((tmp_path / "f").glob("t*.tif"))) == 12
    # a folder with anything else in it is never touched, even with --overwrite
    (tmp_path / "f" / "README.txt").write_text("mine")
    assert_refused(cli("export", store, "-o", tmp_path / "f", "--overwrite"), "README.txt")
    assert (tmp_path / "f" / "t000_z000.tif").exists()

    assert cli("export", store, "-o", tmp_path / "s.tif", "--hyperstack", "-q")[0] == 0
    assert_refused(cli("export", store, "-o", tmp_path / "s.tif", "--hyperstack"), "--overwrite")
    assert cli("export", store, "-o", tmp_path / "s.tif", "--hyperstack", "--overwrite",
               "-q")[0] == 0
    (tmp_path / "x.tif").write_text("not a tiff")
    assert_refused(cli("export", store, "-o", tmp_path / "x.tif", "--hyperstack", "--overwrite"),
                    "not a TIFF")
    assert (tmp_path / "x.tif").read_text() == "not a tiff"


def test_library_array_argument(tmp_path):
    prob = np.full((1, 1, 4, 5), 200, np.uint8)
    make_prediction(tmp_path / "pred.zarr", prob)
    summary = ex.export_tiff(tmp_path / "pred.zarr", tmp_path / "p.tif", array="probability",
                             hyperstack=True)
    assert summary["source"].endswith("pred.zarr/probability") and not summary["truncated"]
    assert (tifffile.imread(tmp_path / "p.tif") == 200).all()
    with pytest.raises(InputError, match="'probability' and 'mask'"):
        ex.export_tiff(tmp_path / "pred.zarr", tmp_path / "q", array="logits")


@pytest.mark.parametrize("hyperstack", [False, True])
def test_one_writer_per_export_output(tmp_path, cli, images, hyperstack):
    # a second export to the same place, while one runs, is refused: never two writers
    # mixing frames (or one .part file) of two stores
    from volseg.engine.outputs import writer_lock
    from volseg.testing import assert_refused

    store = images[0].path
    out = tmp_path / ("stack.tif" if hyperstack else "frames")
    flag = ["--hyperstack"] if hyperstack else []
    with writer_lock(out, command="volseg export (the first run)"):
        assert_refused(cli("export", store, "-o", out, *flag), "another volseg is writing it",
                       "the first run")
    assert not out.exists()
    code, _, err = cli("export", store, "-o", out, *flag)
    assert code == 0, err
    assert not list(tmp_path.glob(".*.lock"))  # the lock goes with the run
