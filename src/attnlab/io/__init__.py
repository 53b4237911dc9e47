"""Durable I/O: folders written atomically with a sha256 manifest, and weights read and loaded strictly.

A low layer: it imports nothing from attnlab but :mod:`attnlab.errors`. See
:mod:`attnlab.io.durable` and :mod:`attnlab.io.weights`.
"""

from attnlab.io.durable import (
    MANIFEST,
    atomic_write_text,
    check_files,
    digests,
    fsync_file,
    replace_folder,
    sha256_file,
    stage,
    verify,
    write_file,
    write_folder,
)
from attnlab.io.weights import load_weights, read_weights_file, weights_state_dict

__all__ = [
    "MANIFEST", "atomic_write_text", "check_files", "digests", "fsync_file", "load_weights", "read_weights_file",
    "replace_folder", "sha256_file", "stage", "verify", "weights_state_dict", "write_file", "write_folder",
]
