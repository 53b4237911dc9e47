"""Dynamic MLM masking: 15% of eligible tokens, 80/10/10, never special or padding, reproducible."""

import pytest
import torch

from attnlab.data.mlm import IGNORE_INDEX, mask_tokens, mlm_loss

V, MASK, PAD, CLS, SEP = 1000, 3, 0, 1, 2
SPECIAL = [PAD, CLS, SEP, MASK]


def _batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, V, (256, 512), generator=g)
    ids[:, 0], ids[:, 100] = CLS, SEP
    lengths = torch.randint(200, 513, (256,), generator=g)
    am = (torch.arange(512)[None, :] < lengths[:, None]).long()  # (256, 512)
    ids[am == 0] = PAD
    ids[:, 300][am[:, 300] == 1] = CLS  # some special ids in the middle too
    return ids, am


def test_selection_and_replacement_statistics():
    ids, am = _batch()
    inputs, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=SPECIAL, attention_mask=am,
                                 generator=torch.Generator().manual_seed(1))
    eligible = (am == 1) & ~torch.isin(ids, torch.tensor(SPECIAL))
    selected = labels != IGNORE_INDEX
    n = selected.sum().item()
    assert abs(n / eligible.sum().item() - 0.15) < 0.003
    assert not (selected & ~eligible).any()  # special tokens and padding never selected
    assert torch.equal(labels[selected], ids[selected])
    assert torch.equal(inputs[~selected], ids[~selected])  # only selected positions change
    masked = (inputs == MASK) & selected
    changed = (inputs != ids) & ~masked & selected
    kept = (inputs == ids) & selected
    assert abs(masked.sum().item() / n - 0.8) < 0.01
    assert abs(changed.sum().item() / n - 0.1) < 0.008
    assert abs(kept.sum().item() / n - 0.1) < 0.008
    assert not torch.isin(inputs[changed], torch.tensor(SPECIAL)).any()  # random ids are never special
    assert inputs[changed].unique().numel() > 0.6 * (V - 4)  # spread over the vocabulary (~1300 draws)


def test_padding_found_from_pad_id_alone():
    ids, am = _batch()
    _, labels = mask_tokens(ids, mask_token_id=MASK, vocab_size=V, special_ids=SPECIAL, mlm_probability=0.5)
    assert not (labels != IGNORE_INDEX)[am == 0].any()


def test_reproducible_given_generator():
    ids, am = _batch()
    kw = dict(mask_token_id=MASK, vocab_size=V, special_ids=SPECIAL, attention_mask=am)
    a = mask_tokens(ids, generator=torch.Generator().manual_seed(7), **kw)
    b = mask_tokens(ids, generator=torch.Generator().manual_seed(7), **kw)
    c = mask_tokens(ids, generator=torch.Generator().manual_seed(8), **kw)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])


def test_bad_fractions_are_rejected():
    ids = torch.randint(4, V, (2, 5))
    with pytest.raises(ValueError, match="mlm_probability must be in"):
        mask_tokens(ids, mask_token_id=MASK, vocab_size=V, mlm_probability=1.5)
    with pytest.raises(ValueError, match="sum <= 1"):
        mask_tokens(ids, mask_token_id=MASK, vocab_size=V, mask_fraction=0.9, random_fraction=0.2)


def test_mlm_loss_counts_only_targets():
    logits = torch.randn(2, 3, 5)
    labels = torch.tensor([[IGNORE_INDEX, 2, IGNORE_INDEX], [4, IGNORE_INDEX, IGNORE_INDEX]])
    expected = -(logits[0, 1].log_softmax(-1)[2] + logits[1, 0].log_softmax(-1)[4]) / 2
    torch.testing.assert_close(mlm_loss(logits, labels), expected)
