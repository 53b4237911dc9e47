"""Building pieces shared by every model: norms and MLPs."""

from attnlab.layers.mlp import ACTIVATIONS, MLP, MLP_KINDS, GatedMLP, build_mlp
from attnlab.layers.norms import RMSNorm, build_norm

__all__ = ["ACTIVATIONS", "GatedMLP", "MLP", "MLP_KINDS", "RMSNorm", "build_mlp", "build_norm"]
