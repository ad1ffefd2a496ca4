"""Answer extraction and equivalence: is a completion's final answer the reference answer?

:func:`extract_answer` takes the content of the last complete ``\\boxed{...}`` (or
``\\fbox{...}``) in a completion, or, when there is none, the text after the last
occurrence of the family's answer marker (``"The answer is"``, ``"####"``; matched
case-insensitively) up to the end of that line. :func:`grade` compares the extracted answer
with the reference: when both are plain numbers (after stripping thousands separators,
currency signs, ``\\text{}`` units and trailing unit words) they are compared numerically —
exactly for two integers, with relative tolerance :data:`REL_TOL` otherwise; anything else
goes to math-verify (symbolic equality: fractions, LaTeX forms, intervals, sets,
percentages). A completion with no answer grades as wrong.

math-verify bounds its parsing time with ``SIGALRM``, which only works on the main thread;
off the main thread the timeouts are switched off.
"""

from __future__ import annotations

import math
import re
import threading
from functools import lru_cache

__all__ = ["extract_answer", "grade", "answers_equal", "last_boxed", "REL_TOL", "ABS_TOL"]

REL_TOL = 1e-6
ABS_TOL = 1e-9

_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def last_boxed(text: str) -> str | None:
    """Content of the last complete, non-empty ``\\boxed{...}`` / ``\\fbox{...}`` (balanced braces).

    ``\\boxed 5`` (no braces, a single token) is accepted too. An unclosed box — a generation
    cut off by the token limit — does not count.
    """
    found: str | None = None
    for m in _BOX_RE.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            depth, j = 0, i
            while j < len(text):
                c = text[j]
                if c == "\\" and j + 1 < len(text):
                    j += 2
                    continue
                if c == "{":
                    depth += 1
                elif c == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if depth != 0:
                continue
            content = text[i + 1:j].strip()
        else:
            tok = re.match(r"[^\s$]+", text[i:])
            content = tok.group(0).strip() if tok and m.group(0).endswith(" ") else ""
        if content:
            found = content
    return found


def _after_marker(text: str, marker: str) -> str | None:
    idx = text.lower().rfind(marker.lower())
    if idx < 0:
        return None
    rest = text[idx + len(marker):].lstrip(" \t:")
    line = rest.split("\n", 1)[0].strip()
    inline = re.fullmatch(r"\$+(.+?)\$+\.?", line)
    if inline:
        line = inline.group(1).strip()
    line = line.rstrip(".").strip()
    return line or None


def extract_answer(completion: str, marker: str | None = None) -> str | None:
    """The final answer in ``completion``: last ``\\boxed{}`` content, else the text after ``marker``.

    Returns None when neither is present (the completion gave no answer).
    """
    if not isinstance(completion, str):
        raise TypeError(f"extract_answer: completion must be a str, got {type(completion).__name__}")
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed
    if marker:
        return _after_marker(completion, marker)
    return None


_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:(?:,|\{,\}|\\,)\d{3})+(?:\.\d+)?$")
_NUMBER_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?$")
_FRAC_RE = re.compile(r"^([-+]?)\\[dt]?frac\{([-+]?[\d.]+)\}\{([-+]?[\d.]+)\}$")
_SLASH_RE = re.compile(r"^([-+]?[\d.]+)/([\d.]+)$")


def _strip_decorations(s: str) -> str:
    """Remove what surrounds a plain number in a word-problem answer: $, \\text{units}, unit words."""
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\(?:text|mbox|mathrm)\{[^{}]*\}", " ", s)
    s = re.sub(r"\\[,;:! ]", "", s)  # LaTeX spacing
    s = s.replace("\\$", "").replace("\\%", "").replace("%", "")
    s = re.sub(r"\^\{?\\circ\}?", "", s)
    s = s.strip().rstrip(".").strip()
    # trailing unit words ("18 dollars", "3 cm^2"): only after whitespace and at least 2 letters each
    s = re.sub(r"(?<=\d)\s+(?:[A-Za-z]{2,}(?:\^\d)?\s*)+$", "", s)
    return s.replace(" ", "")


def _as_number(s: str) -> float | int | None:
    """A plain number (int when written as an integer), or None when ``s`` is not one."""
    s = _strip_decorations(s)
    if _THOUSANDS_RE.match(s):
        s = re.sub(r"\{,\}|\\,|,", "", s)
    if re.fullmatch(r"[-+]?\d+", s):
        return int(s)
    if _NUMBER_RE.match(s):
        return float(s)
    m = _FRAC_RE.match(s) or _SLASH_RE.match(s)
    if m:
        sign, num, den = (m.group(1), m.group(2), m.group(3)) if m.re is _FRAC_RE else ("", m.group(1), m.group(2))
        try:
            value = float(num) / float(den)
        except (ValueError, ZeroDivisionError):
            return None
        return -value if sign == "-" else value
    return None


def _numbers_equal(x: float | int, y: float | int) -> bool:
    if isinstance(x, int) and isinstance(y, int):
        return x == y  # integers are exact: 999999 is not 1000000
    return math.isclose(x, y, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def _on_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@lru_cache(maxsize=4096)
def _math_verify_equal(gold: str, pred: str, main_thread: bool) -> bool:
    from math_verify import parse, verify

    timeout = 5 if main_thread else None
    try:
        g = parse(f"\\boxed{{{gold}}}", parsing_timeout=timeout)
        p = parse(f"\\boxed{{{pred}}}", parsing_timeout=timeout)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=timeout))
    except Exception:  # math-verify raises on pathological LaTeX; that is "not shown equal"
        return False


def answers_equal(pred: str, reference: str) -> bool:
    """True when two final answers are the same value (numeric tolerance or symbolic equality)."""
    pred, reference = pred.strip(), reference.strip()
    if not pred or not reference:
        return False
    if pred == reference:
        return True
    x, y = _as_number(pred), _as_number(reference)
    if x is not None and y is not None:  # two plain numbers: decided numerically, not symbolically
        return _numbers_equal(x, y)
    return _math_verify_equal(reference, pred, _on_main_thread())


def grade(completion: str, reference: str, *, marker: str | None = None) -> bool:
    """Whether ``completion``'s final answer (see :func:`extract_answer`) equals ``reference``."""
    if not isinstance(reference, str):
        raise TypeError(f"grade: reference must be a str, got {type(reference).__name__}")
    pred = extract_answer(completion, marker)
    if pred is None:
        return False
    return answers_equal(pred, reference)
