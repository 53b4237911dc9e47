"""Graph attention: the paper's formula by hand, adjacency masking, equivariance, the karate example."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from attnlab.models.gat import GAT, GATLayer

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "gat_karate.py"


def random_graph(n=7, p=0.35, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, n, generator=g) < p
    a = a | a.T
    a[0, :] = a[:, 0] = False  # an isolated node: only its self-loop remains
    return a


def paper_reference(layer: GATLayer, x: torch.Tensor, adj: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Veličković et al. eq. (1)-(5) literally: e_ij = LeakyReLU(aᵀ[W h_i ‖ W h_j]) over N(i) ∪ {i}, float64."""
    n, hn, f = x.shape[0], layer.n_head, layer.head_dim
    W = layer.proj.weight.double().view(hn, f, -1)  # (H, F, d_in)
    a = torch.cat((layer.att_q, layer.att_k), dim=-1).double()  # (H, 2F)
    slope = 0.2
    weights = torch.zeros(hn, n, n, dtype=torch.float64)
    heads = []
    for h in range(hn):
        wh = x.double() @ W[h].T  # (N, F)
        out = torch.zeros(n, f, dtype=torch.float64)
        for i in range(n):
            nbrs = [j for j in range(n) if adj[i, j] or i == j]
            e = torch.stack([F.leaky_relu(a[h] @ torch.cat((wh[i], wh[j])), slope) for j in nbrs])
            alpha = torch.softmax(e, dim=0)
            weights[h, i, nbrs] = alpha
            out[i] = sum(al * wh[j] for al, j in zip(alpha, nbrs, strict=False))
        heads.append(out)
    out = torch.cat(heads, dim=-1) if layer.concat else torch.stack(heads).mean(0)
    return out + layer.bias.double(), weights


@pytest.mark.parametrize("concat", [True, False])
def test_layer_matches_paper_formula(concat):
    torch.manual_seed(0)
    layer = GATLayer(5, 6, 3, concat=concat).double()
    with torch.no_grad():
        layer.bias.normal_()
    x, adj = torch.randn(7, 5, dtype=torch.float64), random_graph()
    out, w = layer(x, adj, return_weights=True)
    want_out, want_w = paper_reference(layer, x, adj)
    assert out.shape == (7, 6) and w.shape == (3, 7, 7)
    assert torch.allclose(w, want_w, atol=1e-12)
    assert torch.allclose(out, want_out, atol=1e-12)


def test_weights_live_on_edges_and_rows_sum_to_one():
    torch.manual_seed(1)
    layer = GATLayer(4, 8, 2)
    adj = random_graph(9, seed=3)
    _, w = layer(torch.randn(9, 4), adj, return_weights=True)  # (H, N, N)
    allowed = adj | torch.eye(9, dtype=torch.bool)
    assert (w[:, ~allowed] == 0).all()
    assert (w[:, allowed] > 0).all()
    assert torch.allclose(w.sum(-1), torch.ones(2, 9))
    assert torch.allclose(w[:, 0, 0], torch.ones(2))  # the isolated node attends only to itself


def test_permutation_equivariance():
    torch.manual_seed(2)
    model = GAT(5, 8, 3, n_head=2, dropout=0.0).eval()
    x, adj = torch.randn(8, 5), random_graph(8, seed=4)
    perm = torch.randperm(8)
    out, (w1, _) = model(x, adj, return_weights=True)
    out_p, (w1_p, _) = model(x[perm], adj[perm][:, perm], return_weights=True)
    assert torch.allclose(out_p, out[perm], atol=1e-5)
    assert torch.allclose(w1_p, w1[:, perm][:, :, perm], atol=1e-6)
    assert not torch.allclose(out[perm], out, atol=1e-3)  # the permutation really moved something


def test_batched_graphs_equal_one_at_a_time():
    torch.manual_seed(3)
    model = GAT(4, 8, 2, n_head=4, out_heads=2, dropout=0.0).eval()
    x = torch.randn(2, 6, 4)
    adj = torch.stack([random_graph(6, seed=5), random_graph(6, seed=6)])
    out = model(x, adj)
    assert out.shape == (2, 6, 2)
    for b in range(2):
        assert torch.allclose(out[b], model(x[b], adj[b]), atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="divisible"):
        GATLayer(4, 6, 4)
    with pytest.raises(ValueError, match="adj"):
        GATLayer(4, 8, 2)(torch.randn(5, 4), torch.ones(4, 4, dtype=torch.bool))


def test_dropout_only_in_training():
    torch.manual_seed(4)
    layer = GATLayer(4, 8, 2, dropout=0.5)
    x, adj = torch.randn(6, 4), torch.ones(6, 6, dtype=torch.bool)
    layer.eval()
    assert torch.equal(layer(x, adj), layer(x, adj))
    layer.train()
    assert not torch.allclose(layer(x, adj), layer(x, adj))


def test_karate_example_learns():
    pytest.importorskip("networkx")
    spec = importlib.util.spec_from_file_location("gat_karate", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny ops: extra threads only add contention
    try:
        acc = module.run(seed=0, verbose=False)
    finally:
        torch.set_num_threads(threads)
    assert acc > 0.7
