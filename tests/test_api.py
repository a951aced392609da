"""The Python API: names, signatures, lazy imports, and the example notebook run end to end."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from conftest import ROOT


def test_import_is_light_and_exports_the_api():
    """``import volseg`` (and touching ``volseg.train``) loads neither TensorFlow nor zarr."""
    code = ("import sys, volseg; volseg.train; volseg.predict; "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, sorted(volseg.__all__))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split(" ", 2)
    assert out[:2] == ["False", "False"]
    for name in ("convert", "train", "predict", "evaluate", "verify", "open", "InputError"):
        assert repr(name) in out[2]


def test_stage_functions_are_documented_and_take_the_options():
    import volseg

    for name, params in {"convert": ["inputs", "out", "mask"],
                         "train": ["images", "truth", "out", "method", "channel"],
                         "predict": ["images", "model", "out", "threshold", "channel", "series"],
                         "evaluate": ["prediction", "truth", "roi", "json"],
                         "verify": ["store"], "open": ["path", "array", "channel"]}.items():
        fn = getattr(volseg, name)
        assert callable(fn), name
        assert set(params) <= set(inspect.signature(fn).parameters), name
        doc = inspect.getdoc(getattr(volseg.api, name))
        assert "Parameters" in doc or "Returns" in doc, name
    # the stage modules keep their attributes
    from volseg.predict import read_block  # noqa: F401
    assert volseg.train.TrainConfig is not None


def test_bad_method_is_an_input_error(tmp_path):
    import volseg

    with pytest.raises(volseg.InputError, match="method: must be 'unet' or 'forest'"):
        volseg.train(tmp_path / "i.zarr", tmp_path / "t.zarr", tmp_path / "m", method="svm")


def test_quickstart_notebook_runs(tmp_path):
    """examples/quickstart.ipynb executes cell by cell; its asserts check the results."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(ROOT / "examples" / "quickstart.ipynb", as_version=4)
    NotebookClient(nb, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the plotted frame
