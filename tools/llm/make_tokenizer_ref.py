"""Write tests/llm/data/smollm2_tokenizer_ref.json: llama.cpp's token ids for fixed strings.

Run once with llama-cpp-python (see tools/llm/llama_env.sh):

    /tmp/edged-llama-venv/bin/python tools/llm/make_tokenizer_ref.py ~/.cache/edged/gguf/SmolLM2-135M-Instruct.Q4_1.gguf
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

CASES = [
    "Hello world",
    "The pump reads 91.0 °C — naïve café, Ünïcödé, 日本語, 😀 and Ελληνικά.",
    "<|im_start|>user\nWhat is the temperature?<|im_end|>\n<|im_start|>assistant\n",
    "  leading spaces   and\ttabs\n\n\nnewlines ",
    "12345 x=3.14 1,234,567 -42 0.001 1e-3",
    "Vibration at P-101 rose to 4.2 mm/s (z-score 3.9) between 10:30 and 10:45.",
    "don't won't it's I'm you're we've they'll he'd",
    "CamelCaseIdentifier snake_case_name kebab-case-name https://example.com/a?b=c",
    "Привет, мир! مرحبا بالعالم שלום עולם",
    "中文测试：温度为九十一摄氏度。한국어 텍스트",
    "def f(x):\n    return x ** 2  # comment\n",
    "   ",
    "a" * 40,
    "<|endoftext|>Text after an end marker<repo_name>",
]


def main(gguf: str) -> None:
    from llama_cpp import Llama

    llm = Llama(model_path=gguf, vocab_only=True, verbose=False)
    cases = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)} for t in CASES]
    out = Path(__file__).resolve().parents[2] / "tests" / "llm" / "data" / "smollm2_tokenizer_ref.json"
    import llama_cpp

    doc = {"source": Path(gguf).name, "producer": f"llama-cpp-python {llama_cpp.__version__}, "
                                                  "tokenize(add_bos=False, special=True)", "cases": cases}
    out.write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(cases)} cases to {out}")


if __name__ == "__main__":
    main(sys.argv[1])
