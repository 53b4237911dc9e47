"""TextStream: incremental detokenization that never shows part of a stop string or a character."""

import pytest

from attnlab.generate.text import TextStream, held_back


class Bytes:
    """A byte-level 'tokenizer': each id is one byte; decoding replaces broken characters with U+FFFD."""

    def decode(self, ids):
        return bytes(ids).decode("utf-8", errors="replace")


def push_all(ts, data: bytes) -> str:
    out = ""
    for b in data:
        out += ts.push(b)
        if ts.finished:
            break
    return out + ts.flush()


def test_stop_string_split_across_tokens_is_never_shown():
    ts = TextStream(Bytes(), stops=["END"])
    shown = [ts.push(b) for b in b"abcEN"]
    assert "".join(shown) == "abc"  # "EN" held back: it may become "END"
    assert ts.push(ord("D")) == "" and ts.finished and ts.finish_reason == "stop"
    assert ts.flush() == "" and ts.n_tokens == 6


def test_held_back_text_is_released_when_it_cannot_be_a_stop():
    assert push_all(TextStream(Bytes(), stops=["END"]), b"abcENx") == "abcENx"


def test_multibyte_characters_come_out_whole():
    ts = TextStream(Bytes())
    data = "é!".encode()
    pieces = [ts.push(b) for b in data]
    assert pieces == ["", "é", "!"]
    assert ts.finish_reason == "length"


def test_eos_ends_and_is_not_shown_and_prefix_is_not_released():
    ts = TextStream(Bytes(), eos_id=0, prefix_ids=list(b"ROMEO."))
    assert push_all(ts, b" hi\x00more") == " hi" and ts.n_tokens == 3 and ts.finished


def test_stop_inside_the_prefix_does_not_count():
    assert push_all(TextStream(Bytes(), stops=["."], prefix_ids=list(b"ROMEO.")), b"ab.c") == "ab"


def test_held_back_and_errors():
    assert held_back("hello wor", ["world"]) == 3 and held_back("ab\ufffd", []) == 1
    with pytest.raises(ValueError, match="non-empty"):
        TextStream(Bytes(), stops=[""])


def test_stop_ids_end_the_text_unseen_and_uncounted_like_eos():
    ts = TextStream(Bytes(), eos_id=0, stop_ids=[ord("|")])
    assert push_all(ts, b"hi|there") == "hi" and ts.n_tokens == 2 and ts.finished and ts.finish_reason == "stop"
    assert not ts.stopped_by_text
    ts = TextStream(Bytes(), eos_id=0, stop_ids=[ord("|")])
    assert push_all(ts, b"ok\x00|") == "ok" and ts.n_tokens == 2  # EOS still ends it
    assert push_all(TextStream(Bytes(), stop_ids=[ord("|")]), b"a b") == "a b"  # not met: all of it


def test_stop_ids_release_the_text_held_back_for_a_stop_string():
    ts = TextStream(Bytes(), stops=["END"], stop_ids=[ord("|")])
    assert [ts.push(b) for b in b"abEN"] == ["a", "b", "", ""]
    assert ts.push(ord("|")) == "" and ts.finished and ts.flush() == "EN"  # "EN" was not a stop after all


def test_stop_strings_must_be_text():
    with pytest.raises(ValueError, match="must be text"):
        TextStream(Bytes(), stops=[b"x"])
