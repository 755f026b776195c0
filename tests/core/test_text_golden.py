"""The text front end against the original's outputs: case 6 and the reference g2p examples."""

import pytest

from core.text import TextError, clean_text, g2p, parse_text_to_segments, phones_to_ids, segments_to_dicts

from .test_text_support import has_japanese, load_json, needs_japanese, prompt_string

CASE6 = load_json("case6_text.json")["items"]
EXAMPLES = load_json("g2p_examples.json")["cases"]


def _pairs(golden):
    return [(language, phone) for language, phone in golden]


def _maybe_japanese(case):
    name = case.get("text", case.get("input"))[:30]
    return pytest.param(case, marks=[needs_japanese] if has_japanese(case) else [], id=name)


@pytest.mark.parametrize("case", CASE6, ids=lambda case: case["text"][:30])
def test_case6_clean_text_matches_original(case):
    assert clean_text(case["text"]) == case["clean_text"]


@pytest.mark.parametrize("case", [_maybe_japanese(c) for c in CASE6 if "error" not in c])
def test_case6_segments_g2p_and_ids_match_original(case):
    segments = parse_text_to_segments(case["text"])
    assert segments_to_dicts(segments) == case["segments"]
    phones = g2p(case["text"])
    assert phones == _pairs(case["g2p"])
    assert phones_to_ids(phones) == case["phone_ids"]
    assert g2p(case["text"], order=["EN", "ZH", "JP"]) == _pairs(case["g2p_order_en_zh_jp"])


@pytest.mark.parametrize("case", [c for c in CASE6 if "error" in c], ids=lambda c: c["text"][:30])
def test_case6_original_errors_become_text_errors(case):
    for order in (("ZH", "JP", "EN"), "en,zh,jp"):
        with pytest.raises(TextError, match="Unknown language: p:a1"):
            g2p(case["text"], order)


@pytest.mark.parametrize("case", [_maybe_japanese(c) for c in EXAMPLES])
def test_reference_examples_match_original(case):
    order = case.get("order", "zh,jp,en")
    if "clean_text" in case:
        assert clean_text(case["input"]) == case["clean_text"]
    if "segments" in case:
        segments = segments_to_dicts(parse_text_to_segments(case["input"], order))
        assert [{"language": s["language"], "text": s["text"], "phones": s["phones"]} for s in segments] == [
            {"language": s["language"], "text": s["text"], "phones": s["phones"]} for s in case["segments"]
        ]
    if "g2p" in case:
        assert g2p(case["input"], order) == _pairs(case["g2p"])
    options = {"prompt_text": case.get("prompt_text"), "speaker": case.get("speaker"), "order": order}
    assert prompt_string(case["input"], use_g2p=True, **options) == case["prompt_string_use_g2p"]
    if "prompt_string_no_g2p" in case:
        assert prompt_string(case["input"], use_g2p=False, **options) == case["prompt_string_no_g2p"]


def test_closing_tag_case_mismatch_raises_like_original():
    with pytest.raises(TextError, match="Language mismatch: zh != ZH"):
        g2p("<zh>你好</ZH>")
