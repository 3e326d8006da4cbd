"""The model's chat template, rendered without a template engine.

The build copies ``tokenizer.chat_template`` from the GGUF verbatim and recognizes its
format; only formats whose rendering is reproduced here exactly are accepted (ChatML
today, the SmolLM2 / Qwen family).  The engine renders prompts from this file.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


class ChatTemplateError(ValueError):
    pass


@dataclass(frozen=True)
class ChatFormat:
    format: str  # "chatml"
    template: str  # the GGUF's Jinja source, verbatim
    default_system: str | None  # inserted when the first message is not a system message
    stop: tuple[str, ...]  # end-of-turn strings

    # --- rendering -----------------------------------------------------------------------
    def turn(self, role: str, content: str) -> str:
        return f"<|im_start|>{role}\n{content}<|im_end|>\n"

    def system_prefix(self, system: str | None) -> str:
        """The text every conversation with this system prompt starts with (cacheable)."""
        if system is None:
            return "" if self.default_system is None else self.turn("system", self.default_system)
        return self.turn("system", system)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        out = []
        for i, msg in enumerate(messages):
            if i == 0 and msg["role"] != "system" and self.default_system is not None:
                out.append(self.turn("system", self.default_system))
            out.append(self.turn(msg["role"], msg["content"]))
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)

    def to_json(self) -> str:
        return json.dumps({"format": self.format, "template": self.template, "default_system": self.default_system,
                           "stop": list(self.stop)}, indent=2, sort_keys=True, ensure_ascii=False) + "\n"

    @classmethod
    def load(cls, path: str | Path) -> "ChatFormat":
        d = json.loads(Path(path).read_text(encoding="utf-8"))
        if d.get("format") != "chatml":
            raise ChatTemplateError(f"chat format {d.get('format')!r} is not supported")
        return cls(d["format"], d["template"], d.get("default_system"), tuple(d.get("stop", ())))


_NL = r"(?:\\n|\n)"  # the template may spell the newline as an escape or literally
_CHATML_TURN = re.compile(r"'<\|im_start\|>'\s*\+\s*message\['role'\]\s*\+\s*'" + _NL + r"'\s*\+\s*message\['content'\]"
                          r"\s*\+\s*'<\|im_end\|>'")
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system" + _NL + r"(.*?)<\|im_end\|>", re.S)


def from_template(template: str | None) -> ChatFormat:
    """Recognize the GGUF's chat template; refuse what :class:`ChatFormat` cannot reproduce."""
    if not template:
        raise ChatTemplateError("the GGUF has no tokenizer.chat_template")
    if not _CHATML_TURN.search(template) or "add_generation_prompt" not in template:
        raise ChatTemplateError("chat template is not ChatML; not supported")
    m = _DEFAULT_SYSTEM.search(template)
    default = m.group(1) if m and "messages[0]['role'] != 'system'" in template else None
    return ChatFormat("chatml", template, default, ("<|im_end|>",))
