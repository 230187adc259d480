"""A loopback TCP proxy that a test can cut or black-hole, then heal.

Two faults, as networks produce them:

* :meth:`TcpProxy.cut` — an outage that answers: every connection is dropped and new ones
  are refused (a server that went away, a firewall that rejects).
* :meth:`TcpProxy.black_hole` — a partition that does not answer: nothing is forwarded
  either way, connections stay open, new ones are accepted and hang. Clients see no
  error, only silence, until their own timeouts fire.

:meth:`TcpProxy.heal` ends either fault. Bytes held back by a black hole are delivered
on connections that are still open at both ends (TCP retransmits them once the network
is back); a connection that one side closed meanwhile is dropped with its held bytes, as
a client's reset would drop them.

A proxy cannot hold back TCP acknowledgements (its kernel acknowledges what it receives),
so a black hole here is detected only by application timeouts (redis-py's
``socket_timeout``, a query timeout), never by TCP keepalives or ``TCP_USER_TIMEOUT``,
which do fire on a real partition.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading

from tests.conftest import free_port

#: How often the proxy's threads look at their stop and fault flags, in seconds.
TICK_S = 0.05


class _Link:
    """One proxied connection: the client's socket and the upstream one, and the bytes
    held back in each direction while the proxy is black-holed."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.held: dict[socket.socket, bytearray] = {client: bytearray(), upstream: bytearray()}
        self.ended = False

    def peer(self, sock: socket.socket) -> socket.socket:
        return self.upstream if sock is self.client else self.client

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Forwards ``127.0.0.1:port`` to ``127.0.0.1:target_port`` until told otherwise."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self._cut = threading.Event()
        self._black_hole = threading.Event()
        self._stop = threading.Event()
        self._links: list[_Link] = []
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port), reuse_port=False)
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()

    # -- faults ---------------------------------------------------------------------------

    def cut(self) -> None:
        """Drop every connection and refuse new ones, as a stopped server would."""
        self._cut.set()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def black_hole(self) -> None:
        """Forward nothing from now on, keeping every connection open (a partition)."""
        self._black_hole.set()

    def heal(self) -> None:
        """End a cut or a black hole: forward again, held bytes first."""
        self._cut.clear()
        self._black_hole.clear()

    def close(self) -> None:
        self._stop.set()
        self.cut()
        self._listener.close()

    # -- plumbing -------------------------------------------------------------------------

    def _accept(self) -> None:
        self._listener.settimeout(TICK_S * 4)
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if self._cut.is_set():
                client.close()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            threading.Thread(target=self._pipe, args=(link,), name="tcp-proxy-link", daemon=True).start()

    def _pipe(self, link: _Link) -> None:
        sel = selectors.DefaultSelector()
        sel.register(link.client, selectors.EVENT_READ)
        sel.register(link.upstream, selectors.EVENT_READ)
        try:
            while not self._stop.is_set() and not self._cut.is_set() and not link.ended:
                if not self._black_hole.is_set() and any(link.held.values()):
                    for sock, held in link.held.items():  # healed: what was held goes first
                        if held:
                            link.peer(sock).sendall(held)
                            held.clear()
                for key, _ in sel.select(timeout=TICK_S):
                    sock = key.fileobj
                    assert isinstance(sock, socket.socket)
                    data = sock.recv(65536)
                    if not data:
                        # A side closed: during a black hole its held bytes die with it.
                        link.ended = True
                        break
                    if self._black_hole.is_set():
                        link.held[sock] += data
                    else:
                        link.peer(sock).sendall(data)
        except OSError:
            pass
        finally:
            sel.close()
            link.close()
            with self._lock:
                if link in self._links:
                    self._links.remove(link)
