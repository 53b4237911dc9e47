"""Streaming text into the BPE trainer: documents cut into pieces, batched, counted, sampled.

``tokenizers``' ``train_from_iterator`` consumes an iterator lazily and keeps only word
counts, but it reads ahead a fixed number of items (256) whatever their size, and it counts
nothing. So :meth:`attnlab.data.tokenizer.Tokenizer.train_bpe` hands it small pieces, cut
where the byte-level pre-tokenizer always splits (the word counts, hence the vocabulary, are
exactly those of the whole documents), in batches, and stops after ``sample_mb`` megabytes:
memory stays bounded by the number of distinct words, not by the size of a document or of
the corpus. This module is that cutting, batching and counting (nothing in ``tokenizers``
or ``datasets`` does it for an arbitrary Python iterable).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tqdm import tqdm

from attnlab.errors import AttnlabError

# Positions where a byte-level (GPT-2 regex) pre-tokenizer always splits, whatever
# comes before or after: before a single space between two non-spaces ("a| b"), and
# after a single newline between two non-spaces ("a\n|b"). Encoding the pieces cut
# there separately gives exactly the ids of encoding the whole text.
SAFE_CUT = re.compile(r"(?<=\S)(?= \S)|(?<=\S\n)(?=\S)")

# Training input: pieces of at most ~PIECE_CHARS characters handed over in batches of BATCH
# pieces. tokenizers buffers 256 items plus one batch, so the text in flight stays under
# ~(256 + 64) * 8K characters (about 3 MB of ASCII) whatever the corpus.
PIECE_CHARS = 1 << 13
BATCH = 64
# A run this long without a safe cut (e.g. unspaced CJK text without newlines) is cut hard.
HARD_CUT_CHARS = 8 * PIECE_CHARS
MB = 1_000_000  # sample_mb counts megabytes of 10^6 UTF-8 bytes


@dataclass
class TrainSample:
    """How much text :meth:`~attnlab.data.tokenizer.Tokenizer.train_bpe` read.

    Attributes:
        n_documents: documents (items of ``texts``) read, the last one possibly in part.
        n_bytes: UTF-8 bytes of text handed to the trainer.
        limit_bytes: the ``sample_mb`` limit in bytes (0: no limit).
        stopped_early: True if the limit was reached and the rest of ``texts`` was not read.
    """

    n_documents: int = 0
    n_bytes: int = 0
    limit_bytes: int = 0
    stopped_early: bool = False

    def describe(self) -> str:
        """For logs: how many documents and MB were read, and whether the limit cut the text."""
        used = f"{self.n_documents:,} document(s), {self.n_bytes / MB:,.2f} MB of text"
        if self.stopped_early:
            return f"{used} (stopped at sample_mb={self.limit_bytes / MB:g}; the rest was not read)"
        return f"{used} (all of it)"


def safe_pieces(text: str, size: int, hard_after: int = 0) -> Iterator[str]:
    """``text`` in pieces of about ``size`` characters, cut only at :data:`SAFE_CUT` positions.

    Pre-tokenizing (or encoding) the pieces one by one gives what the whole text gives.
    With ``hard_after`` > 0, a piece that would grow past about that many characters before
    a safe cut is cut at ``size`` instead (for training, where one split word is harmless).
    """
    start = 0
    while len(text) - start > size:
        m = SAFE_CUT.search(text, start + size, start + hard_after if hard_after else len(text))
        if m is None:
            if not hard_after:
                break
            cut = start + size
        else:
            cut = m.start()
        yield text[start:cut]
        start = cut
    yield text[start:]


def training_batches(texts: Iterable[str], sample: TrainSample, bar: tqdm) -> Iterator[list[str]]:
    """Batches of text pieces for ``train_from_iterator``, counted into ``sample``, up to its limit.

    ``texts`` is read lazily and no further than the limit (``sample.limit_bytes``, 0: none);
    the document that reaches it is cut there. ``bar`` is advanced by the bytes handed over.

    Raises:
        AttnlabError: if an item of ``texts`` is not a string.
    """
    limit = sample.limit_bytes
    batch: list[str] = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise AttnlabError(
                f"tokenizer training text item {i} is a {type(text).__name__}, not a string; "
                "pass strings (documents), e.g. (text for _, text in docs)"
            )
        if limit and sample.n_bytes >= limit:  # full: is there more text? (empty documents are not)
            if text:
                sample.stopped_early = True
                break
            continue
        sample.n_documents += 1
        for piece in safe_pieces(text, PIECE_CHARS, HARD_CUT_CHARS):
            if limit and sample.n_bytes >= limit and piece:
                sample.stopped_early = True
                break
            n = len(piece) if piece.isascii() else len(piece.encode("utf-8", errors="surrogatepass"))
            if limit and n > limit - sample.n_bytes:  # keep what fits; read no further
                cut = piece.encode("utf-8", errors="surrogatepass")[: limit - sample.n_bytes]
                piece = cut.decode("utf-8", errors="ignore")  # drops a character cut in two
                n = len(piece.encode("utf-8", errors="surrogatepass"))
                sample.stopped_early = True
            batch.append(piece)
            sample.n_bytes += n
            bar.update(n)
            if len(batch) >= BATCH:
                yield batch
                batch = []
            if sample.stopped_early:
                break
        if sample.stopped_early:
            break
    if batch:
        yield batch
