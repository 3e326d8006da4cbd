"""Byte-level BPE tokenizer built from the GGUF's own vocabulary and merges.

llama.cpp's "gpt2" tokenizer model with a pre-tokenizer named in ``tokenizer.ggml.pre``
maps onto the ``tokenizers`` library: BPE over byte-level symbols, the pre-tokenizer's
split rules, and the control tokens (type 3) as special tokens matched before splitting.
"""

from __future__ import annotations

from pathlib import Path

from .gguf_model import Vocab

CONTROL, USER_DEFINED = 3, 4

# llama.cpp pre-tokenizer name -> (split individual digits first?)  The GPT-2 byte-level
# regex follows in every case; these are the ones that have been checked against llama.cpp.
_PRE = {
    "smollm": True,  # llama-vocab.cpp: "\p{N}", then the GPT-2 regex
    "starcoder": True,
    "refact": True,
    "gpt-2": False,
    "gpt2": False,
    "default": False,
}


class TokenizerError(ValueError):
    pass


def build_tokenizer(vocab: Vocab):
    """A ``tokenizers.Tokenizer`` equivalent to llama.cpp's for this vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

    if vocab.model != "gpt2":
        raise TokenizerError(f"tokenizer model {vocab.model!r} is not supported (only byte-level BPE, 'gpt2')")
    if vocab.pre not in _PRE:
        raise TokenizerError(f"pre-tokenizer {vocab.pre!r} is not supported ({', '.join(sorted(_PRE))})")
    ids = {tok: i for i, tok in enumerate(vocab.tokens)}
    merges = [tuple(m.split(" ", 1)) for m in vocab.merges]
    bpe = models.BPE(vocab=ids, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if _PRE[vocab.pre]:
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    else:
        tok.pre_tokenizer = byte_level
    tok.decoder = decoders.ByteLevel()
    types = vocab.token_types or [1] * len(vocab.tokens)
    specials = [AddedToken(t, special=(ty == CONTROL), normalized=False)
                for t, ty in zip(vocab.tokens, types) if ty in (CONTROL, USER_DEFINED)]
    tok.add_special_tokens([a for a in specials if a.special])
    tok.add_tokens([a for a in specials if not a.special])
    return tok


def save_tokenizer(vocab: Vocab, path: Path) -> None:
    path.write_text(build_tokenizer(vocab).to_str(pretty=False), encoding="utf-8")


def load_tokenizer(path: str | Path):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(path))
