#!/usr/bin/env python3
"""A toy authorizer service for config/request-authorizer-example.toml.

Speaks coregate's request authorizer protocol (docs/request-authorizer.md):
reads the JSON the gateway POSTs and answers API Gateway's simple response.
`Authorization: Bearer user-NAME` is allowed as NAME (tenant "demo");
anything else is denied. Standard library only:

    python3 config/request-authorizer-example.py   # listens on 127.0.0.1:9100
"""
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Authorizer(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the gateway pools connections

    def do_POST(self):
        call = json.loads(self.rfile.read(int(self.headers["content-length"])))
        token = call["identity"].get("header:Authorization", "")
        if token.startswith("Bearer user-"):
            name = token[len("Bearer user-"):]
            answer = {"isAuthorized": True, "principalId": name,
                      "context": {"userId": name, "tenant": "demo"}}
        else:
            answer = {"isAuthorized": False}
        print(call["requestContext"]["requestId"], call["routeKey"], "->", answer["isAuthorized"])
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", 9100), Authorizer).serve_forever()
