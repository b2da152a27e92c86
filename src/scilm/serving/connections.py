"""Connection-level defences for uvicorn's h11 server: header deadline, per-client and total caps.

uvicorn (0.54) bounds the time *between* requests on a kept-alive connection
(``timeout_keep_alive``) and, with ``limit_concurrency``, answers 503 to *everyone* once that many
connections are open; it has no deadline for a request's headers, and any byte received resets its
keep-alive timer. So a thousand clients that each send half a request line and then a byte every
few seconds hold a thousand connections for ever, and with ``limit_concurrency`` every request,
``/health`` included, gets 503. :func:`guarded_protocol` returns an ``H11Protocol`` subclass that:

- closes a connection whose request headers are not complete ``header_timeout`` seconds after it
  opened (or after its previous response), whatever trickles in meanwhile (as nginx's
  ``client_header_timeout``);
- caps connections per client address (``per_client``) and in all (``max_connections``): past a
  cap, the oldest connections of that client (or of anyone) that are *not* waiting for an answer,
  i.e. idle, still sending their headers or their body, are closed to make room (the per-client
  cap ``grace`` seconds later, so that a new connection that sends its request at once is no
  longer a candidate); only if there is none is a new connection refused (total cap). So an
  abuser's half-sent requests are what gets dropped, and a new request (a ``/health`` probe) gets in.

The request body's deadline is the ASGI middleware's (:class:`scilm.serving.server.Guard`), and the
request-level concurrency limit too, so ``/health`` bypasses it; uvicorn's own
``limit_concurrency`` is left off.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field

from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("scilm.serving")


@dataclass
class ConnectionLimits:
    """Seconds for a request's headers; connections per client address and in all."""

    header_timeout: float = 10.0
    per_client: int = 64
    max_connections: int = 2048
    grace: float = 0.2  # seconds a connection over the per-client cap has to send its request
    # open connections by client address, oldest first: shared by every connection of one server
    _by_client: dict[str, OrderedDict] = field(default_factory=dict, repr=False)
    _all: OrderedDict = field(default_factory=OrderedDict, repr=False)
    evicted: int = 0  # connections closed to make room (for tests and logs)
    refused: int = 0

    @property
    def open_connections(self) -> int:
        """Connections open now, of every client."""
        return len(self._all)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with :class:`ConnectionLimits` enforced (one instance per connection).

    Not used as is: :func:`guarded_protocol` makes a subclass bound to one server's limits.
    """

    connection_limits: ConnectionLimits  # set on the subclass by guarded_protocol

    def connection_made(self, transport) -> None:
        """Register the connection, make room past a cap (or refuse it), and start its header deadline."""
        super().connection_made(transport)
        limits = self.connection_limits
        self._seen_cycle = None
        self._header_timer = None
        self._address = self.client[0] if self.client else "?"
        mine = limits._by_client.setdefault(self._address, OrderedDict())
        mine[self] = None
        limits._all[self] = None
        if len(limits._all) > limits.max_connections and not self._make_room(limits._all):
            return
        if len(mine) > limits.per_client:
            # a moment's grace: a new connection that sends its request at once (a /health probe) is
            # then no longer evictable, and the stalled ones go first, even in a flood of connects
            self.loop.call_later(limits.grace, self._enforce_client_cap, mine)
        self._arm_header_timer()

    def _enforce_client_cap(self, mine: OrderedDict) -> None:
        limits = self.connection_limits
        while len(mine) > limits.per_client:
            oldest = next((c for c in mine if c.evictable), None)
            if oldest is None:
                return  # all are waiting for answers: those are bounded by the request limits
            oldest._close("evicted: too many connections from this address")
            limits.evicted += 1

    def _make_room(self, pool: OrderedDict) -> bool:
        """Close the oldest evictable connection in ``pool`` other than this one; else refuse this one."""
        limits = self.connection_limits
        for other in pool:
            if other is not self and other.evictable:
                other._close("evicted: too many connections")
                limits.evicted += 1
                return True
        limits.refused += 1
        self._close("refused: too many connections")
        return False

    @property
    def evictable(self) -> bool:
        """Not waiting for an answer: idle, or still receiving its request (headers or body)."""
        cycle = self.cycle
        return cycle is None or cycle.response_complete or (cycle.more_body and not cycle.response_started)

    def _close(self, why: str) -> None:
        log.debug("closing connection from %s: %s", self._address, why)
        self._forget()
        if not self.transport.is_closing():
            self.transport.close()

    def _forget(self) -> None:
        limits = self.connection_limits
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None
        limits._all.pop(self, None)
        mine = limits._by_client.get(self._address)
        if mine is not None:
            mine.pop(self, None)
            if not mine:
                del limits._by_client[self._address]

    def _arm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
        self._header_timer = self.loop.call_later(self.connection_limits.header_timeout, self._headers_too_slow)

    def _headers_too_slow(self) -> None:
        self._header_timer = None  # handle_events cancels it when headers arrive: these did not
        self._close("request headers not complete in time")

    def handle_events(self) -> None:
        """uvicorn's parsing; once a request's headers are complete, its header deadline is off."""
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not self._seen_cycle and not cycle.response_complete:
            self._seen_cycle = cycle  # its headers are in: the deadline is the body's now (Guard)
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

    def on_response_complete(self) -> None:
        """After an answer, the next request on this connection gets the same header deadline."""
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc) -> None:
        """Unregister the connection (its timer too), then uvicorn's clean-up."""
        self._forget()
        super().connection_lost(exc)


def guarded_protocol(limits: ConnectionLimits) -> type[H11Protocol]:
    """A :class:`GuardedH11Protocol` subclass enforcing ``limits`` (give it to ``uvicorn.Config(http=...)``).

    All connections of one server share ``limits`` (its counts and open connections).
    """
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"connection_limits": limits})
