"""URL parameter codecs: what a link may say, and what happens when it says nonsense."""

from __future__ import annotations

import pytest

from dashboard import urlstate as us


def test_choice():
    p = us.choice("protocol", ["clean", "report"], "report")
    assert p.parse(["clean"]) == "clean"
    assert p.parse(["report", "clean"]) == "clean"  # the last one wins, as in st.query_params
    with pytest.raises(ValueError):
        p.parse(["both"])
    ints = us.choice("per_page", [4, 8], 8)
    assert ints.parse(["4"]) == 4
    with pytest.raises(ValueError):
        ints.parse(["four"])


def test_choices_keep_known_entries_in_option_order():
    p = us.choices("method", ["a", "b", "c"], ["a", "b", "c"])
    assert p.parse(["c", "a", "zzz"]) == ["a", "c"]
    assert p.parse([""]) == []  # an explicit empty selection
    with pytest.raises(ValueError):
        p.parse(["zzz"])
    assert p.dump(["a", "c"]) == ["a", "c"] and p.dump([]) == [""]


def test_float_range():
    p = us.float_range("conf", 0.0, 1.0)
    assert p.default == (0.0, 1.0)
    assert p.parse(["0.2", "0.7"]) == (0.2, 0.7)
    assert p.parse(["0.2,0.7"]) == (0.2, 0.7)
    for bad in (["0.7", "0.2"], ["-1", "0.5"], ["nan", "1"], ["banana", "1"], ["0.5"]):
        with pytest.raises(ValueError):
            p.parse(bad)
    assert p.dump((0.25, 1.0)) == ["0.25", "1"]


def test_number_integer_flag():
    n = us.number("alpha", 0.0, 1.0, 0.5)
    assert n.parse(["0.3"]) == 0.3
    with pytest.raises(ValueError):
        n.parse(["2"])
    i = us.integer("page", 1, 3, 1)
    assert i.parse(["2"]) == 2
    for bad in (["0"], ["4"], ["1.5"], ["x"]):
        with pytest.raises(ValueError):
            i.parse(bad)
    f = us.flag("gt", True)
    assert f.parse(["0"]) is False and f.parse(["true"]) is True
    with pytest.raises(ValueError):
        f.parse(["yes please"])
