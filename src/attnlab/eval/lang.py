"""Which tokenization a text metric uses: the references' language, detected or given.

BLEU and ROUGE count word n-grams, so they need to know what a word is. sacrebleu's default
(``13a``) and rouge-score's tokenizer split on spaces, and rouge-score also drops every character
that is not an ASCII letter or digit: two identical Chinese sentences score BLEU 0 and ROUGE 0.
This module picks the tokenization by language:

- ``zh``: BLEU with sacrebleu's ``zh`` tokenizer (each Chinese character a token, the rest as
  ``13a``); ROUGE ``char`` (each CJK character a token, other words as rouge-score makes them).
- ``ja``: BLEU ``char`` (every character a token: no word segmenter, MeCab is not needed);
  ROUGE ``char``.
- ``ko``: BLEU ``13a`` (Korean separates words with spaces); ROUGE ``words`` (each run of Hangul
  a token, other words as rouge-score makes them).
- any other language: BLEU ``13a`` (sacrebleu's default); ROUGE ``default`` (rouge-score's own
  tokenizer: lowercased ASCII letters and digits).

``lang="auto"`` detects it with :func:`detect_lang`. The detector and the two small tokenizers are
hand-written because they only sort characters by Unicode block: a language-identification model
would be a large dependency for a choice between four tokenizers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
CJK_LANGS = ("zh", "ja", "ko")
"""The languages with their own tokenization; every other language code gets the defaults."""

_HAN = "\u3005\u3007\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_KANA = "\u3040-\u309f\u30a0-\u30ff\u31f0-\u31ff\uff66-\uff9f"
_HANGUL = "\u1100-\u11ff\u3130-\u318f\uac00-\ud7af"
_CJK = _HAN + _KANA + _HANGUL
_HAN_RE, _KANA_RE, _HANGUL_RE = (re.compile(f"[{r}]") for r in (_HAN, _KANA, _HANGUL))
_OTHER_WORD_RE = re.compile(rf"[^\W\d_{_CJK}]+")  # a run of letters of any other script
_LANG_CODE_RE = re.compile(r"[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{1,8})*")
ROUGE_TOKENIZE = ("default", "char", "words")
"""ROUGE tokenizations: rouge-score's own, or :class:`RougeTokenizer`'s two."""
KANA_SHARE_JA = 0.05
"""Kana among the Chinese characters and kana above which CJK text is Japanese (Chinese has none)."""


def detect_lang(texts: str | Iterable[str]) -> str | None:
    """The CJK language most of ``texts`` is written in, if any.

    Counts letters, not bytes: every Chinese character, kana and Hangul syllable is one unit,
    a run of letters of any other script (an English or German word) another. Digits,
    punctuation and spaces do not count.

    Args:
        texts: one text or several (counted together, e.g. all references of a test set).

    Returns:
        ``"ko"`` when most units are CJK and Hangul outnumbers the Chinese characters and kana;
        else ``"ja"`` when kana are at least :data:`KANA_SHARE_JA` of them; else ``"zh"``.
        ``None`` when most units are not CJK (or there are none): the default tokenizers fit.
    """
    text = texts if isinstance(texts, str) else "\n".join(texts)
    han, kana, hangul = (len(r.findall(text)) for r in (_HAN_RE, _KANA_RE, _HANGUL_RE))
    cjk, other = han + kana + hangul, len(_OTHER_WORD_RE.findall(text))
    if cjk <= other:
        return None
    if hangul > han + kana:
        return "ko"
    return "ja" if kana >= KANA_SHARE_JA * (han + kana) else "zh"


def check_lang(lang: str) -> str:
    """``lang`` if it is ``"auto"`` or a language code (``zh``, ``zh-TW``, ``en``...), else a one-line ValueError."""
    if not isinstance(lang, str) or not (lang == AUTO or _LANG_CODE_RE.fullmatch(lang)):
        raise ValueError(f"lang {lang!r} is not a language code; use auto (detect from the references), "
                         f"{', '.join(CJK_LANGS)}, or another code such as en (default tokenizers)")
    return lang


@dataclass(frozen=True)
class Tokenization:
    """What a set of references is scored with.

    Attributes:
        lang: ``"zh"``, ``"ja"``, ``"ko"``, or ``None`` for any other language.
        bleu_tokenize: the sacrebleu tokenizer name.
        rouge_tokenize: ``"default"`` (rouge-score's), ``"char"`` or ``"words"`` (see the module docstring).
    """

    lang: str | None
    bleu_tokenize: str
    rouge_tokenize: str

    def as_dict(self) -> dict[str, Any]:
        """``{"lang", "bleu_tokenize", "rouge_tokenize"}`` (JSON-able)."""
        return {"lang": self.lang, "bleu_tokenize": self.bleu_tokenize, "rouge_tokenize": self.rouge_tokenize}


_BY_LANG = {"zh": ("zh", "char"), "ja": ("char", "char"), "ko": ("13a", "words"), None: ("13a", "default")}


def references_text(references: Sequence[Any]) -> list[str]:
    """Every reference string of per-example references (a string or a list of strings each)."""
    return [s for r in references for s in ([r] if isinstance(r, str) else r) if isinstance(s, str)]


def tokenization(references: Sequence[Any], lang: str = AUTO) -> Tokenization:
    """The tokenization for ``references`` in ``lang`` (``"auto"``: :func:`detect_lang` of the references).

    Args:
        references: per example, one reference string or a list of them.
        lang: ``"auto"``, or a language code; only its first part counts (``zh-TW`` is ``zh``),
            and codes other than ``zh`` / ``ja`` / ``ko`` all get the default tokenizers.

    Raises:
        ValueError: ``lang`` is not ``"auto"`` or a language code.
    """
    check_lang(lang)
    if lang == AUTO:
        code = detect_lang(references_text(references))
    else:
        primary = re.split(r"[-_]", lang.lower(), maxsplit=1)[0]
        code = primary if primary in CJK_LANGS else None
    return Tokenization(code, *_BY_LANG[code])


class RougeTokenizer:
    """A rouge-score tokenizer (``RougeScorer(tokenizer=...)``) that keeps CJK text.

    CJK characters (``char``) or Hangul words and single Chinese characters (``words``) become
    tokens as they are; the text between them goes through rouge-score's own tokenizer, so
    English words inside Chinese text are lowercased and stemmed exactly as rouge-score does.

    Args:
        kind: ``"char"`` or ``"words"``.
        use_stemmer: Porter-stem the non-CJK words of more than 3 letters (as rouge-score does).
    """

    def __init__(self, kind: str, use_stemmer: bool = False):
        from rouge_score import tokenize

        units = {"char": f"[{_CJK}]", "words": f"[{_HANGUL}]+|[{_HAN}{_KANA}]"}
        if kind not in units:
            raise ValueError(f"unknown ROUGE tokenization '{kind}'; choose from {', '.join(units)}")
        self._unit = re.compile(units[kind])
        self._tokenize = tokenize.tokenize
        if use_stemmer:
            from nltk.stem import porter

            self._stemmer: Any = porter.PorterStemmer()
        else:
            self._stemmer = None

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text``: CJK units in order, with rouge-score's tokens of the text between them."""
        out: list[str] = []
        pos = 0
        for m in self._unit.finditer(text):
            out += self._tokenize(text[pos:m.start()], self._stemmer)
            out.append(m.group())
            pos = m.end()
        out += self._tokenize(text[pos:], self._stemmer)
        return out
