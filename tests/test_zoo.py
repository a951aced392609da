"""BioImage Model Zoo packages: export a volseg U-Net, validate and test-run it with the spec
libraries, and predict with packages (volseg's own and hand-built foreign ones)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from volseg.testing import assert_refused, make_image_store, make_tiny_model

pytest.importorskip("onnxruntime")
pytest.importorskip("bioimageio.spec")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny U-Net, an image store, and the package `volseg export-model` wrote."""
    from volseg_cli.main import main

    d = tmp_path_factory.mktemp("zoo")
    model = make_tiny_model(d / "tiny.keras", threshold=0.42)
    rng = np.random.default_rng(0)
    images = d / "images.zarr"
    make_image_store(images, rng.integers(0, 256, (2, 3, 100, 120), dtype=np.uint8))
    package = d / "tiny.zip"
    assert main(["export-model", str(model), "-o", str(package), "--images", str(images),
                 "--author", "Jane Doe", "-q"]) == 0
    return model, images, package


def test_exported_package_passes_the_spec_validation_and_test_run(exported):
    from bioimageio.spec import load_description
    from bioimageio.spec.model import v0_5

    _, _, package = exported
    descr = load_description(package)
    assert isinstance(descr, v0_5.ModelDescr), descr.validation_summary.format()
    # bioimageio.core's own test run, in a process of its own: importing it sets
    # KERAS_BACKEND and TF_ENABLE_ONEDNN_OPTS for every process started after it
    script = ("import json, sys; from bioimageio.core import test_model; "
              "s = test_model(sys.argv[1]); "
              "print(json.dumps([s.status, [(d.name, d.status) for d in s.details]]))")
    run = subprocess.run([sys.executable, "-c", script, str(package)], capture_output=True,
                         text=True, env={**os.environ, "KERAS_BACKEND": "tensorflow"},
                         timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    status, details = json.loads(run.stdout.strip().splitlines()[-1])
    assert status == "passed", details
    ran = {name for name, state in details if state == "passed"}
    assert any("Reproduce test outputs" in n and "(onnx)" in n for n in ran), ran
    assert any("Reproduce test outputs" in n and "(keras_v3)" in n for n in ran), ran
    # what a consumer reads: the normalisation as preprocessing, the halo, the threshold
    steps = [(p.id, getattr(p.kwargs, "gain", None)) for p in descr.inputs[0].preprocessing]
    assert ("scale_linear", pytest.approx(1 / 255)) in steps
    assert {a.halo for a in descr.outputs[0].axes if a.type == "space"} == {32}
    assert descr.config.model_dump()["volseg"]["threshold"] == pytest.approx(0.42)
    assert [a.name for a in descr.authors] == ["Jane Doe"]
    assert "10.1007/978-3-319-24574-4_28" in str(descr.cite[0].doi)
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        assert {"rdf.yaml", "weights.onnx", "weights.keras", "test_input.npy",
                "test_output.npy", "cover.png", "README.md"} <= names
        readme = zf.read("README.md").decode()
        from io import BytesIO

        from PIL import Image

        cover = Image.open(BytesIO(zf.read("cover.png")))
    assert "0.42" in readme and "volseg predict" in readme
    assert cover.size[0] == 2 * cover.size[1]


def test_package_predicts_the_same_store_as_the_keras_model(exported, tmp_path, cli):
    model, images, package = exported
    for name, m in (("keras", model), ("zoo", package)):
        code, _, err = cli("predict", images, "--model", m, "-o", tmp_path / f"{name}.zarr",
                           "--tile", "80,80", "-q")
        assert code == 0, err
    a = zarr.open_array(tmp_path / "keras.zarr" / "probability" / "0")[:]
    b = zarr.open_array(tmp_path / "zoo.zarr" / "probability" / "0")[:]
    assert np.abs(a.astype(int) - b).max() <= 1
    assert (a != b).mean() < 1e-3
    ma = zarr.open_array(tmp_path / "keras.zarr" / "mask" / "0")[:]
    mb = zarr.open_array(tmp_path / "zoo.zarr" / "mask" / "0")[:]
    assert np.array_equal(ma[a == b], mb[a == b])
    volseg = zarr.open_group(tmp_path / "zoo.zarr").attrs["volseg"]
    assert volseg["model"]["kind"] == "zoo"
    assert volseg["threshold"] == pytest.approx(0.42)
    assert any("ONNX Runtime" in n for n in volseg["numerics_used"])


# --------------------------------------------------------------------------- foreign packages

def _conv_onnx(channels_out: int = 1, pad: int = 1):
    """An ONNX network of another architecture, NCHW: a 3x3 convolution (zero padding,
    or none: an output 2 px smaller)."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.array([[0.1, 0.2, 0.1], [0.2, -1.0, 0.2], [0.1, 0.2, 0.1]], np.float32)
    w = np.broadcast_to(w, (channels_out, 1, 3, 3)).copy()
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[pad] * 4)], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", channels_out, "h", "w"])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), w


def _expected(frame: np.ndarray, w: np.ndarray) -> np.ndarray:
    """zero mean, unit variance over the frame -> the 3x3 convolution -> sigmoid."""
    from scipy.ndimage import correlate

    x = frame.astype(np.float64)
    x = (x - x.mean()) / (x.std() + 1e-6)
    y = correlate(x, w[0, 0].astype(np.float64), mode="constant")
    return 1 / (1 + np.exp(-y))


def make_foreign_package(path, *, halo: int | None = 2, inputs: int = 1, time_axis: bool = False,
                         channels_out: int = 1, weights: str = "onnx",
                         post: str = "sigmoid", crop: int = 0, fixed: int | None = None):
    """A hand-built zoo package (spec 0.5) of a network volseg did not make."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec

    folder = path.parent / (path.stem + "-files")
    folder.mkdir()
    onnx_bytes, w = _conv_onnx(channels_out, pad=0 if crop else 1)
    (folder / "w.onnx").write_bytes(onnx_bytes)
    (folder / "w.pt").write_bytes(b"not really torchscript")
    (folder / "README.md").write_text("# conv\n")
    size = fixed or spec.ParameterizedSize(min=16, step=8)
    space = ["y", "x"]
    shape = (1, 1) + (1,) * time_axis + ((fixed, fixed) if fixed else (16, 24))
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 100, shape).astype(np.float32)
    np.save(folder / "in.npy", x)
    y = _expected(x.reshape(shape[-2:]), w)[None, None]
    y = np.broadcast_to(y.reshape((1, 1) + (1,) * time_axis + shape[-2:]),
                        (1, channels_out) + (1,) * time_axis + shape[-2:]).astype(np.float32)
    if crop:
        y = np.ascontiguousarray(y[..., crop:-crop, crop:-crop])
    np.save(folder / "out.npy", y)

    def tensor_in(name):
        return spec.InputTensorDescr(
            id=spec.TensorId(name),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("c")])]
            + [spec.TimeInputAxis(size=1)] * time_axis
            + [spec.SpaceInputAxis(id=spec.AxisId(a), size=size) for a in space],
            test_tensor=spec.FileDescr(source=folder / "in.npy"),
            preprocessing=[spec.ZeroMeanUnitVarianceDescr(
                kwargs=spec.ZeroMeanUnitVarianceKwargs(axes=[spec.AxisId(a) for a in space]))])

    def out_axis(a):
        ref = spec.SizeReference(tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(a),
                                 offset=-2 * crop if a != "t" else 0)
        if a == "t":
            return spec.TimeOutputAxis(size=ref)
        if halo:
            return spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), size=ref, halo=halo)
        return spec.SpaceOutputAxis(id=spec.AxisId(a), size=ref)

    post_steps = {"sigmoid": [spec.SigmoidDescr()],
                  "softmax": [spec.SoftmaxDescr()]}[post]
    if weights == "onnx":
        descr_weights = spec.WeightsDescr(onnx=spec.OnnxWeightsDescr(source=folder / "w.onnx",
                                                                     opset_version=17))
    else:
        descr_weights = spec.WeightsDescr(torchscript=spec.TorchscriptWeightsDescr(
            source=folder / "w.pt", pytorch_version="2.0"))
    ins = [tensor_in("raw")] + [tensor_in(f"extra{k}") for k in range(1, inputs)]
    descr = spec.ModelDescr(
        name="hand-built conv", description="a 3x3 filter", authors=[spec.Author(name="T")],
        cite=[spec.CiteEntry(text="none", url="https://example.org")],
        license=spec.LicenseId("MIT"), documentation=spec.FileDescr(source=folder / "README.md"),
        inputs=ins,
        outputs=[spec.OutputTensorDescr(
            id=spec.TensorId("prob"),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[
                spec.Identifier(f"c{k}") for k in range(channels_out)])]
            + [out_axis("t")] * time_axis + [out_axis(a) for a in space],
            test_tensor=spec.FileDescr(source=folder / "out.npy"),
            postprocessing=post_steps)],
        weights=descr_weights)
    save_bioimageio_package(descr, output_path=path)
    return path, w


def test_a_foreign_onnx_package_predicts_with_its_declared_halo(tmp_path, cli):
    package, w = make_foreign_package(tmp_path / "conv.zip", halo=2)
    rng = np.random.default_rng(2)
    frames = rng.uniform(0, 1000, (1, 2, 64, 96)).astype(np.uint16)
    make_image_store(tmp_path / "i.zarr", frames)
    code, out, err = cli("predict", tmp_path / "i.zarr", "--model", package, "-o",
                         tmp_path / "p.zarr", "--tile", "32,32")
    assert code == 0, err
    assert "warning" not in out + err
    got = zarr.open_array(tmp_path / "p.zarr" / "probability" / "0")[:]
    want = np.stack([_expected(f, w) for f in frames[0]])
    # the last row and column: volseg reflect-pads a tile that ends past the frame where
    # the reference convolution pads with zeros (volseg.ops.tiling)
    assert np.abs(got[0, :, :-1, :-1].astype(int) - np.rint(want[:, :-1, :-1] * 255)).max() <= 1
    assert json.loads((tmp_path / "p.zarr" / "zarr.json").read_text())["attributes"][
        "volseg"]["tiling"]["halo"] == 2
    # the same package unzipped, given as its rdf.yaml
    with zipfile.ZipFile(package) as zf:
        zf.extractall(tmp_path / "unzipped")
    code, _, err = cli("predict", tmp_path / "i.zarr", "--model",
                       tmp_path / "unzipped" / "rdf.yaml", "-o", tmp_path / "y.zarr",
                       "--tile", "32,32", "-q")
    assert code == 0, err
    assert np.array_equal(zarr.open_array(tmp_path / "y.zarr" / "probability" / "0")[:], got)


def test_frames_smaller_than_the_packages_smallest_input_are_padded_up_to_it(tmp_path, cli):
    package, w = make_foreign_package(tmp_path / "conv.zip", halo=2)  # inputs of 16 px at least
    rng = np.random.default_rng(3)
    frames = rng.uniform(0, 1000, (1, 2, 10, 12)).astype(np.uint16)
    make_image_store(tmp_path / "i.zarr", frames)
    code, _, err = cli("predict", tmp_path / "i.zarr", "--model", package, "-o",
                       tmp_path / "p.zarr", "-q")
    assert code == 0, err
    got = zarr.open_array(tmp_path / "p.zarr" / "probability" / "0")[:]
    assert got.shape == frames.shape
    want = np.stack([_expected(f, w) for f in frames[0]])
    # inside the frame as the convolution of the frame itself; its last row and column
    # see the reflect padding (the reference pads with zeros)
    assert np.abs(got[0, :, :-1, :-1].astype(int) - np.rint(want[:, :-1, :-1] * 255)).max() <= 1


def test_a_package_without_a_halo_gets_a_measured_one_and_a_warning(tmp_path, cli):
    package, w = make_foreign_package(tmp_path / "conv.zip", halo=None)
    frames = np.random.default_rng(3).uniform(0, 255, (1, 1, 64, 64)).astype(np.uint8)
    make_image_store(tmp_path / "i.zarr", frames)
    code, out, err = cli("predict", tmp_path / "i.zarr", "--model", package, "-o",
                         tmp_path / "p.zarr", "--tile", "32,32")
    assert code == 0, err
    assert "declares no halo; using 8 px" in out + err
    got = zarr.open_array(tmp_path / "p.zarr" / "probability" / "0")[0, 0]
    want = np.rint(_expected(frames[0, 0], w) * 255)
    assert np.abs(got[:-1, :-1].astype(int) - want[:-1, :-1]).max() <= 1


def _conv3d_onnx():
    """A 3D ONNX network, NCDHW: a 3x3x3 convolution with zero padding, then a sigmoid."""
    from onnx import TensorProto, helper, numpy_helper

    w = np.random.default_rng(5).normal(0, 0.3, (1, 1, 3, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 6),
         helper.make_node("Sigmoid", ["c"], ["y"])], "conv3d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 1, "d", "h", "w"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", 1, "d", "h", "w"])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString(), w[0, 0]


def _expected_3d(stack: np.ndarray, w: np.ndarray, gain: float) -> np.ndarray:
    from scipy.ndimage import correlate

    y = correlate(stack.astype(np.float64) * gain, w.astype(np.float64), mode="constant")
    return 1 / (1 + np.exp(-y))


def normalised(stack: np.ndarray, axes: str) -> np.ndarray:
    """Zero mean, unit variance over ``axes`` ("zyx": the stack, "yx": each slice)."""
    over = (0, 1, 2) if axes == "zyx" else (1, 2)
    x = stack.astype(np.float64)
    return (x - x.mean(over, keepdims=True)) / (x.std(over, keepdims=True) + 1e-6)


def make_3d_package(path, *, z_size, z_halo: int | None, halo: int = 2, stats: str = "",
                    yx_size=None):
    """A hand-built 3D zoo package (spec 0.5): axes batch, channel, z, y, x; its
    preprocessing multiplies by ``gain``, or with ``stats`` ("zyx", "yx") is zero mean,
    unit variance over those axes."""
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as spec

    folder = path.parent / (path.stem + "-files")
    folder.mkdir()
    onnx_bytes, w = _conv3d_onnx()
    (folder / "w.onnx").write_bytes(onnx_bytes)
    (folder / "README.md").write_text("# conv3d\n")
    gain = 0.01
    depth = z_size if isinstance(z_size, int) else z_size.min
    side = yx_size or 16
    x = np.random.default_rng(1).uniform(0, 100, (1, 1, depth, side, side + 8 * (not yx_size)))
    x = x.astype(np.float32)
    np.save(folder / "in.npy", x)
    want = _expected_3d(normalised(x[0, 0], stats) if stats else x[0, 0], w,
                        1.0 if stats else gain)
    np.save(folder / "out.npy", want[None, None].astype(np.float32))
    size = yx_size or spec.ParameterizedSize(min=16, step=8)
    pre = (spec.ZeroMeanUnitVarianceDescr(kwargs=spec.ZeroMeanUnitVarianceKwargs(
        axes=[spec.AxisId(a) for a in stats])) if stats else
        spec.ScaleLinearDescr(kwargs=spec.ScaleLinearKwargs(gain=gain, offset=0.0)))

    def out_axis(a, h):
        ref = spec.SizeReference(tensor_id=spec.TensorId("raw"), axis_id=spec.AxisId(a))
        if h:
            return spec.SpaceOutputAxisWithHalo(id=spec.AxisId(a), size=ref, halo=h)
        return spec.SpaceOutputAxis(id=spec.AxisId(a), size=ref)

    descr = spec.ModelDescr(
        name="hand-built conv3d", description="a 3x3x3 filter", authors=[spec.Author(name="T")],
        cite=[spec.CiteEntry(text="none", url="https://example.org")],
        license=spec.LicenseId("MIT"), documentation=spec.FileDescr(source=folder / "README.md"),
        inputs=[spec.InputTensorDescr(
            id=spec.TensorId("raw"),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("c")]),
                  spec.SpaceInputAxis(id=spec.AxisId("z"), size=z_size),
                  spec.SpaceInputAxis(id=spec.AxisId("y"), size=size),
                  spec.SpaceInputAxis(id=spec.AxisId("x"), size=size)],
            test_tensor=spec.FileDescr(source=folder / "in.npy"), preprocessing=[pre])],
        outputs=[spec.OutputTensorDescr(
            id=spec.TensorId("prob"),
            axes=[spec.BatchAxis(), spec.ChannelAxis(channel_names=[spec.Identifier("p")]),
                  out_axis("z", z_halo), out_axis("y", halo), out_axis("x", halo)],
            test_tensor=spec.FileDescr(source=folder / "out.npy"))],
        weights=spec.WeightsDescr(onnx=spec.OnnxWeightsDescr(source=folder / "w.onnx",
                                                             opset_version=17)))
    save_bioimageio_package(descr, output_path=path)
    return path, w, gain


@pytest.mark.parametrize("rule", ["parameterized", "fixed", "undeclared z halo"])
def test_a_3d_package_predicts_across_z_blocks_with_its_z_halo(tmp_path, cli, rule):
    """Blocks of 4 slices of a 10-slice stack: every slice but the stack's first and last
    sees its real neighbours, in the next block too (the z halo), whatever the package's
    z rule: windows as deep as the block and its halo, or fixed windows of 4 (2 owned)."""
    from bioimageio.spec.model import v0_5 as spec

    z_size, z_halo = {"parameterized": (spec.ParameterizedSize(min=4, step=2), 1),
                      "fixed": (4, 1), "undeclared z halo": (spec.ParameterizedSize(min=4, step=1),
                                                             None)}[rule]
    package, w, gain = make_3d_package(tmp_path / "c3.zip", z_size=z_size, z_halo=z_halo)
    stack = np.random.default_rng(4).uniform(0, 300, (2, 10, 40, 56)).astype(np.uint16)
    make_image_store(tmp_path / "i.zarr", stack, shards=(1, 4, 40, 56))
    code, out, err = cli("predict", tmp_path / "i.zarr", "--model", package, "-o",
                         tmp_path / "p.zarr", "--tile", "32,32")
    assert code == 0, err
    assert "3D: z windows with a z halo of " + ("2" if z_halo is None else "1") in out + err
    assert ("declares no z halo; using 2 slice(s)" in out + err) == (z_halo is None)
    got = zarr.open_array(tmp_path / "p.zarr" / "probability" / "0")[:].astype(int)
    for t in range(2):
        want = np.rint(_expected_3d(stack[t], w, gain) * 255)
        # the stack's and frames' first and last slices, rows and columns meet padding
        assert np.abs(got[t, 1:-1, 1:-1, 1:-1] - want[1:-1, 1:-1, 1:-1]).max() <= 1


def test_3d_package_with_one_slice_windows_per_slice_statistics_or_a_fixed_tile(tmp_path, cli):
    """Windows of one slice (the network then sees no z neighbours), statistics per slice
    (axes y, x: a stack split into blocks is fine), and a fixed y/x size smaller than the
    frames (tiles with the declared halo)."""
    stack = np.random.default_rng(6).uniform(0, 300, (1, 6, 40, 56)).astype(np.uint16)
    stack[0] += np.arange(6, dtype=np.uint16)[:, None, None] * 200  # brighter slice by slice
    make_image_store(tmp_path / "i.zarr", stack, shards=(1, 2, 40, 56))
    cases = {"one slice": dict(z_size=1, z_halo=None),
             "per slice": dict(z_size=4, z_halo=1, stats="yx"),
             "fixed 32 px": dict(z_size=4, z_halo=1, yx_size=32)}
    for name, kind in cases.items():
        package, w, gain = make_3d_package(tmp_path / f"{name}.zip", **kind)
        out = tmp_path / f"{name}.zarr"
        code, _, err = cli("predict", tmp_path / "i.zarr", "--model", package, "-o", out, "-q")
        assert code == 0, (name, err)
        got = zarr.open_array(out / "probability" / "0")[0].astype(int)
        if name == "one slice":  # zeros beyond a one-slice window: the middle plane only
            flat = np.zeros_like(w)
            flat[1] = w[1]
            want = np.stack([_expected_3d(s[None], flat, gain)[0] for s in stack[0]])
        elif name == "per slice":
            want = _expected_3d(normalised(stack[0], "yx"), w, 1.0)
        else:
            want = _expected_3d(stack[0], w, gain)
        want = np.rint(want * 255)
        assert np.abs(got[1:-1, 1:-1, 1:-1] - want[1:-1, 1:-1, 1:-1]).max() <= 1, name


def test_3d_package_refusals(tmp_path, cli):
    # statistics over a volume that blocks split
    package, _, _ = make_3d_package(tmp_path / "v.zip", z_size=4, z_halo=1, stats="zyx")
    make_image_store(tmp_path / "i.zarr", np.ones((1, 8, 32, 32), np.uint8),
                     shards=(1, 4, 32, 32))
    assert_refused(cli("predict", tmp_path / "i.zarr", "--model", package, "-o",
                       tmp_path / "p.zarr"), str(package), "whole stacks", "--chunks=-1,Y,X")
    narrow, _, _ = make_3d_package(tmp_path / "n.zip", z_size=3, z_halo=None)
    assert_refused(cli("predict", tmp_path / "i.zarr", "--model", narrow, "-o",
                       tmp_path / "p.zarr", "--tta"), "--tta", "3D model")
    assert not (tmp_path / "p.zarr").exists()
    code, out, err = cli("info", narrow)
    assert code == 0, err
    assert "3D, z windows of 3 slices, z halo not declared" in out


def test_a_fixed_size_package_without_a_halo_gets_one_measured_in_tiles_of_its_size(
        tmp_path, cli):
    """A network that takes only 32 x 32 tiles and declares no halo: measured from tiles
    of that size (a larger noise frame would not fit it), then frames of 64 x 96 tiled."""
    package, w = make_foreign_package(tmp_path / "f.zip", halo=None, fixed=32)
    frames = np.random.default_rng(8).uniform(0, 255, (1, 1, 64, 96)).astype(np.uint8)
    make_image_store(tmp_path / "i.zarr", frames)
    code, out, err = cli("predict", tmp_path / "i.zarr", "--model", package, "-o",
                         tmp_path / "p.zarr")
    assert code == 0, err
    assert "declares no halo; using 4 px" in out + err
    got = zarr.open_array(tmp_path / "p.zarr" / "probability" / "0")[0, 0].astype(int)
    want = np.rint(_expected(frames[0, 0], w) * 255)
    assert np.abs(got[1:-1, 1:-1] - want[1:-1, 1:-1]).max() <= 1


@pytest.mark.parametrize("kind, needle", [
    (dict(inputs=2), "2 input(s)"),
    (dict(time_axis=True), "time axis"),
    (dict(channels_out=2), "2 channels"),
    (dict(weights="torchscript"), "weights as torchscript"),
    (dict(post="softmax"), "'softmax'"),
    (dict(crop=1, halo=None), "not the input's size"),
])
def test_packages_volseg_cannot_run_are_refused_in_one_line(tmp_path, cli, kind, needle):
    package, _ = make_foreign_package(tmp_path / "p.zip", **kind)
    make_image_store(tmp_path / "i.zarr", np.zeros((1, 1, 32, 32), np.uint8))
    assert_refused(cli("predict", tmp_path / "i.zarr", "--model", package, "-o",
                       tmp_path / "p.zarr"), str(package), needle)
    assert not (tmp_path / "p.zarr").exists()


def test_damaged_and_unversioned_packages_are_refused(tmp_path, cli, exported):
    _, images, package = exported
    broken = tmp_path / "broken.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.namelist():
            data = src.read(item)
            if item == "rdf.yaml":
                data = data.replace(b"format_version: 0.5", b"format_version: 9.9")
            dst.writestr(item, data)
    assert_refused(cli("predict", images, "--model", broken, "-o", tmp_path / "p.zarr"),
                   str(broken))
    assert_refused(cli("predict", images, "--model", package, "-o", tmp_path / "p.zarr",
                       "--precision", "bfloat16"), "--precision", "float32")
    # a file the description lists, left out of the zip
    lacking = tmp_path / "lacking.zip"
    with zipfile.ZipFile(package) as src, zipfile.ZipFile(lacking, "w") as dst:
        for item in src.namelist():
            if item != "weights.onnx":
                dst.writestr(item, src.read(item))
    for command in (("info", lacking),
                    ("predict", images, "--model", lacking, "-o", tmp_path / "p.zarr")):
        assert_refused(cli(*command), "lists 'weights.onnx', which the package does not hold")
    # not a zip at all, whatever its name; a package named like a volseg model
    (tmp_path / "garbage.zip").write_bytes(b"PK\x03\x04 cut short")
    assert_refused(cli("predict", images, "--model", tmp_path / "garbage.zip", "-o",
                       tmp_path / "p.zarr"), "garbage.zip", "not a model", "not one")
    renamed = tmp_path / "renamed.keras"
    renamed.write_bytes(Path(package).read_bytes())
    assert_refused(cli("predict", images, "--model", renamed, "-o", tmp_path / "p.zarr"),
                   "a model zoo package named like a volseg model")


def test_export_refusals(tmp_path, cli, exported):
    model, images, package = exported
    forest = tmp_path / "forest.model"
    with zipfile.ZipFile(forest, "w") as zf:
        zf.writestr("volseg.json", json.dumps({"format": "volseg-model", "format_version": 1,
                                               "kind": "forest", "threshold": 0.5}))
    truth = make_image_store(tmp_path / "t.zarr", np.zeros((1, 1, 64, 64), np.uint8),
                             mask=True).path
    before = package.read_bytes()
    cases = [
        (("export-model", forest, "-o", tmp_path / "f.zip", "--images", images), "random forest"),
        (("export-model", model, "-o", package, "--images", images), "--overwrite"),
        (("export-model", model, "-o", tmp_path / "x.tar", "--images", images), ".zip"),
        (("export-model", model, "-o", tmp_path / "x.zip"), "--images"),
        (("export-model", model, "-o", tmp_path / "x.zip", "--images", images, "--license",
          "NOT-A-LICENCE"), "--license"),
        (("export-model", model, "-o", tmp_path / "x.zip", "--images", images, "--name",
          "a/b"), "--name"),
        (("export-model", model, "-o", tmp_path / "x.zip", "--images", truth),
         "is a truth (mask) store"),
        (("export-model", images, "-o", tmp_path / "x.zip"), "is a folder, not a model file"),
    ]
    for args, needle in cases:
        assert_refused(cli(*args), needle)
    assert package.read_bytes() == before
    assert not (tmp_path / "x.zip").exists() and not list(tmp_path.glob(".volseg-package-*"))


def test_a_depth_context_model_exports_its_slices_and_predicts_alike(tmp_path, cli):
    from bioimageio.spec import load_description

    from volseg.models.backend import import_keras
    from volseg.models.unet import base_info, build_unet, save_model

    keras = import_keras()
    keras.utils.set_random_seed(1)
    net = build_unet(base_filters=4, depth=2, normalization=(0.0, 255.0), channels=3)
    save_model(net, tmp_path / "k3.keras", info=base_info(
        depth=2, base_filters=4, dropout=0.1, batch_norm=True, normalization=(0.0, 255.0),
        context=3))
    rng = np.random.default_rng(4)
    make_image_store(tmp_path / "i.zarr", rng.integers(0, 256, (1, 4, 72, 80), dtype=np.uint8))
    assert cli("export-model", tmp_path / "k3.keras", "-o", tmp_path / "k3.zip", "--images",
               tmp_path / "i.zarr", "-q")[0] == 0
    descr = load_description(tmp_path / "k3.zip")
    (channel,) = [a for a in descr.inputs[0].axes if a.type == "channel"]
    assert len(channel.channel_names) == 3
    for name, m in (("keras", tmp_path / "k3.keras"), ("zoo", tmp_path / "k3.zip")):
        code, _, err = cli("predict", tmp_path / "i.zarr", "--model", m, "-o",
                           tmp_path / f"{name}.zarr", "-q")
        assert code == 0, err
    a = zarr.open_array(tmp_path / "keras.zarr" / "probability" / "0")[:].astype(int)
    b = zarr.open_array(tmp_path / "zoo.zarr" / "probability" / "0")[:]
    assert np.abs(a - b).max() <= 1


def test_info_describes_a_package_or_says_why_predict_cannot_run_it(tmp_path, cli, exported):
    _, _, package = exported
    code, out, err = cli("info", package)
    assert code == 0, err
    assert "zoo package model" in out and "margin: 32" in out and "scale_linear" in out
    foreign, _ = make_foreign_package(tmp_path / "t.zip", time_axis=True)
    assert_refused(cli("info", foreign), str(foreign), "time axis")
