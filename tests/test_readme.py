"""Every `$ volseg ...` command in README.md's console blocks runs, in order, on small data.

The README shows real-size commands; here the heavy ones get small sizes appended
(argparse keeps the last value of an option), so the README cannot rot without this
test failing.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# appended to shrink the data and the training; everything else runs as written
SMALL = {
    "synth": ["--height", "96", "--width", "128"],
    "train": ["--epochs", "1", "--steps-per-epoch", "2", "--filters", "4", "--depth", "2",
              "--patch", "32", "--batch", "2", "--precision", "float32"],
}


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            line = lines[i]
            if line.startswith("$ volseg "):
                cmd = line[2:]
                while cmd.endswith("\\"):  # continued lines
                    i += 1
                    cmd = cmd[:-1] + " " + lines[i].strip()
                commands.append(shlex.split(cmd))
            i += 1
    return commands


def test_readme_has_worked_example():
    names = [c[1] for c in readme_commands()]
    for stage in ("synth", "convert", "train", "predict", "evaluate", "preview", "export", "info"):
        assert stage in names, f"README has no `volseg {stage}` example"


@pytest.mark.slow
def test_readme_commands_run(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    for cmd in readme_commands():
        args = cmd[1:] + SMALL.get(cmd[1], [])
        code, out, err = cli(*args)
        assert code == 0, f"`{' '.join(cmd)}` failed ({code}):\n{err[-3000:]}"
