"""volseg convert: TIFF stacks -> OME-Zarr, round trips, bad input, resume after kill -9."""

from __future__ import annotations

import json
import signal
import subprocess
import time

import numpy as np
import pytest
import tifffile

from volseg.testing import VOLSEG_COMMAND as VOLSEG, assert_refused, write_frames
from volseg.io import store as st
from volseg.stages.convert import convert, to_binary
from volseg.errors import InputError


def read_store(path):
    image = st.open_image(path)
    return image.array[:]


# ----------------------------------------------------------------- round trips

def test_frames_folder_round_trip(frames_dir, tmp_path):
    folder, arr = frames_dir
    summary = convert([folder], tmp_path / "out.zarr")
    assert summary["shape"] == arr.shape
    np.testing.assert_array_equal(read_store(tmp_path / "out.zarr"), arr)
    image = st.open_image(tmp_path / "out.zarr")
    assert image.complete
    assert image.array.metadata.dimension_names == ("t", "z", "y", "x")
    assert st.LEDGER not in image.group  # ledger removed once complete


def test_uint16_kept(tmp_path):
    arr = np.random.default_rng(1).integers(0, 65535, size=(2, 3, 20, 31), dtype=np.uint16)
    write_frames(tmp_path / "f", arr)
    convert([tmp_path / "f"], tmp_path / "o.zarr")
    out = read_store(tmp_path / "o.zarr")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, arr)


def test_multipage_per_timepoint_files_and_folder(tmp_path):
    arr = np.random.default_rng(2).integers(0, 255, size=(3, 5, 24, 33), dtype=np.uint8)
    files = []
    (tmp_path / "tp").mkdir()
    for t in range(3):
        f = tmp_path / "tp" / f"stack_{t}.tif"
        tifffile.imwrite(f, arr[t], photometric="minisblack", compression="zlib")
        files.append(f)
    convert(files, tmp_path / "a.zarr")
    np.testing.assert_array_equal(read_store(tmp_path / "a.zarr"), arr)
    convert([tmp_path / "tp"], tmp_path / "b.zarr")
    np.testing.assert_array_equal(read_store(tmp_path / "b.zarr"), arr)


def test_timepoint_files_ordered_by_the_number_that_differs(cli, tmp_path):
    """``day10_pos2.tif``: the last number is the same in every file; the time point is
    the one that differs, whatever order the shell lists the files in."""
    folder = tmp_path / "days"
    folder.mkdir()
    days = (1, 2, 3, 10, 11)
    for d in days:
        tifffile.imwrite(folder / f"day{d}_pos2.tif", np.full((3, 8, 10), d, np.uint8),
                         photometric="minisblack")
    as_the_shell_lists = sorted(folder.iterdir())  # day10, day11, day1, day2, day3
    summary = convert(as_the_shell_lists, tmp_path / "a.zarr", allow_gaps=True)
    assert read_store(tmp_path / "a.zarr")[:, 0, 0, 0].tolist() == list(days)
    assert summary["source_indices"] == {"t": list(days)}
    # without --allow-gaps the missing days are refused, as for any numbering
    _bad(cli, "convert", *as_the_shell_lists, "-o", tmp_path / "b.zarr",
         match="time points t=4, 5, 6, 7, 8, 9 are missing")
    # two numbers that differ: the order would be a guess
    other = tmp_path / "other"
    other.mkdir()
    for a, b in ((1, 5), (2, 4), (3, 6)):  # run and dish both differ, position 2 does not
        tifffile.imwrite(other / f"run{a}_dish{b}_pos2.tif", np.zeros((3, 8, 10), np.uint8),
                         photometric="minisblack")
    _bad(cli, "convert", other, "-o", tmp_path / "c.zarr",
         match="cannot tell the time points' order from the file names")


@pytest.mark.parametrize("kind", ["imagej", "ome"])
def test_hyperstack(tmp_path, kind):
    arr = np.random.default_rng(3).integers(0, 255, size=(2, 3, 16, 25), dtype=np.uint8)
    f = tmp_path / f"h_{kind}.tif"
    tifffile.imwrite(f, arr, **{kind: True}, metadata={"axes": "TZYX"})
    convert([f], tmp_path / "h.zarr")
    np.testing.assert_array_equal(read_store(tmp_path / "h.zarr"), arr)


def test_missing_axes_become_singletons(tmp_path):
    arr = np.random.default_rng(4).integers(0, 255, size=(6, 16, 25), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "z.tif", arr, imagej=True, metadata={"axes": "ZYX"})
    convert([tmp_path / "z.tif"], tmp_path / "z.zarr")
    np.testing.assert_array_equal(read_store(tmp_path / "z.zarr"), arr[None])
    tifffile.imwrite(tmp_path / "one.tif", arr[0])
    convert([tmp_path / "one.tif"], tmp_path / "one.zarr")
    assert read_store(tmp_path / "one.zarr").shape == (1, 1, 16, 25)


def test_ome_zarr_reader_opens_store(frames_dir, tmp_path):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    folder, arr = frames_dir
    convert([folder], tmp_path / "out.zarr")
    nodes = list(Reader(parse_url(str(tmp_path / "out.zarr")))())
    axes = [a["name"] for a in nodes[0].metadata["axes"]]
    assert axes == ["t", "z", "y", "x"]
    np.testing.assert_array_equal(np.asarray(nodes[0].data[0]), arr)


def test_custom_chunks_and_pattern(tmp_path):
    arr = np.random.default_rng(5).integers(0, 255, size=(2, 2, 40, 60), dtype=np.uint8)
    write_frames(tmp_path / "f", arr, name="img-T{t}-Z{z}.tif")
    convert([tmp_path / "f"], tmp_path / "o.zarr", pattern="T{t}-Z{z}", chunks="16,32")
    image = st.open_image(tmp_path / "o.zarr")
    assert image.chunks == (1, 1, 16, 32)
    np.testing.assert_array_equal(image.array[:], arr)


def test_default_chunks_shard_several_frames():
    chunks, shards = st.default_chunks((100, 30, 523, 821), "uint8")
    assert chunks == (1, 1, 523, 821)
    assert shards[1] > 1 and shards[2:] == (523, 821)
    chunks, shards = st.default_chunks((1, 1, 20000, 9000), "uint16")
    assert chunks == (1, 1, 1024, 1024)
    assert shards[2] % 1024 == 0 and shards[2] <= 4096


# ----------------------------------------------------------------- masks

def test_mask_0_255_becomes_0_1(tmp_path):
    labels = (np.random.default_rng(6).random((2, 2, 20, 20)) > 0.9).astype(np.uint8) * 255
    write_frames(tmp_path / "l", labels)
    convert([tmp_path / "l"], tmp_path / "m.zarr", mask=True)
    out = read_store(tmp_path / "m.zarr")
    np.testing.assert_array_equal(out, labels // 255)
    assert st.open_image(tmp_path / "m.zarr").volseg["content"] == "mask"


def test_to_binary_names_values():
    with pytest.raises(InputError, match=r"b.tif: mask has values \{0, 1, 2\}"):
        to_binary(np.array([[[0, 1]], [[1, 2]]], dtype=np.uint8), names=["a.tif", "b.tif"])


# ----------------------------------------------------------------- bad input, via the CLI

def _bad(cli, *args, match):
    code, out, err = cli(*args)
    assert code == 2, (code, err)
    lines = [l for l in err.strip().splitlines() if l]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert match in lines[0], lines[0]
    return lines[0]


def test_output_inside_the_input_folder_reruns(cli, tmp_path):
    arr = np.random.default_rng(6).integers(0, 255, size=(2, 2, 10, 12), dtype=np.uint8)
    folder = write_frames(tmp_path / "f", arr)
    for extra in ((), ("--overwrite",)):
        code, _, err = cli("convert", folder, "-o", folder / "img.zarr", "-q", *extra)
        assert code == 0, err
        np.testing.assert_array_equal(read_store(folder / "img.zarr"), arr)
    (folder / "sub").mkdir()  # any other folder among the frames is still refused
    _bad(cli, "convert", folder, "-o", tmp_path / "o.zarr", match="sub: a folder among the frames")


def test_bad_inputs(cli, tmp_path, frames_dir):
    folder, arr = frames_dir
    out = tmp_path / "o.zarr"
    _bad(cli, "convert", tmp_path / "nope", "-o", out, match="no such file")
    (tmp_path / "empty").mkdir()
    _bad(cli, "convert", tmp_path / "empty", "-o", out, match="no TIFF files")
    assert not out.exists()

    other = tmp_path / "other"
    write_frames(other, arr)
    (other / "notes.txt").write_text("hello")
    _bad(cli, "convert", other, "-o", out, match="notes.txt: not a TIFF")


def test_bad_frames(cli, tmp_path):
    arr = np.zeros((2, 2, 10, 12), np.uint8)
    out = tmp_path / "o.zarr"

    f = write_frames(tmp_path / "missing", arr)
    (f / "t001_z000.tif").unlink()
    _bad(cli, "convert", f, "-o", out, match="missing frame t=1 z=0")

    f = write_frames(tmp_path / "sizes", arr)
    tifffile.imwrite(f / "t001_z001.tif", np.zeros((11, 12), np.uint8))
    _bad(cli, "convert", f, "-o", out, match="t001_z001.tif: frame size 11x12 differs")

    f = write_frames(tmp_path / "dtypes", arr)
    tifffile.imwrite(f / "t001_z001.tif", np.zeros((10, 12), np.uint16))
    _bad(cli, "convert", f, "-o", out, match="uint16 differs")

    f = write_frames(tmp_path / "names", arr)
    tifffile.imwrite(f / "frame7.tif", np.zeros((10, 12), np.uint8))
    _bad(cli, "convert", f, "-o", out, match="frame7.tif: file name does not match")

    f = write_frames(tmp_path / "corrupt", arr)
    (f / "t000_z001.tif").write_bytes(b"II*\x00garbage")
    _bad(cli, "convert", f, "-o", out, match="t000_z001.tif: not a readable TIFF")
    assert not out.exists()


def test_truncated_tiff_leaves_no_store(cli, tmp_path):
    arr = np.random.default_rng(7).integers(0, 255, size=(2, 2, 64, 64), dtype=np.uint8)
    f = write_frames(tmp_path / "trunc", arr, compression="zlib")
    victim = f / "t001_z001.tif"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 2] + data[-200:])  # header intact, strips cut
    code, out, err = cli("convert", f, "-o", tmp_path / "o.zarr")
    if code == 0:  # tifffile could recover the frame: then it must be read back faithfully
        pytest.skip("tifffile read the truncated file")
    assert code == 2 and "t001_z001.tif" in err and "Traceback" not in err
    # bad input: the store this run began is removed (a rerun with the file fixed starts
    # afresh instead of being refused as "another job's unfinished store")
    assert not (tmp_path / "o.zarr").exists()
    with pytest.raises(InputError, match="no such"):
        st.open_image(tmp_path / "o.zarr")


@pytest.mark.parametrize("imagej", [True, False])
def test_multipage_file_cut_short_refused(cli, tmp_path, imagej):
    """A file cut in the middle of its pages (a copy that stopped): tifffile falls back
    to the pages it finds, which must not pass for the whole stack."""
    arr = np.random.default_rng(3).integers(0, 255, (3, 4, 64, 80)).astype(np.uint16)
    whole = tmp_path / "stack.tif"
    if imagej:
        tifffile.imwrite(whole, arr, imagej=True, metadata={"axes": "TZYX"})
    else:
        tifffile.imwrite(whole, arr.reshape(12, 64, 80), metadata=None)
    data = whole.read_bytes()
    cut = tmp_path / "cut.tif"
    cut.write_bytes(data[: int(len(data) * 0.7)])
    _bad(cli, "convert", cut, "-o", tmp_path / "o.zarr", match="cut.tif: damaged TIFF")
    assert not (tmp_path / "o.zarr").exists()


def test_file_of_several_series_refused(cli, tmp_path):
    """Pages of another size in the middle, or a second stage position: reading the first
    series alone would drop frames without a word."""
    pages = tmp_path / "pages.tif"
    with tifffile.TiffWriter(pages) as w:
        for k, shape in enumerate([(64, 80), (64, 80), (32, 40), (64, 80)]):
            w.write(np.full(shape, k, np.uint8), photometric="minisblack", metadata=None)
    _bad(cli, "convert", pages, "-o", tmp_path / "o.zarr", match="pages.tif: holds 2 image series")
    positions = tmp_path / "positions.ome.tif"
    with tifffile.TiffWriter(positions, ome=True) as w:
        for k in (1, 2):
            w.write(np.full((2, 3, 40, 48), k, np.uint8), metadata={"axes": "TZYX"})
    _bad(cli, "convert", positions, "-o", tmp_path / "o.zarr",
         match="positions.ome.tif: holds 2 image series")
    assert not (tmp_path / "o.zarr").exists()


def test_rgb_needs_channel(cli, tmp_path):
    rgb = np.random.default_rng(8).integers(0, 255, size=(2, 10, 12, 3), dtype=np.uint8)
    f = tmp_path / "rgb"
    f.mkdir()
    for z in range(2):
        tifffile.imwrite(f / f"t000_z{z:03d}.tif", rgb[z], photometric="rgb")
    _bad(cli, "convert", f, "-o", tmp_path / "o.zarr", match="--channel")
    code, _, err = cli("convert", f, "-o", tmp_path / "o.zarr", "--channel", "1", "-q")
    assert code == 0, err
    np.testing.assert_array_equal(read_store(tmp_path / "o.zarr")[0], rgb[..., 1])
    # the same colours stored plane by plane (planar configuration: axes SYX)
    planar = tmp_path / "planar"
    planar.mkdir()
    for z in range(2):
        tifffile.imwrite(planar / f"t000_z{z:03d}.tif", np.moveaxis(rgb[z], -1, 0),
                         photometric="rgb", planarconfig="separate")
    code, _, err = cli("convert", planar, "-o", tmp_path / "p.zarr", "--channel", "1", "-q")
    assert code == 0, err
    np.testing.assert_array_equal(read_store(tmp_path / "p.zarr")[0], rgb[..., 1])


def test_bad_mask_values(cli, tmp_path):
    labels = np.zeros((1, 2, 10, 10), np.uint8)
    labels[0, 1, 2, 2] = 7
    f = write_frames(tmp_path / "l", labels)
    line = _bad(cli, "convert", f, "--mask", "-o", tmp_path / "m.zarr", match="values {0, 7}")
    assert "t000_z001.tif" in line


def test_existing_output_refused_and_kept(cli, frames_dir, tmp_path):
    folder, arr = frames_dir
    out = tmp_path / "o.zarr"
    assert cli("convert", folder, "-o", out, "-q")[0] == 0
    before = (out / "zarr.json").read_text()
    _bad(cli, "convert", folder, "-o", out, match="already exists and is complete")
    assert (out / "zarr.json").read_text() == before
    np.testing.assert_array_equal(read_store(out), arr)
    assert cli("convert", folder, "-o", out, "--overwrite", "-q")[0] == 0

    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "keep.txt").write_text("precious")
    _bad(cli, "convert", folder, "-o", plain, "--overwrite", match="not a Zarr store")
    assert (plain / "keep.txt").read_text() == "precious"


def test_output_not_writable(cli, frames_dir, tmp_path):
    folder, _ = frames_dir
    _bad(cli, "convert", folder, "-o", tmp_path / "nodir" / "o.zarr", match="does not exist")
    _bad(cli, "convert", folder, "-o", "/proc/volseg-test.zarr", match="/proc/volseg-test.zarr")


def test_bad_chunks_option(cli, frames_dir, tmp_path):
    folder, _ = frames_dir
    _bad(cli, "convert", folder, "-o", tmp_path / "o.zarr", "--chunks", "a,b", match="--chunks")
    # a chunk over two time points would be written by two blocks at once (lost chunks)
    _bad(cli, "convert", folder, "-o", tmp_path / "o.zarr", "--chunks", "2,1,16,16",
         match="--chunks: the T size must be 1")
    assert not (tmp_path / "o.zarr").exists()


# ----------------------------------------------------------------- resume

def test_other_job_in_unfinished_store_refused(tmp_path, frames_dir):
    folder, arr = frames_dir
    out = tmp_path / "o.zarr"
    job = st.make_job("convert", parameters={"other": 1})
    st.create_image(out, shape=arr.shape, dtype="uint8", job=job)
    with pytest.raises(InputError, match="unfinished conversion from other inputs"):
        convert([folder], out)


def test_kill_9_then_rerun_completes(tmp_path):
    arr = np.random.default_rng(9).integers(0, 255, size=(300, 1, 96, 96), dtype=np.uint8)
    folder = write_frames(tmp_path / "many", arr)
    out = tmp_path / "o.zarr"
    proc = subprocess.Popen(VOLSEG + ["convert", str(folder), "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    ledger = out / st.LEDGER / "c"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if ledger.exists() and sum(1 for p in ledger.iterdir() if p.name.isdigit()) >= 10:
            break
        if proc.poll() is not None:
            break
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "conversion finished before it could be killed"
    written = sum(1 for p in ledger.iterdir() if p.name.isdigit())
    assert 0 < written < 300
    with pytest.raises(InputError, match="incomplete"):
        st.open_image(out)
    meta = json.loads((out / "zarr.json").read_text())
    assert meta["attributes"]["volseg"]["complete"] is False

    summary = convert([folder], out)
    assert summary["skipped"] >= written and summary["written"] == 300 - summary["skipped"]
    np.testing.assert_array_equal(read_store(out), arr)


def test_an_empty_path_is_refused_not_read_as_the_current_folder(tmp_path, cli):
    assert_refused(cli("info", ""), "an empty path")
    assert_refused(cli("convert", "", "-o", tmp_path / "x.zarr"), "an empty path")
    assert not (tmp_path / "x.zarr").exists()
