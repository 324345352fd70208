"""Answer extractors for exact match of generated text (``causal_lm.answer``).

- ``gsm8k``: the number after the last ``####`` when there is one (GSM8K's reference format),
  else the last number in the text;
- ``last_number``: the last number in the text;
- ``text``: the whole text, stripped.

Numbers are normalized before comparing: thousands commas removed, a trailing ``.`` or ``.0…``
dropped (``1,200.00`` -> ``1200``). No number: ``None`` (never equal to a reference).
"""

from __future__ import annotations

import re
from typing import Callable

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def normalize_number(text: str) -> str:
    number = text.replace(",", "")
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    return number or "0"


def last_number(text: str) -> str | None:
    numbers = NUMBER.findall(text)
    return normalize_number(numbers[-1]) if numbers else None


def gsm8k_answer(text: str) -> str | None:
    if "####" in text:
        found = NUMBER.search(text.rsplit("####", 1)[1])
        if found:
            return normalize_number(found.group())
    return last_number(text)


def whole_text(text: str) -> str | None:
    return text.strip() or None


ANSWER_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": gsm8k_answer,
    "last_number": last_number,
    "text": whole_text,
}
