"""Where a node listens: its TCP listeners, and the TLS context for wss://."""
from __future__ import annotations

import socket
import ssl


def listening_sockets(host: str | None, port: int, backlog: int, reuse_port: bool,
                      sndbuf: int = 0) -> list[socket.socket]:
    """Non-blocking TCP listeners on every address of ``host``, as the
    loop's create_server makes them (port 0: the first one's port for all).
    TCP_NODELAY and SO_SNDBUF are set on the listener: Linux copies them to
    each accepted socket, two syscalls a connection fewer."""
    socks: list[socket.socket] = []
    seen = set()
    try:
        for family, _, _, _, address in socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                            flags=socket.AI_PASSIVE):
            if address in seen:
                continue
            seen.add(address)
            sock = socket.socket(family, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if sndbuf:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                address = (address[0], socks[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


class TLSError(Exception):
    """The certificate or key cannot be used."""


def tls_context(certfile: str, keyfile: str) -> ssl.SSLContext:
    """A server context: TLS 1.2 and later, the certificate chain and its key."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(certfile, keyfile)
    except (OSError, ssl.SSLError) as exc:
        raise TLSError(f"cannot use --certfile {certfile} with --keyfile {keyfile}: {exc}") from None
    return context
