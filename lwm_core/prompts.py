"""The exact prompt strings the LWM models were trained with (docs/compatibility.md#prompts)."""

from __future__ import annotations

SYSTEM = "You are a helpful assistant."


def chat_prompt(question: str, *, system: str = SYSTEM, history: list[tuple[str, str]] = ()) -> str:
    """`You are a helpful assistant. USER: {question} ASSISTANT:`, with earlier turns in the same
    USER/ASSISTANT form (the released chat models were tuned on single turns; earlier turns are
    closed with `</s>` as in Vicuna-style templates)."""
    parts = [system] if system else []
    for user, assistant in history:
        parts.append(f"USER: {user} ASSISTANT: {assistant}</s>")
    parts.append(f"USER: {question} ASSISTANT:")
    return " ".join(parts)
