"""The front end runs offline, writes and reads no pickle (or jieba cache), and imports cheaply."""

import json
import os
import subprocess
import sys

from tests.paths import PYTHONPATH, ROOT

from .test_text_support import japanese_available

# Runs in a fresh interpreter so every lazy load happens under the guards.
_GUARDED_RUN = r"""
import json, os, pickle, socket, sys
events = []
def audit(event, args):
    if event.startswith("socket.") or event in ("urllib.Request", "http.client.connect"):
        events.append(["network", event, str(args)[:200]])
    if event == "open" and isinstance(args[0], (str, bytes)):
        path = os.fsdecode(args[0])
        if path.endswith((".pickle", ".pkl", ".cache")) or "nltk_data" in path:
            events.append(["file", path, str(args[1])])
sys.addaudithook(audit)
def refuse(*args, **kwargs):
    raise AssertionError("pickle used")
pickle.load = pickle.loads = refuse  # (pickle files are also caught by the open audit)
from core.text import g2p
texts = json.loads(sys.argv[1])
out = [g2p(text) for text in texts]
print(json.dumps({"events": events, "phones": [len(p) for p in out]}))
"""


def _run_guarded(texts, tmp_path):
    env = dict(
        os.environ,
        HOME=str(tmp_path / "home"),
        TMPDIR=str(tmp_path / "tmp"),
        XDG_CACHE_HOME=str(tmp_path / "cache"),
        PYTHONPATH=PYTHONPATH,
    )
    for folder in ("home", "tmp", "cache"):
        (tmp_path / folder).mkdir()
    result = subprocess.run(
        [sys.executable, "-c", _GUARDED_RUN, json.dumps(texts)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    leftovers = [str(p) for folder in ("home", "tmp", "cache") for p in (tmp_path / folder).rglob("*")]
    return report, leftovers


def test_g2p_needs_no_network_and_no_pickle(tmp_path):
    texts = [
        "你好，世界！今天是2023年12月29日，气温-3度。",
        "The price is 42 dollars, isn't it?",
        "GPT-4 and Genshin, 'read' 1st",
        "测试一下 Hugging face, BGM声音很大吗？",
    ]
    if japanese_available():
        texts.append("こんにちは、元気ですか？今日は2024年1月1日です。")
    report, leftovers = _run_guarded(texts, tmp_path)
    assert report["events"] == []
    assert all(count > 0 for count in report["phones"])
    assert leftovers == []  # no jieba cache, no unpacked transducers left behind


def test_no_pickle_files_in_the_package():
    package = ROOT / "core" / "text"
    assert not [p for p in package.rglob("*") if p.suffix in (".pickle", ".pkl", ".cache")]


def test_importing_core_text_loads_no_heavy_module():
    code = (
        "import sys, core.text; heavy = ['jieba', 'pypinyin', 'nltk', 'kaldifst', 'pyopenjtalk', "
        "'inflect', 'numpy', 'torch']; print([m for m in heavy if m in sys.modules])"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=PYTHONPATH),
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
