"""Components whose visible text comes from locale keys, so the language switch can redo them all.

`labels.make(gr.Textbox, i18n={"label": "inference.text"}, lines=15)` builds the component in the
page's first language and remembers which props are translated; `labels.updates(lang)` gives one
`gr.update` per remembered component for another language.
"""

from __future__ import annotations

import gradio as gr

from .i18n import t


def translate(lang: str, i18n: dict) -> dict:
    """Locale keys -> text: a key, a list of keys (headers), or (key, value) pairs (choices)."""
    props = {}
    for prop, spec in i18n.items():
        if isinstance(spec, str):
            props[prop] = t(lang, spec)
        elif spec and isinstance(spec[0], tuple):
            props[prop] = [(t(lang, key), value) for key, value in spec]
        else:
            props[prop] = [t(lang, key) for key in spec]
    return props


class Labels:
    def __init__(self, lang: str):
        self.lang = lang
        self.entries: list[tuple[gr.blocks.Block, dict]] = []

    def make(self, cls, *, i18n: dict, **kwargs):
        return self.add(cls(**kwargs, **translate(self.lang, i18n)), i18n)

    def add(self, component, i18n: dict):
        self.entries.append((component, i18n))
        return component

    @property
    def components(self) -> list:
        return [component for component, _ in self.entries]

    def updates(self, lang: str) -> list:
        return [gr.update(**translate(lang, i18n)) for _, i18n in self.entries]
