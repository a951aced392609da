"""The same prediction whatever the worker layout: cores, worker processes, --batch."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from volseg.io import store as st
from volseg.testing import VOLSEG_COMMAND, make_image_store, make_tiny_model

needs_two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                                     reason="needs 2 usable cores to compare with 1")

#: A child that runs a seeded U-Net through predict's model function on fixed tiles,
#: on the cores it is given, in batches of 1, 4 and 8 tiles, and saves the float32 output.
CHILD = textwrap.dedent("""
    import os, sys
    import numpy as np
    cores, out = sys.argv[1], sys.argv[2]
    os.sched_setaffinity(0, {int(c) for c in cores.split(",")})
    from volseg.models.backend import fix_model_threads, import_keras, model_threads
    fix_model_threads()
    keras = import_keras()
    from volseg.models.unet import build_unet
    from volseg.stages.predict import predict_batch_fn
    keras.utils.set_random_seed(0)
    model = build_unet(base_filters=8, depth=4)
    tiles = np.random.default_rng(1).random((8, 256, 256, 1), dtype=np.float32)
    run = predict_batch_fn(model)
    np.save(out, np.stack([np.concatenate([run(tiles[k:k + batch]) for k in range(0, 8, batch)])
                           for batch in (1, 4, 8)]))
    print(model_threads())
""")


@needs_two_cores
def test_model_output_has_the_same_bits_on_1_and_2_cores_and_any_batch(tmp_path):
    """TensorFlow split a convolution by its thread count (1 thread and 2 gave 1,313
    probabilities of these 524,288 that differ in the last bit) and by the batch (a
    tile's bits changed with its place in a batch of 4): predict fixes both."""
    outputs = {}
    for cores in ("0,1", "0"):
        out = tmp_path / f"{cores}.npy"
        env = {k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")}
        proc = subprocess.run([sys.executable, "-c", CHILD, cores, str(out)],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert proc.stdout.split()[-1] == "2"  # TensorFlow's threads, read back
        for batch, output in zip((1, 4, 8), np.load(out)):
            outputs[cores, batch] = output
    reference = outputs["0,1", 1]
    assert np.isfinite(reference).all() and reference.std() > 0
    for key, output in outputs.items():
        assert output.tobytes() == reference.tobytes(), (
            f"{key}: {(output != reference).sum()} values differ")


def _predict(tmp_path, images, model, name, *args, cores=None):
    out = tmp_path / name
    command = list(VOLSEG_COMMAND)
    if cores:
        command = ["taskset", "-c", cores] + command
    proc = subprocess.run(command + ["predict", str(images), "--model", str(model), "-o",
                                     str(out), "-q", *args],
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if not k.startswith("TF_NUM_")})
    assert proc.returncode == 0, proc.stderr[-2000:]
    pred = st.open_prediction(out)
    return pred, pred.probability.array[:], pred.mask.array[:]


@pytest.mark.slow
@needs_two_cores
def test_predict_writes_the_same_bytes_whatever_the_layout(tmp_path):
    """End to end: 1 or 2 usable cores, 1 or 2 worker processes, --batch 1 or 4: every
    probability and mask byte the same, and the store says what decided them."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    images = ndimage.gaussian_filter(rng.normal(size=(2, 4, 96, 160)), (0, 0, 3, 3))
    images = ((images - images.min()) / np.ptp(images) * 255).astype(np.uint8)
    make_image_store(tmp_path / "i.zarr", images)
    model = make_tiny_model(tmp_path / "m.keras", filters=8, depth=3)
    runs = {
        "default": _predict(tmp_path, tmp_path / "i.zarr", model, "a.zarr"),
        "1 core": _predict(tmp_path, tmp_path / "i.zarr", model, "b.zarr", cores="0"),
        "2 workers": _predict(tmp_path, tmp_path / "i.zarr", model, "c.zarr", "--workers", "2"),
        "--batch 1": _predict(tmp_path, tmp_path / "i.zarr", model, "d.zarr", "--batch", "1",
                              "--tile", "80,96"),
        "--batch 4": _predict(tmp_path, tmp_path / "i.zarr", model, "e.zarr", "--batch", "4",
                              "--tile", "80,96"),
    }
    _, prob, mask = runs["default"]
    assert prob.std() > 0 and 0 < mask.mean() < 1
    for name in ("1 core", "2 workers"):
        assert runs[name][1].tobytes() == prob.tobytes(), name
        assert runs[name][2].tobytes() == mask.tobytes(), name
    assert runs["--batch 1"][1].tobytes() == runs["--batch 4"][1].tobytes()
    for pred, _, _ in runs.values():
        (used,) = pred.volseg["numerics_used"]
        assert used.startswith("float32, ") and used.endswith(", 2 threads"), used


def _run(*args):
    proc = subprocess.run(list(VOLSEG_COMMAND) + [str(a) for a in args] + ["-q"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
@needs_two_cores
def test_forest_and_zoo_package_predictions_do_not_depend_on_the_layout(tmp_path):
    """The other two kinds of model: a random forest (its trees summed by one job, in
    one order) and a model zoo package (ONNX Runtime on a fixed thread count) write the
    same bytes on 1 or 2 usable cores and 1 or 2 worker processes."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bioimageio.spec")
    d = tmp_path / "d"
    _run("synth", "-o", d, "--timepoints", "2", "--depth", "2", "--height", "96", "--width",
         "128", "--seed", "3")
    _run("convert", d / "images", "-o", tmp_path / "i.zarr")
    _run("convert", d / "labels", "--mask", "-o", tmp_path / "t.zarr")
    _run("train", "--method", "forest", "--images", tmp_path / "i.zarr", "--truth",
         tmp_path / "t.zarr", "-o", tmp_path / "f.model", "--trees", "10", "--max-samples",
         "5000")
    model = make_tiny_model(tmp_path / "m.keras", filters=8, depth=3)
    _run("export-model", model, "-o", tmp_path / "m.zip", "--images", tmp_path / "i.zarr",
         "--author", "Test Author")
    for kind in ("f.model", "m.zip"):
        runs = [_predict(tmp_path, tmp_path / "i.zarr", tmp_path / kind, f"{kind}-{name}.zarr",
                         *args, cores=cores)
                for name, args, cores in (("default", (), None), ("1core", (), "0"),
                                          ("2workers", ("--workers", "2"), None))]
        _, prob, mask = runs[0]
        assert prob.std() > 0, kind
        for _, other_prob, other_mask in runs[1:]:
            assert other_prob.tobytes() == prob.tobytes(), kind
            assert other_mask.tobytes() == mask.tobytes(), kind
