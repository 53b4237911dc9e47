"""The OpenAI-compatible server: a FastAPI app (``create_app``) served by uvicorn (``runner``).

``Engine`` (model + tokenizer + chat template + limits) hands requests to the ``Batcher``
(the worker thread decoding concurrent requests as one batch); ``schemas`` holds the
OpenAI request shapes, ``security`` the API key / Host / Origin / content-type checks,
``metrics`` the Prometheus counters, ``pages`` the chat page and the attention explorer.
"""

from attnlab.serve.app import create_app
from attnlab.serve.batcher import BatchConfig, Batcher
from attnlab.serve.engine import Engine
from attnlab.serve.job import Delta, Job, RequestError, Sampling, TokenLogprob
from attnlab.serve.metrics import Metrics
from attnlab.serve.runner import Running, ServeConfig, serve, start_in_thread
from attnlab.serve.security import SecurityConfig

__all__ = ["BatchConfig", "Batcher", "Delta", "Engine", "Job", "Metrics", "RequestError", "Running", "Sampling",
           "SecurityConfig", "ServeConfig", "TokenLogprob", "create_app", "serve", "start_in_thread"]
