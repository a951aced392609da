"""napari opens volseg's stores: napari-ome-zarr's reader (no window, no Qt binding) gives
an image layer for an image store and a labels layer for a mask, with the pixel sizes."""

from __future__ import annotations

import numpy as np
import pytest

from volseg.testing import make_tiny_model

napari_ome_zarr = pytest.importorskip("napari_ome_zarr")

SCALE = (1.0, 3.0, 0.5, 0.5)  # t, z, y, x: z steps 6x the pixel size


def _layers(path):
    reader = napari_ome_zarr.napari_get_reader(str(path))
    assert reader is not None, f"napari-ome-zarr does not read {path}"
    return reader(str(path))


def test_image_and_mask_open_as_image_and_labels_layers_with_scale(tmp_path):
    from volseg.io import store as st
    from volseg.stages.predict import predict

    images = np.random.default_rng(0).integers(0, 255, (2, 3, 32, 48), dtype=np.uint8)
    image = st.create_image(tmp_path / "images.zarr", shape=images.shape, dtype="uint8",
                            job=st.make_job("test", parameters={}), scale=SCALE,
                            units={"z": "micrometer", "y": "micrometer", "x": "micrometer"})
    image.array[...] = images
    st.finish(image.group)
    predict(tmp_path / "images.zarr", make_tiny_model(tmp_path / "m.keras"),
            tmp_path / "pred.zarr", threshold=0.5)

    (data, meta, kind), = _layers(tmp_path / "images.zarr")
    assert kind == "image"
    assert list(meta["scale"]) == list(SCALE)
    level0 = data[0] if isinstance(data, list) else data
    np.testing.assert_array_equal(np.asarray(level0), images)

    layers = _layers(tmp_path / "pred.zarr" / "mask")
    kinds = [k for _, _, k in layers]
    assert kinds == ["labels"], kinds
    data, meta, _ = layers[0]
    assert list(meta["scale"]) == list(SCALE)  # the prediction carries the images' sizes
    mask = st.open_prediction(tmp_path / "pred.zarr").mask.array[...]
    level0 = data[0] if isinstance(data, list) else data
    np.testing.assert_array_equal(np.asarray(level0), mask)
