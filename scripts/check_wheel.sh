#!/usr/bin/env bash
# The wheel built from this repository installs into a fresh venv and runs: every
# package and data file it needs is inside (an editable install would hide a missing
# one). Run by .ci/run after the test suite; about 2 minutes with pip's cache warm.
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q --upgrade pip
"$work/venv/bin/python" -m pip wheel -q --no-deps -w "$work/dist" .
"$work/venv/bin/python" -m pip install -q "$work"/dist/volseg-*.whl
cd "$work"  # not the repository: the installed package must stand alone
"$work/venv/bin/volseg" --version
"$work/venv/bin/volseg" synth -o data --timepoints 2 --depth 2 --height 48 --width 64 -q
"$work/venv/bin/volseg" convert data/images -o images.zarr -q
"$work/venv/bin/volseg" convert data/labels --mask -o truth.zarr -q
"$work/venv/bin/volseg" train --method forest --images images.zarr --truth truth.zarr \
    -o forest.model --trees 5 -q
"$work/venv/bin/volseg" predict images.zarr --model forest.model -o pred.zarr -q
"$work/venv/bin/volseg" evaluate pred.zarr --truth truth.zarr -q --json report.json
"$work/venv/bin/python" -c "import json, volseg; r = json.load(open('report.json')); \
assert r['voxels'] == 2 * 2 * 48 * 64, r['voxels']; print('wheel install: ok, Dice', round(r['dice'], 3))"
