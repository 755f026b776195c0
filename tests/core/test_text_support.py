"""Shared helpers (imported by the other test_text_* files): golden files, the prompt layout."""

import importlib.util
import json
import os

import pytest

from tests.paths import PARITY, TEXT_DATA  # noqa: F401 - re-exported for the text tests

DEBIAN_DICT = "/var/lib/mecab/dic/open-jtalk/naist-jdic/sys.dic"


def load_json(name: str):
    return json.loads((TEXT_DATA / name).read_text(encoding="utf-8"))


def japanese_available() -> bool:
    has_dict = os.path.isfile(DEBIAN_DICT) or bool(os.environ.get("OPEN_JTALK_DICT_DIR"))
    return importlib.util.find_spec("pyopenjtalk") is not None and has_dict


needs_japanese = pytest.mark.skipif(
    not japanese_available(),
    reason="Japanese extra not installed: pip install 'fishtts[ja]' + apt open-jtalk-mecab-naist-jdic",
)


def has_japanese(value) -> bool:
    """True when a golden case has a JP segment or JP phones (needs OpenJTalk)."""
    return '"JP"' in json.dumps(value)


def has_kana(value) -> bool:
    """True when some text in the case has hiragana or katakana (read by OpenJTalk)."""
    return any("\u3040" <= char <= "\u30ff" for char in json.dumps(value, ensure_ascii=False))


def prompt_string(text, prompt_text=None, speaker=None, use_g2p=True, order="zh,jp,en") -> str:
    """SPEC-text §3.2 steps 1-4, built from the public text API (as the LM prompt encoder does)."""
    from core.frontend import prompt_string as front_end_prompt

    return front_end_prompt(text, prompt_text, use_g2p=use_g2p, speaker=speaker, order=order)


def test_golden_files_are_shipped_with_the_tests():
    assert len(load_json("case6_text.json")["items"]) == 21
    assert len(load_json("g2p_examples.json")["cases"]) == 26
