"""Fake OpenAI-style judge endpoints: a reply, and a judge that answers the start-up probe and goes away."""

from __future__ import annotations

import contextlib
import json


def chat_reply(handler, content: str) -> None:
    """Answer an OpenAI-style chat completion request with `content` (the fake judges of the tests)."""
    data = json.dumps({"choices": [{"message": {"role": "assistant", "content": content}}]}).encode()
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


@contextlib.contextmanager
def judge_then_down():
    """An OpenAI-style judge endpoint that answers one request (the sweep's start-up probe) and then goes
    away: the judge lost mid-sweep. Yields its port."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    class Once(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            chat_reply(self, "1")

        def log_message(self, *args):
            pass

    import threading

    server = HTTPServer(("127.0.0.1", 0), Once)
    port = server.server_address[1]

    def once():
        server.handle_request()
        server.server_close()  # later connections are refused

    thread = threading.Thread(target=once, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        if thread.is_alive():  # nobody asked: close it without a request
            server.server_close()
