"""Node classification on Zachary's karate club with a two-layer GAT.

The club split into two factions (``Mr. Hi`` and ``Officer``). We label two members of
each faction, give every node only its identity (one-hot features, so the graph is the
only information), train a :class:`~attnlab.models.gat.GAT`, and report accuracy on the
other 30 members. Runs in a couple of seconds on CPU::

    python examples/gat_karate.py
"""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from attnlab.models.gat import GAT

# Two labelled members per faction: the two leaders and one ordinary member of each.
TRAIN_NODES = (0, 4, 33, 23)


def karate_club() -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Adjacency (34, 34) bool, labels (34,) and class names, from networkx."""
    import networkx as nx

    g = nx.karate_club_graph()
    n = g.number_of_nodes()
    adj = torch.zeros(n, n, dtype=torch.bool)
    for i, j in g.edges():
        adj[i, j] = adj[j, i] = True
    names = sorted({g.nodes[i]["club"] for i in range(n)})
    labels = torch.tensor([names.index(g.nodes[i]["club"]) for i in range(n)])
    return adj, labels, names


def run(seed: int = 0, epochs: int = 200, verbose: bool = True) -> float:
    """Train on :data:`TRAIN_NODES`; return accuracy on all other nodes."""
    torch.manual_seed(seed)
    adj, labels, names = karate_club()
    n = adj.shape[0]
    x = torch.eye(n)  # (N, N) one-hot node identities
    train = torch.zeros(n, dtype=torch.bool)
    train[list(TRAIN_NODES)] = True
    model = GAT(d_in=n, d_hidden=16, n_classes=len(names), n_head=4, dropout=0.5)
    opt = torch.optim.Adam(model.parameters(), lr=0.01, weight_decay=5e-4)
    for epoch in range(epochs):
        model.train()
        loss = F.cross_entropy(model(x, adj)[train], labels[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if verbose and (epoch + 1) % 50 == 0:
            print(f"epoch {epoch + 1:4d}  train loss {loss.item():.4f}")
    model.eval()
    with torch.no_grad():
        pred = model(x, adj).argmax(-1)  # (N,)
    return (pred[~train] == labels[~train]).float().mean().item()


def main() -> None:
    torch.set_num_threads(1)  # a 34-node graph: extra threads only add overhead
    start = time.perf_counter()
    acc = run()
    print(f"test accuracy on {34 - len(TRAIN_NODES)} held-out members: {acc:.1%} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
