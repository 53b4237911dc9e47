"""An OpenAI-compatible HTTP server for decoder-only checkpoints (standard library only):
``Engine`` (model + lock), ``make_server`` / ``ServeConfig``, request shapes in ``protocol``."""

from attnlab.serve.engine import Engine, Result
from attnlab.serve.protocol import RequestError, Sampling
from attnlab.serve.server import ServeConfig, Server, make_server, start_in_thread

__all__ = ["Engine", "RequestError", "Result", "Sampling", "ServeConfig", "Server", "make_server", "start_in_thread"]
