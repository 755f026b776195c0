"""Our library stand-ins give the original libraries' outputs (tables made by running those here).

- Chinese normalisation: kaldifst + the shipped transducers vs WeTextProcessing 0.1.11 (pynini).
- OpenJTalk: the installed pyopenjtalk vs pyopenjtalk-prebuilt 0.3.0 with Debian's naist-jdic.
"""

from core.text.normalize_zh import normalize_chinese, reorder_tokens

from .test_text_support import load_json, needs_japanese

ZH_CASES = load_json("zh_normalizer_examples.json")["cases"]
JA_CASES = load_json("openjtalk_examples.json")["cases"]


def test_chinese_normalizer_matches_wetextprocessing():
    mismatches = [
        (c["input"], c["output"], normalize_chinese(c["input"]))
        for c in ZH_CASES
        if normalize_chinese(c["input"]) != c["output"]
    ]
    assert mismatches == []


def test_reorder_puts_fields_in_verbalizer_order_and_keeps_escapes():
    tagged = 'date { day: "29" month: "12" year: "2023" } char { value: "\\\\" } char { value: "\\"" }'
    assert (
        reorder_tokens(tagged)
        == 'date { year: "2023" month: "12" day: "29" } char { value: "\\\\" } char { value: "\\"" }'
    )


@needs_japanese
def test_openjtalk_matches_the_goldens_setup():
    from core.text.japanese import _openjtalk

    mismatches = [(c["input"], c["phones"]) for c in JA_CASES if _openjtalk().g2p(c["input"]) != c["phones"]]
    assert mismatches == []
