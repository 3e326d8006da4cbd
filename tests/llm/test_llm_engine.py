"""Generation engine on a tiny built model: determinism, stops, deadline, streaming, warm cache."""

from __future__ import annotations

import shutil
import time

import numpy as np
import pytest

from edged.llm import manifest
from edged.llm.engine import Engine

from .conftest import assert_top1_exact


@pytest.fixture(scope="module", params=["fused", "plain"])
def engine(request, tiny_model_dir, tiny_plain_model_dir):
    e = Engine(tiny_model_dir if request.param == "fused" else tiny_plain_model_dir, threads=1, system_prompt="Be brief.")
    assert e.graph == request.param
    e.eos_ids = frozenset()  # random weights: never end early, so lengths are predictable
    return e


def test_greedy_is_deterministic(engine):
    a = engine.chat("hello there", max_new_tokens=20)
    b = engine.chat("hello there", max_new_tokens=20)
    assert a.token_ids == b.token_ids and a.text == b.text
    assert a.finish_reason == "length" and len(a.token_ids) == 20


def test_max_new_tokens(engine):
    assert len(engine.chat("hi", max_new_tokens=3).token_ids) == 3
    assert engine.chat("hi", max_new_tokens=0).token_ids == []


def test_seeded_sampling_repeats(engine):
    kw = dict(max_new_tokens=16, temperature=1.0, top_p=0.9)
    a = engine.chat("the sea", seed=7, **kw)
    assert engine.chat("the sea", seed=7, **kw).token_ids == a.token_ids
    others = {tuple(engine.chat("the sea", seed=s, **kw).token_ids) for s in range(8, 12)}
    assert len(others | {tuple(a.token_ids)}) > 1


def test_stop_sequence_cuts_text_and_streams_the_rest(engine):
    full = engine.chat("the other", max_new_tokens=40).text
    assert len(full) > 12
    stop = full[8:11]
    first = full.index(stop)
    pieces: list[str] = []
    out = engine.chat("the other", max_new_tokens=40, stop=[stop], on_text=pieces.append)
    assert out.finish_reason == "stop"
    assert out.text == full[:first]
    assert "".join(pieces) == out.text  # nothing of the stop sequence was streamed


def test_streaming_concatenates_to_text(engine):
    pieces: list[str] = []
    out = engine.chat("in the", max_new_tokens=25, on_text=pieces.append)
    assert "".join(pieces) == out.text
    assert len(pieces) > 1


def test_deadline_returns_what_it_has(engine):
    out = engine.chat("hello", max_new_tokens=50, timeout_s=0)
    assert out.finish_reason == "deadline" and out.timed_out and out.token_ids == []

    def slow(_):
        time.sleep(0.05)

    t = time.monotonic()
    out = engine.chat("hello", max_new_tokens=500, timeout_s=0.4, on_text=slow)
    assert out.timed_out and 0 < len(out.token_ids) < 500
    assert time.monotonic() - t < 1.5
    assert out.text == engine.tokenizer.decode(out.token_ids, skip_special_tokens=True)


def test_warm_system_prompt_is_reused_and_equivalent(engine):
    warm = engine.chat("what is the water level?", max_new_tokens=12)
    assert warm.cached_tokens > 0
    prompt = engine.chat_format.render([{"role": "system", "content": "Be brief."},
                                        {"role": "user", "content": "what is the water level?"}])
    cold = engine.generate(engine.encode(prompt), max_new_tokens=12)
    assert cold.cached_tokens == 0 and cold.prompt_tokens == warm.prompt_tokens
    assert cold.token_ids == warm.token_ids
    # another system prompt: its turn is run on first use and kept beside the first one's
    other = engine.chat("what is the water level?", system="Be verbose.", max_new_tokens=12)
    verbose = engine.chat_format.render([{"role": "system", "content": "Be verbose."},
                                         {"role": "user", "content": "what is the water level?"}])
    assert other.token_ids == engine.generate(engine.encode(verbose), max_new_tokens=12).token_ids
    # the fused graph's buffers now hold another sequence: each warm turn comes back from its snapshot
    again = engine.chat("what is the water level?", max_new_tokens=12)
    assert again.cached_tokens == warm.cached_tokens and again.token_ids == warm.token_ids
    other_again = engine.chat("what is the water level?", system="Be verbose.", max_new_tokens=12)
    assert other_again.cached_tokens == other.cached_tokens > 0 and other_again.token_ids == other.token_ids


def test_warm_system_turns_are_bounded(tiny_model_dir):
    from edged.llm.engine import WARM_SYSTEMS

    eng = Engine(tiny_model_dir, threads=1, system_prompt="Be brief.")
    eng.eos_ids = frozenset()
    for i in range(WARM_SYSTEMS + 3):
        eng.chat("hello", system=f"System {i}.", max_new_tokens=2)
    assert len(eng._warm) == WARM_SYSTEMS  # least recently used dropped
    assert "Be brief." not in eng._warm
    assert eng.chat("hello", max_new_tokens=2).cached_tokens > 0  # the default comes back when asked


def test_score_matches_the_fp32_reference_and_generation(engine, tiny_model_dir):
    from edged.llm.gguf_model import GGUFModel
    from edged.llm.reference import ReferenceLlama

    ids = engine.encode("the water level in the other tank")
    want = ReferenceLlama(GGUFModel(tiny_model_dir.parent / "tiny.gguf")).logits(ids)
    got = engine.score(ids)
    # fused: the int8 output matrix with the top-1 rescored in fp32; plain: every logit in fp32
    assert_top1_exact(got, want, 1e-3, 5e-2 if engine.graph == "fused" else 1e-3)
    out = engine.generate(ids[:3], max_new_tokens=5)  # after scoring, generation starts clean
    assert out.token_ids == engine.generate(ids[:3], max_new_tokens=5).token_ids


def test_both_graphs_generate_the_same_tokens(tiny_model_dir, tiny_plain_model_dir):
    fused, plain = Engine(tiny_model_dir, threads=1), Engine(tiny_plain_model_dir, threads=1)
    assert (fused.graph, plain.graph) == ("fused", "plain")
    for eng in (fused, plain):
        eng.eos_ids = frozenset()
    ids = fused.encode("in the sea the other")
    assert fused.generate(ids, max_new_tokens=30).token_ids == plain.generate(ids, max_new_tokens=30).token_ids


def test_tampered_model_is_refused(tiny_model_dir, tmp_path):
    d = tmp_path / "m"
    shutil.copytree(tiny_model_dir, d)
    (d / "model.json").write_text((d / "model.json").read_text().replace('"n_layer": 2', '"n_layer": 3'))
    with pytest.raises(manifest.ManifestError):
        Engine(d)


def test_sampling_top_p_keeps_the_nucleus():
    from edged.llm.sampling import choose

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05]))
    rng = np.random.default_rng(0)
    picks = {choose(logits, 1.0, 0.7, rng) for _ in range(200)}
    assert picks == {0, 1}
    assert choose(logits, 0.0, 0.1, None) == 0


def test_prompt_longer_than_the_context_is_refused(engine):
    with pytest.raises(ValueError, match="context"):
        engine.generate([5] * (engine.n_ctx + 1), max_new_tokens=1)


# --- prompt lookup (fused graph): drafts checked in one pass keep the greedy tokens ------------

def test_lookup_keeps_the_greedy_tokens(tiny_model_dir):
    plain = Engine(tiny_model_dir, threads=1, warm=False, lookup=0)
    drafting = Engine(tiny_model_dir, threads=1, warm=False, lookup=8)
    for eng in (plain, drafting):
        eng.eos_ids = frozenset()
    prompts = ["the water in the tank and the water in the sea and the water in the",
               "in the sea the other the other the other the other",
               "on on on on on on on on on on on on"]
    for text in prompts:
        ids = plain.encode(text)
        for n in (1, 2, 7, 40):  # drafts cut at max_new_tokens
            a, b = plain.generate(ids, max_new_tokens=n), drafting.generate(ids, max_new_tokens=n)
            assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason
        a = plain.generate(ids, max_new_tokens=40, stop=["the o"])
        b = drafting.generate(ids, max_new_tokens=40, stop=["the o"])
        assert (b.token_ids, b.text, b.finish_reason) == (a.token_ids, a.text, a.finish_reason)
    st = drafting.lookup_stats
    assert st["passes"] > 0 and st["accepted"] > 0, st  # drafts were checked, and some kept
    assert plain.lookup_stats["passes"] == 0
    # the buffers stay consistent after drafts: scoring from scratch equals the plain engine's
    ids = plain.encode(prompts[0])
    np.testing.assert_allclose(drafting.score(ids), plain.score(ids), rtol=0, atol=1e-5)


def test_lookup_is_off_for_sampling_and_the_plain_graph(tiny_model_dir, tiny_plain_model_dir):
    eng = Engine(tiny_model_dir, threads=1, warm=False, lookup=8)
    eng.eos_ids = frozenset()
    ids = eng.encode("on on on on on on on on on on on on")
    eng.generate(ids, max_new_tokens=20, temperature=0.8, seed=1)
    assert eng.lookup_stats["passes"] == 0
    assert Engine(tiny_plain_model_dir, threads=1, warm=False, lookup=8).lookup == 0


def test_drafter_proposes_what_followed_the_latest_match_while_it_pays():
    from edged.llm.engine import _Drafter

    d = _Drafter((1, 2, 3, 4, 5, 9, 1, 2, 3, 6, 7, 8, 0, 1, 2), n=3, gate=0.375)
    assert d.propose(8) == []  # (0, 1, 2) never occurred before
    d.add(3)  # context ends 1, 2, 3: the latest earlier 1, 2, 3 was followed by 6, 7, 8 ...
    assert d.propose(4) == [6, 7, 8, 0]
    assert d.propose(0) == []
    d.checked(0, 4)
    d.checked(0, 4)  # two misses: the share kept (0.375 -> 0.19 -> 0.09) is below the gate
    assert d.propose(4) == []  # not checked now; remembered as a shadow draft [6, 7, 8, 0]
    for tok in (6, 7, 8, 0, 5):  # the model generates what the draft said: all 4 kept
        d.add(tok)
    assert d.kept == 0.375 / 4 / 2 + 1 / 2 >= 0.375
    for tok in (1, 2, 3):  # ... 0, 5, 1, 2, 3: the latest earlier 1, 2, 3 was followed by 6, 7
        d.add(tok)
    assert d.propose(2) == [6, 7]  # drafting pays again
    d.checked(2, 2)  # a short draft wholly kept counts as wholly kept (any lookup_tokens pays)
    assert d.kept == 1 / 2 * (0.375 / 4 / 2 + 1 / 2) + 1 / 2
