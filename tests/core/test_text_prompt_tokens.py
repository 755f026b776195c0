"""Prompt strings from the text front end, tokenised, give the original's prompt ids (cases 7, 8)."""

import json

import numpy as np
import pytest

from tests.paths import PARITY

from .test_text_support import has_kana, needs_japanese, prompt_string

tokenizers = pytest.importorskip("tokenizers")


@pytest.fixture(scope="module")
def tokenizer():
    return tokenizers.Tokenizer.from_file(str(PARITY / "tokenizer" / "tokenizer.json"))


def _golden_prompts():
    """(name, prompt args, golden row-0 ids without the reference-audio columns)."""
    case7 = np.load(PARITY / "case7_encode_tokens.npz")
    for index, case in enumerate(json.loads((PARITY / "case7_encode_tokens.json").read_text())["cases"]):
        row = case7[f"case{index}_encoded"][0]
        args = dict(
            text=case["text"],
            prompt_text=case["prompt_text"],
            speaker=case["speaker"],
            use_g2p=case["use_g2p"],
            order="zh,jp,en",
        )
        yield f"case7_{index}", args, row[: len(row) - case["prompt_T"]]
    case8 = np.load(PARITY / "case8_cli_generate.npz")
    for sub in json.loads((PARITY / "case8_cli_generate.json").read_text())["subcases"]:
        cli, row = sub["cli_args"], case8[f"{sub['name']}_encoded"][0]
        frames = (sub["prompt_tokens_shape"] or [0, 0])[1]
        args = dict(
            text=cli["text"],
            prompt_text=cli["prompt_text"],
            speaker=cli["speaker"],
            use_g2p=cli["use_g2p"],
            order=cli["order"],
        )
        yield f"case8_{sub['name']}", args, row[: len(row) - frames]


CASES = [
    pytest.param(args, ids, id=name, marks=[needs_japanese] if has_kana(args) else [])
    for name, args, ids in _golden_prompts()
]


@pytest.mark.parametrize("args, golden_ids", CASES)
def test_prompt_string_tokenises_to_original_ids(tokenizer, args, golden_ids):
    assert tokenizer.encode(prompt_string(**args)).ids == golden_ids.tolist()


def test_golden_prompts_cover_g2p_on_and_off_and_both_orders():
    args = [case.values[0] for case in CASES]
    assert {a["use_g2p"] for a in args} == {True, False}
    assert {a["order"] for a in args if a["use_g2p"]} >= {"zh,jp,en", "en,zh,jp"}
