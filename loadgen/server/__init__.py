"""The reference staging backend: the protocol of ``docs/protocol.md`` over WebSocket, with
Prometheus metrics and fault injection.

Run it with ``loadgen serve`` or ``python -m loadgen.server``, or embed it::

    server = ReferenceServer(ServerConfig(port=0, drop=0.01, seed=1))
    host, port = await server.start()
    ...
    await server.stop()
"""

from ._cli import add_serve_arguments, serve
from ._config import ServerConfig
from ._server import ReferenceServer

__all__ = ["ReferenceServer", "ServerConfig", "add_serve_arguments", "serve"]
