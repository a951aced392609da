"""OME-Zarr written by other tools: ome-zarr-py (NGFF 0.4 on Zarr v2, 0.5 on v3, ``s0``
paths), a bioformats2raw-style root, axes ``tczyx`` with two channels and ``zyx``."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from volseg.testing import make_tiny_model, validate_ngff, write_frames

SHAPE = (2, 3, 24, 40)  # t, z, y, x


@pytest.fixture(scope="module")
def data():
    """Two channels of images (t, c, z, y, x) and a binary truth (t, z, y, x)."""
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, size=(SHAPE[0], 2) + SHAPE[1:], dtype=np.uint8)
    truth = (images[:, 1] > 128).astype(np.uint8)
    return images, truth


def write_ome(path, array, axes, version="0.5", **scale):
    """An image written by ome-zarr-py (not volseg): ``s0`` paths, one frame per chunk."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    chunks = tuple(1 if a in "tcz" else n for a, n in zip(axes, array.shape))
    write_image(array, group, axes=axes, fmt=fmt, scale_factors=(2,), scale=scale or None,
                axes_units={a: "micrometer" for a in scale if a in "zyx"} or None,
                storage_options={"chunks": chunks})
    return path


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_py_tczyx_two_channels(tmp_path, data, version):
    from volseg.io import store as st
    from volseg.errors import InputError

    images, _ = data
    path = write_ome(tmp_path / "img.zarr", images, "tczyx", version, z=2.0, y=0.5, x=0.5)
    assert (path / "s0").is_dir()
    assert (path / (".zattrs" if version == "0.4" else "zarr.json")).is_file()
    image = st.open_image(path, channel=1)
    assert not image.made_by_volseg
    assert image.array.shape == SHAPE
    assert np.array_equal(image.array[:], images[:, 1])
    assert np.array_equal(image.array[1, 2, 3:9, ::3], images[1, 1, 2, 3:9, ::3])
    assert np.array_equal(image.array[:, 1, 5], images[:, 1, 1, 5])
    assert image.scale == (1.0, 2.0, 0.5, 0.5)
    assert image.units == {"z": "micrometer", "y": "micrometer", "x": "micrometer"}
    with pytest.raises(InputError, match="channel: .* has 2 channels"):
        st.open_image(path)
    with pytest.raises(InputError, match="channel: .*got 2"):
        st.open_image(path, channel=2)


def test_zyx_without_time_reads_as_one_timepoint(tmp_path, data):
    from volseg.io import store as st

    volume = data[0][0, 0]
    path = write_ome(tmp_path / "zyx.zarr", volume, "zyx", "0.4")
    image = st.open_image(path, channel=3)  # no c axis: the channel is ignored
    assert image.array.shape == (1,) + SHAPE[1:]
    assert np.array_equal(image.array[0], volume)
    assert image.array[0, 1].shape == SHAPE[2:]
    assert image.array[:, :, 4:6, 0].shape == (1, SHAPE[1], 2)


def test_bioformats2raw_layout_series(tmp_path, data):
    """A root with ``bioformats2raw.layout`` and series ``0/``, ``1/`` (listed in ``OME``)."""
    from volseg.io import store as st
    from volseg.errors import InputError

    images, _ = data
    root = tmp_path / "bf2raw.zarr"
    zarr.open_group(str(root), mode="w", zarr_format=2, attributes={"bioformats2raw.layout": 3})
    write_ome(root / "0", images[:, 0], "tzyx", "0.4")
    write_ome(root / "1", images[:, 1], "tzyx", "0.4")
    zarr.open_group(str(root / "OME"), mode="w", zarr_format=2, attributes={"series": ["0", "1"]})
    assert np.array_equal(st.open_image(root).array[:], images[:, 0])
    assert np.array_equal(st.open_image(root, series=1).array[:], images[:, 1])
    with pytest.raises(InputError, match="series: .* holds 2 series"):
        st.open_image(root, series=2)


def test_damage_in_a_foreign_store_names_the_frames(tmp_path, data):
    """Reads still go through the checked array: a broken chunk names (t, z), not (t, c)."""
    from volseg.io import store as st
    from volseg.errors import DamagedDataError

    path = write_ome(tmp_path / "img.zarr", data[0], "tczyx", "0.4")
    (path / "s0" / "1" / "1" / "2" / "0" / "0").write_bytes(b"not a chunk")
    image = st.open_image(path, channel=1)
    assert np.array_equal(image.array[0], data[0][0, 1])  # other frames read fine
    with pytest.raises(DamagedDataError, match=r"frames t=1 z=2"):
        image.array[1]
    assert image.array.damage().frames == {(1, 2)}


def test_pipeline_on_foreign_stores_matches_tiff(tmp_path, data, cli):
    """predict and evaluate on ome-zarr-py stores give what the same data from TIFF gives."""
    from volseg.stages.convert import convert
    from volseg.stages.evaluate import evaluate
    from volseg.stages.predict import predict
    from volseg.io import store as st

    images, truth = data
    model = make_tiny_model(tmp_path / "tiny.keras")
    convert([write_frames(tmp_path / "frames", images[:, 1])], tmp_path / "img.zarr")
    convert([write_frames(tmp_path / "labels", truth)], tmp_path / "truth.zarr", mask=True)
    ome_images = write_ome(tmp_path / "ome-img.zarr", images, "tczyx", "0.4")
    ome_truth = write_ome(tmp_path / "ome-truth.zarr", truth, "tzyx", "0.5")

    predict(tmp_path / "img.zarr", model, tmp_path / "ref.zarr", threshold=0.5)
    predict(ome_images, model, tmp_path / "pred.zarr", channel=1, threshold=0.5)
    ref, pred = st.open_prediction(tmp_path / "ref.zarr"), st.open_prediction(tmp_path / "pred.zarr")
    assert np.array_equal(pred.probability.array[:], ref.probability.array[:])
    assert np.array_equal(pred.mask.array[:], ref.mask.array[:])

    want = evaluate(tmp_path / "ref.zarr", tmp_path / "truth.zarr")
    got = evaluate(tmp_path / "pred.zarr", ome_truth)
    for key in ("tp", "fp", "tn", "fn", "dice", "roc_auc", "voxels"):
        assert got[key] == want[key], key

    code, out, _ = cli("info", ome_images, "--channel", "1")
    assert code == 0 and "made by another tool" in out and "axes tczyx, channel 1" in out
    code, _, err = cli("predict", ome_images, "--model", model, "-o", tmp_path / "x.zarr")
    assert code == 2 and "--channel:" in err
    code, out, _ = cli("verify", ome_truth)
    assert code == 0 and "decoding only" in out
    job = json.loads((tmp_path / "pred.zarr" / "zarr.json").read_text())["attributes"]["volseg"]["job"]
    assert job["parameters"]["channel"] == 1

    # measure reads the foreign truth (and a prediction made from a foreign image) like
    # the TIFF-converted one
    from volseg.stages.measure import measure

    mine = measure(tmp_path / "ref.zarr", truth_path=tmp_path / "truth.zarr", spacing="1,1,1")
    theirs = measure(tmp_path / "pred.zarr", truth_path=ome_truth, spacing="1,1,1")
    for a, b in zip(mine["per_timepoint"], theirs["per_timepoint"]):
        for key in ("volume", "skeleton_length", "branch_points", "components"):
            assert a[key] == b[key] and a["truth"][key] == b["truth"][key], key


def test_prediction_root_is_a_labels_group_with_an_image_label(tmp_path, data):
    """Validators accept the root (NGFF ``labels``) and napari reads the mask as labels."""
    from ome_zarr_models.v05.labels import Labels

    from volseg.stages.predict import predict

    ome_images = write_ome(tmp_path / "ome-img.zarr", data[0], "tczyx", "0.5")
    predict(ome_images, make_tiny_model(tmp_path / "tiny.keras"), tmp_path / "pred.zarr",
            channel=0)
    assert validate_ngff(tmp_path / "pred.zarr") == ["Labels", "Image", "ImageLabel"]
    labels = Labels.from_zarr(zarr.open_group(str(tmp_path / "pred.zarr"), mode="r"))
    label = labels.get_image_labels_group("mask").attributes.ome.image_label
    assert [c.label_value for c in label.colors] == [0, 1]
    source = (tmp_path / "pred.zarr" / "mask" / label.source.image).resolve()
    assert source == ome_images.resolve()


def test_export_measure_preview_take_channel(tmp_path, data, cli):
    """Every command that reads another tool's multichannel store offers --channel."""
    import tifffile

    from volseg.stages.predict import predict

    images, truth = data
    two = np.stack([1 - truth, truth], axis=1)  # channel 1 is the truth
    ome_images = write_ome(tmp_path / "ome-img.zarr", images, "tczyx", "0.5")
    ome_masks = write_ome(tmp_path / "ome-masks.zarr", two, "tczyx", "0.5")
    for cmd in (["export", ome_images, "-o", tmp_path / "none"],
                ["measure", ome_masks], ["preview", tmp_path / "pred.zarr", "--images",
                                         ome_images, "-o", tmp_path / "none.png"]):
        if cmd[0] == "preview":
            predict(ome_images, make_tiny_model(tmp_path / "tiny.keras"), tmp_path / "pred.zarr",
                    channel=1, threshold=0.5)
        code, _, err = cli(*cmd, "-q")
        assert code == 2 and "--channel: " in err and "has 2 channels" in err, err

    code, _, err = cli("export", ome_images, "-o", tmp_path / "h.tif", "--hyperstack",
                       "--channel", "1", "-q")
    assert code == 0, err
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "h.tif").reshape(SHAPE), images[:, 1])
    code, _, err = cli("measure", ome_masks, "--channel", "1", "--spacing", "1,1,1",
                       "--json", tmp_path / "m.json", "-q")
    assert code == 0, err
    report = json.loads((tmp_path / "m.json").read_text())
    assert [r["volume"] for r in report["per_timepoint"]] == [int(v.sum()) for v in truth]
    code, _, err = cli("preview", tmp_path / "pred.zarr", "--images", ome_images, "--channel", "1",
                       "--truth", ome_masks, "-o", tmp_path / "p.png", "-q")
    assert code == 0, err
