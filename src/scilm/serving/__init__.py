"""scilm.serving: ``scilm serve`` (its benchmarks, ``scilm bench serve [--abuse]``, are in scilm.bench).

server.py   the FastAPI app (routes, middleware, error shape) and ``serve()`` (uvicorn)
models.py   the served model of either kind: load, validate inputs, run a batch, shape the answer
batching.py the micro-batcher: a queue bounded in inputs and cost, one model thread, time limits, cancelling
bounds.py   every bound of the server (compute budget, time limits, connections, drawing) and its default
connections.py the connection layer: header deadline, per-client and total connection caps
limits.py   request limits and input validation (every bad input is a JSON 4xx)
metrics.py  Prometheus metrics, one registry per server
draw.py     SMILES -> RDKit SVG for the page, in a bounded worker process
local.py    real servers on loopback (thread or process) for tests and the benchmark
static/     the web page (one HTML file, no build step)
"""
