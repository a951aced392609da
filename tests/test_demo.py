"""volseg demo --small: every stage end to end; what it prints matches what it writes."""

from __future__ import annotations

import json
import re

import pytest

from volseg import store as st


@pytest.mark.slow
def test_small_demo_end_to_end(tmp_path, cli):
    out = tmp_path / "demo"
    code, stdout, err = cli("demo", "--small", "-o", out)
    assert code == 0, err[-3000:]
    report = json.loads((out / "report.json").read_text())
    summary = json.loads((out / "demo.json").read_text())
    # the printed table shows the numbers of the written report
    m = re.search(r"U-Net Dice\s+([\d.]+)\s+([\d.]+)", stdout)
    assert m, stdout
    assert float(m.group(1)) == pytest.approx(report["dice"], abs=5e-4)
    assert float(m.group(2)) == pytest.approx(summary["dice_held_out"], abs=5e-4)
    m = re.search(r"sensitivity\s+([\d.]+)", stdout)
    assert float(m.group(1)) == pytest.approx(report["sensitivity"], abs=5e-4)
    assert "best global threshold Dice" in stdout
    # test-time augmentation on the held-out time point only, with its Dice and cost
    tta = summary["tta"]
    assert tta["held_out_t"] == 1 and tta["dice_plain"] == pytest.approx(summary["dice_held_out"])
    assert tta["time_ratio"] > 1 and tta["dice_tta"] is not None
    assert f"Dice {tta['dice_plain']:.3f} -> {tta['dice_tta']:.3f}" in stdout
    assert st.open_prediction(out / "pred-tta.zarr").volseg["tta"] is True
    # every stage left a complete, readable result
    assert st.open_image(out / "images.zarr").shape == (2, 2, 96, 128)
    assert st.open_prediction(out / "pred.zarr").complete
    assert (out / "model.keras").is_file()
    assert any((out / "figures").glob("*.png"))
    assert report["voxels"] == 2 * 2 * 96 * 128
    # a second run into the same folder is refused without --overwrite
    code, _, err = cli("demo", "--small", "-o", out)
    assert code == 2 and "--overwrite" in err
