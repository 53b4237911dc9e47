"""An OpenAI-compatible HTTP server for decoder-only checkpoints (standard library only):
``Engine`` (model + tokenizer + limits), ``Batcher`` (the worker thread decoding concurrent
requests as one batch), ``make_server`` / ``ServeConfig``, request shapes in ``protocol``."""

from attnlab.serve.batcher import BatchConfig, Batcher, Job
from attnlab.serve.engine import Engine
from attnlab.serve.protocol import RequestError, Sampling
from attnlab.serve.server import ServeConfig, Server, make_server, serve_until_stopped, start_in_thread

__all__ = ["BatchConfig", "Batcher", "Engine", "Job", "RequestError", "Sampling", "ServeConfig", "Server",
           "make_server", "serve_until_stopped", "start_in_thread"]
