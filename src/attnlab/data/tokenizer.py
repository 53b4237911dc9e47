"""Byte-level BPE tokenizers: train one, save it, load it (or GPT-2's original files).

:class:`Tokenizer` is a thin wrapper over a Hugging Face ``tokenizers.Tokenizer`` that
speaks plain Python lists of ints. Byte-level means every string round-trips: the
initial alphabet holds all 256 byte values, so nothing is ever unknown::

    tok = Tokenizer.train_bpe(texts, vocab_size=4096)
    ids = tok.encode("To be, or not to be")      # list[int]
    assert tok.decode(ids) == "To be, or not to be"
    tok.save("runs/x/tokenizer.json")
    tok = Tokenizer.load("runs/x/tokenizer.json")

GPT-2's tokenizer loads from its ``encoder.json`` + ``vocab.bpe`` (or a ``tokenizer.json``)::

    gpt2 = Tokenizer.load("path/to/dir_with_encoder_json_and_vocab_bpe")

Training streams: ``texts`` may be a generator over a corpus of any size, read lazily
(see :mod:`attnlab.data.bpe_stream`); ``sample_mb`` stops it after that many megabytes.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers
from tqdm import tqdm

from attnlab.data.bpe_stream import MB, TrainSample, safe_pieces, training_batches
from attnlab.errors import AttnlabError
from attnlab.io.durable import atomic_write_text

EOS_TOKEN = "<|endoftext|>"

log = logging.getLogger("attnlab.data")

_EXPECTED_FILES = "a tokenizer.json file, or a directory with tokenizer.json or GPT-2's encoder.json + vocab.bpe"


@functools.lru_cache(maxsize=1)
def byte_to_char() -> dict[int, str]:
    """The byte-level alphabet: each byte value as the printable character standing for it.

    Printable Latin-1 bytes stand for themselves; the others (control bytes, space,
    ...) are moved to code points 256, 257, ... in byte order, so that ``" "`` is
    shown as ``"Ġ"`` and ``"\\n"`` as ``"Ċ"``, as in GPT-2.
    """
    printable = set(range(0x21, 0x7F)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table: dict[int, str] = {}
    moved = 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + moved)
            moved += 1
    return table


@functools.lru_cache(maxsize=1)
def _char_to_byte() -> dict[str, int]:
    return {c: b for b, c in byte_to_char().items()}


def _byte_level_pre_tokenizer() -> pre_tokenizers.ByteLevel:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


class Tokenizer:
    """A text ↔ token-id mapping backed by a ``tokenizers.Tokenizer``.

    Args:
        backend: the Hugging Face ``tokenizers.Tokenizer`` doing the work.

    Attributes:
        trained_on: for a tokenizer from :meth:`train_bpe`, how much text it was trained on;
            ``None`` for a loaded one.
    """

    def __init__(self, backend: tokenizers.Tokenizer) -> None:
        self._tok = backend
        self.trained_on: TrainSample | None = None

    # ------------------------------------------------------------------ building

    @classmethod
    def train_bpe(
        cls,
        texts: Iterable[str],
        vocab_size: int,
        min_frequency: int = 2,
        special_tokens: Sequence[str] = (EOS_TOKEN,),
        sample_mb: float = 0,
        progress: bool = False,
    ) -> Tokenizer:
        """Train a byte-level BPE tokenizer on ``texts``, streamed.

        ``texts`` is read once, lazily: a generator over a corpus larger than memory is
        fine (each document is cut into pieces that train exactly as the whole would).
        A list and a generator of the same texts give the same tokenizer.

        Args:
            texts: the training text, as any iterable of strings (documents or chunks),
                e.g. a generator; a single string is one document.
            vocab_size: target number of tokens, special tokens and the 256 bytes included.
            min_frequency: a pair must occur this often to be merged.
            special_tokens: tokens that get the first ids and are never split.
            sample_mb: if > 0, stop after this many megabytes (10^6 UTF-8 bytes) of text;
                the document that reaches the limit is cut there.
            progress: show a bar (MB read, MB/s) on stderr while reading.

        Returns:
            The trained tokenizer (it may hold fewer than ``vocab_size`` tokens when the
            text runs out of pairs to merge); its :attr:`trained_on` says how much text it
            read, which is also logged (logger ``attnlab.data``, INFO).

        Raises:
            AttnlabError: if ``vocab_size`` cannot even hold the byte alphabet, if
                ``sample_mb`` is negative, or if an item of ``texts`` is not a string.
        """
        minimum = 256 + len(special_tokens)
        if vocab_size < minimum:
            raise AttnlabError(
                f"BPE vocab size {vocab_size} is too small: it must hold the 256 bytes and "
                f"{len(special_tokens)} special token(s); use at least {minimum}, e.g. bpe:4096"
            )
        if not sample_mb >= 0:  # also refuses NaN
            raise AttnlabError(
                f"tokenizer sample size {sample_mb} MB is not >= 0; use 0 (all the text) or a size in MB, e.g. 100"
            )
        if isinstance(texts, str):
            texts = [texts]
        tok = tokenizers.Tokenizer(models.BPE())
        tok.pre_tokenizer = _byte_level_pre_tokenizer()
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=list(special_tokens),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        sample = TrainSample(limit_bytes=round(sample_mb * MB))
        with tqdm(
            total=sample.limit_bytes or None,
            desc="reading text for the BPE tokenizer",
            unit="B",
            unit_scale=True,
            disable=not progress,
            file=sys.stderr,
        ) as bar:
            try:
                tok.train_from_iterator(training_batches(texts, sample, bar), trainer=trainer)
            except BaseException:
                bar.leave = False  # an error in the stream is shown on its own line, without the bar
                raise
        out = cls(tok)
        out.trained_on = sample
        log.info("trained a %d-token BPE tokenizer on %s", out.vocab_size, sample.describe())
        return out

    @classmethod
    def from_gpt2_files(cls, encoder_json: str | Path, vocab_bpe: str | Path) -> Tokenizer:
        """Build GPT-2's byte-level BPE from its original ``encoder.json`` and ``vocab.bpe``.

        ``<|endoftext|>`` (id 50256 in GPT-2) becomes the special end-of-text token.

        Raises:
            AttnlabError: if a file is missing or unreadable.
        """
        encoder_json, vocab_bpe = Path(encoder_json), Path(vocab_bpe)
        for p in (encoder_json, vocab_bpe):
            if not p.is_file():
                raise AttnlabError(f"GPT-2 tokenizer file '{p}' not found; give both encoder.json and vocab.bpe")
        try:
            model = models.BPE.from_file(str(encoder_json), str(vocab_bpe))
        except Exception as e:  # tokenizers raises plain Exception for malformed files
            raise AttnlabError(
                f"cannot read GPT-2 files '{encoder_json}' + '{vocab_bpe}': {_first_line(e)}; "
                "check they are GPT-2's encoder.json (token → id) and vocab.bpe (merges)"
            ) from None
        tok = tokenizers.Tokenizer(model)
        tok.pre_tokenizer = _byte_level_pre_tokenizer()
        tok.decoder = decoders.ByteLevel()
        if tok.token_to_id(EOS_TOKEN) is not None:
            tok.add_special_tokens([EOS_TOKEN])  # reuses its id (50256), never split
        return cls(tok)

    @classmethod
    def from_json(cls, text: str) -> Tokenizer:
        """Rebuild a tokenizer from the string written by :meth:`to_json`."""
        try:
            return cls(tokenizers.Tokenizer.from_str(text))
        except Exception as e:
            raise AttnlabError(f"not a valid tokenizer.json: {_first_line(e)}") from None

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Load a tokenizer from a file or a directory.

        Args:
            path: a ``tokenizer.json``; a directory holding ``tokenizer.json``; a
                directory with GPT-2's ``encoder.json`` + ``vocab.bpe`` (or the Hugging
                Face names ``vocab.json`` + ``merges.txt``); or GPT-2's ``encoder.json``
                itself, with ``vocab.bpe`` beside it.

        Raises:
            AttnlabError: if the path is missing or holds none of the expected files.
        """
        p = Path(path).expanduser()
        if not p.exists():
            raise AttnlabError(f"tokenizer path '{p}' not found; expected {_EXPECTED_FILES}")
        if p.is_dir():
            if (p / "tokenizer.json").is_file():
                return cls._from_file(p / "tokenizer.json")
            for vocab, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
                if (p / vocab).is_file() and (p / merges).is_file():
                    return cls.from_gpt2_files(p / vocab, p / merges)
            raise AttnlabError(f"no tokenizer files in directory '{p}'; expected {_EXPECTED_FILES}")
        if p.name in ("encoder.json", "vocab.json"):
            merges = p.with_name("vocab.bpe" if p.name == "encoder.json" else "merges.txt")
            return cls.from_gpt2_files(p, merges)
        return cls._from_file(p)

    @classmethod
    def _from_file(cls, path: Path) -> Tokenizer:
        try:
            backend = tokenizers.Tokenizer.from_file(str(path))
            # Padding/truncation saved in a tokenizer.json (MiniLM pads every text to 128) would
            # turn every encode() into a fixed-length row of [PAD]s; callers pad and truncate.
            backend.no_padding()
            backend.no_truncation()
            return cls(backend)
        except Exception as e:
            raise AttnlabError(
                f"'{path}' is not a valid tokenizer.json ({_first_line(e)}); "
                "re-create it with `attnlab tokenizer train` or point to GPT-2's encoder.json + vocab.bpe"
            ) from None

    def with_special_tokens(self, tokens: Sequence[str]) -> Tokenizer:
        """A copy of this tokenizer with ``tokens`` registered as special tokens.

        New tokens get the next free ids, in the order given; tokens already in the
        vocabulary keep their ids. ``self`` is left unchanged.

        Args:
            tokens: token strings, e.g. ``["<|mask|>"]``.

        Returns:
            The extended tokenizer (its :attr:`vocab_size` counts the new tokens).
        """
        copy = Tokenizer.from_json(self.to_json())
        copy._tok.add_special_tokens(list(tokens))
        return copy

    def token_id(self, token: str) -> int | None:
        """Id of a token string (special or learned), or ``None`` if it is not in the vocabulary."""
        return self._tok.token_to_id(token)

    # ------------------------------------------------------------------ saving

    def to_json(self) -> str:
        """The tokenizer serialised as a ``tokenizer.json`` string (deterministic)."""
        return self._tok.to_str()

    def save(self, path: str | Path) -> Path:
        """Write ``tokenizer.json`` atomically, creating parent directories.

        Args:
            path: the file to write, or an existing directory (``tokenizer.json`` goes inside).

        Returns:
            The path written.
        """
        p = Path(path).expanduser()
        if p.is_dir():
            p = p / "tokenizer.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(p, self.to_json())
        return p

    # ------------------------------------------------------------------ using

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The wrapped Hugging Face ``tokenizers.Tokenizer``."""
        return self._tok

    @property
    def vocab_size(self) -> int:
        """Number of token ids, special tokens included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int | None:
        """Id of ``<|endoftext|>``, or ``None`` if this vocabulary has no such token."""
        return self._tok.token_to_id(EOS_TOKEN)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no special tokens are added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded in parallel."""
        texts = list(texts)
        fast = getattr(self._tok, "encode_batch_fast", None)  # skips offsets; tokenizers >= 0.20
        encs = (fast or self._tok.encode_batch)(texts, add_special_tokens=False)
        return [e.ids for e in encs]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of ``ids`` (a list, tuple, numpy array or 1-D tensor); special tokens are kept."""
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=False)

    def token_strings(self, ids: Iterable[int]) -> list[str]:
        """Readable text of each token on its own, for visualisation.

        Byte-level tokens are shown as the text they stand for (``"Ġthe"`` → ``" the"``);
        a token holding part of a multi-byte character shows the loose bytes as
        ``"\\xe2"``. Special tokens are shown as themselves.
        """
        ids = ids.tolist() if hasattr(ids, "tolist") else ids
        special = set(self._special_ids())
        c2b = _char_to_byte()
        out = []
        for i in ids:
            i = int(i)
            piece = self._tok.id_to_token(i)
            if piece is None:
                out.append(f"<unk:{i}>")
            elif i in special or not all(c in c2b for c in piece):
                out.append(piece)
            else:
                out.append(bytes(c2b[c] for c in piece).decode("utf-8", errors="backslashreplace"))
        return out

    def _special_ids(self) -> list[int]:
        return [i for i, t in self._tok.get_added_tokens_decoder().items() if t.special]

    @property
    def special_ids(self) -> list[int]:
        """Ids of the special tokens (``<|endoftext|>`` and any added with :meth:`with_special_tokens`)."""
        return sorted(self._special_ids())

    @property
    def chunk_safe(self) -> bool:
        """Whether long texts may be cut at :func:`chunk_text` boundaries without changing ids.

        True for plain byte-level pre-tokenization with the GPT-2 regex (every tokenizer
        trained or loaded from GPT-2 files here); other loaded tokenizers are encoded whole.
        """
        pre = self._tok.pre_tokenizer
        return (
            self._tok.normalizer is None
            and isinstance(pre, pre_tokenizers.ByteLevel)
            and not pre.add_prefix_space
            and pre.use_regex
        )

    def chunk_text(self, text: str, size: int = 1 << 14) -> list[str]:
        """Cut ``text`` into pieces of about ``size`` characters that encode independently.

        Encoding the pieces and concatenating the ids equals ``encode(text)``. Pieces are
        cut only where the pre-tokenizer always splits; for tokenizers where that is not
        known (:attr:`chunk_safe` false) the text comes back whole.
        """
        if not self.chunk_safe:
            return [text]
        return list(safe_pieces(text, size))

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
