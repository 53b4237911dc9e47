"""attnlab: build, pretrain, fine-tune, evaluate and generate with transformer LMs from scratch."""

__version__ = "0.1.0"
