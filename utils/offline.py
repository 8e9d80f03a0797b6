"""Keep the course offline: no model hub, no dataset hub, no network but the loopback interface.

Defined for notebook 00 and used by every notebook and test. Standard library only, plus `pytest_socket` for the
socket guard (the same guard the test suite applies to the pytest process).
"""

from __future__ import annotations

import os

#: Environment variables that switch the Hugging Face libraries to their local caches only. They are read when
#: `huggingface_hub` is imported, so set them before importing transformers, datasets or diffusers.
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",  # huggingface_hub: never call the hub
    "TRANSFORMERS_OFFLINE": "1",  # transformers: never resolve a hub id
    "HF_DATASETS_OFFLINE": "1",  # datasets: never download a script or file
    "HF_HUB_DISABLE_TELEMETRY": "1",  # no usage pings
}

#: Addresses a process may still connect to once the network is blocked (the Jupyter kernel talks over them).
LOOPBACK_HOSTS = ["127.0.0.1", "::1"]


def enable_offline_mode() -> dict[str, str]:
    """Set the Hugging Face offline switches in this process and return them.

    Call it first in a notebook, before importing transformers: the switches are read at import time.
    """
    os.environ.update(OFFLINE_ENV)
    return dict(OFFLINE_ENV)


def block_network() -> None:
    """Make every socket connection to a non-loopback address raise `pytest_socket.SocketConnectBlockedError`.

    The test suite runs notebooks with this guard installed in the kernel (tests/ipython), so a notebook that
    tries to reach a hub fails its test instead of silently depending on the network.
    """
    import pytest_socket

    pytest_socket.socket_allow_hosts(LOOPBACK_HOSTS, allow_unix_socket=True)
