"""Every bound the server keeps, in one place, with its default and why (``scilm serve --help`` shows them).

Compute is counted in **token-steps** (:meth:`cost` of the served model): a classifier input costs
its tokens (residues + 2), one forward each; a seq2seq input costs its source tokens plus
``max(num_beams, num_return_sequences) x max_new_tokens`` (the decoder runs that many sequences
for at most that many steps). Admission compares a request's cost with ``max_request_cost`` (over:
422 naming the parameters) and the pending cost (queued + running) with ``max_pending_cost`` (over:
503 with Retry-After). Whatever the estimate, no model call runs past ``max_batch_seconds``: it is
checked by ``generate``'s stopping criterion between forwards (``serving.models._bounded``).

Defaults, sized on the 2-core x86_64 machine this was written on (no GPU, shared with other work):

- classifier ``max_request_cost`` 65,536: every request inside the input limits (64 inputs of at
  most 1,024 tokens) fits; the esm2-8m shape runs ~4,300 tokens/s here (``scilm bench serve``), so
  a full request is ~15 s.
- seq2seq ``max_request_cost`` 8,192: one input with the Text+Chem demo's 10 beams x 512 tokens
  (5,120 + its source) fits, as do 15 greedy inputs of 512 tokens with short prompts; the issue's 64 inputs x 10 beams
  x 512 tokens (327,680) is refused at once. A T5-base-shaped model generated 1-6 token-steps/s
  on this (busy) machine, so such requests are still bounded by the time limit, not the estimate;
  on a GPU raise both.
- ``max_pending_cost``: 4 requests' worth, so a queued request waits at most ~4 time limits.
- ``max_batch_seconds`` 60: a model call past it stops at its next step and its requests get 503
  (never a cut-short text). SIGTERM then exits within this + ``SHUTDOWN_GRACE``.
"""

from __future__ import annotations

from dataclasses import dataclass

REQUEST_COST = {"classifier": 65_536, "seq2seq": 8_192}  # token-steps per request, by model kind
PENDING_REQUESTS = 4  # max_pending_cost = this x max_request_cost
BATCH_SECONDS = 60.0
SHUTDOWN_GRACE = 5.0  # seconds past the running call's time limit before uvicorn cancels what is left


@dataclass
class ServerLimits:
    """Bounds of one server. ``None`` costs mean the kind's default (:data:`REQUEST_COST`)."""

    max_request_cost: int | None = None  # token-steps per request
    max_pending_cost: int | None = None  # token-steps queued + running, server-wide
    max_batch_seconds: float = BATCH_SECONDS  # wall time of one model call (checked at every generation step)
    header_timeout: float = 10.0  # seconds for a request's headers (slow-header / slowloris defence)
    body_timeout: float = 30.0  # seconds for its body: 1 MiB at 35 kB/s at worst
    per_client_connections: int = 64  # open connections per client address (oldest idle ones make room)
    max_connections: int = 2048  # open connections in all (under the process's file limit)
    max_requests: int = 512  # requests being read or answered at once, /health and /ready not counted
    prepare_threads: int = 2  # threads parsing and validating request bodies, off the event loop
    draw_seconds: float = 5.0  # one RDKit drawing, in its own process
    draw_waiting: int = 8  # drawings waiting for that process
    draw_max_chars: int = 1000  # SMILES characters
    draw_max_atoms: int = 300  # atoms over all molecules of the SMILES
    draw_max_rings: int = 40  # SSSR rings

    def request_cost(self, kind: str) -> int:
        """Token-steps one request of a ``kind`` (``"classifier"``, ``"seq2seq"``) model may cost."""
        return self.max_request_cost if self.max_request_cost is not None else REQUEST_COST[kind]

    def pending_cost(self, kind: str) -> int:
        """Token-steps queued and running at once, server-wide.

        Default: :data:`PENDING_REQUESTS` x :meth:`request_cost`.
        """
        if self.max_pending_cost is not None:
            return self.max_pending_cost
        return PENDING_REQUESTS * self.request_cost(kind)

    def check(self) -> None:
        """Raises ValueError naming the first bound that is not positive."""
        for name, value in vars(self).items():
            if value is not None and not value > 0:
                raise ValueError(f"{name} must be positive (got {value})")
