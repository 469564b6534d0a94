"""A local S3-compatible server for tpde's object storage tests: moto's
server (the same app as `moto_server`), on 127.0.0.1 only.

moto checks If-Match / If-None-Match of a PutObject and then writes, with
nothing between them held: two conditional puts racing could both pass the
check, where S3 lets exactly one through. The store's commit rests on that
guarantee, so this server runs each request that carries a precondition
alone (under one lock), as S3 does. Everything else runs concurrently.

Usage: python s3_server.py PORT
"""

import sys
import threading

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple

CONDITIONAL = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")


class AtomicPreconditions:
    def __init__(self, app):
        self.app = app
        self.lock = threading.Lock()

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") in ("PUT", "POST") and any(
            h in environ for h in CONDITIONAL
        ):
            with self.lock:
                # The whole response is produced under the lock.
                return list(self.app(environ, start_response))
        return self.app(environ, start_response)


def main() -> None:
    port = int(sys.argv[1])
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        "127.0.0.1",
        port,
        AtomicPreconditions(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
