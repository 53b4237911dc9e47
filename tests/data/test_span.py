"""T5 span corruption: format, reconstruction, span statistics, determinism, bad arguments."""

from math import comb

import pytest
import torch

from attnlab.data.span import span_corrupt, span_counts, span_lengths

EOS = 1
SENTINELS = list(range(999, 899, -1))  # <extra_id_0> = 999, the highest id, as in T5


def corrupt(ids, seed=0, density=0.15, mean=3.0, eos=EOS):
    return span_corrupt(ids, noise_density=density, mean_span_length=mean, sentinel_ids=SENTINELS, eos_id=eos,
                        generator=torch.Generator().manual_seed(seed))


def rows(b=64, t=64, seed=0):
    """Rows of distinct token ids in [2, 900), so every token can be traced."""
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(898, generator=g)[:t] + 2 for _ in range(b)])  # (B, T)


def reconstruct(inputs: list[int], targets: list[int], sentinels=SENTINELS) -> list[int]:
    """Put each sentinel's span from the targets back in place of the sentinel in the inputs."""
    spans, current = {}, None
    for tok in targets:
        if tok in sentinels:
            current = tok
            spans[current] = []
        elif tok != EOS:
            spans[current].append(tok)
    out = []
    for tok in inputs:
        out.extend(spans.pop(tok) if tok in sentinels else ([] if tok == EOS else [tok]))
    return out


def test_t5_counts():
    assert span_counts(512, 0.15, 3.0) == (77, 26)  # T5's default: 76.8 → 77 noise tokens, 25.7 → 26 spans
    assert span_counts(10, 0.01, 3.0) == (1, 1)  # at least one noise token and one span
    assert span_counts(4, 0.99, 1.0) == (3, 1)  # never every token; spans fit between kept tokens


def test_docstring_example_layout():
    ids = torch.arange(10, 20).view(1, 10)
    inputs, targets = span_corrupt(ids, noise_density=0.5, mean_span_length=2.5, sentinel_ids=[99, 98, 97],
                                   eos_id=EOS, generator=torch.Generator().manual_seed(0))
    assert inputs.shape == (1, 10 - 5 + 2 + 1) and targets.shape == (1, 5 + 2 + 1 + 1)
    i, t = inputs[0].tolist(), targets[0].tolist()
    assert i[0] == 10 and i[-2:] == [98, EOS]  # starts with kept text, ends with the last span's sentinel
    assert t[0] == 99 and t[-2:] == [97, EOS] and t[-3] == 19  # last span reaches the end; closing sentinel
    assert reconstruct(i, t, [99, 98, 97]) == list(range(10, 20))


@pytest.mark.parametrize("eos", [EOS, None])
def test_format_and_reconstruction(eos):
    ids = rows()
    b, t = ids.shape
    n_noise, n_spans = span_counts(t, 0.15, 3.0)
    inputs, targets = corrupt(ids, eos=eos)
    tail = 0 if eos is None else 1
    assert inputs.shape == (b, t - n_noise + n_spans + tail) and inputs.dtype == torch.long
    assert targets.shape == (b, n_noise + n_spans + 1 + tail)
    for r in range(b):
        i, o = inputs[r].tolist(), targets[r].tolist()
        assert [x for x in i if x in SENTINELS] == SENTINELS[:n_spans]  # one sentinel per span, in order
        assert [x for x in o if x in SENTINELS] == SENTINELS[: n_spans + 1]  # each span's, then the closing one
        assert o[0] == SENTINELS[0]
        if eos is not None:
            assert i[-1] == o[-1] == EOS and EOS not in i[:-1] + o[:-1]
        text = [x for x in i + o if x not in SENTINELS and x != EOS]
        assert sorted(text) == sorted(ids[r].tolist())  # every original token exactly once
        assert sum(x not in SENTINELS and x != EOS for x in o) == n_noise
        if eos is None:
            o = o + [EOS]
        assert reconstruct(i, o) == ids[r].tolist()


def test_noise_density_and_span_length_statistics():
    t, density, mean = 100, 0.2, 4.0
    ids = rows(b=2000, t=t, seed=1)
    n_noise, n_spans = span_counts(t, density, mean)
    assert (n_noise, n_spans) == (20, 5)
    inputs, targets = corrupt(ids, seed=3, density=density, mean=mean, eos=None)
    hidden = torch.zeros(ids.shape, dtype=torch.bool)  # (B, T): which original positions were hidden
    lengths = []
    for r in range(ids.size(0)):
        o = targets[r].tolist()
        pos = {tok: p for p, tok in enumerate(ids[r].tolist())}
        cut = [k for k, x in enumerate(o) if x in SENTINELS]
        for a, z in zip(cut, cut[1:], strict=False):
            lengths.append(z - a - 1)
            hidden[r, [pos[x] for x in o[a + 1 : z]]] = True
    assert (hidden.float().mean(1) == n_noise / t).all()  # exact density in every row
    assert sum(lengths) / len(lengths) == mean  # exact mean span length
    # Away from the ends (T5: a row starts with kept text and ends with a hidden span), every
    # position is hidden about as often as the density says.
    middle = hidden[:, 10:90].float().mean(0)
    assert (middle - density).abs().max() < 0.05 and not hidden[:, 0].any() and hidden[:, -1].all()
    # Lengths follow a uniformly random composition of 20 into 5 parts: P(len=k) = C(19-k, 3) / C(19, 4).
    counts = torch.bincount(torch.tensor(lengths), minlength=17).float()
    expected = torch.tensor([0.0] + [comb(20 - k - 1, 3) / comb(19, 4) for k in range(1, 17)])
    assert (counts / len(lengths) - expected).abs().max() < 0.01


def test_span_lengths_are_positive_compositions():
    lengths = span_lengths(500, 12, 4, torch.Generator().manual_seed(0))
    assert lengths.shape == (500, 4) and (lengths >= 1).all() and (lengths.sum(1) == 12).all()
    assert len({tuple(r) for r in lengths.tolist()}) > 100  # C(11, 3) = 165 compositions, most seen


def test_deterministic_given_generator():
    ids = rows(b=8)
    a, b, c = corrupt(ids, seed=5), corrupt(ids, seed=5), corrupt(ids, seed=6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    assert torch.equal(ids, rows(b=8))  # input untouched


def test_bad_arguments():
    ids = rows(b=2, t=16)
    with pytest.raises(ValueError, match=r"\(B, T\) batch"):
        corrupt(ids[0])
    with pytest.raises(ValueError, match="noise_density must be in"):
        corrupt(ids, density=0.0)
    with pytest.raises(ValueError, match="noise_density must be in"):
        corrupt(ids, density=1.0)
    with pytest.raises(ValueError, match="mean_span_length must be >= 1"):
        corrupt(ids, mean=0.5)
    with pytest.raises(ValueError, match="at least 2 tokens"):
        corrupt(ids[:, :1])
    with pytest.raises(ValueError, match="need 5 sentinel ids, got 3"):
        span_corrupt(ids, noise_density=0.5, mean_span_length=2.0, sentinel_ids=[999, 998, 997])
    with pytest.raises(ValueError, match="already contains sentinel ids"):
        corrupt(torch.cat([ids, torch.full((2, 1), SENTINELS[0])], dim=1))
