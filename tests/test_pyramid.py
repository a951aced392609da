"""Pyramids: levels equal an independent downsampling, resume, verify, NGFF metadata.

Every store written here is also validated with ome-zarr-models (the autouse fixture in
conftest.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from volseg.testing import make_tiny_model, write_frames
from volseg.io import store as st
from volseg.stages.convert import convert
from volseg.stages.predict import predict
from volseg.engine.pyramid import choose_levels, downsample, level_count


def reference_half(a: np.ndarray, how: str) -> np.ndarray:
    """2 x 2 mean (round half up) or max by index arithmetic: output pixel (i, j) covers
    rows 2i, 2i + 1 and columns 2j, 2j + 1, the last clipped to the edge."""
    h, w = a.shape[-2:]
    r0 = np.arange(0, h, 2)
    r1 = np.minimum(r0 + 1, h - 1)
    c0 = np.arange(0, w, 2)
    c1 = np.minimum(c0 + 1, w - 1)
    quads = [a[..., r, :][..., c] for r in (r0, r1) for c in (c0, c1)]
    if how == "max":
        return np.max(np.stack(quads), axis=0)
    if a.dtype.kind == "f":
        return (np.sum(np.stack(quads).astype(np.float64), axis=0) / 4).astype(a.dtype)
    total = np.sum(np.stack(quads).astype(np.int64), axis=0)
    return np.floor_divide(total + 2, 4).astype(a.dtype)


def reference_levels(full: np.ndarray, levels: int, how: str) -> list[np.ndarray]:
    out = [full]
    for _ in range(levels):
        out.append(reference_half(out[-1], how))
    return out


def block_max(full: np.ndarray, factor: int) -> np.ndarray:
    """Max over factor x factor windows of the full resolution, straight from level 0."""
    h, w = full.shape[-2:]
    hp, wp = -(-h // factor) * factor, -(-w // factor) * factor
    padded = np.zeros(full.shape[:-2] + (hp, wp), full.dtype)  # 0 is below every mask value
    padded[..., :h, :w] = full
    return padded.reshape(full.shape[:-2] + (hp // factor, factor, wp // factor, factor)).max(axis=(-3, -1))


def read_levels(path) -> list[np.ndarray]:
    image = st.open_image(path)
    return [image.dataset(p)[:] for p in image.level_paths]


def multiscale(path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]


# ----------------------------------------------------------------- the function

@pytest.mark.parametrize("dtype", ["uint8", "uint16", "int16", "float32"])
@pytest.mark.parametrize("how", ["mean", "max"])
def test_downsample_equals_reference_on_odd_and_even_sizes(dtype, how):
    rng = np.random.default_rng(1)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    for shape in [(2, 7, 9), (1, 8, 6), (3, 1, 5), (1, 1, 1)]:
        a = (rng.integers(info.min, info.max, shape, endpoint=True).astype(dtype) if info
             else rng.normal(size=shape).astype(dtype))
        got = downsample(a, how)
        assert got.dtype == a.dtype
        assert got.shape == shape[:-2] + (-(-shape[-2] // 2), -(-shape[-1] // 2))
        np.testing.assert_array_equal(got, reference_half(a, how))


def test_mean_rounds_half_up_and_edges_average_what_exists():
    a = np.array([[0, 1, 7], [1, 1, 9]], np.uint8)
    # (0+1+1+1)/4 = 0.75 -> 1; the last column is 7 and 9 only: 8
    np.testing.assert_array_equal(downsample(a, "mean"), [[1, 8]])
    np.testing.assert_array_equal(downsample(np.array([[1, 0], [0, 1]], np.uint8), "mean"), [[1]])
    np.testing.assert_array_equal(downsample(np.array([[1, 0], [0, 0]], np.uint8), "mean"), [[0]])


def test_level_count_and_auto_default():
    assert level_count((1, 1, 256, 256)) == 0
    assert level_count((1, 1, 257, 10)) == 1
    assert level_count((1, 1, 1024, 1024)) == 2          # 512, 256
    assert level_count((1, 1, 300, 8500)) == 6           # 4250 2125 1063 532 266 133
    assert choose_levels((1, 1, 1024, 1024), None) == 0  # auto: off up to 1024 px
    assert choose_levels((1, 1, 1024, 1025), None) == 3  # on above: 513, 257, 129
    assert choose_levels((1, 1, 4096, 4096), False) == 0
    assert choose_levels((1, 1, 300, 300), True) == 1


# ----------------------------------------------------------------- convert

def test_convert_pyramid_levels_equal_independent_downsampling(tmp_path, cli):
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 65536, size=(2, 3, 301, 531), dtype=np.uint16)
    code, out, err = cli("convert", write_frames(tmp_path / "f", arr), "-o", tmp_path / "i.zarr",
                         "--pyramid", "-q")
    assert code == 0, err
    levels = read_levels(tmp_path / "i.zarr")
    assert [lv.shape for lv in levels] == [(2, 3, 301, 531), (2, 3, 151, 266), (2, 3, 76, 133)]
    for got, want in zip(levels, reference_levels(arr, 2, "mean")):
        np.testing.assert_array_equal(got, want)
    ms = multiscale(tmp_path / "i.zarr")
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2"]
    assert [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]] == \
        [[1, 1, 1, 1], [1, 1, 2, 2], [1, 1, 4, 4]]
    assert ms["type"] == "mean"
    image = st.open_image(tmp_path / "i.zarr")
    assert image.array.shape == arr.shape  # readers keep reading level 0
    assert not [k for k in image.group.array_keys() if k.startswith(st.LEDGER)]
    assert image.complete


def test_mask_levels_are_max_so_thin_lines_survive(tmp_path):
    mask = np.zeros((1, 2, 270, 300), np.uint8)
    mask[0, 0, 101, :] = 1      # a one-pixel line on an odd row
    mask[0, 1, :, 299] = 255    # one on the last (odd-width) column, 0/255 input
    convert([write_frames(tmp_path / "m", mask)], tmp_path / "m.zarr", mask=True, pyramid=True)
    levels = read_levels(tmp_path / "m.zarr")
    assert len(levels) == 2
    assert multiscale(tmp_path / "m.zarr")["type"] == "max"
    np.testing.assert_array_equal(levels[1], block_max((mask != 0).astype(np.uint8), 2))
    assert levels[1][0, 0, 50].all() and levels[1][0, 1, :, 149].all()


def test_wide_frames_make_several_blocks_per_level_across_source_shards(tmp_path):
    rng = np.random.default_rng(2)
    arr = rng.integers(0, 256, size=(1, 1, 260, 8500), dtype=np.uint8)
    summary = convert([write_frames(tmp_path / "w", arr)], tmp_path / "w.zarr", pyramid=True)
    assert summary["levels"] == 6
    image = st.open_image(tmp_path / "w.zarr")
    assert image.dataset("1").shards[3] < image.dataset("1").shape[3]  # several blocks
    for got, want in zip(read_levels(tmp_path / "w.zarr"), reference_levels(arr, 6, "mean")):
        np.testing.assert_array_equal(got, want)


def test_auto_default_writes_no_pyramid_for_small_frames(tmp_path, frames_dir):
    folder, arr = frames_dir
    summary = convert([folder], tmp_path / "s.zarr")
    assert summary["levels"] == 0
    assert [d["path"] for d in multiscale(tmp_path / "s.zarr")["datasets"]] == ["0"]
    job = st.open_image(tmp_path / "s.zarr").volseg["job"]
    assert "pyramid_levels" not in job["parameters"]  # fingerprints of such jobs unchanged


class Interrupt(KeyboardInterrupt):
    """A Ctrl-C delivered from the progress callback, at a chosen block."""


def test_interrupted_pyramid_resumes_and_completes(tmp_path):
    rng = np.random.default_rng(3)
    arr = rng.integers(0, 256, size=(4, 2, 300, 520), dtype=np.uint8)
    folder = write_frames(tmp_path / "f", arr)
    out = tmp_path / "r.zarr"
    level0_blocks = 4  # one shard per time point

    def stop_in_level_1(done, total):
        if done == level0_blocks + 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        convert([folder], out, pyramid=True, progress=stop_in_level_1)
    image = st.open_image(out, require_complete=False)
    assert not image.complete
    # interrupted in the pyramid: level 0 and part of level 1 done, level 2 not begun
    assert image.group[st.LEDGER][:].all()
    assert image.group[f"{st.LEDGER}_1"][:].sum() >= 2
    assert not image.group[f"{st.LEDGER}_2"][:].any()
    with pytest.raises(Exception, match="incomplete"):
        st.open_image(out)
    summary = convert([folder], out, pyramid=True)
    assert summary["skipped"] == level0_blocks and summary["written"] == 0
    for got, want in zip(read_levels(out), reference_levels(arr, 2, "mean")):
        np.testing.assert_array_equal(got, want)
    assert st.open_image(out).complete


def test_verify_checks_every_level(tmp_path, cli):
    rng = np.random.default_rng(4)
    arr = rng.integers(0, 256, size=(2, 2, 300, 300), dtype=np.uint8)
    out = tmp_path / "v.zarr"
    convert([write_frames(tmp_path / "f", arr)], out, pyramid=True)
    code, text, err = cli("verify", out, "--json", "-q")
    assert code == 0, err
    arrays = {a["name"]: a for a in json.loads(text)[0]["arrays"]}
    assert set(arrays) == {"0", "1"} and arrays["1"]["shape"] == [2, 2, 150, 150]
    shards = [f for f in (out / "1" / "c" / "1").rglob("*") if f.is_file()]
    assert len(shards) == 1  # the level-1 shard of t=1
    shards[0].unlink()
    code, text, err = cli("verify", out, "--json", "-q")
    assert code == 2
    arrays = {a["name"]: a for a in json.loads(text)[0]["arrays"]}
    assert arrays["0"]["damaged"] == []
    assert arrays["1"]["missing"] == [[1, 0], [1, 1]]


# ----------------------------------------------------------------- predict

def test_predict_pyramid_probability_by_mean_mask_by_max(tmp_path):
    from volseg.testing import make_image_store
    from test_predict import smooth_images

    model = make_tiny_model(tmp_path / "tiny.keras")
    images = make_image_store(tmp_path / "im.zarr", smooth_images((1, 2, 270, 290)))
    summary = predict(images.path, model, tmp_path / "p.zarr", threshold=0.5, pyramid=True)
    assert summary["levels"] == 1
    pred = st.open_prediction(tmp_path / "p.zarr")
    prob, mask = pred.probability, pred.mask
    assert prob.level_paths == mask.level_paths == ["0", "1"]
    np.testing.assert_array_equal(prob.dataset("1")[:], reference_half(prob.array[:], "mean"))
    np.testing.assert_array_equal(mask.dataset("1")[:], block_max(mask.array[:], 2))
    assert mask.array[:].any() and not mask.array[:].all()  # both values present
    assert multiscale(tmp_path / "p.zarr" / "mask")["type"] == "max"


# ----------------------------------------------------------------- labels into the image store

@pytest.fixture
def labelled(tmp_path):
    """An image store with levels, a model, and a prediction copied into labels/vessels."""
    from test_predict import smooth_images

    model = make_tiny_model(tmp_path / "tiny.keras")
    frames = write_frames(tmp_path / "f", smooth_images((1, 2, 270, 290)))
    convert([frames], tmp_path / "im.zarr", pyramid=True)  # one level: the label has one too
    before = {p.relative_to(tmp_path / "im.zarr"): p.read_bytes()
              for p in (tmp_path / "im.zarr").rglob("*") if p.is_file()}
    summary = predict(tmp_path / "im.zarr", model, tmp_path / "p.zarr", threshold=0.5,
                      pyramid=True, labels_into="vessels")
    return tmp_path, model, before, summary


def test_mask_copied_into_image_store_labels(labelled):
    from ome_zarr_models import open_ome_zarr

    tmp, _, before, summary = labelled
    images = tmp / "im.zarr"
    assert summary["labels"] == str(images / "labels" / "vessels")
    # the image store's own files are untouched: only labels/ was added
    after = {p.relative_to(images): p.read_bytes() for p in images.rglob("*") if p.is_file()}
    assert {k: v for k, v in after.items() if k.parts[0] != "labels"} == before
    labels = json.loads((images / "labels" / "zarr.json").read_text())["attributes"]["ome"]
    assert labels["labels"] == ["vessels"]
    label = st.open_image(images / "labels" / "vessels")
    mask = st.open_prediction(tmp / "p.zarr").mask
    assert label.complete and label.checksummed
    assert label.level_paths == ["0", "1"]
    for level in ("0", "1"):
        np.testing.assert_array_equal(label.dataset(level)[:], mask.dataset(level)[:])
    meta = json.loads((images / "labels" / "vessels" / "zarr.json").read_text())["attributes"]
    assert meta["ome"]["image-label"]["source"] == {"image": "../../"}
    assert meta["ome"]["multiscales"][0]["type"] == "max"
    assert type(open_ome_zarr(str(images / "labels"), version="0.5")).__name__ == "Labels"
    assert type(open_ome_zarr(str(images / "labels" / "vessels"), version="0.5")).__name__ == \
        "ImageLabel"
    assert not list((images / "labels").glob(".*"))  # no lock or half-built store left


def test_verify_checks_label_images_of_an_image_store(labelled, cli):
    tmp = labelled[0]
    code, text, err = cli("verify", tmp / "im.zarr", "--json", "-q")
    assert code == 0, err
    names = [a["name"] for a in json.loads(text)[0]["arrays"]]
    assert names == ["0", "1", "labels/vessels", "labels/vessels/1"]
    shard = next(f for f in (tmp / "im.zarr" / "labels" / "vessels" / "1" / "c").rglob("*")
                 if f.is_file())
    shard.unlink()
    code, text, err = cli("verify", tmp / "im.zarr", "--json", "-q")
    assert code == 2
    arrays = {a["name"]: a for a in json.loads(text)[0]["arrays"]}
    assert arrays["labels/vessels/1"]["missing"] and not arrays["0"]["damaged"]


def test_existing_label_of_another_job_refused_before_predicting_unless_overwrite(labelled):
    from volseg.errors import InputError

    tmp, model, _, _ = labelled
    label = tmp / "im.zarr" / "labels" / "vessels"
    old = st.open_image(label).volseg["job"]["fingerprint"]
    with pytest.raises(InputError, match="already exists") as err:
        predict(tmp / "im.zarr", model, tmp / "p2.zarr", threshold=0.4, pyramid=True,
                labels_into="vessels")
    assert err.value.param == "labels_into" or "vessels" in str(err.value)
    assert not (tmp / "p2.zarr").exists()  # refused before any prediction was written
    predict(tmp / "im.zarr", model, tmp / "p2.zarr", threshold=0.4, pyramid=True,
            labels_into="vessels", overwrite=True)
    assert st.open_image(label).volseg["job"]["fingerprint"] != old
    np.testing.assert_array_equal(st.open_image(label).array[:],
                                  st.open_prediction(tmp / "p2.zarr").mask.array[:])
    names = json.loads((tmp / "im.zarr" / "labels" / "zarr.json").read_text())
    assert names["attributes"]["ome"]["labels"] == ["vessels"]


def test_label_name_checked(tmp_path, cli):
    from volseg.testing import make_image_store

    make_image_store(tmp_path / "im.zarr", np.zeros((1, 1, 8, 8), np.uint8))
    make_tiny_model(tmp_path / "m.keras")
    code, _, err = cli("predict", tmp_path / "im.zarr", "--model", tmp_path / "m.keras", "-o",
                       tmp_path / "p.zarr", "--labels-into-images", "../x", "-q")
    assert code == 2 and "--labels-into-images" in err and "label name" in err
    assert not (tmp_path / "p.zarr").exists()
