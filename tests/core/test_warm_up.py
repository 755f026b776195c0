"""The engine's warm-up loads the g2p's data before a first request needs it (core/frontend.py)."""

from __future__ import annotations

from core import frontend
from core.text import english_dict, english_oov

# What English's first use loads: the dictionary (~0.6 s), the tokenizer, and the out-of-dictionary speller.
ENGLISH_DATA = (english_dict.cmudict_rep, english_oov._tokenizer, english_oov._weights, english_oov._homographs)


def test_warm_up_loads_the_english_data_so_a_first_request_does_not_wait(tiny_engine):
    for loader in ENGLISH_DATA:
        loader.cache_clear()
    tiny_engine.warm_up()
    assert [loader.cache_info().currsize for loader in ENGLISH_DATA] == [1] * len(ENGLISH_DATA)


def test_a_language_that_cannot_load_is_left_for_its_request(monkeypatch):
    def unreadable(text):
        if text == frontend.WARM_UP_TEXTS[1]:
            raise frontend.TextError("Chinese g2p needs pypinyin")
        return None

    seen = []
    monkeypatch.setattr(frontend, "read_piece", lambda text: seen.append(text) or unreadable(text))
    frontend.warm_up_g2p()  # does not raise
    assert seen == list(frontend.WARM_UP_TEXTS)  # and the languages after it are still loaded
