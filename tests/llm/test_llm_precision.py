"""`edged models pull --precision exact|fast`: the named build options, through the real CLI code
(the GGUF fetch replaced by a tiny GGUF; nothing is downloaded)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest

from edged import cli
from edged.llm import catalog, manifest
from edged.llm.build import PRECISIONS, BuildOptions, precision_options
from edged.llm.engine import Engine
from edged.llm.gguf_model import GGUFModel
from edged.llm.reference import ReferenceLlama

from .conftest import assert_top1_exact


def test_precision_options():
    assert precision_options() == BuildOptions()  # exact is the default build
    assert precision_options("exact", graph="plain") == BuildOptions(graph="plain", head="split4")
    assert BuildOptions().head == "rescore"  # the fused graph's exact head
    fast = precision_options("fast", graph="plain")
    assert (fast.accuracy_level, fast.head, fast.graph) == (4, "int8", "plain")
    assert list(PRECISIONS) == ["exact", "fast"]
    with pytest.raises(ValueError, match="allowed: exact, fast"):
        precision_options("turbo")
    # with the QMatMul kernel: its precise mode is exact, llama.cpp's arithmetic is fast
    assert precision_options("exact", kernel=True) == BuildOptions(kernel="precise")
    assert precision_options("fast", kernel=True) == BuildOptions(kernel="llama")
    assert precision_options("exact", kernel=True, graph="plain") == BuildOptions(graph="plain")  # fused only


@pytest.fixture
def pull_cli(tiny_gguf, tmp_path, monkeypatch):
    """Run ``edged models pull ...`` in-process with [models] dir under tmp_path; returns (code, models dir)."""
    src = tiny_gguf()
    monkeypatch.setattr(catalog, "fetch_gguf", lambda entry, cache_dir=None: src)
    for key in [k for k in os.environ if k.startswith("EDGED_")]:
        monkeypatch.delenv(key)
    models = tmp_path / "models"
    conf = tmp_path / "edged.toml"
    conf.write_text(f'[models]\ndir = "{models}"\n', encoding="utf-8")

    def run(*args: str) -> int:
        with pytest.raises(SystemExit) as exc:
            cli.main(["models", "pull", "smollm2-135m", "--config", str(conf), *args])
        return exc.value.code
    return run, models, src


def _accuracy_levels(model_dir) -> set[int]:
    m = onnx.load(str(model_dir / "decoder.onnx"), load_external_data=False)
    return {a.i for n in m.graph.node if n.op_type == "MatMulNBits" for a in n.attribute if a.name == "accuracy_level"}


def test_pull_precision_fast_then_exact(pull_cli, capsys):
    """Without the kernel: onnxruntime's own MatMulNBits at both precisions."""
    run, models, src = pull_cli
    out = models / "smollm2-135m"

    assert run("--precision", "fast", "--kernel", "no") == 0
    doc = manifest.verify(out)
    assert (doc["build"]["accuracy_level"], doc["build"]["head"], doc["build"]["graph"]) == (4, "int8", "fused")
    assert _accuracy_levels(out) == {4}  # every 4-bit layer and the 8-bit head: int8 activations
    model = GGUFModel(src)
    ids = np.random.default_rng(5).integers(0, model.config.n_vocab, 24).tolist()
    want = ReferenceLlama(model).logits(np.asarray(ids))
    fast = Engine(out, threads=1, warm=False).score(ids)
    assert np.isfinite(fast).all()
    np.testing.assert_allclose(fast, want, rtol=0, atol=0.1 * np.abs(want).max())  # close, not exact

    assert run("--kernel", "no") == 0  # the default is exact: the changed options rebuild the directory
    doc = manifest.verify(out)
    assert (doc["build"]["accuracy_level"], doc["build"]["head"]) == (0, "rescore")
    assert _accuracy_levels(out) == {0, 4}  # fp32 layers; the head's first pass in int8, then rescored
    exact = Engine(out, threads=1, warm=False).score(ids)
    assert_top1_exact(exact, want, 1e-3, 5e-2)
    assert "ready in" in capsys.readouterr().out


def test_pull_bad_precision_names_the_allowed_values(pull_cli, capsys):
    run, models, _ = pull_cli
    assert run("--precision", "turbo") == 2
    err = capsys.readouterr().err
    assert "--precision must be exact or fast, not 'turbo'" in err
    assert not models.exists()  # refused before fetching or building anything


def test_pull_builds_the_kernel_by_default(pull_cli, capsys):
    """Where the kernel has a SIMD loop for this CPU; elsewhere auto builds without it."""
    from edged.llm import qkernel

    run, models, _ = pull_cli
    out = models / "smollm2-135m"
    try:
        qkernel.check_worthwhile()
        simd = True
    except qkernel.KernelBuildError:
        simd = False
    assert run() == 0
    assert manifest.verify(out)["build"]["kernel"] == ("precise" if simd else "")
    assert run("--precision", "fast") == 0
    assert manifest.verify(out)["build"]["kernel"] == ("llama" if simd else "")
    assert run("--graph", "plain") == 0  # the kernel needs the fused graph: auto leaves it out
    assert manifest.verify(out)["build"]["kernel"] == ""


def test_pull_kernel_errors(pull_cli, capsys, tmp_path, monkeypatch):
    run, models, _ = pull_cli
    assert run("--kernel", "maybe") == 2
    assert "--kernel must be auto, yes or no, not 'maybe'" in capsys.readouterr().err
    assert run("--kernel", "yes", "--graph", "plain") == 2
    assert "--kernel yes needs --graph fused" in capsys.readouterr().err
    monkeypatch.setenv("ORT_INCLUDE_DIR", str(tmp_path))  # no headers there
    assert run("--kernel", "yes") == 1  # asked for: an error naming what is missing
    assert "ORT_INCLUDE_DIR" in capsys.readouterr().err
    assert not models.exists()
    assert run() == 0  # auto: says why, then builds onnxruntime's graph
    assert "building without the QMatMul kernel" in capsys.readouterr().err
    assert manifest.verify(models / "smollm2-135m")["build"]["kernel"] == ""


def test_pull_auto_skips_a_kernel_slower_than_onnxruntimes(pull_cli, capsys, monkeypatch):
    """A CPU without AVX-512 VNNI gets the portable loop: auto builds without it, yes with it."""
    from edged.llm import qkernel

    run, models, _ = pull_cli
    monkeypatch.setattr(qkernel, "SIMD_PATHS", ())  # as if this CPU had no fast loop
    assert run() == 0
    assert "slower than onnxruntime's own kernels" in capsys.readouterr().err
    assert manifest.verify(models / "smollm2-135m")["build"]["kernel"] == ""
    assert run("--kernel", "yes") == 0
    assert manifest.verify(models / "smollm2-135m")["build"]["kernel"] == "precise"
