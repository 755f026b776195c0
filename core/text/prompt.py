"""The phone string of the prompt (SPEC-text §3.2 step 2)."""

from .symbols import PAD, PU_SYMBOLS

_RAW = frozenset(PU_SYMBOLS + (PAD,))


def phones_to_prompt(phones) -> str:
    """`<p:X>` for each phone, punctuation/SP/UNK/pad kept raw, single spaces between.

    Accepts g2p output ([(language, phone)]) or plain phone strings.
    """
    names = [phone if isinstance(phone, str) else phone[1] for phone in phones]
    return " ".join(name if name in _RAW else f"<p:{name}>" for name in names)
