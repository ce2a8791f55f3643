"""The test harness's server process (vs_vllm/testing/server.py) with a stand-in for ``vllm serve``: a restarted server
takes a fresh port, and a /health answer from a process that is not the server never counts as the server healthy."""

from __future__ import annotations

import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from vs_vllm.testing.server import VLLMServer

pytestmark = pytest.mark.slow

#: Stands in for ``vllm serve MODEL --host H --port P``: answers 200 on /health, or exits at once when the model is
#: "fail" (as vLLM does when its port is taken).
FAKE_SERVE = r"""
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer
argv = sys.argv[1:]
if argv[0] == "fail":
    sys.exit(3)
host, port = argv[argv.index("--host") + 1], int(argv[argv.index("--port") + 1])
class Health(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args):
        pass
HTTPServer((host, port), Health).serve_forever()
"""


def _fake(model: str, tmp_path, port: int | None = None) -> VLLMServer:
    return VLLMServer(model, [], command=[sys.executable, "-c", FAKE_SERVE], port=port,
                      log_path=tmp_path / f"{model}.log", startup_timeout=20)


def test_a_restarted_server_takes_a_fresh_port(tmp_path) -> None:
    server = _fake("ok", tmp_path).start()
    first = server.port
    server.stop()
    squatter = socket.socket()
    squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the old port may still be in TIME_WAIT
    squatter.bind(("127.0.0.1", first))
    squatter.listen()
    try:
        server.start()
        assert server.port != first
    finally:
        server.stop()
        squatter.close()


def test_health_from_another_process_on_the_port_is_not_the_server(tmp_path) -> None:
    class Health(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    foreign = HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=foreign.serve_forever, daemon=True).start()
    try:
        # our "server" dies at once (its port is taken): start must fail, not return on the foreign /health
        with pytest.raises(RuntimeError, match="exited with code 3"):
            _fake("fail", tmp_path, port=foreign.server_address[1]).start()
    finally:
        foreign.shutdown()
