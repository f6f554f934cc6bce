"""Ports for the tests' own process groups and servers: the kernel picks them, so that tests running at
once (two checkouts or CI jobs on one machine) never meet on a fixed port number."""

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice for a bind to port 0), for
    a launcher or process group that binds it a moment later."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
