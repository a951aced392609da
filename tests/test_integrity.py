"""Acceptance tests of volseg's integrity features, on real files (no mocks).

Damaged chunks refused by every reader, ``volseg verify``, ``--overwrite`` that loses
nothing, gaps and NaN refused, one writer per output, a full disk, an interrupted export,
broken pipes, damaged metadata, symbolic links and report files volseg did not write.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from volseg.testing import (VOLSEG_COMMAND as VOLSEG, assert_refused, make_image_store,
                            make_prediction, make_tiny_model, run_volseg, write_frames)
from volseg.io import store as st

SHAPE = (2, 3, 16, 16)  # two shards (one per time point) of three frames each


# --------------------------------------------------------------------------- helpers

def proc_result(p) -> tuple[int, str, str]:
    return p.returncode, p.stdout, p.stderr


def ok(result) -> tuple[int, str, str]:
    code, out, err = result
    assert code == 0, err[-3000:]
    return result


def tree_hash(path: Path) -> dict:
    """Every file under ``path``: relative path -> sha256 of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def siblings(path: Path) -> list[str]:
    """volseg's files beside an output (lock, store being built, store being replaced)."""
    return sorted(p.name for p in path.parent.iterdir()
                  if p.name.startswith(f".{path.name}."))


def shard(array_dir: Path, t: int) -> Path:
    """The shard file of time point ``t`` (shards are 1 x Z x Y x X)."""
    return array_dir / "c" / str(t) / "0" / "0" / "0"


def damage(path: Path, how: str) -> None:
    if how == "missing":
        path.unlink()
    elif how == "empty":
        path.write_bytes(b"")
    else:  # flipped: invert a few bytes in the middle of the file
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        for i in range(mid - 4, mid + 4):
            data[i] ^= 0xFF
        path.write_bytes(bytes(data))


def flip_inner_chunk(path: Path, k: int, n_chunks: int) -> None:
    """Corrupt inner chunk ``k`` of a shard (index at the end: n x (offset, nbytes) + crc)."""
    data = bytearray(path.read_bytes())
    index = data[-(16 * n_chunks + 4):-4]
    offset, nbytes = struct.unpack_from("<QQ", index, 16 * k)
    data[offset + nbytes // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def drop_inner_chunk(path: Path, k: int, n_chunks: int) -> None:
    """Mark inner chunk ``k`` absent in its shard's index (valid checksum): what two
    writers racing on one shard leave behind, and what zarr reads as the fill value."""
    import google_crc32c

    data = bytearray(path.read_bytes())
    start = len(data) - (16 * n_chunks + 4)
    struct.pack_into("<QQ", data, start + 16 * k, 2**64 - 1, 2**64 - 1)
    crc = google_crc32c.value(bytes(data[start:-4]))
    data[-4:] = struct.pack("<I", crc)
    path.write_bytes(bytes(data))


def volseg_attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["volseg"]


# --------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.keras")


@pytest.fixture(scope="module")
def _dataset_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("dataset")
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=SHAPE, dtype=np.uint8)
    truth = (rng.random(SHAPE) > 0.7).astype(np.uint8)
    prob = rng.integers(0, 256, size=SHAPE, dtype=np.uint8)
    make_image_store(root / "im.zarr", image)
    make_image_store(root / "tr.zarr", truth, mask=True)
    make_prediction(root / "p.zarr", prob)
    return root


@pytest.fixture
def dataset(_dataset_template, tmp_path):
    """Fresh copies of an image store, a truth store and a prediction store (2 x 3 x 16 x 16)."""
    for name in ("im.zarr", "tr.zarr", "p.zarr"):
        shutil.copytree(_dataset_template / name, tmp_path / name)
    return tmp_path


# --------------------------------------------------------------------------- 1. damaged chunks

#: What each damaged array is, where its shards are, and the commands that read it.
READERS = {
    "image": ("im.zarr/0", [
        ("export", "im.zarr", "-o", "{tmp}/ex", "-q"),
        ("preview", "p.zarr", "--images", "im.zarr", "--t", "1", "--z", "all", "--grid",
         "-o", "{tmp}/fig.png", "-q"),
    ]),
    "truth": ("tr.zarr/0", [
        ("evaluate", "p.zarr", "--truth", "tr.zarr", "--workers", "1", "--threads", "1", "-q"),
        ("preview", "p.zarr", "--images", "im.zarr", "--truth", "tr.zarr", "--t", "1",
         "--z", "all", "--grid", "-o", "{tmp}/fig.png", "-q"),
    ]),
    "probability": ("p.zarr/probability/0", [
        ("evaluate", "p.zarr", "--truth", "tr.zarr", "--workers", "1", "--threads", "1", "-q"),
        ("export", "p.zarr/probability", "-o", "{tmp}/ex", "-q"),
        ("preview", "p.zarr", "--images", "im.zarr", "--t", "1", "--z", "all", "--grid",
         "-o", "{tmp}/fig.png", "-q"),
    ]),
    "mask": ("p.zarr/mask/0", [
        ("evaluate", "p.zarr", "--truth", "tr.zarr", "--workers", "1", "--threads", "1", "-q"),
        ("export", "p.zarr/mask", "-o", "{tmp}/ex", "-q"),
        ("preview", "p.zarr", "--images", "im.zarr", "--t", "1", "--z", "all", "--grid",
         "-o", "{tmp}/fig.png", "-q"),
    ]),
}


@pytest.mark.parametrize("how", ["missing", "empty", "flipped"])
@pytest.mark.parametrize("target", list(READERS))
def test_damaged_chunk_refused_by_every_reader(cli, dataset, target, how):
    label, commands = READERS[target]
    damage(shard(dataset / label, 1), how)
    for command in commands:
        # block readers name the whole shard's frames; preview reads (and names) one frame
        frames = "t=1 z=" if how == "flipped" else \
            "t=1 z=0" if command[0] == "preview" else "t=1 z=0-2"
        args = [a.format(tmp=dataset) if "{tmp}" in a else
                (str(dataset / a) if a.endswith((".zarr", "/probability", "/mask")) else a)
                for a in command]
        line = assert_refused(cli(*args), str(dataset / label), frames)
        assert line.startswith(f"volseg {command[0]}: error:"), line
        if how == "flipped":
            assert "damaged chunks" in line, line
        else:
            assert "missing or empty" in line, line


@pytest.mark.slow
def test_predict_refuses_damaged_or_nonfinite_images(dataset, tiny_model, tmp_path):
    """Real `volseg predict` runs (local Dask cluster, subprocesses, two at a time):
    one line naming the store and frames, no traceback and no "Compute Failed" block
    from Dask (the worker's expected failure is not logged as a crash)."""
    cases = {}
    base = dataset / "im.zarr"
    for how in ("missing", "empty", "flipped"):
        store = tmp_path / f"im-{how}.zarr"
        shutil.copytree(base, store)
        damage(shard(store / "0", 1), how)
        cases[how] = store
    nan = np.random.default_rng(1).random(SHAPE).astype(np.float32) * 255
    nan[1, 2, 3, 4] = np.nan
    nan[1, 2, 5, 5] = np.inf
    cases["nonfinite"] = make_image_store(tmp_path / "nan.zarr", nan).path

    def start(how):
        return subprocess.Popen(
            VOLSEG + ["predict", str(cases[how]), "--model", str(tiny_model), "-o",
                      str(tmp_path / f"out-{how}.zarr"), "-q", "--workers", "1"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    results = {}
    order = list(cases)
    for pair in (order[:2], order[2:]):  # two at a time: the machine has two cores
        procs = {how: start(how) for how in pair}
        for how, p in procs.items():
            out, err = p.communicate(timeout=300)
            results[how] = (p.returncode, out, err)
    for how in ("missing", "empty"):
        assert_refused(results[how], f"{cases[how]}/0", "t=1 z=0-2", "missing or empty")
    assert_refused(results["flipped"], f"{cases['flipped']}/0", "t=1 z=", "damaged chunks")
    assert_refused(results["nonfinite"], f"{cases['nonfinite']}/0", "t=1 z=2", "2 NaN or infinite")
    for how in cases:  # nothing that looks finished
        out = tmp_path / f"out-{how}.zarr"
        assert not out.exists() or not volseg_attrs(out)["complete"]
        assert not (tmp_path / f".out-{how}.zarr.lock").exists()


# --------------------------------------------------------------------------- 2. verify

def test_verify_names_exactly_the_damaged_frames(cli, dataset):
    image = dataset / "im.zarr"
    code, out, err = cli("verify", image, "-q")
    assert code == 0 and err == "", err
    code, out, err = cli("verify", image, dataset / "tr.zarr", dataset / "p.zarr")
    assert code == 0, err
    assert "ok" in out and "presence, checksums and decoding" in out, out
    assert "p.zarr [probability]: ok" in out and "p.zarr [mask]: ok" in out, out

    shard(image / "0", 0).unlink()                    # frames t=0 z=0,1,2
    flip_inner_chunk(shard(image / "0", 1), 1, 3)     # frame t=1 z=1
    code, out, err = cli("verify", image, "--json", "-q")
    assert code == 2, err
    (result,) = json.loads(out)
    assert result["ok"] is False and result["complete"] is True
    (arr,) = result["arrays"]
    assert arr["damaged"] == [[0, 0], [0, 1], [0, 2], [1, 1]]
    assert arr["missing"] == [[0, 0], [0, 1], [0, 2]]
    assert "t=0 z=0-2" in arr["message"] and "t=1 z=1" in arr["message"]

    # a prediction: only its mask damaged, the probabilities reported intact
    pred = dataset / "p.zarr"
    flip_inner_chunk(shard(pred / "mask" / "0", 0), 2, 3)
    code, out, err = cli("verify", pred, "--json", "-q")
    assert code == 2
    arrays = {a["name"]: a for a in json.loads(out)[0]["arrays"]}
    assert arrays["probability"]["damaged"] == []
    assert arrays["mask"]["damaged"] == [[0, 2]] and arrays["mask"]["missing"] == []

    # text output: one DAMAGED line per damaged array on stderr
    code, out, err = cli("verify", image, "-q")
    assert code == 2 and "DAMAGED" in err and "t=0 z=0-2" in err and "Traceback" not in err


def test_verify_finds_chunk_absent_from_intact_shard(cli, dataset):
    """A shard file present, its checksums right, one frame's chunk listed as absent:
    zarr reads zeros there, verify names the frame."""
    import zarr

    image = dataset / "im.zarr"
    drop_inner_chunk(shard(image / "0", 1), 2, 3)     # frame t=1 z=2
    assert not zarr.open_array(str(image / "0"), mode="r")[1, 2].any()  # reads as zeros
    code, out, err = cli("verify", image, "--json", "-q")
    assert code == 2, err
    (arr,) = json.loads(out)[0]["arrays"]
    assert arr["damaged"] == [[1, 2]] and arr["missing"] == [[1, 2]]


def test_verify_without_integrity_record_checks_decoding_only(cli, dataset):
    image = dataset / "im.zarr"
    meta = json.loads((image / "zarr.json").read_text())
    del meta["attributes"]["volseg"]["integrity"]
    (image / "zarr.json").write_text(json.dumps(meta))
    code, out, err = cli("verify", image, "--json", "-q")
    assert code == 0, err
    (arr,) = json.loads(out)[0]["arrays"]
    assert arr["checks"].startswith("decoding only") and arr["damaged"] == []
    code, out, err = cli("verify", image)
    assert code == 0 and "decoding only" in out, (out, err)


def test_verify_plain_zarr_store_says_decoding_only(cli, tmp_path):
    """A store another tool made (no volseg attributes at all)."""
    import zarr

    g = zarr.create_group(str(tmp_path / "plain.zarr"), zarr_format=3,
                          attributes={"ome": st._ngff_attrs("plain")})
    a = g.create_array("0", shape=(1, 2, 8, 8), chunks=(1, 1, 8, 8), dtype="uint8")
    a[...] = 7
    code, out, err = cli("verify", tmp_path / "plain.zarr", "--json", "-q")
    (result,) = json.loads(out)
    assert "error" not in result, result
    (arr,) = result["arrays"]
    assert arr["checks"].startswith("decoding only") and arr["damaged"] == []


# --------------------------------------------------------------------------- 3. --overwrite

def test_overwrite_refuses_store_holding_foreign_file(cli, frames_dir, tmp_path):
    folder, arr = frames_dir
    out = tmp_path / "o.zarr"
    ok(cli("convert", folder, "-o", out, "-q"))
    (out / "notes.txt").write_text("my notes")
    before = tree_hash(out)
    assert_refused(cli("convert", folder, "-o", out, "--overwrite", "-q"), str(out), "notes.txt")
    assert tree_hash(out) == before
    assert (out / "notes.txt").read_text() == "my notes"
    np.testing.assert_array_equal(st.open_image(out).array[:], arr)
    assert siblings(out) == []


def test_store_deletion_cut_short_anywhere_is_finished_by_the_next_run(cli, frames_dir,
                                                                        tmp_path, monkeypatch):
    """Ctrl-C while ``--overwrite`` deletes the store it replaced: whatever is left must
    still read as volseg's store (nothing foreign), so the next run deletes the rest."""
    from volseg.engine import outputs

    folder, _ = frames_dir
    made = tmp_path / "made.zarr"
    ok(cli("convert", folder, "-o", made, "-q", "--pyramid"))
    files = sum(len(names) for _, _, names in os.walk(made))
    assert files >= 4  # metadata of the group and the array, chunks
    real_unlink = os.unlink
    for cut in range(files):  # cut short before each file in turn
        victim = tmp_path / f".o{cut}.zarr.volseg-old"
        shutil.copytree(made, victim)
        calls = []

        def unlink(path, _calls=calls, _cut=cut):
            if len(_calls) == _cut:
                raise KeyboardInterrupt
            _calls.append(path)
            real_unlink(path)

        monkeypatch.setattr(outputs.os, "unlink", unlink)
        with pytest.raises(KeyboardInterrupt):
            outputs.remove_store(victim)
        monkeypatch.setattr(outputs.os, "unlink", real_unlink)
        assert outputs.foreign_entries(victim) == [], cut
        outputs.remove_store(victim)
        assert not victim.exists()


def test_failed_overwrite_keeps_old_store_successful_one_replaces_it(cli, tmp_path):
    rng = np.random.default_rng(3)
    good = (rng.random((3, 4, 20, 24)) > 0.8).astype(np.uint8) * 255
    out = tmp_path / "m.zarr"
    ok(cli("convert", write_frames(tmp_path / "good", good), "--mask", "-o", out, "-q"))
    before = tree_hash(out)

    stray = (rng.random(good.shape) > 0.5).astype(np.uint8)
    stray[2, 3, 5, 5] = 2
    assert_refused(cli("convert", write_frames(tmp_path / "stray", stray), "--mask", "-o", out,
                "--overwrite", "-q"), "t002_z003.tif", "values {0, 1, 2}")
    assert tree_hash(out) == before  # byte for byte
    new = out.with_name(f".{out.name}.volseg-new")
    assert not new.exists() or volseg_attrs(new)["complete"] is False
    assert not out.with_name(f".{out.name}.volseg-old").exists()
    assert not out.with_name(f".{out.name}.lock").exists()
    np.testing.assert_array_equal(st.open_image(out).array[:], good // 255)

    other = (rng.random(good.shape) > 0.5).astype(np.uint8)
    ok(cli("convert", write_frames(tmp_path / "other", other), "--mask", "-o", out,
           "--overwrite", "-q"))
    np.testing.assert_array_equal(st.open_image(out).array[:], other)
    assert st.open_image(out).complete
    assert siblings(out) == []


# --------------------------------------------------------------------------- 4. gaps

def _frames(folder: Path, ts, zs, shape=(10, 12), dtype=np.uint8, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    data = {}
    for t in ts:
        for z in zs:
            data[t, z] = rng.integers(0, 255, size=shape).astype(dtype)
            tifffile.imwrite(folder / f"t{t:03d}_z{z:03d}.tif", data[t, z])
    return data


def test_gaps_in_time_points_refused_unless_allowed(cli, tmp_path):
    data = _frames(tmp_path / "f", ts=[0, 2, 5], zs=[0, 1])
    out = tmp_path / "o.zarr"
    assert_refused(cli("convert", tmp_path / "f", "-o", out, "-q"), "t=1, 3, 4", "--allow-gaps")
    assert not out.exists()
    ok(cli("convert", tmp_path / "f", "-o", out, "--allow-gaps", "-q"))
    image = st.open_image(out)
    assert image.shape == (3, 2, 10, 12)
    assert image.volseg["source_indices"]["t"] == [0, 2, 5]
    got = image.array[:]
    for i, t in enumerate([0, 2, 5]):
        for z in (0, 1):
            np.testing.assert_array_equal(got[i, z], data[t, z])


def test_gaps_in_slices_refused_unless_allowed(cli, tmp_path):
    data = _frames(tmp_path / "f", ts=[0, 1], zs=[0, 1, 3])
    out = tmp_path / "o.zarr"
    assert_refused(cli("convert", tmp_path / "f", "-o", out, "-q"), "slices z=2", "--allow-gaps")
    ok(cli("convert", tmp_path / "f", "-o", out, "--allow-gaps", "-q"))
    image = st.open_image(out)
    assert image.shape == (2, 3, 10, 12)
    assert image.volseg["source_indices"]["z"] == [0, 1, 3]
    np.testing.assert_array_equal(image.array[1, 2], data[1, 3])


def test_gaps_in_per_timepoint_stacks_refused_unless_allowed(cli, tmp_path):
    rng = np.random.default_rng(4)
    folder = tmp_path / "stacks"
    folder.mkdir()
    stacks = {t: rng.integers(0, 255, size=(3, 10, 12), dtype=np.uint8) for t in (0, 1, 3)}
    for t, arr in stacks.items():
        tifffile.imwrite(folder / f"embryo_t{t}.tif", arr, photometric="minisblack")
    out = tmp_path / "o.zarr"
    assert_refused(cli("convert", folder, "-o", out, "-q"), "t=2")
    assert_refused(cli("convert", *sorted(folder.iterdir()), "-o", out, "-q"), "t=2")
    ok(cli("convert", folder, "-o", out, "--allow-gaps", "-q"))
    image = st.open_image(out)
    assert image.shape == (3, 3, 10, 12)
    assert image.volseg["source_indices"]["t"] == [0, 1, 3]
    np.testing.assert_array_equal(image.array[2], stacks[3])


# --------------------------------------------------------------------------- 5. NaN / inf

def test_nonfinite_pixels_refused_unless_replaced(cli, tmp_path):
    arr = np.random.default_rng(5).random((2, 2, 8, 10)).astype(np.float32)
    arr[1, 1, 2, 3] = np.nan
    arr[1, 1, 4, 4] = np.inf
    arr[1, 1, 0, 0] = -np.inf
    folder = write_frames(tmp_path / "f", arr)
    out = tmp_path / "o.zarr"
    assert_refused(cli("convert", folder, "-o", out, "-q"), "t001_z001.tif",
            "3 NaN or infinite pixel(s)", "--nonfinite")
    fixed = tmp_path / "fixed.zarr"
    ok(cli("convert", folder, "-o", fixed, "--nonfinite", "0", "-q"))
    image = st.open_image(fixed)
    expect = np.where(np.isfinite(arr), arr, 0).astype(np.float32)
    np.testing.assert_array_equal(image.array[:], expect)
    assert image.volseg["job"]["parameters"]["nonfinite"] == 0.0
    assert_refused(cli("convert", folder, "-o", tmp_path / "p.zarr", "--nonfinite", "nan", "-q"),
            "--nonfinite")
    # a value the images' type cannot hold would be stored as infinity
    assert_refused(cli("convert", folder, "-o", tmp_path / "p.zarr", "--nonfinite", "1e39", "-q"),
            "--nonfinite: 1e+39 does not fit the images' float32")
    assert not (tmp_path / "p.zarr").exists()


def test_nonfinite_advice_works_on_same_output(cli, tmp_path):
    """The advice of the NaN message works as given: a convert refused for bad input
    leaves nothing that blocks the corrected rerun onto the same output."""
    arr = np.random.default_rng(5).random((2, 2, 8, 10)).astype(np.float32)
    arr[1, 1, 2, 3] = np.nan
    folder = write_frames(tmp_path / "f", arr)
    out = tmp_path / "o.zarr"
    assert_refused(cli("convert", folder, "-o", out, "-q"), "t001_z001.tif", "--nonfinite VALUE")
    ok(cli("convert", folder, "-o", out, "--nonfinite", "0", "-q"))
    assert st.open_image(out).complete


# --------------------------------------------------------------------------- 6. one writer

def _ledger_marks(path: Path) -> int:
    ledger = path / st.LEDGER / "c"
    try:
        return sum(1 for p in ledger.iterdir() if p.name.isdigit())
    except FileNotFoundError:
        return 0


def _wait_for(condition, proc, timeout=180.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc.poll() is not None:
            raise AssertionError(f"process ended before {what}: {proc.returncode}\n"
                                 + proc.stderr.read()[-3000:])
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_one_writer_and_no_stale_lock_after_kill_9(cli, tmp_path, tiny_model):
    rng = np.random.default_rng(6)
    images = make_image_store(tmp_path / "im.zarr",
                              rng.integers(0, 255, size=(120, 1, 32, 32), dtype=np.uint8)).path

    def command(out):
        return VOLSEG + ["predict", str(images), "--model", str(tiny_model), "-o", str(out),
                         "-q", "--workers", "1"]

    first, killed = tmp_path / "a.zarr", tmp_path / "b.zarr"
    a = subprocess.Popen(command(first), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    b = subprocess.Popen(command(killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        lock = first.with_name(f".{first.name}.lock")
        _wait_for(lock.exists, a, what="the first writer's lock")
        # Hold the first writer still (it is running, just paused) while a second one tries.
        os.killpg(a.pid, signal.SIGSTOP)
        try:
            line = assert_refused(cli(*command(first)[3:]), str(first), "another volseg is writing",
                           f"process {a.pid}")
            assert "predict" in line
        finally:
            os.killpg(a.pid, signal.SIGCONT)

        _wait_for(lambda: _ledger_marks(killed) >= 3, b, what="three blocks of the second run")
        os.killpg(b.pid, signal.SIGKILL)
        b.wait()
        assert b.returncode == -signal.SIGKILL
        _, err = a.communicate(timeout=240)
        assert a.returncode == 0, err[-3000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    ref = st.open_prediction(first)
    assert ref.complete and not lock.exists()
    assert 0 < _ledger_marks(killed) < 120
    assert killed.with_name(f".{killed.name}.lock").exists()  # left behind by kill -9

    ok(proc_result(run_volseg(*command(killed)[3:], timeout=240)))
    pred = st.open_prediction(killed)
    assert pred.complete and siblings(killed) == []
    np.testing.assert_array_equal(pred.probability.array[:], ref.probability.array[:])
    np.testing.assert_array_equal(pred.mask.array[:], ref.mask.array[:])


# --------------------------------------------------------------------------- 7. full disk

@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_one_line_then_rerun_completes(small_disk, tmp_path):
    arr = np.random.default_rng(7).integers(0, 256, size=(4, 4, 64, 64), dtype=np.uint8)
    folder = write_frames(tmp_path / "f", arr)  # 64 KiB of incompressible pixels
    ballast = small_disk / "ballast"
    vfs = os.statvfs(small_disk)
    ballast.write_bytes(b"\0" * (vfs.f_bavail * vfs.f_frsize - 40 * 1024))
    out = small_disk / "o.zarr"
    args = ["convert", str(folder), "-o", str(out), "-q"]
    line = assert_refused(proc_result(run_volseg(*args, timeout=120)), "space")
    assert "no space left" in line
    assert not out.with_name(f".{out.name}.lock").exists()
    ballast.unlink()
    ok(proc_result(run_volseg(*args, timeout=120)))
    np.testing.assert_array_equal(st.open_image(out).array[:], arr)
    assert st.open_image(out).complete


@pytest.mark.parametrize("pages", [
    1,  # room for the lock only: an empty OUT.zarr folder is left
    2,  # room for the group's zarr.json, not the array's: an empty folder OUT.zarr/0
])
def test_disk_full_while_creating_store_then_rerun_completes(cli, small_disk, tmp_path, pages):
    """The disk fills while the output store itself is being created: after freeing
    space the same command completes, as the message says."""
    arr = np.random.default_rng(7).integers(0, 256, size=(2, 2, 32, 32), dtype=np.uint8)
    folder = write_frames(tmp_path / "f", arr)
    ballast = small_disk / "ballast"
    vfs = os.statvfs(small_disk)
    ballast.write_bytes(b"\0" * (vfs.f_bavail * vfs.f_frsize - pages * 4096))
    out = small_disk / "o.zarr"
    assert_refused(cli("convert", folder, "-o", out, "-q"), "no space left")
    ballast.unlink()
    ok(cli("convert", folder, "-o", out, "-q"))
    np.testing.assert_array_equal(st.open_image(out).array[:], arr)
    assert siblings(out) == []


@pytest.mark.parametrize("hyperstack", [False, True])
def test_disk_full_during_export_one_line_then_rerun_completes(cli, small_disk, tmp_path,
                                                               hyperstack):
    """tifffile's short write is an OSError without an errno: still the full-disk line."""
    arr = np.random.default_rng(9).integers(0, 256, size=(2, 3, 64, 96), dtype=np.uint8)
    store = make_image_store(tmp_path / "im.zarr", arr).path
    ballast = small_disk / "ballast"
    vfs = os.statvfs(small_disk)
    ballast.write_bytes(b"\0" * (vfs.f_bavail * vfs.f_frsize - 24 * 1024))
    out = small_disk / ("h.tif" if hyperstack else "frames")
    args = ["export", store, "-o", out, "-q"] + (["--hyperstack"] if hyperstack else [])
    assert_refused(cli(*args), "no space left")
    ballast.unlink()
    ok(cli(*args))
    if hyperstack:
        np.testing.assert_array_equal(tifffile.imread(out).reshape(arr.shape), arr)
    else:
        assert len(list(out.glob("t*.tif"))) == 6 and not list(out.glob(".*.part"))


# --------------------------------------------------------------------------- 8. export resumes

N_FRAMES = 100 * 16


def _killed_export(tmp_path):
    """A per-frame export of 1600 frames killed with SIGKILL once 20 frames exist."""
    arr = np.random.default_rng(8).integers(0, 255, size=(100, 16, 24, 24), dtype=np.uint8)
    store = make_image_store(tmp_path / "im.zarr", arr).path
    out = tmp_path / "tiffs"
    proc = subprocess.Popen(VOLSEG + ["export", str(store), "-o", str(out), "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(lambda: _exported(out) >= 20, proc, timeout=120, what="20 exported frames")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "export finished before it could be killed"
    assert 0 < _exported(out) < N_FRAMES
    assert json.loads((out / ".volseg-export.json").read_text())["complete"] is False
    return arr, store, out


def _exported(out: Path) -> int:
    return sum(1 for _ in out.glob("t*.tif")) if out.exists() else 0


def test_killed_export_is_not_converted(cli, tmp_path):
    _, _, out = _killed_export(tmp_path)
    assert_refused(cli("convert", out, "-o", tmp_path / "back.zarr", "-q"), str(out),
            "unfinished `volseg export`")
    assert not (tmp_path / "back.zarr").exists()


def test_killed_export_resumes(cli, tmp_path):
    """The same export command resumes (the manifest's record matches the source)."""
    arr, store, out = _killed_export(tmp_path)
    code, text, err = ok(cli("export", store, "-o", out))
    assert "resuming" in text, text
    assert _exported(out) == N_FRAMES and not list(out.glob(".*.part"))
    assert json.loads((out / ".volseg-export.json").read_text())["complete"] is True
    ok(cli("convert", out, "-o", tmp_path / "back.zarr", "-q"))
    np.testing.assert_array_equal(st.open_image(tmp_path / "back.zarr").array[:], arr)


# --------------------------------------------------------------------------- 9. pipes, metadata, links

def test_info_into_closed_pipe_is_quiet(dataset):
    store = dataset / "p.zarr"
    cmd = " ".join(VOLSEG + ["info", str(store)])
    r = subprocess.run(f"set -o pipefail; {cmd} | head -1", shell=True, capture_output=True,
                       text=True, executable="/bin/bash", timeout=60)
    assert len(r.stdout.splitlines()) == 1 and "p.zarr" in r.stdout
    assert "Traceback" not in r.stderr and "BrokenPipe" not in r.stderr, r.stderr
    assert r.returncode in (0, 141), (r.returncode, r.stderr)
    # A reader that is gone before volseg writes: a sure broken pipe.
    r = subprocess.run(f"set -o pipefail; {cmd} | true", shell=True, capture_output=True,
                       text=True, executable="/bin/bash", timeout=60)
    assert r.stderr == "", r.stderr
    assert r.returncode in (0, 141)
    full = ok(proc_result(run_volseg("info", store)))[1]
    assert len(full.splitlines()) > 3


@pytest.mark.parametrize("node", ["", "0"])
def test_damaged_zarr_json_one_line(cli, dataset, node):
    meta = dataset / "tr.zarr" / node / "zarr.json"
    meta.write_bytes(b"\x00\x17garbage{{ not json")
    assert_refused(cli("info", dataset / "tr.zarr"), "zarr.json")
    assert_refused(cli("evaluate", dataset / "p.zarr", "--truth", dataset / "tr.zarr", "--workers", "1",
                "-q"), "zarr.json")
    assert_refused(cli("verify", dataset / "tr.zarr", "-q"), "zarr.json")


def test_damaged_prediction_zarr_json_one_line(cli, dataset):
    (dataset / "p.zarr" / "mask" / "zarr.json").write_text("{\"node_type\": ")
    assert_refused(cli("info", dataset / "p.zarr"), "zarr.json")
    assert_refused(cli("evaluate", dataset / "p.zarr", "--truth", dataset / "tr.zarr", "--workers", "1",
                "-q"), "zarr.json")


def test_symlinked_output_refused_target_untouched(cli, frames_dir, tmp_path):
    folder, arr = frames_dir
    real = tmp_path / "real.zarr"
    ok(cli("convert", folder, "-o", real, "-q"))
    before = tree_hash(real)
    link = tmp_path / "link.zarr"
    link.symlink_to(real)
    assert_refused(cli("convert", folder, "-o", link, "--overwrite", "-q"), str(link), "symbolic link")
    assert tree_hash(real) == before and link.is_symlink()
    assert siblings(link) == [] and siblings(real) == []


# --------------------------------------------------------------------------- 10. report files

def test_evaluate_reports_never_replace_foreign_files(cli, dataset):
    pred, truth = dataset / "p.zarr", dataset / "tr.zarr"
    report = dataset / "report.json"
    report.write_text("my lab notes\n")
    table = dataset / "per_t.csv"
    table.write_text("sample,weight\n1,2\n")
    base = ["evaluate", pred, "--truth", truth, "--workers", "1", "--threads", "1", "-q"]
    assert_refused(cli(*base, "--json", report), str(report), "--overwrite")
    assert report.read_text() == "my lab notes\n"
    assert_refused(cli(*base, "--csv", table), str(table), "--overwrite")
    assert table.read_text() == "sample,weight\n1,2\n"

    ok(cli(*base, "--json", report, "--csv", table, "--overwrite"))
    data = json.loads(report.read_text())
    assert len(data["per_timepoint"]) == SHAPE[0]
    assert table.read_text().startswith("t,")
    first = report.read_text()
    ok(cli(*base, "--json", report, "--csv", table))  # its own reports: no --overwrite needed
    assert json.loads(report.read_text())["tp"] == json.loads(first)["tp"]
    # one file for two reports: the second would silently replace the first
    assert_refused(cli(*base, "--json", report, "--csv", report), "--csv", "the same file as --json")
    assert_refused(cli("measure", pred / "mask", "--json", table, "--csv", table, "-q"),
            "the same file as --json")
    assert json.loads(report.read_text())["tp"] == json.loads(first)["tp"]


def test_plots_never_replace_foreign_png(cli, dataset):
    from volseg.viz.figures import EVALUATION_FIGURES

    plots = dataset / "figs"
    plots.mkdir()
    foreign = plots / EVALUATION_FIGURES[0]
    foreign.write_bytes(b"\x89PNG\r\n\x1a\n not ours")
    assert_refused(cli("evaluate", dataset / "p.zarr", "--truth", dataset / "tr.zarr", "--plots", plots,
                "--workers", "1", "-q"), EVALUATION_FIGURES[0], "--overwrite")
    assert foreign.read_bytes() == b"\x89PNG\r\n\x1a\n not ours"


@pytest.mark.slow
def test_no_command_writes_over_a_store_it_reads(tmp_path, cli):
    """However the output is spelled, a run never replaces (or writes into) what it reads."""
    images = np.random.default_rng(3).integers(0, 255, (1, 2, 24, 32), dtype=np.uint8)
    store = make_image_store(tmp_path / "i.zarr", images)
    before = json.loads((tmp_path / "i.zarr" / "zarr.json").read_text())
    model = make_tiny_model(tmp_path / "m.keras")
    (tmp_path / "link.zarr").symlink_to(tmp_path / "i.zarr")
    sub = tmp_path / "sub"
    sub.mkdir()
    for out in (tmp_path / "i.zarr", f"{tmp_path}/i.zarr/", f"{sub}/../i.zarr",
                tmp_path / "link.zarr", f"file://{tmp_path}/i.zarr"):
        line = assert_refused(cli("predict", tmp_path / "i.zarr", "--model", model, "-o", out,
                                  "--overwrite"), "which this command reads", "nothing was changed")
        assert str(tmp_path / "i.zarr") in line
    # an ROI is read too; and a folder holding the input is refused as well
    assert_refused(cli("predict", tmp_path / "i.zarr", "--model", model, "--roi",
                       tmp_path / "i.zarr", "-o", tmp_path / "i.zarr", "--overwrite"), "reads")
    frames = write_frames(tmp_path / "frames", images)
    assert_refused(cli("convert", frames, "-o", tmp_path, "--overwrite"), "holds", "reads")
    assert_refused(cli("convert", frames, "-o", frames, "--overwrite"), "holds", "reads")
    # the input is as it was: complete, same metadata, same pixels
    assert json.loads((tmp_path / "i.zarr" / "zarr.json").read_text()) == before
    np.testing.assert_array_equal(st.open_image(tmp_path / "i.zarr").array[...], images)
    assert sorted(p.name for p in frames.iterdir()) == sorted(
        f"t000_z{z:03d}.tif" for z in range(2))
    # writing beside the input, or a store inside the frames' folder, is fine
    code, _, err = cli("predict", tmp_path / "i.zarr", "--model", model, "-o",
                       tmp_path / "p.zarr", "-q")
    assert code == 0, err
    code, _, err = cli("convert", frames, "-o", frames / "again.zarr", "-q")
    assert code == 0, err
    del store


def test_a_lock_being_written_is_never_taken_over(tmp_path):
    """The writer lock appears whole (written beside it, then linked into place); an
    unreadable lock (another writer a moment ago, or damage) is left alone for a while
    instead of being taken over at once, which let two writers in."""
    from volseg.engine.outputs import UNREADABLE_GRACE, WriterLock
    from volseg.errors import InputError

    out = tmp_path / "o.zarr"
    lock = tmp_path / ".o.zarr.lock"
    lock.write_text("")  # what a writer stopped between creating and filling it left
    with pytest.raises(InputError, match="writer lock .* is unreadable"):
        WriterLock.acquire(out, command="volseg test")
    assert lock.read_text() == ""
    old = time.time() - UNREADABLE_GRACE - 5
    os.utime(lock, (old, old))  # long abandoned: taken over
    taken = WriterLock.acquire(out, command="volseg test")
    try:
        holder = json.loads(lock.read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "volseg test"
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".part")] == []
        with pytest.raises(InputError, match="another volseg is writing it"):
            WriterLock.acquire(out, command="volseg second")
    finally:
        taken.release()
    assert not lock.exists()


def test_a_name_too_long_for_the_file_system_is_one_line(cli, tmp_path):
    # every command meets the path first through the OS: ENAMETOOLONG is the user's to fix
    long = tmp_path / ("a" * 300 + ".zarr")
    frames = write_frames(tmp_path / "f", np.zeros((1, 1, 8, 8), np.uint8))
    for args in (("convert", frames, "-o", long), ("info", long), ("verify", long),
                 ("evaluate", long, "--truth", long), ("export", long, "-o", tmp_path / "x"),
                 ("measure", long)):
        line = assert_refused(cli(*args), "longer than the file system allows")
        assert len(line) < 400, line


def test_overwrite_refuses_content_volseg_did_not_write_inside_a_store(cli, tmp_path):
    # another tool's label image, an array beside the levels, a file among the chunks:
    # --overwrite names it and deletes nothing (volseg's own pieces are replaced as before)
    import zarr

    frames = write_frames(tmp_path / "f", np.zeros((1, 2, 8, 8), np.uint8))
    out = tmp_path / "im.zarr"
    assert cli("convert", frames, "-o", out)[0] == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    code, _, err = cli("convert", frames, "-o", out, "--overwrite")
    assert code == 0, err  # only volseg's own content: replaced
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    root = zarr.open_group(out, mode="r+")
    manual = root.require_group("labels").create_group("manual")  # no volseg attributes
    manual.create_array("0", shape=(2, 2), dtype="uint8")
    line = assert_refused(cli("convert", frames, "-o", out, "--overwrite"), "labels/manual")
    assert (out / "labels" / "manual" / "0" / "zarr.json").is_file(), line
    shutil.rmtree(out / "labels")
    (out / "0" / "c" / "notes.txt").write_text("mine")
    assert_refused(cli("convert", frames, "-o", out, "--overwrite"), "notes.txt")
    assert (out / "0" / "c" / "notes.txt").read_text() == "mine"
    (out / "0" / "c" / "notes.txt").unlink()
    root.create_array("extra", shape=(2,), dtype="uint8")
    assert_refused(cli("convert", frames, "-o", out, "--overwrite"), "extra")


def test_ctrl_c_at_any_moment_is_one_line(tmp_path):
    # while the libraries load, while the local cluster starts, while it counts: one
    # line and exit 130 (or the run finished first), never distributed's exit tracebacks
    from volseg.testing import make_prediction

    make_prediction(tmp_path / "p.zarr", np.zeros((2, 4, 32, 32), np.uint8))
    make_image_store(tmp_path / "t.zarr", np.zeros((2, 4, 32, 32), np.uint8), mask=True)
    for delay in (0.3, 1.2, 1.8, 2.6):
        p = subprocess.Popen(VOLSEG + ["evaluate", str(tmp_path / "p.zarr"), "--truth",
                                       str(tmp_path / "t.zarr"), "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
        time.sleep(delay)
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
        lines = [line for line in err.splitlines() if line.strip()]
        assert "Traceback" not in err and "Exception ignored" not in err, (delay, err[-2000:])
        # 130, or killed by the SIGINT (-2, which a shell also shows as 130) when it
        # arrives while the libraries load; 0 when the run finished first
        assert p.returncode in (0, 130, -signal.SIGINT) and len(lines) <= 1, \
            (delay, p.returncode, err)
        if p.returncode == 130:  # -2: killed before Python's own handler was in place
            assert "interrupted" in lines[0]


@pytest.mark.slow
def test_ctrl_c_in_a_terminal_while_workers_predict_is_one_line_and_a_rerun_completes(tmp_path):
    """Ctrl-C reaches the terminal's whole process group, the local cluster's worker
    processes too: a worker interrupted in its event loop printed CancelledError and
    KeyboardInterrupt tracebacks before volseg's line. Workers ignore SIGINT; volseg's
    process stops the run."""
    from volseg.testing import make_tiny_model

    rng = np.random.default_rng(0)
    make_image_store(tmp_path / "i.zarr",
                     rng.integers(0, 255, (16, 4, 256, 256), dtype=np.uint8))
    model = make_tiny_model(tmp_path / "m.keras")
    command = VOLSEG + ["predict", str(tmp_path / "i.zarr"), "--model", str(model), "-o",
                        str(tmp_path / "p.zarr"), "--tile", "128,128", "--workers", "2"]
    p = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)  # its own group, as a terminal's job
    seen = []
    for line in p.stdout:  # the first block done: the workers are busy predicting
        seen.append(line)
        if line.startswith("predict: 1/"):
            os.killpg(p.pid, signal.SIGINT)
            break
    rest, _ = p.communicate(timeout=120)
    text = "".join(seen) + rest
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    if p.returncode != 0:  # not finished first
        assert p.returncode == 130, text[-2000:]
        assert text.strip().splitlines()[-1].endswith("rerun the same command to resume")
        done = subprocess.run(command + ["-q"], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    assert st.open_prediction(tmp_path / "p.zarr").volseg["complete"] is True
