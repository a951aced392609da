"""The one index syntax: parse_indices and format_ranges."""

from __future__ import annotations

import pytest

from volseg.errors import InputError
from volseg.ops.indices import format_ranges, parse_indices


@pytest.mark.parametrize("spec,expected", [
    ("3", [3]), (2, [2]), ("0-3", [0, 1, 2, 3]), ("1,3,5", [1, 3, 5]), ("all", list(range(6))),
    ("4-5", [4, 5]), ("1, 1, 0-1", [1, 0]), ([5, 0], [5, 0]), ("2 - 3", [2, 3]),
])
def test_parse_indices(spec, expected):
    assert parse_indices(spec, 6, param="t") == expected


@pytest.mark.parametrize("spec", ["6", "-1", "0-6", "3-2", "x", "1;2", "", "0:4"])
def test_parse_indices_rejects(spec):
    with pytest.raises(InputError, match="^t: "):
        parse_indices(spec, 6, param="t")


def test_format_ranges_round_trips():
    assert format_ranges([14, 15, 16, 19, 3]) == "3,14-16,19"
    assert parse_indices(format_ranges([0, 2, 3, 4, 9]), 10, param="t") == [0, 2, 3, 4, 9]
