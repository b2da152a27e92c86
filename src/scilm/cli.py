"""The ``scilm`` command: a thin layer over the library API (each command calls one function)."""

from __future__ import annotations

import inspect
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

from scilm.errors import ScilmError

app = typer.Typer(
    add_completion=False,
    rich_markup_mode=None,  # help texts are plain: "[default: x]" and "a | b" print as written
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune, evaluate and serve scientific language models (ESM-2 proteins, Text+Chem T5).",
)
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks: each writes results.json, table.md and a PNG.")
app.add_typer(bench_app, name="bench")
data_app = typer.Typer(no_args_is_help=True, help="Convert public data sets into scilm's formats.")
app.add_typer(data_app, name="data")

Opt = typer.Option


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        typer.echo(f"scilm {metadata.version('scilm')}")
        raise typer.Exit()


@app.callback()
def _main(version: bool = Opt(False, "--version", callback=_version, is_eager=True,
                              help="Print scilm's version and exit.")) -> None:
    """Fine-tune, evaluate and serve scientific language models (ESM-2 proteins, Text+Chem T5)."""


def _shown_default(info, base, task: str | None = None) -> str:
    """The default ``--help`` shows: the recipe's (``task``), else the most common one with the tasks that
    differ, e.g. ``esm2-tiny (seq2seq: t5-tiny)``."""
    def show(value):
        return "none" if value is None else str(value).lower() if base is bool else str(value)

    if info.name == "data":
        return "required"
    if task is not None:
        return show(info.defaults[task])
    if info.name == "task":
        return "seq2seq for JSONL data, else membrane"
    shown = {name: show(value) for name, value in info.defaults.items()}
    common = max(set(shown.values()), key=list(shown.values()).count)
    others = [f"{name}: {value}" for name, value in shown.items() if value != common]
    return common + (f" ({'; '.join(others)})" if others else "")


def _settings_signature(task: str | None = None) -> inspect.Signature:
    """Options generated from the recipes' config dataclasses (type, default and help declared once there):
    every recipe's settings for ``scilm train``, one recipe's for ``task`` (``scilm pretrain``).

    Every option defaults to None, meaning "not given": the YAML file (``--config``) and then the
    recipe's own default apply; ``--help`` shows those defaults.
    """
    import typing

    from scilm.training.config import all_settings

    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Optional[Path],
                                default=Opt(None, help="YAML file of settings (the same names); options given "
                                                       "here win."))]
    for info in all_settings():
        if task is not None and (task not in info.defaults or info.name == "task"):
            continue
        base = next(a for a in (typing.get_args(info.type) or (info.type,)) if a is not type(None))
        flag = "--" + info.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if base is bool else [flag]
        from scilm.training.recipes import RECIPES

        only = "" if task is not None or len(info.defaults) == len(RECIPES) else f" (for {', '.join(info.defaults)})"
        text = info.helps[task] if task is not None else info.help
        option = Opt(None, *decls, help=f"{text}{only} [default: {_shown_default(info, base, task)}]",
                     show_default=False)
        params.append(inspect.Parameter(info.name, inspect.Parameter.KEYWORD_ONLY, annotation=Optional[base],
                                        default=option))
    return inspect.Signature(params)


def _run_training(options: dict, task: str | None = None) -> dict:
    """Load the settings, start torchrun for ``nproc`` > 1, run the recipe; the metrics (rank 0) or {}."""
    from scilm.training import load_config
    from scilm.training import train as run_training
    from scilm.training.distributed import is_main_process, launch_torchrun, launched_by_torchrun, strip_option

    config = options.pop("config")
    run_config = load_config(config, options, task=task)
    if run_config.nproc > 1 and not launched_by_torchrun():
        command = sys.argv.index("train" if task is None else "pretrain")
        argv = (["--task", task] if task else []) + sys.argv[command + 1:]
        raise typer.Exit(launch_torchrun(run_config.nproc, strip_option(argv, "--nproc")))
    metrics = run_training(run_config)
    return metrics if is_main_process() else {}


def train(**options) -> None:
    metrics = _run_training(options)
    if not metrics:
        return
    summary = ", ".join(f"{k} {metrics[k]:.4f}" for k in sorted(metrics)
                        if k.startswith("eval_") and isinstance(metrics[k], float) and "runtime" not in k
                        and "per_second" not in k)
    sifting = metrics.get("sifting")
    kept = f", sifting kept {sifting['keep_rate']:.0%}" if sifting else ""
    typer.echo(f"{summary}; train {metrics['train_runtime_s']:.0f} s, peak memory "
               f"{metrics['peak_memory_mb']:.0f} MB{kept}; wrote {metrics['config']['out']}")


def _train_help() -> str:
    from scilm.training.recipes import RECIPES

    tasks = "\n\n".join(f"  {name}: {recipe.summary}" for name, recipe in RECIPES.items())
    return ("Fine-tune a model; writes OUT/model (safetensors) and OUT/metrics.json.\n\n"
            f"\b\nTasks (--task):\n\n{tasks}\n\nA setting of another task is an error, not ignored.")


train.__signature__ = _settings_signature()
train.__doc__ = _train_help()
app.command()(train)


@app.command()
def predict(
    model: str = Opt(..., help="Trained model directory (OUT/model) or hub id."),
    data: str = Opt(..., help="FASTA or CSV/TSV of sequences."),
    out: Path = Opt(Path("preds.csv"), help="Output CSV."),
    sequence_column: str = Opt("Sequence", help="Table column with sequences."),
    id_column: Optional[str] = Opt(None, help="Table column with ids."),
    batch_size: int = Opt(32, help="Sequences per batch."),
    truncate: Optional[int] = Opt(None, help="Residues kept per sequence [the length the model was trained with]."),
    precision: str = Opt("fp32", help="fp32 | bf16 | bf16-weights | auto (auto: the fastest mode on a short probe "
                         "of this model that keeps embeddings within cosine 0.999 of fp32; cached per machine)."),
    quantize: str = Opt("none", help="none | int8 (CPU, torchao; kept only if faster than the precision mode "
                        "and within the same guard)."),
) -> None:
    """Class probabilities per protein, one row per input record in input order: id, predicted_label, prob_<label>..."""
    from scilm.inference import predict_proteins, write_predictions
    from scilm.models.protein import load_trained_classifier

    from scilm.io import check_output

    check_output(out, [data])  # before any work: not a directory, not the input itself
    records = _read_unlabelled(data, sequence_column, id_column, batch_size, truncate)
    net, tokenizer = load_trained_classifier(model)
    limit, cut = _truncation(records, net, tokenizer, truncate)
    net = _fast_path(net, tokenizer, records, limit, precision, quantize)
    probabilities = predict_proteins(net, tokenizer, [r.sequence for r in records], batch_size, limit)
    from scilm.inference.predict import is_regression

    write_predictions(records, probabilities, out, inputs=(data,), regression=is_regression(net.config))
    typer.echo(f"wrote {len(records)} predictions to {out}{cut}")


def _read_unlabelled(data: str, sequence_column: str, id_column: Optional[str], batch_size: int,
                     truncate: Optional[int]):
    """predict/embed input: every record kept, in input order (a repeated id is one row per record)."""
    from scilm.data.protein import read_proteins

    if batch_size < 1:
        raise ScilmError(f"--batch-size must be at least 1 (got {batch_size})")
    if truncate is not None and truncate < 1:
        raise ScilmError(f"--truncate must be at least 1 (got {truncate})")
    return read_proteins(data, task=None, sequence_column=sequence_column, label_column=None,
                         id_column=id_column, unique_ids=False)


def _truncation(records, net, tokenizer, truncate: Optional[int]) -> tuple[int, str]:
    """The residues kept (--truncate, else the model's trained length) and a note of how many were cut."""
    from scilm.models.protein import max_residues

    limit = truncate if truncate is not None else max_residues(net.config, tokenizer)
    n_cut = sum(len(r.sequence) > limit for r in records)
    return limit, f" ({n_cut} of {len(records)} sequences cut to {limit} residues)" if n_cut else ""


def _fast_path(net, tokenizer, records, limit: int, precision: str, quantize: str):
    """The model in the --precision / --quantize mode (issue 16); the choice and any fallback on stderr."""
    from scilm.inference.precision import PRECISIONS, QUANTIZE, prepare_for_inference

    if precision not in PRECISIONS:
        raise ScilmError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if quantize not in QUANTIZE:
        raise ScilmError(f"--quantize must be one of {', '.join(QUANTIZE)} (got {quantize!r})")
    if not records:
        return net
    net, plan = prepare_for_inference(net, tokenizer, [r.sequence[:limit] for r in records], precision, quantize)
    if precision != "fp32" or quantize != "none":
        for note in plan.notes:
            typer.echo(f"note: {note}", err=True)
        typer.echo(plan.summary(), err=True)
    return net


@app.command()
def embed(
    model: str = Opt(..., help="Model directory, preset or hub id."),
    data: str = Opt(..., help="FASTA or CSV/TSV of sequences."),
    out: Path = Opt(Path("embeddings.npy"), help="Output: .npy (+ .ids.txt), .npz or .parquet."),
    sequence_column: str = Opt("Sequence", help="Table column with sequences."),
    id_column: Optional[str] = Opt(None, help="Table column with ids."),
    batch_size: int = Opt(16, help="Sequences per batch."),
    truncate: Optional[int] = Opt(None, help="Residues kept per sequence [the length the model was trained with]."),
    precision: str = Opt("fp32", help="fp32 | bf16 | bf16-weights | auto (auto: the fastest mode on a short probe "
                         "of this model that keeps embeddings within cosine 0.999 of fp32; cached per machine)."),
    quantize: str = Opt("none", help="none | int8 (CPU, torchao; kept only if faster than the precision mode "
                        "and within the same guard)."),
) -> None:
    """Mean-pooled per-protein embeddings with ids, one row per input record in input order."""
    from scilm.inference import embed_proteins, write_embeddings
    from scilm.inference.embed import EMBEDDING_SUFFIXES
    from scilm.models.protein import load_protein_encoder

    from scilm.io import check_output

    if out.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise ScilmError(f"--out {out}: use one of {', '.join(EMBEDDING_SUFFIXES)}")
    check_output(out, [data])
    if out.suffix.lower() == ".npy":
        check_output(out.with_suffix(".ids.txt"), [data])
    records = _read_unlabelled(data, sequence_column, id_column, batch_size, truncate)
    net, tokenizer = load_protein_encoder(model)
    limit, cut = _truncation(records, net, tokenizer, truncate)
    net = _fast_path(net, tokenizer, records, limit, precision, quantize)
    embeddings = embed_proteins(net, tokenizer, [r.sequence for r in records], batch_size, limit)
    written = write_embeddings([r.id for r in records], embeddings, out, inputs=(data,))
    typer.echo(f"wrote {embeddings.shape[0]} x {embeddings.shape[1]} embeddings to "
               f"{', '.join(map(str, written))}{cut}")


@app.command()
def generate(
    inputs: list[str] = typer.Argument(None, help="Inputs (without the prompt); or use --input-file."),
    model: str = Opt(..., help="Seq2seq model directory (OUT/model) or hub id."),
    task: str = Opt(..., help="forward-prediction | retrosynthesis | paragraph-to-actions | text-to-smiles | smiles-to-caption"),
    input_file: Optional[Path] = Opt(None, help="One input per line."),
    num_beams: int = Opt(10, help="Beam width (the published demo: 10)."),
    max_length: int = Opt(512, help="Maximum generated tokens."),
    batch_size: int = Opt(8, help="Inputs per batch."),
    out: Optional[Path] = Opt(None, help="JSON lines output [stdout]."),
) -> None:
    """Generate for one of the five Text+Chem tasks; JSON lines out (SMILES: canonical form + validity)."""
    from scilm.inference.generate import generate_command

    generate_command(model=model, task=task, inputs=list(inputs or []), input_file=input_file,
                     num_beams=num_beams, max_length=max_length, batch_size=batch_size, out=out)


@app.command()
def evaluate(
    model: str = Opt(..., help="Seq2seq model directory (OUT/model) or hub id."),
    data: Path = Opt(..., help="Text+Chem JSONL (source, target)."),
    out: Path = Opt(Path("metrics.json"), help="Per-task metrics (JSON)."),
    predictions: Optional[Path] = Opt(None, help="Per-example predictions (JSONL) [next to --out]."),
    num_beams: int = Opt(10, help="Beam width."),
    max_length: int = Opt(512, help="Maximum generated tokens."),
    batch_size: int = Opt(8, help="Inputs per batch."),
) -> None:
    """Generate for every example and score per task: molecules by RDKit, captions and actions by text metrics."""
    from scilm.inference.generate import evaluate_command

    evaluate_command(model=model, data=data, out=out, predictions=predictions, num_beams=num_beams,
                     max_length=max_length, batch_size=batch_size)


@app.command()
def serve(
    model: str = Opt(..., help="Trained model directory (classifier or seq2seq)."),
    host: str = Opt("127.0.0.1", help="Interface to bind (loopback by default)."),
    port: int = Opt(8000, help="Port."),
    max_batch_size: int = Opt(32, help="Micro-batching: most inputs run together."),
    max_wait_ms: float = Opt(5.0, help="Micro-batching: longest wait for a batch to fill."),
    max_queue: int = Opt(256, help="Queued inputs before answering 503."),
    batching: bool = Opt(True, "--batching/--no-batching", help="Dynamic micro-batching [on]."),
    api_key_env: Optional[str] = Opt(None, help="Environment variable holding the API key (else no auth)."),
    allowed_host: Optional[list[str]] = Opt(None, help="Host name clients may reach the server by, besides the "
                                            "bound address (repeat; '*': any, e.g. behind a proxy that checks)."),
    max_request_cost: Optional[int] = Opt(None, help="Token-steps one request may cost [classifier 65536, "
                                          "seq2seq 8192]."),
    max_pending_cost: Optional[int] = Opt(None, help="Token-steps queued and running, server-wide [4 requests]."),
    max_batch_seconds: float = Opt(60.0, help="Wall time of one model call (generate's max_time); SIGTERM "
                                   "exits within this + 5 s."),
    header_timeout: float = Opt(10.0, help="Seconds for a request's headers."),
    body_timeout: float = Opt(30.0, help="Seconds for a request's body."),
    per_client_connections: int = Opt(64, help="Open connections per client address."),
) -> None:
    """A real-time HTTP endpoint (Hugging Face inference payloads) and a web page at /."""
    from scilm.serving.bounds import ServerLimits
    from scilm.serving.server import serve as run_server

    limits = ServerLimits(max_request_cost=max_request_cost, max_pending_cost=max_pending_cost,
                          max_batch_seconds=max_batch_seconds, header_timeout=header_timeout,
                          body_timeout=body_timeout, per_client_connections=per_client_connections)
    run_server(model=model, host=host, port=port, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
               max_queue=max_queue, batching=batching, api_key_env=api_key_env, limits=limits,
               allowed_host=tuple(allowed_host or ()))


def pretrain(**options) -> None:
    """Masked-LM (continued) pre-training of an ESM-2 model on your sequences, as ESM-2 was trained
    (the same as scilm train --task mlm)."""
    metrics = _run_training(options, task="mlm")
    if metrics:
        typer.echo(f"mlm_loss {metrics['mlm_loss']:.4f} over {metrics['n_sequences']} sequences; "
                   f"wrote {Path(metrics['config']['out']) / 'model'}")


pretrain.__signature__ = _settings_signature("mlm")
app.command()(pretrain)


@bench_app.command("efficiency")
def bench_efficiency(
    out: Path = Opt(Path("bench/efficiency"), help="Output directory."),
    quick: bool = Opt(False, "--quick", help="Fewer steps and epochs (under 15 minutes on 2 CPU cores)."),
    cost_model: str = Opt("esm2-35m", help="Preset whose shape the cost rows measure."),
) -> None:
    """The five configurations of the published table: time, accuracy, peak memory, samples/s."""
    from scilm.bench.efficiency import run_efficiency_bench

    table = run_efficiency_bench(out, quick=quick, cost_model=cost_model)
    typer.echo(table)


@data_app.command("textchem")
def data_textchem(
    out: Path = Opt(..., help="Output directory for train/valid/test.jsonl."),
    chebi20: Optional[Path] = Opt(None, help="ChEBI-20 TSV (CID, SMILES, description): caption + text-to-SMILES."),
    uspto_sources: Optional[Path] = Opt(None, help="Space-tokenised USPTO products (retrosynthesis sources)."),
    uspto_targets: Optional[Path] = Opt(None, help="Space-tokenised USPTO reactants, line-aligned."),
    actions_src: Optional[Path] = Opt(None, help="paragraph2actions src-*.txt (sentences)."),
    actions_tgt: Optional[Path] = Opt(None, help="paragraph2actions tgt-*.txt (action sequences)."),
    canonicalize: bool = Opt(False, "--canonicalize", help="RDKit-canonical SMILES (unparsable ones skipped, counted)."),
    valid_fraction: float = Opt(0.1, help="Share for valid.jsonl."),
    test_fraction: float = Opt(0.1, help="Share for test.jsonl."),
    seed: int = Opt(0, help="Split seed."),
) -> None:
    """Real sets -> Text+Chem JSONL (`source` = prompt + input, `target`), split by seed."""
    import json

    from scilm.data.textchem import convert_textchem

    if (uspto_sources is None) != (uspto_targets is None):
        raise ScilmError("--uspto-sources and --uspto-targets go together")
    if (actions_src is None) != (actions_tgt is None):
        raise ScilmError("--actions-src and --actions-tgt go together")
    if not (chebi20 or uspto_sources or actions_src):
        raise ScilmError("nothing to convert: give --chebi20, --uspto-sources/--uspto-targets or --actions-src/--actions-tgt")
    summary = convert_textchem(
        out, chebi20=chebi20,
        uspto=(uspto_sources, uspto_targets) if uspto_sources else None,
        paragraph2actions=(actions_src, actions_tgt) if actions_src else None,
        canonicalize=canonicalize, valid_fraction=valid_fraction, test_fraction=test_fraction, seed=seed,
    )
    typer.echo(json.dumps(summary, indent=2))


@bench_app.command("sifting")
def bench_sifting(
    out: Path = Opt(Path("bench/sifting"), help="Output directory."),
    quick: bool = Opt(False, "--quick", help="Fewer epochs and shorter sequences (under 20 minutes on 2 CPU cores)."),
    epochs: Optional[float] = Opt(None, help="Epochs of every compared run [3 with --quick, else 6]."),
    seeds: Optional[list[int]] = Opt(None, "--seed", help="Seed of every run; repeat for a mean over seeds [0]."),
) -> None:
    """Sifting (several betas, reuse policy, blind controls) against an unsifted baseline: accuracy vs wall time."""
    from scilm.bench.sifting import SiftingSettings, run_sifting_bench

    if epochs is not None and not epochs > 0:
        raise ScilmError(f"--epochs must be positive (got {epochs:g})")
    settings = SiftingSettings.for_mode(quick, epochs=epochs, seeds=tuple(dict.fromkeys(seeds or ())))
    command = " ".join(["scilm bench sifting", f"--out {out}", *(["--quick"] if quick else []),
                        *([f"--epochs {epochs:g}"] if epochs is not None else []),
                        *(f"--seed {s}" for s in settings.seeds if seeds)])
    typer.echo(run_sifting_bench(out, quick=quick, settings=settings, command=command))


@bench_app.command("tasks")
def bench_tasks(
    out: Path = Opt(Path("bench/tasks"), help="Output directory."),
    quick: bool = Opt(False, "--quick", help="Fewer epochs and shorter sequences."),
    rows: Optional[list[str]] = Opt(None, "--row", help="Run only this row (repeatable) [all]."),
) -> None:
    """Every protein task on real data (bundled, or ../shared/data) beside its trivial baseline."""
    from scilm.bench.tasks import run_tasks_bench

    command = " ".join(["scilm bench tasks", f"--out {out}", *(["--quick"] if quick else []),
                        *(f"--row {r}" for r in rows or ())])
    typer.echo(run_tasks_bench(out, quick=quick, only=list(rows) if rows else None, command=command))


@bench_app.command("inference")
def bench_inference(
    model: str = Opt("esm2-35m", help="Model shape: esm2-8m | esm2-35m | esm2-150m (random weights)."),
    out: Path = Opt(Path("bench/inference"), help="Output directory."),
    quick: bool = Opt(False, "--quick", help="16 proteins cut to 200 residues, 90 s per row at most."),
) -> None:
    """ESM-2 embedding residues/s and peak memory: plain transformers, scilm in each precision, esm.cpp."""
    from scilm.bench.inference import run_inference_bench

    command = " ".join(["scilm bench inference", f"--model {model}", f"--out {out}", *(["--quick"] if quick else [])])
    typer.echo(run_inference_bench(out, model=model, quick=quick, command=command))


@bench_app.command("serve")
def bench_serve(
    out: Path = Opt(Path("bench/serve"), help="Output directory."),
    model: Optional[str] = Opt(None, help="Model directory to serve [a classifier trained on the spot]."),
    quick: bool = Opt(False, "--quick", help="Fewer requests per level."),
    abuse: bool = Opt(False, "--abuse", help="Instead: replay each kind of abuse (issue 12) for ~2 minutes "
                      "against a seq2seq model [t5-tiny shape built on the spot]; writes OUT/abuse."),
) -> None:
    """Load test on loopback: throughput and p50/p99 latency at 1, 8, 32 clients, batching on vs off."""
    if abuse:
        from scilm.serving.abuse import run_abuse_bench

        typer.echo(run_abuse_bench(out / "abuse", model=model))
        return
    from scilm.serving.bench import run_serve_bench

    typer.echo(run_serve_bench(out, model=model, quick=quick))


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    # scilm's own messages at INFO; other libraries only when they warn (rouge_score via absl logs
    # "Using default tokenizer." at INFO). Model load reports are summarised by scilm.models.loading.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("scilm").setLevel(os.environ.get("SCILM_LOG_LEVEL", "INFO"))
    try:
        app()
    except OSError as exc:  # disk full, read-only or forbidden paths: the user can act on these
        from scilm.io import USER_OS_ERRORS, describe_os_error

        if exc.errno not in USER_OS_ERRORS:
            raise
        typer.echo(f"error: {describe_os_error(exc)}", err=True)
        sys.exit(2)
    except ScilmError as exc:
        code = getattr(exc, "exit_code", 2)
        if code != 2:  # a signal stop: rank 0 says it once for all ranks
            from scilm.training.distributed import is_main_process

            if not is_main_process():
                sys.exit(code)
        typer.echo(f"error: {exc.for_cli()}", err=True)
        sys.exit(code)
    except ModuleNotFoundError as exc:  # a package of an optional extra, imported outside optional_extra()
        from scilm._extras import missing_extra

        if (missing := missing_extra(exc)) is None:
            raise
        typer.echo(f"error: {missing}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    finally:
        from scilm.training.rundir import release_all

        release_all()


if __name__ == "__main__":
    main()
