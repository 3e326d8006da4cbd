"""Build hook: the committed models (models/<name>/, each with a manifest.json) go into the wheel
as package data under edged/_models/<name>/, so a non-editable install can load them. The
project keeps models/ at the top level; an editable install finds them there instead
(edged.anomaly.model_detector.bundled_model_dir). Everything else is in pyproject.toml."""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent


class build_py_with_models(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return
        target = Path(self.build_lib) / "edged" / "_models"
        for manifest in sorted((ROOT / "models").glob("*/manifest.json")):
            dest = target / manifest.parent.name
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(manifest.parent, dest)


setup(cmdclass={"build_py": build_py_with_models})
