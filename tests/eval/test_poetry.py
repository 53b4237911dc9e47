"""poem_shape / shape_stats: line lengths and punctuation of (generated) Chinese verse."""

from __future__ import annotations

import pytest

from attnlab.eval.poetry import poem_body, poem_shape, shape_stats

JUEJU = "《靜夜思》床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。"
LUSHI_7 = ("《登高》風急天高猿嘯哀，渚清沙白鳥飛迴。無邊落木蕭蕭下，不盡長江滾滾來。"
           "萬里悲秋常作客，百年多病獨登臺。艱難苦恨繁霜鬢，潦倒新停濁酒杯。")


def test_regular_poems():
    s = poem_shape(JUEJU)
    assert s == {"n_lines": 4, "lengths": [5] * 4, "frac_5_7": 1.0, "punct_ok": 1.0,
                 "uniform": True, "complete": True, "regular": True}
    s = poem_shape(LUSHI_7)
    assert s["lengths"] == [7] * 8 and s["regular"]


def test_title_and_first_line_only():
    assert poem_body("\n  " + JUEJU + "\n《春望》國破山河在，") == "床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。"
    assert poem_shape("床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。\n亂七八糟") == poem_shape(JUEJU)
    assert poem_body("《未完") == "《未完"  # an unclosed title is text


def test_broken_shapes():
    cut = poem_shape("床前看月光，疑是地上霜。舉頭望山月，低頭思故")  # cut off by the token limit
    assert cut["lengths"] == [5, 5, 5, 4] and cut["frac_5_7"] == 0.75 and cut["punct_ok"] == 0.75
    assert not cut["complete"] and not cut["uniform"] and not cut["regular"]
    mixed = poem_shape("床前看月光，疑是地上之霜。舉頭望山月，低頭思故鄉。")
    assert mixed["frac_5_7"] == 0.75 and mixed["punct_ok"] == 1.0 and not mixed["uniform"]
    swapped = poem_shape("床前看月光。疑是地上霜，舉頭望山月，低頭思故鄉。")
    assert swapped["uniform"] and swapped["punct_ok"] == 0.5 and not swapped["regular"]
    six = poem_shape("床前看月光，疑是地上霜。舉頭望山月，低頭思故鄉。國破山河在，城春草木深。")
    assert six["uniform"] and six["punct_ok"] == 1.0 and not six["regular"]
    assert poem_shape("一二三四五六，一二三四五六。一二三四五六，一二三四五六。")["frac_5_7"] == 0.0
    empty = poem_shape("  \n")
    assert empty["n_lines"] == 0 and empty["frac_5_7"] == 0.0 and not empty["regular"]


def test_shape_stats():
    stats = shape_stats([JUEJU, LUSHI_7, "床前看月光，疑是地上之霜。"])
    assert stats["n"] == 3
    assert stats["lines"] == pytest.approx(14 / 3)
    assert stats["frac_5_7"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert stats["regular"] == pytest.approx(2 / 3) and stats["uniform"] == pytest.approx(2 / 3)
    assert stats["complete"] == 1.0 and stats["punct_ok"] == 1.0
    assert shape_stats([]) == {"n": 0.0, "lines": 0.0, "frac_5_7": 0.0, "punct_ok": 0.0,
                               "uniform": 0.0, "complete": 0.0, "regular": 0.0}
