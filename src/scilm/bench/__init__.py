"""scilm.bench: measurements anyone can re-run (``scilm bench ...``); the top layer, importing any other.

report.py       machine name, Markdown tables, result files
runner.py       a recipe run in a fresh process, timed
efficiency.py   ``scilm bench efficiency``: each efficiency switch's cost and answer
sifting.py      ``scilm bench sifting``: sifting policies against their blind controls
tasks.py        ``scilm bench tasks``: every recipe's metric beside its trivial baseline
throughput.py   ``scilm bench throughput``: ``scilm train`` vs the published recipe, useful tokens/s and accuracy
published_recipe.py  the published Hugging Face Trainer recipe, as its users write it (no scilm imports)
serve.py        ``scilm bench serve``: throughput, p50/p99, batching on vs off, memory over the run
serve_abuse.py  ``scilm bench serve --abuse``: each kind of abuse replayed against a real server
"""
