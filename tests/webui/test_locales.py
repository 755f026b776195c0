"""The web UI's strings: both locale files have the same keys, every key the code uses exists, no UI
text is hard-coded in Python, and the page language follows the browser."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import PYTHONPATH, ROOT

LOCALES = ROOT / "locales"
WEBUI = ROOT / "webui"
LOCALE_FILES = sorted(LOCALES.glob("*.json"))


def load(path: Path) -> dict[str, str]:
    return json.loads(path.read_text(encoding="utf-8"))


def keys_used_in_code() -> set[str]:
    """Locale keys the UI code names: `t(lang, KEY)`, `ClientError(KEY)`, `UIError(KEY)`,
    `message_html(lang, KEY)`, `failure_html(lang, KEY, ...)`, every string in an `i18n={...}` and
    the *_KEYS / *_HEADERS / MODES / *_CHOICES tables of layout.py."""
    used = set()
    for path in WEBUI.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                position = {"t": 1, "message_html": 1, "failure_html": 1, "ClientError": 0, "UIError": 0}.get(name)
                if position is not None and len(node.args) > position and isinstance(node.args[position], ast.Constant):
                    used.add(node.args[position].value)
                for keyword in node.keywords:
                    if keyword.arg == "i18n" and isinstance(keyword.value, ast.Dict):
                        used |= {
                            n.value
                            for value in keyword.value.values
                            for n in ast.walk(value)
                            if isinstance(n, ast.Constant) and isinstance(n.value, str)
                        }
            elif isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and re.search(r"(_KEYS|_HEADERS|^MODES|_CHOICES)$", target.id)
                for target in node.targets
            ):
                used |= {
                    n.value
                    for n in ast.walk(node.value)
                    if isinstance(n, ast.Constant) and isinstance(n.value, str) and "." in n.value
                }
    return used


def test_there_are_chinese_and_english_locales():
    assert {p.stem for p in LOCALE_FILES} == {"zh_CN", "en_US"}


def test_locale_files_have_the_same_keys_and_no_empty_strings():
    zh, en = load(LOCALES / "zh_CN.json"), load(LOCALES / "en_US.json")
    assert set(zh) == set(en), f"only in zh_CN: {set(zh) - set(en)}; only in en_US: {set(en) - set(zh)}"
    for lang, strings in (("zh_CN", zh), ("en_US", en)):
        assert all(isinstance(v, str) and v.strip() for v in strings.values()), lang


def test_placeholders_match_between_languages():
    zh, en = load(LOCALES / "zh_CN.json"), load(LOCALES / "en_US.json")
    for key in zh:
        assert set(re.findall(r"{(\w+)}", zh[key])) == set(re.findall(r"{(\w+)}", en[key])), key


def test_every_key_the_code_uses_exists():
    strings = load(LOCALES / "en_US.json")
    used = keys_used_in_code()
    assert len(used) > 60, sorted(used)  # the scan found the UI's keys
    assert used - set(strings) == set()
    # and, the other way, no dead strings: every locale key is named somewhere in webui/
    source = "\n".join(p.read_text(encoding="utf-8") for p in WEBUI.glob("*.py"))
    assert [key for key in strings if f'"{key}"' not in source] == []


def test_no_ui_text_hard_coded_in_python():
    """Labels, values of text components and messages come from the locale files."""
    offenders = []
    for path in WEBUI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.keyword)
                and node.arg in ("label", "placeholder", "info")
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                offenders.append(f"{path.name}: {node.arg}={node.value.value!r}")
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.search(r"[\u4e00-\u9fff]", node.value)
            ):
                offenders.append(f"{path.name}: Chinese text {node.value!r}")
    assert offenders == []


def test_chinese_labels_are_the_originals():
    """SPEC-server §8.2: the original UI's Chinese labels, unchanged."""
    zh = load(LOCALES / "zh_CN.json")
    original = {
        "tab.model": "模型配置",
        "tab.inference": "推理配置",
        "model.server_url": "服务器地址",
        "model.device": "设备",
        "model.precision": "精度",
        "model.compile": "编译模型",
        "model.llama_checkpoint": "Llama 模型路径",
        "model.llama_config": "Llama 配置文件",
        "model.vqgan_checkpoint": "VQGAN 模型路径",
        "model.vqgan_config": "VQGAN 配置文件",
        "model.load": "加载模型",
        "model.loaded": "模型加载成功.",
        "model.load_failed": "加载模型时发生错误.",
        "inference.text": "输入文本",
        "tab.params": "合成参数",
        "params.mode": "输入模式",
        "mode.text": "文本",
        "mode.phonemes": "自动音素",
        "params.max_new_tokens": "最大生成 Token 数",
        "params.repetition_penalty": "重复惩罚",
        "params.temperature": "温度",
        "params.speaker": "说话人",
        "tab.languages": "语言优先级",
        "languages.markdown": "该参数只在自动音素转换时生效.",
        "languages.first": "语言 1",
        "lang.zh": "中文",
        "lang.jp": "日文",
        "lang.en": "英文",
        "languages.duplicate": "语言优先级不能重复.",
        "tab.reference": "参考音频",
        "reference.markdown": "5-10 秒的参考音频, 适用于指定音色.",
        "reference.enable": "启用参考音频",
        "reference.audio": "参考音频",
        "reference.text": "参考文本",
        "action.synthesize": "合成",
        "action.clear": "清空",
        "output.message": "错误信息",
        "output.preview": "解析结果 (仅参考)",
        "preview.text": "文本",
        "preview.language": "语言",
        "preview.phonemes": "音素",
        "output.audio": "合成音频",
        "error.inference": "推理时发生错误.",
        "params.markdown": "配置常见合成参数. 自动音素会在推理时自动将文本转换为音素.",
    }
    assert {k: zh[k] for k in original} == original
    assert (
        zh["header.markdown"].startswith("# Fish Speech")
        and "基于 VQ-GAN 和 Llama 的多语种语音合成" in zh["header.markdown"]
    )


@pytest.mark.parametrize(
    "preferences, accept, expected",
    [
        (["zh-CN"], None, "zh_CN"),
        (["zh-TW"], None, "zh_CN"),
        (["zh"], None, "zh_CN"),
        (["en-GB"], None, "en_US"),
        (["en"], "zh-CN,zh;q=0.9", "en_US"),
        ([""], "fr-FR,fr;q=0.9,en-US;q=0.8,zh;q=0.7", "en_US"),
        ([None], "de, zh;q=0.5, en;q=0.1", "zh_CN"),
        (["fr"], "fr", "zh_CN"),
        ([""], "en;q=0, zh;q=0.2", "zh_CN"),
        ([None], None, "zh_CN"),
    ],
)
def test_page_language_follows_the_browser(preferences, accept, expected):
    from webui.i18n import pick_language

    assert pick_language(*preferences, accept_language=accept) == expected


def test_webui_never_imports_core_or_torch(tmp_path):
    """The UI runs on a machine without the engine: import and build it with core and torch blocked."""
    script = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("core", "torch", "server"):
            raise ImportError(f"webui must not import {name}")
sys.meta_path.insert(0, Block())
import webui, webui.cli, webui.client, webui.i18n, webui.handlers
from webui.app import build_app
build_app()
bad = [m for m in sys.modules if m.split(".")[0] in ("core", "torch", "server")]
assert not bad, bad
print("ok")
"""
    result = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(tmp_path),
            "PYTHONPATH": PYTHONPATH,
            "GRADIO_ANALYTICS_ENABLED": "False",
        },
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
