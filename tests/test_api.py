"""The Python API: names, signatures, lazy imports, and the example notebook run end to end."""

from __future__ import annotations

import inspect
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


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
        # a plain function, the very one of volseg.api (no callable module: one name,
        # one signature)
        assert inspect.isfunction(fn) and fn is getattr(volseg.api, name), name
    # the stages are modules of their own package, beside the API's functions
    from volseg.stages import predict as predict_stage

    assert inspect.ismodule(predict_stage) and volseg.predict is not predict_stage.predict


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


def test_evaluate_keeps_a_report_file_volseg_did_not_write(tmp_path):
    # the rule is the library's, so the API keeps it as the command line does
    import numpy as np

    import volseg
    from volseg.testing import make_image_store, make_prediction

    prob = np.zeros((1, 1, 8, 8), np.uint8)
    prob[..., 2:5, 2:5] = 255
    make_prediction(tmp_path / "p.zarr", prob)
    make_image_store(tmp_path / "t.zarr", (prob > 0).astype(np.uint8), mask=True)
    notes = tmp_path / "notes.json"
    notes.write_text('{"mine": true}')
    with pytest.raises(volseg.InputError, match="notes.json: exists and was not written by volseg"):
        volseg.evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", json=notes, progress=False)
    assert notes.read_text() == '{"mine": true}'
    report = volseg.evaluate(tmp_path / "p.zarr", tmp_path / "t.zarr", json=notes,
                             overwrite=True, progress=False)
    assert report["dice"] == 1.0 and '"per_timepoint"' in notes.read_text()


def test_evaluate_sizes_its_local_cluster_by_the_cores_it_may_use():
    import os

    from volseg.stages.evaluate import local_layout

    assert local_layout() == {"workers": len(os.sched_getaffinity(0)), "threads": 1}
