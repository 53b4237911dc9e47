"""Graph attention networks (Veličković et al., 2018) on attnlab's attention.

A GAT layer lets node i aggregate its neighbours' projected features ``W h_j`` with
weights ``softmax_j(LeakyReLU(aᵀ[W h_i ‖ W h_j]))`` over the neighbours j of i (self
included). We run it through :func:`attnlab.attention.attention` without a special case:

- **Scores.** Split ``a = [a_q ‖ a_k]``; then ``aᵀ[W h_i ‖ W h_j] = s_i + t_j`` with
  ``s_i = a_qᵀ W h_i`` and ``t_j = a_kᵀ W h_j``. That sum *is* a dot product of 2-vectors,
  ``[s_i, 1] · [1, t_j]``, so we pass those as the query and key with ``scale=1``: the
  dot-product scores are exactly GAT's pre-activation scores, for all pairs at once.
- **LeakyReLU** is a (non-additive) :class:`~attnlab.attention.score_mods.ScoreMod`
  applied to the scores before masking — the same hook ALiBi and soft-capping use.
- **The graph** is a :func:`~attnlab.attention.masks.adjacency` mask (with self-loops
  added): node = position, edge = "may attend". Masking, the softmax over allowed keys,
  rows with nothing to attend to, attention dropout and returning the weights all come
  from the shared machinery; ``auto`` runs the eager backend (SDPA cannot apply a
  non-additive score mod), a backend that takes score mods natively (Flex) could too.
- **Values** are ``W h_j`` per head; heads are concatenated (hidden layers) or averaged
  (output layer), as in the paper.

This is dense O(N²) attention over all node pairs: right for small graphs (Cora-sized and
below), not for millions of nodes where a sparse edge-list scatter would be used.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from attnlab.attention.functional import attention
from attnlab.attention.masks import adjacency
from attnlab.attention.score_mods import ScoreMod


def leaky_relu_mod(negative_slope: float) -> ScoreMod:
    """GAT's score non-linearity as a score mod: ``LeakyReLU(score)``."""
    return ScoreMod(lambda s, b, h, q, k: F.leaky_relu(s, negative_slope), "leaky_relu",
                    additive=False, key=("leaky_relu", negative_slope))


def with_self_loops(adj: torch.Tensor) -> torch.Tensor:
    """(…, N, N) adjacency → bool with the diagonal set (every node attends to itself)."""
    n = adj.shape[-1]
    return adj.bool() | torch.eye(n, dtype=torch.bool, device=adj.device)


class GATLayer(nn.Module):
    """One multi-head graph attention layer.

    Args:
        d_in: input feature width.
        d_out: output width. With ``concat`` it is split over the heads (``d_out / n_head``
            each, like ``d_model`` in multi-head attention); without, every head has width
            ``d_out`` and the heads are averaged.
        n_head: attention heads.
        concat: concatenate heads (hidden layers) or average them (output layer).
        dropout: dropout on the normalised attention coefficients (training only).
        negative_slope: LeakyReLU slope of the scores.
        backend: attention backend (``"auto"`` or ``"eager"``; SDPA cannot run the score mod).
    """

    def __init__(self, d_in: int, d_out: int, n_head: int, concat: bool = True, dropout: float = 0.0,
                 negative_slope: float = 0.2, backend: str = "auto"):
        super().__init__()
        if concat and d_out % n_head:
            raise ValueError(f"with concat=True, d_out ({d_out}) must be divisible by n_head ({n_head})")
        self.n_head, self.concat, self.dropout, self.backend = n_head, concat, dropout, backend
        self.head_dim = d_out // n_head if concat else d_out
        self.proj = nn.Linear(d_in, n_head * self.head_dim, bias=False)  # W, all heads
        self.att_q = nn.Parameter(torch.empty(n_head, self.head_dim))  # a_q: the attending node i
        self.att_k = nn.Parameter(torch.empty(n_head, self.head_dim))  # a_k: the neighbour j
        self.bias = nn.Parameter(torch.zeros(d_out))
        self.score_mod = leaky_relu_mod(negative_slope)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.xavier_uniform_(self.att_q)
        nn.init.xavier_uniform_(self.att_k)

    def forward(
        self, x: torch.Tensor, adj: torch.Tensor, *, return_weights: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Aggregate each node's neighbourhood.

        Args:
            x: (N, d_in) node features, or (B, N, d_in) for a batch of graphs.
            adj: bool (N, N) or (B, N, N); ``adj[i, j]`` means node i attends to
                (receives from) node j. Self-loops are added.
            return_weights: also return the attention coefficients.

        Returns:
            (…, N, d_out), or ``(out, weights)`` with weights (…, H, N, N).
        """
        unbatched = x.dim() == 2
        if unbatched:
            x = x.unsqueeze(0)
        if adj.shape[-2:] != (x.shape[1], x.shape[1]):
            raise ValueError(f"adj must be (N, N) or (B, N, N) with N = {x.shape[1]} nodes, got {tuple(adj.shape)}")
        b, n, _ = x.shape
        wh = self.proj(x).view(b, n, self.n_head, self.head_dim).transpose(1, 2)  # (B, H, N, F)
        s = (wh * self.att_q.unsqueeze(1)).sum(-1)  # (B, H, N): a_qᵀ W h_i
        t = (wh * self.att_k.unsqueeze(1)).sum(-1)  # (B, H, N): a_kᵀ W h_j
        one = torch.ones_like(s)
        q = torch.stack((s, one), dim=-1)  # (B, H, N, 2)
        k = torch.stack((one, t), dim=-1)  # (B, H, N, 2): q_i · k_j = s_i + t_j
        out, weights = attention(
            q, k, wh, mask=adjacency(with_self_loops(adj)), scale=1.0, score_mod=self.score_mod,
            dropout_p=self.dropout if self.training else 0.0, backend=self.backend, return_weights=True,
        )  # (B, H, N, F), (B, H, N, N)
        if self.concat:
            out = out.transpose(1, 2).reshape(b, n, self.n_head * self.head_dim)  # (B, N, H·F)
        else:
            out = out.mean(dim=1)  # (B, N, F)
        out = out + self.bias
        if unbatched:
            out, weights = out.squeeze(0), weights.squeeze(0)
        return (out, weights) if return_weights else out


class GAT(nn.Module):
    """The two-layer GAT of the paper: multi-head hidden layer (concat, ELU), averaged output layer.

    Args:
        d_in: node feature width.
        d_hidden: hidden width (split over ``n_head`` heads).
        n_classes: output logits per node.
        n_head: heads of the hidden layer.
        out_heads: heads of the output layer (averaged).
        dropout: dropout on each layer's input features and attention coefficients.
        negative_slope: LeakyReLU slope of the scores.
    """

    def __init__(self, d_in: int, d_hidden: int, n_classes: int, n_head: int, *, out_heads: int = 1,
                 dropout: float = 0.6, negative_slope: float = 0.2):
        super().__init__()
        self.dropout = dropout
        self.hidden = GATLayer(d_in, d_hidden, n_head, concat=True, dropout=dropout, negative_slope=negative_slope)
        self.out = GATLayer(d_hidden, n_classes, out_heads, concat=False, dropout=dropout,
                            negative_slope=negative_slope)

    def forward(self, x: torch.Tensor, adj: torch.Tensor, *,
                return_weights: bool = False) -> torch.Tensor | tuple[torch.Tensor, list[torch.Tensor]]:
        """(…, N, d_in) features and (…, N, N) adjacency → (…, N, n_classes) logits (and per-layer weights)."""
        x = F.dropout(x, self.dropout, self.training)
        x, w1 = self.hidden(x, adj, return_weights=True)
        x = F.dropout(F.elu(x), self.dropout, self.training)
        logits, w2 = self.out(x, adj, return_weights=True)
        return (logits, [w1, w2]) if return_weights else logits


__all__ = ["GAT", "GATLayer", "leaky_relu_mod", "with_self_loops"]
