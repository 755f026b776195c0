"""The wheel `pip install .` builds carries every file the code reads at run time: the kernels' sources
(compiled on first use), the web UI's strings and the text front end's data. (A wheel without them ran
every model on the slow torch path, and `fishtts webui` died on a missing locales/zh_CN.json.)"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from core.lm import kernels
from tests.paths import process_env
from webui import i18n

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "server", "webui", "fishtts", "locales")


def test_the_wheel_carries_the_files_read_at_run_time(tmp_path):
    source = tmp_path / "source"  # (a copy: a build writes build/ and egg-info where it runs)
    for name in PACKAGES:
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path],
        check=True,
        capture_output=True,
        timeout=300,
        env=process_env(),
    )
    (wheel,) = tmp_path.glob("fishtts-*.whl")
    inside = set(zipfile.ZipFile(wheel).namelist())
    read_at_run_time = [*kernels.SOURCES, *kernels.HEADERS, *i18n.LOCALES_DIR.glob("*.json")]
    read_at_run_time += [p for p in (ROOT / "core" / "text" / "data").rglob("*") if p.is_file()]
    missing = [str(p.relative_to(ROOT)) for p in read_at_run_time if p.relative_to(ROOT).as_posix() not in inside]
    assert not missing, f"not in the wheel: {missing}"
