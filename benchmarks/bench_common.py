"""Small helpers the benchmark scripts share (run them from the repository root or anywhere)."""

from __future__ import annotations

import platform

import torch


def device_label(device: torch.device | str) -> str:
    """The device as results files name it: the GPU's name, or the CPU's architecture and torch threads."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} thread(s), {platform.processor() or platform.machine()})"


def default_device() -> torch.device:
    """CUDA when there is a GPU, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def char_corpus(vocab: int = 65, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """The embedded Shakespeare as character ids, split (train, val) as nanoGPT's ``shakespeare_char`` does.

    The ``vocab - 1`` most frequent characters get their own id (ties by character); the rest share the last
    id, so the vocabulary is exactly ``vocab`` (nanoGPT's tiny-shakespeare has 65 characters, ours 80).

    Returns:
        (train ids, val ids), each 1-D int64: the first ``1 - val_fraction`` of the text, then the rest.
    """
    import gzip
    from collections import Counter
    from importlib import resources

    text = gzip.decompress((resources.files("attnlab") / "data/corpus/shakespeare.txt.gz").read_bytes()).decode()
    ranked = sorted(Counter(text).items(), key=lambda kv: (-kv[1], kv[0]))
    table = {ch: min(i, vocab - 1) for i, (ch, _) in enumerate(ranked)}
    ids = torch.tensor([table[ch] for ch in text], dtype=torch.long)
    cut = int(len(ids) * (1 - val_fraction))
    return ids[:cut], ids[cut:]


def windows(ids: torch.Tensor, n: int, batch: int, seq_len: int, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches (x, y) of ``batch`` random windows of ``ids``, each (B, T), y = x shifted by one."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        starts = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=gen)
        w = torch.stack([ids[s: s + seq_len + 1] for s in starts.tolist()])  # (B, T + 1)
        out.append((w[:, :-1].contiguous(), w[:, 1:].contiguous()))
    return out
