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
def _main(ctx: typer.Context, version: bool = Opt(False, "--version", callback=_version, is_eager=True,
                                                   help="Print scilm's version and exit.")) -> None:
    """Fine-tune, evaluate and serve scientific language models (ESM-2 proteins, Text+Chem T5)."""
    if ctx.invoked_subcommand != "data":  # the data converters run no model (and need no torch)
        from scilm.distributed import configure_threads

        configure_threads()  # intra-op threads = physical cores (or OMP_NUM_THREADS), shared out under --nproc


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
    from scilm.distributed import is_main_process
    from scilm.training.distributed import launch_torchrun, launched_by_torchrun, strip_option

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
    batch_size: int = Opt(32, help="Sequences per batch, at most (on a CPU also at most 2,048 residues)."),
    truncate: Optional[int] = Opt(None, help="Residues kept per sequence [the length the model was trained with]."),
    long_policy: Optional[str] = Opt(None, help="Longer sequences: head (the first N) | ends (both termini) | window "
                                     "(overlapping windows averaged) [the model's training policy, else head]."),
    progress: bool = Opt(True, "--progress/--no-progress", help="Progress bar with proteins/s on stderr (a terminal only)."),
    precision: str = Opt("fp32", help="fp32 | bf16 | bf16-weights | auto (auto: the fastest mode on a short probe "
                         "of this model that keeps embeddings within cosine 0.999 of fp32; cached per machine)."),
    quantize: str = Opt("none", help="none | int8 (CPU: torchao's or PyTorch's FBGEMM int8 Linear, the faster; kept only if 1.1x faster than the precision mode "
                        "and within the same guard)."),
) -> None:
    """Class probabilities per protein, one row per input record in input order: id, predicted_label, prob_<label>..."""
    from scilm.inference.embed_stream import scan_input
    from scilm.inference.policy import cut_report_path, write_cut_report
    from scilm.inference.predict import predict_file
    from scilm.io import check_output
    from scilm.models.protein import is_per_residue, load_trained_classifier

    check_output(out, [data])  # before any work: not a directory, not the input itself
    check_output(cut_report_path(out), [data])
    _check_sizes(batch_size, truncate, long_policy)
    scan = scan_input(data, sequence_column, id_column)  # every record checked before the model loads
    net, tokenizer = load_trained_classifier(model)
    policy = _policy(net, tokenizer, truncate, long_policy)
    net = _fast_path(net, tokenizer, data, sequence_column, id_column, policy, precision, quantize,
                     scan.lengths)
    if is_per_residue(net.config):  # --task residue: a label per residue, aligned to the input residues
        n, cut = _predict_residues(net, tokenizer, data, out, policy, batch_size, sequence_column, id_column)
        report = write_cut_report(out, policy, n, [row for row, _ in cut], [i for _, i in cut], [data])
        typer.echo(f"wrote {n} per-residue predictions to {out}{_cut_note(len(cut), n, policy, report)} "
                   "('.' marks residues not predicted)")
        _fallback_note(net)
        return
    n, cut = predict_file(net, tokenizer, data, out, policy=policy, batch_size=batch_size,
                          sequence_column=sequence_column, id_column=id_column, progress=progress,
                          n_records=scan.n_records)
    report = write_cut_report(out, policy, n, [row for row, _ in cut], [i for _, i in cut], [data])
    typer.echo(f"wrote {n} predictions to {out}{_cut_note(len(cut), n, policy, report)}")
    _fallback_note(net)


def _fallback_note(net) -> None:
    """How many proteins a reduced precision answered in fp32 (near a decision boundary), on stderr."""
    fallback = getattr(net, "scilm_fp32_fallback", None)
    if fallback is not None and fallback.proteins:
        typer.echo(f"note: {fallback.recomputed} of {fallback.proteins} proteins were near a decision boundary "
                   f"and recomputed in fp32 (the measured label guard; see README 'Labels stay fp32's')", err=True)


def _predict_residues(net, tokenizer, data, out, policy, batch_size, sequence_column, id_column):
    """Per-residue labels of every record (held in memory), one CSV row per record in input order;
    returns (records, [(row, id) of each record the policy cut])."""
    from scilm.data.protein import read_proteins
    from scilm.inference.residue import predict_residues, write_residue_predictions

    records = read_proteins(data, task=None, sequence_column=sequence_column, label_column=None,
                            id_column=id_column, unique_ids=False)
    predicted = predict_residues(net, tokenizer, [r.sequence for r in records], batch_size, policy=policy)
    write_residue_predictions(records, predicted, out, inputs=(data,))
    return len(records), [(k, r.id) for k, r in enumerate(records) if policy.cuts(r.sequence)]


def _check_sizes(batch_size: int, truncate: Optional[int], long_policy: Optional[str] = None) -> None:
    if batch_size < 1:
        raise ScilmError(f"--batch-size must be at least 1 (got {batch_size})")
    if truncate is not None and truncate < 1:
        raise ScilmError(f"--truncate must be at least 1 (got {truncate})")
    if long_policy is not None:
        from scilm.inference.policy import check_long_policy

        check_long_policy(long_policy)


def _policy(net, tokenizer, truncate: Optional[int], long_policy: Optional[str] = None):
    """The long-protein policy: --long-policy else the model's, at --truncate else the model's trained length."""
    from scilm.inference.policy import model_policy

    return model_policy(net.config, tokenizer, long_policy, truncate)


def _cut_note(n_cut: int, n: int, policy, report=None) -> str:
    if not n_cut:
        return ""
    return f" ({n_cut} of {n} sequences {policy.describe()})" + (f"; their ids: {report}" if report else "")


def _fast_path(net, tokenizer, data: str, sequence_column: str, id_column: Optional[str], policy,
               precision: str, quantize: str, lengths=()):
    """The model in the --precision / --quantize mode (issue 16), probed on the first proteins of ``data``
    (cut to the policy's N residues) and chosen for the job's size (``lengths``: every record's residues;
    this process's share under torchrun); the choice and any fallback on stderr."""
    import itertools

    from scilm.data.protein import iter_proteins
    from scilm.inference.policy import fed_residues
    from scilm.inference.precision import PRECISIONS, PROBE_POOL, QUANTIZE, prepare_for_inference

    if precision not in PRECISIONS:
        raise ScilmError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r})")
    if quantize not in QUANTIZE:
        raise ScilmError(f"--quantize must be one of {', '.join(QUANTIZE)} (got {quantize!r})")
    if precision == "fp32" and quantize == "none":
        return net
    first = itertools.islice(iter_proteins(data, sequence_column, id_column), PROBE_POOL)
    sample = [r.sequence[: policy.max_residues] for r in first]
    if not sample:
        return net
    job = fed_residues(policy, lengths) // max(1, int(os.environ.get("WORLD_SIZE", "1"))) if len(lengths) else None
    net, plan = prepare_for_inference(net, tokenizer, sample, precision, quantize, job_residues=job)
    for note in plan.notes:
        typer.echo(f"note: {note}", err=True)
    typer.echo(plan.summary(), err=True)
    return net


@app.command()
def embed(
    model: str = Opt(..., help="Model directory, preset or hub id."),
    data: str = Opt(..., help="FASTA or CSV/TSV of sequences."),
    out: Path = Opt(Path("embeddings.npy"), help="Output: .npy (+ .ids.txt), .npz, .parquet, .h5/.hdf5."),
    sequence_column: str = Opt("Sequence", help="Table column with sequences."),
    id_column: Optional[str] = Opt(None, help="Table column with ids."),
    batch_size: int = Opt(16, help="Sequences per batch, at most (on a CPU also at most 2,048 residues)."),
    truncate: Optional[int] = Opt(None, help="Residues kept per sequence [the length the model was trained with]."),
    long_policy: Optional[str] = Opt(None, help="Longer sequences: head (the first N) | ends (both termini) | window "
                                     "(overlapping windows averaged) [the model's training policy, else head]."),
    layer: Optional[list[int]] = Opt(None, "--layer", help="Layer to embed from (repeat for several): 0 = the "
                                     "embedding layer, negative counts from the end [-1, the last]."),
    pooling: str = Opt("mean", help="mean | cls | per-residue (one vector per residue: .npz, .parquet, .h5)."),
    chunk_size: Optional[int] = Opt(None, help="Proteins per chunk written (memory, resume unit) [up to 1024]."),
    nproc: int = Opt(1, help="Processes (torchrun); outputs merged in input order."),
    progress: bool = Opt(True, "--progress/--no-progress", help="Progress bar with proteins/s on stderr (a terminal only)."),
    precision: str = Opt("fp32", help="fp32 | bf16 | bf16-weights | auto (auto: the fastest mode on a short probe "
                         "of this model that keeps embeddings within cosine 0.999 of fp32; cached per machine)."),
    quantize: str = Opt("none", help="none | int8 (CPU: torchao's or PyTorch's FBGEMM int8 Linear, the faster; kept only if 1.1x faster than the precision mode "
                        "and within the same guard)."),
) -> None:
    """Per-protein (mean, cls) or per-residue embeddings with ids, one row per input record in input order.

    Streams inputs of any size in chunks; a killed run continues when the same command is run again.
    """
    from scilm.inference.embed import check_pooling
    from scilm.inference.embed_stream import embed_file, launch_embed_workers, scan_input
    from scilm.inference.embedding_files import check_embedding_output
    from scilm.inference.policy import cut_report_path, write_cut_report
    from scilm.io import check_output
    from scilm.models.protein import load_protein_encoder
    from scilm.training.distributed import launched_by_torchrun, strip_option

    check_pooling(pooling)
    check_embedding_output(out, pooling)
    check_output(out, [data])
    if out.suffix.lower() == ".npy":
        check_output(out.with_suffix(".ids.txt"), [data])
    check_output(cut_report_path(out), [data])
    _check_sizes(batch_size, truncate, long_policy)
    if chunk_size is not None and chunk_size < 1:
        raise ScilmError(f"--chunk-size must be at least 1 (got {chunk_size})")
    scan = scan_input(data, sequence_column, id_column)  # every record checked before the model loads
    if nproc > 1 and not launched_by_torchrun():
        argv = sys.argv[sys.argv.index("embed") + 1:]
        raise typer.Exit(launch_embed_workers(nproc, strip_option(argv, "--nproc")))
    if nproc < 1:
        raise ScilmError(f"--nproc must be at least 1 (got {nproc})")
    net, tokenizer = load_protein_encoder(model)
    policy = _policy(net, tokenizer, truncate, long_policy)
    net = _fast_path(net, tokenizer, data, sequence_column, id_column, policy, precision, quantize,
                     scan.lengths)
    result = embed_file(net, tokenizer, data, out, policy=policy, layers=layer or [-1], pooling=pooling,
                        batch_size=batch_size, chunk_size=chunk_size, sequence_column=sequence_column,
                        id_column=id_column, progress=progress, scan=scan)
    if result is None:  # a worker other than process 0: it wrote its chunks, process 0 merged them
        return
    shape = " x ".join(map(str, [result.n_records, *([len(result.layers)] if len(result.layers) > 1 else []),
                                 result.hidden]))
    layers = f" (layers {', '.join(map(str, result.layers))})" if len(result.layers) > 1 else ""
    what = (f"per-residue embeddings of {result.n_records} proteins ({result.n_residues} residues x "
            f"{' x '.join(map(str, [*([len(result.layers)] if len(result.layers) > 1 else []), result.hidden]))})"
            if pooling == "per-residue" else f"{shape} embeddings")
    report = write_cut_report(out, policy, result.n_records, result.cut_rows, result.cut_ids, [data])
    resumed = (f"; {result.n_reused} of {result.n_chunks} chunks were already written by an interrupted run"
               if result.n_reused else "")
    typer.echo(f"wrote {what}{layers} to {', '.join(map(str, result.written))}"
               f"{_cut_note(result.n_cut, result.n_records, policy, report)}{resumed}")


@app.command("score-variants")
def score_variants(
    model: str = Opt(..., help="ESM-2 masked LM: hub id (facebook/esm2_t33_650M_UR50D), local directory or esm2-tiny-mlm."),
    wild_type: Path = Opt(..., help="FASTA holding the one wild-type sequence the mutations are numbered on."),
    data: Optional[str] = Opt(None, help="CSV/TSV with a mutant column (ProteinGym layout; DMS_score optional)."),
    mutant: Optional[list[str]] = Opt(None, "--mutant", help="A mutation instead of --data (repeat): A42G, or A42G:C55T."),
    out: Path = Opt(Path("scored.csv"), help="Output CSV: the input with a score column (+ .spearman.json, .scatter.png)."),
    scoring: str = Opt("masked-marginal", help="masked-marginal | wt-marginal (ESM-1v's masked / wild-type marginals)."),
    offset: int = Opt(1, help="Number of the wild type's first residue in the mutations (esm's --offset-idx)."),
    mutant_column: str = Opt("mutant", help="Column with the mutations."),
    dms_column: Optional[str] = Opt(None, help="Measured fitness column for Spearman [DMS_score, when present]."),
    score_column: Optional[str] = Opt(None, help="Name of the added column [masked_marginal | wt_marginal]."),
    window: Optional[int] = Opt(None, help="Residues per forward; longer proteins are scored on a window around each "
                                "position [the length the model was trained with, 1022 for ESM-2]."),
    batch_size: int = Opt(32, help="Forwards per batch."),
    progress: bool = Opt(True, "--progress/--no-progress", help="Progress bar on stderr (a terminal only)."),
) -> None:
    """Zero-shot variant-effect scores (ESM-1v masked / wild-type marginals), Spearman against DMS_score."""
    from scilm.inference import variants
    from scilm.io import check_output
    from scilm.models.protein import max_residues

    if scoring not in variants.SCORINGS:
        raise ScilmError(f"--scoring must be one of {', '.join(variants.SCORINGS)} (got {scoring!r})")
    if (data is None) == (not mutant):
        raise ScilmError("give the mutations either as --data TABLE or as --mutant A42G (repeat), one of the two")
    for name, value in (("--batch-size", batch_size), ("--window", window)):
        if value is not None and value < 1:
            raise ScilmError(f"{name} must be at least 1 (got {value})")
    inputs = [data, wild_type]
    check_output(out, inputs)
    sequence = variants.read_wild_type(wild_type)
    table = variants.read_mutant_table(data, mutant_column) if data else variants.mutant_list(mutant)
    variants.parse_table_mutants(table, sequence, offset)  # every mutation checked before the model loads
    target = dms_column or "DMS_score"
    variants.check_score_outputs(out, inputs, with_report=target in table.header)
    net, tokenizer = variants.load_masked_lm(model)
    limit = window if window is not None else max_residues(net.config, tokenizer)
    result = variants.score_variants_file(
        net, tokenizer, sequence, table, out, scoring=scoring, window=limit, batch_size=batch_size,
        score_column=score_column, dms_column=target, dms_required=dms_column is not None, progress=progress,
        inputs=inputs, model_name=model)
    windows = f", windows of {limit} residues" if len(sequence) > limit else ""
    forwards = f"{result.n_forwards} forward{'s' if result.n_forwards != 1 else ''}"
    typer.echo(f"scored {result.n_mutants} mutants ({scoring}, {forwards}{windows}); "
               f"wrote {', '.join(map(str, result.written))}")
    if result.report is not None:
        rho = result.report["spearman"]
        missing = f", {result.report['n_missing']} without a value left out" if result.report["n_missing"] else ""
        typer.echo(f"Spearman {'undefined' if rho is None else f'{rho:.4f}'} against "
                   f"{result.report['dms_column']} ({result.report['n']} mutants{missing})")


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
    model: str = Opt(..., help="Trained model directory (OUT/model): a protein model, or seq2seq (or its hub id)."),
    data: Path = Opt(..., help="Labelled FASTA/CSV/TSV for a protein model; Text+Chem JSONL (source, target) for seq2seq."),
    out: Optional[Path] = Opt(None, help="Protein: output directory (metrics.json, predictions.csv, a PNG); "
                                         "seq2seq: metrics JSON file [metrics.json]."),
    sequence_column: str = Opt("Sequence", help="Protein table: column with sequences."),
    label_column: Optional[str] = Opt(None, help="Protein table: column with labels [classifier: Membrane, or a "
                                      "DeepLoc-2 table's location columns; regression: the trained target's name; per-residue: label; "
                                      "multi-label: none, its 0/1 columns are named as in training]."),
    id_column: Optional[str] = Opt(None, help="Protein table: column with ids."),
    mask_column: Optional[str] = Opt(None, help="Per-residue model's table: column with one 0/1 per residue, "
                                     "1 = scored [every residue]."),
    truncate: Optional[int] = Opt(None, help="Protein: residues kept per sequence [the length the model was trained with]."),
    overwrite: bool = Opt(False, "--overwrite", help="Protein: write into a non-empty --out (only evaluate's files are replaced)."),
    predictions: Optional[Path] = Opt(None, help="Seq2seq: per-example predictions (JSONL) [next to --out]."),
    num_beams: int = Opt(10, help="Seq2seq: beam width."),
    max_length: int = Opt(512, help="Seq2seq: maximum generated tokens."),
    batch_size: Optional[int] = Opt(None, help="Inputs per batch [protein 32, seq2seq 8]."),
    top_k: str = Opt("1", help="Seq2seq: top-k exact match for these k, e.g. 1,3,5,10 (at most --num-beams)."),
    forward_model: Optional[str] = Opt(None, help="Seq2seq: forward-prediction model for retrosynthesis round-trip "
                                       "accuracy (may be --model itself)."),
    randomize_inputs: int = Opt(0, help="Seq2seq: score N >= 2 random re-spellings of every input SMILES too; "
                                "report each metric's spread [0: off]."),
    seed: int = Opt(0, help="Seq2seq: seed of the re-spellings."),
) -> None:
    """Score a trained model on labelled data. Protein: the task's metrics, predictions and a confusion-matrix
    or scatter PNG; seq2seq: generate and score per task (molecules by RDKit, text by text metrics)."""
    from scilm.data.textio import data_suffix

    if data_suffix(data) != ".jsonl":
        from scilm.evaluation.protein import EvaluationData, evaluate_proteins

        if (predictions is not None or num_beams != 10 or max_length != 512 or top_k != "1" or forward_model
                or randomize_inputs or seed):
            raise ScilmError("--predictions, --num-beams, --max-length, --top-k, --forward-model, --randomize-inputs "
                             "and --seed are for seq2seq models (JSONL data)")
        if out is None:
            raise ScilmError("--out is required for a protein model: the directory for metrics.json, "
                             "predictions.csv and the PNG")
        metrics = evaluate_proteins(model, EvaluationData(str(data), sequence_column, label_column, id_column, mask_column), out,
                                    batch_size=batch_size or 32, truncate=truncate, overwrite=overwrite)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
        typer.echo(f"{shown} (n={metrics['n']}); wrote {', '.join(str(Path(out) / f) for f in metrics['files'])}")
        return
    if label_column or id_column or mask_column or truncate or overwrite or sequence_column != "Sequence":
        raise ScilmError("--sequence-column, --label-column, --id-column, --mask-column, --truncate and --overwrite "
                         "are for protein models (FASTA/CSV/TSV data)")
    from scilm.inference.generate import evaluate_command, parse_top_k

    evaluate_command(model=model, data=data, out=out or Path("metrics.json"), predictions=predictions,
                     num_beams=num_beams, max_length=max_length, batch_size=batch_size or 8, top_k=parse_top_k(top_k),
                     forward_model=forward_model, randomize_inputs=randomize_inputs, seed=seed)


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
    max_batch_seconds: float = Opt(60.0, help="Wall time of one model call (checked at every generation step); SIGTERM "
                                   "exits within this + 5 s."),
    header_timeout: float = Opt(10.0, help="Seconds for a request's headers."),
    body_timeout: float = Opt(30.0, help="Seconds for a request's body."),
    per_client_connections: int = Opt(64, help="Open connections per client address."),
    precision: str = Opt("fp32", help="Protein models: fp32 | bf16 | bf16-weights | auto (probed at start on "
                         "bundled proteins, with predict's quality guard)."),
    quantize: str = Opt("none", help="Protein models: none | int8 (CPU; kept only if 1.1x faster than fp32 and within the guard)."),
) -> None:
    """A real-time HTTP endpoint (Hugging Face inference payloads) and a web page at /."""
    from scilm.serving.bounds import ServerLimits
    from scilm.serving.server import serve as run_server

    limits = ServerLimits(max_request_cost=max_request_cost, max_pending_cost=max_pending_cost,
                          max_batch_seconds=max_batch_seconds, header_timeout=header_timeout,
                          body_timeout=body_timeout, per_client_connections=per_client_connections)
    run_server(model=model, host=host, port=port, max_batch_size=max_batch_size, max_wait_ms=max_wait_ms,
               max_queue=max_queue, batching=batching, api_key_env=api_key_env, limits=limits,
               allowed_host=tuple(allowed_host or ()), precision=precision, quantize=quantize)


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
    out: Path = Opt(..., help="Output directory for train/valid/test.jsonl (--split none: all.jsonl) and skipped.tsv."),
    chebi20: Optional[Path] = Opt(None, help="ChEBI-20 TSV (CID, SMILES, description): caption + text-to-SMILES."),
    uspto_sources: Optional[Path] = Opt(None, help="Space-tokenised USPTO products (retrosynthesis sources)."),
    uspto_targets: Optional[Path] = Opt(None, help="Space-tokenised USPTO reactants, line-aligned."),
    actions_src: Optional[Path] = Opt(None, help="paragraph2actions src-*.txt (sentences)."),
    actions_tgt: Optional[Path] = Opt(None, help="paragraph2actions tgt-*.txt (action sequences)."),
    canonicalize: bool = Opt(False, "--canonicalize", help="RDKit-canonical SMILES (unparsable ones skipped, counted)."),
    split: str = Opt("random", help="random: train/valid/test by seed | none: one file, all.jsonl, in input order."),
    keep_reaction_class: bool = Opt(False, "--keep-reaction-class",
                                    help="Keep USPTO's <RX_n> class as the optional field reaction_class."),
    valid_fraction: Optional[float] = Opt(None, help="Share for valid.jsonl [0.1]."),
    test_fraction: Optional[float] = Opt(None, help="Share for test.jsonl [0.1]."),
    seed: Optional[int] = Opt(None, help="Split seed [0]."),
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
    given = {"--valid-fraction": valid_fraction, "--test-fraction": test_fraction, "--seed": seed}
    if split == "none" and any(v is not None for v in given.values()):
        raise ScilmError(f"{', '.join(k for k, v in given.items() if v is not None)}: --split none does not split")
    summary = convert_textchem(
        out, chebi20=chebi20,
        uspto=(uspto_sources, uspto_targets) if uspto_sources else None,
        paragraph2actions=(actions_src, actions_tgt) if actions_src else None,
        canonicalize=canonicalize, split=split, keep_reaction_class=keep_reaction_class,
        valid_fraction=0.1 if valid_fraction is None else valid_fraction,
        test_fraction=0.1 if test_fraction is None else test_fraction, seed=seed or 0,
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
    esm_cpp_python: Optional[str] = Opt(None, help="A Python with esm-cpp installed (scripts/esm_cpp_venv.sh) "
                                        "[$SCILM_ESM_CPP_PYTHON, else this Python if it has esm_cpp]."),
    guard_model: Optional[str] = Opt(None, help="A trained classifier (e.g. the README demo's runs/membrane-demo/model): "
                                     "its DeepLoc-1 validation labels in each mode against fp32's (guard: 99.5 %)."),
) -> None:
    """ESM-2 embedding residues/s and peak memory: plain transformers, scilm in each mode, esm.cpp."""
    from scilm.bench.inference import run_inference_bench

    command = " ".join(["scilm bench inference", f"--model {model}", f"--out {out}", *(["--quick"] if quick else []),
                        *([f"--esm-cpp-python {esm_cpp_python}"] if esm_cpp_python else []),
                        *([f"--guard-model {guard_model}"] if guard_model else [])])
    typer.echo(run_inference_bench(out, model=model, quick=quick, command=command, esm_cpp_interpreter=esm_cpp_python,
                                   guard_model=guard_model))


@bench_app.command("throughput")
def bench_throughput(
    model: str = Opt("esm2-8m", help="Model shape of the speed runs: esm2-8m | esm2-35m (random weights)."),
    out: Path = Opt(Path("bench/throughput"), help="Output directory."),
    quick: bool = Opt(False, "--quick", help="64 training proteins cut to 256 residues (a few minutes)."),
    truncate: Optional[int] = Opt(None, help="Residues kept per sequence, both rows [512; --quick 256]."),
    train_proteins: Optional[int] = Opt(None, help="Speed runs: train on N bundled proteins (a seeded sample, class "
                                        "shares kept) [all; --quick 64]."),
    threads: Optional[int] = Opt(None, help="Torch threads of both rows [PyTorch's default: one per core]."),
) -> None:
    """scilm train against the published recipe (HF Trainer, padding, random order): useful tokens/s, accuracy."""
    from scilm.bench.throughput import MODELS, ThroughputSettings, run_throughput_bench

    if model not in MODELS:
        raise ScilmError(f"--model must be one of {', '.join(MODELS)} (got {model!r})")
    for flag, value in (("truncate", truncate), ("train-proteins", train_proteins), ("threads", threads)):
        if value is not None and value < 1:
            raise ScilmError(f"--{flag} must be at least 1 (got {value})")
    command = " ".join(["scilm bench throughput", f"--model {model}", f"--out {out}", *(["--quick"] if quick else []),
                        *([f"--truncate {truncate}"] if truncate else []),
                        *([f"--train-proteins {train_proteins}"] if train_proteins else []),
                        *([f"--threads {threads}"] if threads else [])])
    settings = ThroughputSettings.for_mode(quick, truncate=truncate, speed_train=train_proteins, threads=threads)
    typer.echo(run_throughput_bench(out, model=model, quick=quick, settings=settings, command=command))


@bench_app.command("textchem")
def bench_textchem(
    out: Path = Opt(Path("bench/textchem"), help="Output directory."),
    quick: bool = Opt(False, "--quick", help="300 steps, 6 test examples per task, 5 beams (a smoke run)."),
    steps: Optional[int] = Opt(None, help="Training steps of t5-tiny [900; --quick 300]."),
    per_task: Optional[int] = Opt(None, help="Test examples per task [20; --quick 6]."),
) -> None:
    """Per-task Text+Chem table on the bundled slices: top-1/3/5/10, round trip, coverage, re-spelling spread."""
    from scilm.bench.textchem import TextChemBenchSettings, run_textchem_bench

    for name, value in (("steps", steps), ("per-task", per_task)):
        if value is not None and value < 1:
            raise ScilmError(f"--{name} must be at least 1 (got {value})")
    settings = TextChemBenchSettings.for_mode(quick, steps=steps, per_task=per_task)
    command = " ".join(["scilm bench textchem", f"--out {out}", *(["--quick"] if quick else []),
                        *([f"--steps {steps}"] if steps else []), *([f"--per-task {per_task}"] if per_task else [])])
    typer.echo(run_textchem_bench(out, settings, command))


@bench_app.command("serve")
def bench_serve(
    out: Path = Opt(Path("bench/serve"), help="Output directory."),
    model: Optional[str] = Opt(None, help="Model directory to serve [a classifier trained on the spot]."),
    quick: bool = Opt(False, "--quick", help="Fewer requests per level."),
    abuse: bool = Opt(False, "--abuse", help="Instead: replay each kind of abuse (issue 12) for ~2 minutes "
                      "against a seq2seq model [t5-tiny shape built on the spot]; writes OUT/abuse."),
    precision: str = Opt("fp32", help="Also run a server with scilm serve --precision (e.g. auto), batching on, "
                         "and compare it with fp32."),
    quantize: str = Opt("none", help="Also run a server with scilm serve --quantize (e.g. int8), as --precision."),
) -> None:
    """Load test on loopback: throughput and p50/p99 latency at 1, 8, 32 clients, batching on vs off
    (and the fast path against fp32 with --precision/--quantize)."""
    if abuse:
        from scilm.bench.serve_abuse import run_abuse_bench

        typer.echo(run_abuse_bench(out / "abuse", model=model))
        return
    from scilm.bench.serve import run_serve_bench

    from scilm.inference.precision import check_modes

    check_modes(precision, quantize)  # a bad mode fails here, before three servers start
    typer.echo(run_serve_bench(out, model=model, quick=quick, precision=precision, quantize=quantize))


# Warnings some libraries log merely on import, which a user cannot act on: torchao (a dependency of
# the int8 path, imported by transformers when installed) about kernels built for other GPUs, and
# torch's pytree about Enum registrations torchao makes.
IMPORT_NOISE = ("torchao", "torch.utils._pytree")


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit code 2."""
    # scilm's own messages at INFO; other libraries only when they warn (rouge_score via absl logs
    # "Using default tokenizer." at INFO). Model load reports are summarised by scilm.models.loading.
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("scilm").setLevel(os.environ.get("SCILM_LOG_LEVEL", "INFO"))
    for noisy in IMPORT_NOISE:
        logging.getLogger(noisy).setLevel(logging.ERROR)
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
            from scilm.distributed import is_main_process

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
