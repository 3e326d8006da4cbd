"""End to end on the real SmolLM2-135M GGUF; skipped when the file is absent (see conftest)."""

from __future__ import annotations

import numpy as np
import pytest

from edged.llm import manifest
from edged.llm.build import BuildOptions, build
from edged.llm.engine import Engine

from .conftest import assert_top1_exact


@pytest.fixture(scope="module")
def real_model_dir(real_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("real") / "smollm2-135m"
    build(real_gguf, out)  # the default: the fused graph
    return out


@pytest.fixture(scope="module")
def real_plain_model_dir(real_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-plain") / "smollm2-135m"
    build(real_gguf, out, BuildOptions(graph="plain"))
    return out


@pytest.fixture(scope="module")
def real_kernel_model_dir(real_gguf, tmp_path_factory):
    out = tmp_path_factory.mktemp("real-kernel") / "smollm2-135m"
    build(real_gguf, out, BuildOptions(kernel="precise"))  # what `edged models pull` builds where it can
    return out


def test_build_manifest_names_the_source(real_model_dir, real_gguf):
    doc = manifest.verify(real_model_dir)
    assert doc["source"]["sha256"] == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert doc["quantization"]["tensors"] == {"F32": 61, "Q4_1": 210, "Q8_0": 1}
    assert doc["architecture"] == "llama"


def test_greedy_answer_is_deterministic_and_sensible(real_model_dir):
    eng = Engine(real_model_dir, threads=2)
    a = eng.chat("What is the capital of France?", max_new_tokens=24)
    b = eng.chat("What is the capital of France?", max_new_tokens=24)
    assert a.token_ids == b.token_ids
    assert "Paris" in a.text
    assert a.finish_reason in ("eos", "length")


@pytest.mark.parametrize("variant", ["fused", "plain"])
def test_decoder_matches_fp32_reference_on_the_real_model(request, real_gguf, variant):
    from edged.llm.gguf_model import GGUFModel
    from edged.llm.reference import ReferenceLlama

    model_dir = request.getfixturevalue("real_model_dir" if variant == "fused" else "real_plain_model_dir")
    eng = Engine(model_dir, threads=2, verify=False)
    assert eng.graph == variant
    ids = eng.encode(eng.chat_format.render([{"role": "user", "content": "Name three primary colours."}]))[:24]
    got = eng.score(ids)
    want = ReferenceLlama(GGUFModel(real_gguf)).logits(ids)
    # fused: the int8 output matrix with the top-1 rescored in fp32; plain: every logit in fp32
    assert_top1_exact(got, want, 2e-3, 2e-2 if variant == "fused" else 2e-3)
    # the cached path (prefill chunk + token-by-token steps) gives the same next-token logits
    cur = eng._extend(eng._empty, ids[:16], None)
    for i in range(16, len(ids)):
        assert_top1_exact(cur.logits[None], got[i - 1][None], 1e-3, 2e-2 if variant == "fused" else 1e-3)
        cur = eng._run(cur, [ids[i]])


def test_kernel_build_gives_the_fp32_models_tokens_on_the_real_model(real_kernel_model_dir, real_gguf):
    from edged.llm.gguf_model import GGUFModel
    from edged.llm.reference import ReferenceLlama

    eng = Engine(real_kernel_model_dir, threads=2, verify=False)
    ids = eng.encode(eng.chat_format.render([{"role": "user", "content": "Name three primary colours."}]))
    got = eng.score(ids)
    want = ReferenceLlama(GGUFModel(real_gguf)).logits(ids)
    assert (got.argmax(-1) == want.argmax(-1)).all()
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-3 * np.abs(want).max())  # measured: 1.2e-3
    assert "Paris" in eng.chat("What is the capital of France?", max_new_tokens=24).text
