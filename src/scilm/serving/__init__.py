"""scilm.serving: ``scilm serve`` and ``scilm bench serve``.

server.py   the FastAPI app (routes, middleware, error shape) and ``serve()`` (uvicorn)
models.py   the served model of either kind: load, validate inputs, run a batch, shape the answer
batching.py the micro-batcher: a queue bounded in inputs and cost, one model thread, time limits, cancelling
bounds.py   every bound of the server (compute budget, time limits, connections, drawing) and its default
connections.py the connection layer: header deadline, per-client and total connection caps
limits.py   request limits and input validation (every bad input is a JSON 4xx)
metrics.py  Prometheus metrics, one registry per server
draw.py     SMILES -> RDKit SVG for the page, in a bounded worker process
local.py    real servers on loopback (thread or process) for tests and the benchmark
bench.py    the load test: throughput, p50/p99, batching on vs off, memory over the run
abuse.py    ``scilm bench serve --abuse``: each kind of abuse replayed against a real server
static/     the web page (one HTML file, no build step)
"""
