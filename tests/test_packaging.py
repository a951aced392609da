"""The wheel holds both packages and the console script; ``python -m volseg`` works.

Installing the wheel into a fresh venv takes minutes (TensorFlow), so the suite checks the
wheel's contents; ``scripts/check_wheel.sh`` (run by ``.ci/run`` after the suite) installs
it into a fresh venv and runs convert, train, predict and evaluate from it.
"""

from __future__ import annotations

from pathlib import Path

import subprocess
import sys
import zipfile

ROOT = Path(__file__).resolve().parents[1]


def test_python_m_volseg():
    out = subprocess.run([sys.executable, "-m", "volseg", "--version"], capture_output=True,
                         text=True, check=True).stdout
    assert out.startswith("volseg ")


def test_wheel_contents_and_entry_point(tmp_path):
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w",
                            str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    # the SPDX license string needs no deprecated table form
    assert "SetuptoolsDeprecationWarning" not in build.stderr, build.stderr[-3000:]
    (wheel,) = tmp_path.glob("volseg-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    packages = [p.relative_to(ROOT).as_posix() for p in (ROOT / "volseg").rglob("*.py")]
    cli = ["volseg_cli/" + p.name for p in (ROOT / "cli").glob("*.py")]
    assert not set(packages + cli) - names, sorted(set(packages + cli) - names)
    meta = zipfile.ZipFile(wheel)
    (entry,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    assert "volseg = volseg_cli.main:console" in meta.read(entry).decode()
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    assert "License-Expression: MIT" in meta.read(metadata).decode()
