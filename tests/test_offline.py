"""The network guard the test suite and the notebook kernels under test rely on."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from pytest_socket import SocketConnectBlockedError

from utils.offline import OFFLINE_ENV, enable_offline_mode


def test_pytest_process_cannot_reach_a_public_address():
    with pytest.raises(SocketConnectBlockedError):
        socket.create_connection(("93.184.216.34", 443), timeout=1)


def test_loopback_still_works_in_the_pytest_process():
    server = socket.create_server(("127.0.0.1", 0))
    with server, socket.create_connection(server.getsockname(), timeout=1):
        conn, _ = server.accept()
        conn.close()


def test_block_network_in_a_fresh_process_blocks_public_and_allows_loopback():
    script = textwrap.dedent(
        """
        import socket
        from utils.offline import block_network
        block_network()
        server = socket.create_server(("127.0.0.1", 0))
        socket.create_connection(server.getsockname(), timeout=1).close()
        try:
            socket.create_connection(("93.184.216.34", 443), timeout=1)
        except Exception as err:
            print(type(err).__name__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "SocketConnectBlockedError"


def test_enable_offline_mode_sets_every_hub_switch(monkeypatch):
    for key in OFFLINE_ENV:
        monkeypatch.delenv(key, raising=False)
    enable_offline_mode()
    assert all(os.environ[key] == "1" for key in OFFLINE_ENV)


def test_notebook_kernels_under_test_cannot_reach_the_network(tmp_path):
    """The IPython profile `make test` gives nbval's kernels blocks a public address and lets loopback through."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    probe = tmp_path / "probe.ipynb"
    reach_out = "import socket\nsocket.create_connection(('93.184.216.34', 443), timeout=1)"
    nb = new_notebook(cells=[new_code_cell(reach_out)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, probe)
    profile = Path(__file__).parent / "ipython"
    env = {**os.environ, "IPYTHONDIR": str(profile)}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--nbval-lax", "-p", "no:cacheprovider", str(probe)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert result.returncode == 1 and "SocketConnectBlockedError" in result.stdout
