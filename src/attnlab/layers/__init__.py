"""Building pieces shared by every model: norms and MLPs."""

from attnlab.layers.mlp import GeluMLP, SwiGLU, build_mlp
from attnlab.layers.norms import RMSNorm, build_norm

__all__ = ["GeluMLP", "RMSNorm", "SwiGLU", "build_mlp", "build_norm"]
