"""The wheel carries the bundled anomaly model (setup.py's build hook copies models/<name>/ into
edged/_models/<name>/), so a non-editable install loads it without the source tree. Built from a
copy of the tracked tree; the installed package is simulated by unpacking the wheel (what pip
does) and importing edged from there, with the source tree out of reach."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = "edged-anomaly-mlp"


@pytest.mark.timeout(300)
def test_wheel_ships_the_anomaly_model_and_an_install_loads_it(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    shutil.copytree(REPO / "edged", src / "edged", ignore=ignore)
    shutil.copytree(REPO / "models", src / "models", ignore=ignore)
    out = tmp_path / "dist"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(out), str(src)],
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheel = next(out.glob("edged-*.whl"))
    manifest = json.loads((REPO / "models" / MODEL / "manifest.json").read_text())
    files = manifest["files"] if isinstance(manifest["files"], list) else [{"path": p} for p in manifest["files"]]
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        for entry in files + [{"path": "manifest.json"}, {"path": "detector.json"}]:
            assert f"edged/_models/{MODEL}/{entry['path']}" in names
        site = tmp_path / "site"
        zf.extractall(site)

    check = (
        "import edged, numpy as np\n"
        "from pathlib import Path\n"
        "from edged.anomaly.model_detector import DEFAULT_MODEL_DIR\n"
        "from edged.detector import make_detector\n"
        f"assert Path(edged.__file__).resolve().is_relative_to(Path({str(site)!r}).resolve()), edged.__file__\n"
        f"assert Path(DEFAULT_MODEL_DIR).resolve() == (Path({str(site)!r}) / 'edged' / '_models' / {MODEL!r}).resolve()\n"
        "d = make_detector('model', 64, 30)\n"
        "v = np.sin(np.arange(3000) / 20.0); v[2500] += 5\n"
        "s = d.score_series(v, 1.7e9 + 300.0 * np.arange(3000))\n"
        "assert (s[2500:2505] >= 0.5).any(), np.flatnonzero(s >= 0.5)\n"
        "print('loaded', DEFAULT_MODEL_DIR)\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGED_")}
    env["PYTHONPATH"] = str(site)
    run = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, env=env, cwd=tmp_path,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    listed = subprocess.run([sys.executable, "-m", "edged", "models", "verify"], capture_output=True, text=True,
                            env=env, cwd=tmp_path, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert f"{MODEL}: ok ({site / 'edged' / '_models' / MODEL})" in listed.stdout
