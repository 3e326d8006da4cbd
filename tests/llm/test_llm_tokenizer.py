"""Tokenizer from the GGUF vocabulary, and the chat template."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edged.llm import chat
from edged.llm.gguf_model import GGUFModel
from edged.llm.tokenizer import build_tokenizer

DATA = Path(__file__).parent / "data"


def test_tiny_tokenizer_round_trips_and_keeps_specials(tiny_gguf):
    tok = build_tokenizer(GGUFModel(tiny_gguf()).vocab())
    for text in ["the other one", "naïve café — 日本語 😀", "  a\tb\n\n", "x=3.14"]:
        ids = tok.encode(text, add_special_tokens=False).ids
        assert tok.decode(ids) == text
    ids = tok.encode("<|im_start|>user\nthe<|im_end|>", add_special_tokens=False).ids
    assert ids[0] == 1 and ids[-1] == 2
    assert tok.encode(" the", add_special_tokens=False).ids == [tok.token_to_id("Ġthe")]
    assert tok.encode("12", add_special_tokens=False).ids == [tok.token_to_id("1"), tok.token_to_id("2")]


def test_real_tokenizer_matches_llama_cpp(real_gguf):
    ref = json.loads((DATA / "smollm2_tokenizer_ref.json").read_text(encoding="utf-8"))
    tok = build_tokenizer(GGUFModel(real_gguf).vocab())
    assert len(ref["cases"]) >= 10
    for case in ref["cases"]:
        assert tok.encode(case["text"], add_special_tokens=False).ids == case["ids"], case["text"]


def test_chatml_rendering_follows_the_template(tiny_gguf):
    fmt = chat.from_template(GGUFModel(tiny_gguf()).vocab().chat_template)
    assert fmt.default_system == "You are a test model."
    assert fmt.render([{"role": "user", "content": "hi"}]) == (
        "<|im_start|>system\nYou are a test model.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    assert fmt.render([{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], False) == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nq<|im_end|>\n")
    assert fmt.system_prefix("S") + fmt.turn("user", "q") == fmt.render(
        [{"role": "system", "content": "S"}, {"role": "user", "content": "q"}], False)


def test_unknown_chat_template_is_refused():
    with pytest.raises(chat.ChatTemplateError):
        chat.from_template("{{ bos_token }}{% for m in messages %}[INST] {{ m['content'] }} [/INST]{% endfor %}")
    with pytest.raises(chat.ChatTemplateError):
        chat.from_template(None)
