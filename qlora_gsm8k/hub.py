"""Reaching the Hugging Face Hub: fail in seconds when it is unreachable, instead of a minute of retries."""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

_TRUE = {"1", "true", "yes", "on"}


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_reachable(timeout: float = 5.0) -> bool:
    """One TCP connection to the Hub endpoint (HF_ENDPOINT if set); False when offline mode is on."""
    if offline_mode():
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def local_cache_only() -> bool:
    """True when the Hub cannot be reached (or offline mode is on); then the Hugging Face libraries are
    switched to read only the local cache for the rest of this process, so a missing model or dataset
    fails in seconds. Passing local_files_only is not enough: some look-ups (transformers' adapter-config
    probe) ignore it and retry the network for half a minute."""
    if hub_reachable():
        return False
    # Set before `datasets` is imported, which reads it then; huggingface_hub reads its constant per call.
    os.environ["HF_HUB_OFFLINE"] = "1"
    from huggingface_hub import constants

    constants.HF_HUB_OFFLINE = True
    return True
