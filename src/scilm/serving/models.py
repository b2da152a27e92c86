"""The served model, of either kind, behind one interface the server and the batcher use.

The kind comes from the saved ``config.json``: ``*ForSequenceClassification`` is a classifier
(proteins in, ``[{"label", "score"}]`` out); ``*ForTokenClassification`` a per-residue classifier
(``--task residue``: proteins in, one ``{"entity", "score", "index", "word", "start", "end"}`` per
residue out, the bounds of a classifier); ``model_type: t5`` or ``*ForConditionalGeneration``
is a seq2seq model (Text+Chem prompts in, ``[{"generated_text"}]`` out). Weights load from
safetensors only: a directory with nothing but a pickled ``pytorch_model.bin`` is refused.

Per request, ``prepare`` validates inputs and says how they may be batched (a ``group`` key:
inputs of one group can share a model call); ``run_batch`` is the model call, run by the
batcher's thread; ``respond`` turns the results into the HF payload.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import secrets
import threading
from collections.abc import Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from scilm.data.textchem import MOLECULE_TASKS, PROMPTS, task_of
from scilm.errors import ScilmError
from scilm.inference.batching import encode_proteins, inference_batches
from scilm.inference.policy import WindowPolicy, split
from scilm.inference.predict import is_regression, multilabel_thresholds, output_function, policy_logits
from scilm.inference.residue import residue_logits
from scilm.serving.batching import Control
from scilm.serving.limits import RequestError, clean_protein, clean_source
from scilm.serving.schema import (
    ClassifierParameters,
    GenerationParameters,
    GenerationPlan,
    Payload,
    TokenClassificationParameters,
    parameters_schema,
)

log = logging.getLogger(__name__)

_HUGE = 1_000_000  # tokenizers without a real limit report model_max_length ~1e30


def model_kind(path: str | Path) -> str:
    """``"classifier"``, ``"residue"`` (a per-residue classifier) or ``"seq2seq"``, from ``path/config.json``.

    Raises ScilmError naming ``--model`` if config.json is missing or not JSON, or its architecture is
    none of ``*ForSequenceClassification``, ``*ForTokenClassification`` or a T5 seq2seq model.
    """
    config_file = Path(path) / "config.json"
    if not config_file.is_file():
        raise ScilmError(f"--model {path}: no config.json (expected a directory saved by scilm train)")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ScilmError(f"--model {path}: config.json is not valid JSON ({exc})") from None
    architectures = config.get("architectures") or []
    if config.get("model_type") == "t5" or any(a.endswith("ForConditionalGeneration") for a in architectures):
        return "seq2seq"
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "classifier"
    if any(a.endswith("ForTokenClassification") for a in architectures):
        return "residue"
    raise ScilmError(
        f"--model {path}: cannot serve architectures {architectures or 'none'} "
        "(a *ForSequenceClassification or *ForTokenClassification classifier, or a T5 seq2seq model)"
    )


def _require_safetensors(path: Path) -> None:
    if not any(path.glob("*.safetensors")):
        raise ScilmError(f"--model {path}: no *.safetensors weights (scilm serves safetensors only, never pickles)")


PROBE_PROTEINS = 64  # bundled DeepLoc-1 validation proteins the serving precision probe picks its batch from


def load_served_model(path: str | Path, precision: str = "fp32", quantize: str = "none"
                      ) -> ServedClassifier | ServedResidueClassifier | ServedSeq2Seq:
    """The model saved in directory ``path`` (by ``scilm train``), ready to serve, of the kind :func:`model_kind` reads.

    ``precision`` / ``quantize``: a protein model runs in the mode :func:`scilm.inference.precision
    .prepare_for_inference` chooses (probed on bundled DeepLoc-1 validation proteins cut to the served
    length, as no request has arrived yet; the same quality guard as predict's), so served answers are
    predict's in that mode. Weights load from ``*.safetensors`` only. Raises ScilmError naming
    ``--model`` when the directory is missing, its ``config.json`` is missing, invalid or of an
    architecture not served, or it has no safetensors weights; naming ``precision`` for a mode other
    than fp32 on a seq2seq model (its generation is not guarded).
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ScilmError(f"--model {path}: no such model directory")
    kind = model_kind(path)
    _require_safetensors(path)
    if kind in ("classifier", "residue"):
        from scilm.models.protein import load_trained_classifier

        model, tokenizer = load_trained_classifier(str(path))  # a token classifier when config.json says so
        model = _fast_path(model, tokenizer, precision, quantize)
        return (ServedClassifier if kind == "classifier" else ServedResidueClassifier)(model, tokenizer, path)
    if precision != "fp32" or quantize != "none":
        raise ScilmError("precision/quantize: a seq2seq model is served in fp32 (the quality guard compares "
                         "protein embeddings and labels, not generated text)")
    from scilm.inference.generate import load_seq2seq

    model, tokenizer = load_seq2seq(str(path))
    return ServedSeq2Seq(model.eval(), tokenizer, path)


def _fast_path(model, tokenizer, precision: str, quantize: str):
    """``model`` in the chosen precision / int8 mode (:func:`load_served_model`); the choice logged."""
    if precision == "fp32" and quantize == "none":
        return model
    from scilm.data.protein import BUNDLED_DEEPLOC1, read_proteins
    from scilm.inference.precision import prepare_for_inference
    from scilm.models.protein import max_residues

    bundled = BUNDLED_DEEPLOC1 / "valid.fasta"
    length = max_residues(model.config, tokenizer)
    sample = [r.sequence[:length] for r in read_proteins(bundled, task=None, label_column=None,
                                                         unique_ids=False)[:PROBE_PROTEINS]]
    model, plan = prepare_for_inference(model, tokenizer, sample, precision, quantize)
    log.info("serving in %s", plan.summary())
    return model


# -- classifier -------------------------------------------------------------------------------

@dataclass
class ServedClassifier:
    """A protein sequence classifier being served: ``(N,)`` sequences in, ``(N, num_labels)`` scores out.

    ``model`` is a ``*ForSequenceClassification`` in eval mode, ``tokenizer`` its ESM tokenizer;
    sequences longer than ``max_residues`` are refused (422) or, with ``parameters.truncation``,
    fed by the model's long-protein policy as ``scilm predict`` feeds them (the one it was trained
    with, :func:`scilm.inference.policy.model_policy`: head, ends, or windows whose logits are averaged). Scores are ``parameters.function_to_apply`` of the logits
    (``softmax``, ``sigmoid`` or ``none``); by default sigmoid for a multi-label or one-label model,
    else softmax. The answers are ``scilm predict``'s: a multi-label model's items also say whether
    the label is ``predicted`` (score at or above the threshold tuned in training; sigmoid scores
    only), and a regression model (``problem_type: regression``) answers each target's value in the
    targets' own units (the training standardisation undone, as predict does), never a squashed logit.
    """

    model: Any
    tokenizer: Any
    path: Path
    kind: str = "classifier"

    def __post_init__(self):
        from scilm.inference.policy import model_policy
        from scilm.models.protein import max_residues

        config = self.model.config
        self.labels = [config.id2label[i] for i in range(config.num_labels)]
        # the one length policy of predict/embed/serve: the trained length (config.json), else positions
        self.max_residues = max_residues(config, self.tokenizer)
        self.policy = model_policy(config, self.tokenizer, truncate=self.max_residues)
        multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
        self.default_function = "sigmoid" if multi_label or config.num_labels == 1 else "softmax"
        self.regression = is_regression(config)
        self.to_value = output_function(config) if self.regression else None
        self.thresholds = multilabel_thresholds(config)

    parameters = ClassifierParameters  # the schema of this kind's request parameters

    def info(self) -> dict:
        """What ``GET /info`` says of the model: its kind, labels, length limit and parameters schema."""
        task = "regression" if self.regression else "multi-label" if self.thresholds else "single-label"
        return {"kind": self.kind, "task": task, "labels": self.labels, "max_residues": self.max_residues,
                "long_policy": self.policy.name,
                **({"thresholds": self.thresholds} if self.thresholds else {}),
                "parameters": parameters_schema(self.parameters)}

    def prepare(self, payload: Payload) -> tuple[Hashable, list[str]]:
        """Cleaned sequences (parameters were validated by the schema).

        Raises:
            RequestError: 422 for a bad residue, a sequence over the limit without ``truncation``, or a
                ``function_to_apply`` other than none for a regression model (its answers are values).
        """
        function = payload.parameters.function_to_apply
        if self.regression and function not in (None, "none"):
            raise RequestError(422, f"parameters.function_to_apply: this is a regression model; its scores are "
                                    f"predicted values, not {function} of logits (omit it)")
        limit = _HUGE if payload.parameters.truncation else self.max_residues
        sequences = []
        for i, raw in enumerate(payload.inputs):
            where = "input" if payload.single else f"inputs[{i}]"
            cleaned = clean_protein(raw, where, limit)
            sequences.append(cleaned if isinstance(self.policy, WindowPolicy) else self.policy(cleaned))
        return None, sequences

    def cost(self, group: Hashable, sequence: str) -> int:
        """Token-steps of one input: the tokens of each piece fed (residues + <cls> + <eos>)."""
        return sum(len(piece) + 2 for piece in split(self.policy, sequence)[0])

    @torch.inference_mode()
    def run_batch(self, group: Hashable, sequences: list[str], control: Control | None = None) -> list[list[float]]:
        """Logits per sequence, ``scilm predict``'s (:func:`scilm.inference.predict.policy_logits`): one forward
        per batch of :func:`scilm.inference.batching.inference_batches` (2,048 padded residues on a CPU,
        under 10 % padding), so a micro-batch may take several; fp32's near a decision boundary in a
        reduced precision.

        Between forwards ``control`` is checked: past its deadline TimeLimit, all inputs abandoned
        Cancelled (a forward itself is bounded by :func:`scilm.inference.batching.forward_tokens`).
        """
        return policy_logits(self.model, self.tokenizer, sequences, self.policy, None, control).tolist()  # predict's

    def respond(self, payload: Payload, logits: list[list[float]]) -> list:
        """One list of ``{"label", "score"}`` per input, best first (the HF Inference API shape)."""
        function = payload.parameters.function_to_apply or self.default_function
        top_k = payload.parameters.top_k or len(self.labels)  # a cap, as in the HF Inference API
        answers = []
        for row in logits:
            if self.regression:  # a value per target, in input order (ranking values means nothing)
                values = self.to_value(torch.tensor([row], dtype=torch.float32))[0].tolist()
                answers.append([{"label": label, "score": value} for label, value in zip(self.labels, values)][:top_k])
                continue
            scores = _apply(function, row)
            ranked = sorted(zip(self.labels, scores), key=lambda pair: -pair[1])[:top_k]
            if self.thresholds and function == "sigmoid":
                answers.append([{"label": label, "score": score, "predicted": score >= self.thresholds[label]}
                                for label, score in ranked])
            else:
                answers.append([{"label": label, "score": score} for label, score in ranked])
        return answers


@dataclass
class ServedResidueClassifier(ServedClassifier):
    """A per-residue (token-classification) protein model being served (``--task residue``).

    Each input's answer is Hugging Face's token-classification shape with ``aggregation_strategy``
    none: one item per residue fed, in order, ``{"entity": label, "score": p, "index": i, "word":
    residue, "start": i, "end": i + 1}``, where ``entity`` is the argmax of the residue's logits (the
    label ``scilm predict`` writes for it), ``score`` its softmax probability, ``i`` the residue's
    0-based position in the (cleaned) input, so ``start``/``end`` index the sequence. Unlike Hugging
    Face's ``index`` (a token position, 1 + i for ESM-2), ``index`` counts residues; no label is
    dropped (HF drops ``O`` by default: here every residue has an answer). One input string is
    answered by its list alone, a list of inputs by one list per input (the pipeline's shapes).

    Sequences over the limit are refused, or with ``parameters.truncation`` cut: the answer then
    covers the residues fed only (``scilm predict`` writes ``.`` for the rest). A request costs its
    tokens as a classifier's (residues + 2, :meth:`ServedClassifier.cost`), so the per-request budget
    bounds the answer too: at most ``max_request_cost`` items, about 90 bytes of JSON each.
    """

    parameters = TokenClassificationParameters  # the schema of this kind's request parameters

    def info(self) -> dict:
        """What ``GET /info`` says of the model: kind, task ``per-residue``, labels, length limit, parameters."""
        return {"kind": self.kind, "task": "per-residue", "labels": self.labels, "max_residues": self.max_residues,
                "parameters": parameters_schema(self.parameters)}

    def prepare(self, payload: Payload) -> tuple[Hashable, list[str]]:
        """Cleaned sequences; a 422 RequestError for a bad residue or, without ``truncation``, one over the limit."""
        limit = _HUGE if payload.parameters.truncation else self.max_residues
        return None, [clean_protein(raw, "input" if payload.single else f"inputs[{i}]", limit)[: self.max_residues]
                      for i, raw in enumerate(payload.inputs)]

    @torch.inference_mode()
    def run_batch(self, group: Hashable, sequences: list[str],
                  control: Control | None = None) -> list[tuple[str, list[int], list[float]]]:
        """Per sequence (its residues, class id per residue, its softmax probability): residue i is token i + 1 (after
        ``<cls>``), the argmax of the logits as :func:`scilm.inference.residue.predict_residues` takes it.
        ``control`` is checked between forwards (see :meth:`ServedClassifier.run_batch`)."""
        results: list[tuple[str, list[int], list[float]]] = [("", [], []) for _ in sequences]
        for batch in inference_batches([len(s) for s in sequences], None, self.model.device):
            if control is not None:
                control.check()
            encoded = encode_proteins(self.tokenizer, [sequences[i] for i in batch])
            logits = residue_logits(self.model, encoded, control)  # (B, T, C), predict's
            ids = logits.argmax(dim=-1)
            scores = logits.softmax(dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
            for row, i in enumerate(batch):
                n = len(sequences[i])
                results[i] = (sequences[i], ids[row, 1:n + 1].tolist(), scores[row, 1:n + 1].tolist())
        return results

    def respond(self, payload: Payload, results: list[tuple[str, list[int], list[float]]]) -> list:
        """One list of per-residue items per input (see the class docstring); one input string: that list."""
        answers = []
        for residues, ids, scores in results:
            answers.append([{"entity": self.labels[c], "score": p, "index": i, "word": residues[i], "start": i,
                             "end": i + 1} for i, (c, p) in enumerate(zip(ids, scores))])
        return answers[0] if payload.single else answers


def _apply(function: str, row: list[float]) -> list[float]:
    # float32 torch, as scilm predict computes them: a score on a threshold gets predict's verdict
    logits = torch.tensor(row, dtype=torch.float32)
    if function == "sigmoid":
        return torch.sigmoid(logits).tolist()
    if function == "none":
        return list(row)
    return logits.softmax(dim=-1).tolist()


# -- seq2seq ----------------------------------------------------------------------------------

class _StopOnControl(StoppingCriteria):
    """A Transformers stopping criterion: every row stops once ``control`` says so (deadline or all abandoned)."""

    def __init__(self, control: Control):
        self.control = control

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        stop = self.control.should_stop()
        return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)


def _bounded(control: Control, generate_sequences, *args, **generation):
    """``generate_sequences`` stopped at its next step by ``control``; raises if it was cut short.

    The control's criterion is the only stop on time. transformers' ``max_time`` is not passed: it
    reads another clock (``time.time``) from its own start, so it could end a generation a moment
    before ``control``'s monotonic deadline without saying so, and the cut-short text would go out
    as an answer (found while reading this path for a flaky test; tests/test_serving_abuse.py
    reproduces it with a fast wall clock). Stopped by ``control``, the reason is always recorded.
    """
    control.check()
    criterion = _StopOnControl(control)
    result = generate_sequences(*args, stopping_criteria=StoppingCriteriaList([criterion]), **generation)
    if control.stop_reason is not None or control.remaining() == 0:  # cut short: its text is not an answer
        control.stop_reason = control.stop_reason or "time"
        raise control.error()
    return result


def input_seed(seed: int, index: int) -> int:
    """The sampling seed (0 to 2**63 - 1) of input ``index`` of a request whose seed is ``seed``.

    Input 0 draws from ``seed`` itself, so a one-input request gives what ``torch.manual_seed(seed)``
    then ``model.generate`` give. Input ``index > 0`` draws from the first 63 bits of NumPy's
    ``SeedSequence(seed, spawn_key=(index,))`` (NumPy's way to derive independent streams from one
    root seed, "Parallel random number generation" in its manual), so identical inputs in one
    request get different samples, and ``seed + 1`` is not input 1 of ``seed``. ``index`` is the
    input's place in its request, never in a micro-batch: what else is batched never changes it.
    """
    if index == 0:
        return seed
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, dtype=np.uint64)[0]
    return int(state) >> 1


@dataclass(frozen=True)
class Source:
    """One seq2seq input ready to run: its task (None: a free prompt), full source, sampling seed."""

    task: str | None
    text: str
    seed: int | None
    tokens: int = 0  # source tokens the encoder reads (after truncation)


@dataclass
class ServedSeq2Seq:
    """A Text+Chem T5 (seq2seq) being served: prompts in, ``num_return_sequences`` texts per prompt out.

    Sources are refused (422) past ``max_source_tokens`` (the tokenizer's ``model_max_length``, else
    512) unless ``parameters.truncation`` cuts them; outputs of molecule tasks are decoded as SMILES.
    Sampled inputs draw from their own seed (:func:`input_seed`).
    """

    model: Any
    tokenizer: Any
    path: Path
    kind: str = "seq2seq"

    parameters = GenerationParameters  # the schema of this kind's request parameters

    def __post_init__(self):
        n = self.tokenizer.model_max_length
        self.max_source_tokens = n if n and n < _HUGE else 512
        # prepare() runs in the request threads while run_batch() tokenizes in the model thread: a fast
        # tokenizer shared between threads fails ("Already borrowed") when one sets truncation, so
        # requests are counted with their own copy, one thread at a time
        self._counter = copy.deepcopy(self.tokenizer)
        self._counter_lock = threading.Lock()

    def info(self) -> dict:
        """What ``GET /info`` says of the model: its kind, tasks, source limit and parameters schema."""
        return {"kind": self.kind, "tasks": list(PROMPTS), "molecule_tasks": list(MOLECULE_TASKS),
                "max_source_tokens": self.max_source_tokens, "parameters": parameters_schema(self.parameters)}

    def prepare(self, payload: Payload) -> tuple[Hashable, list[Source]]:
        """Validated sources; the group key is the generate call, so only like requests share one.

        Raises a 422 RequestError naming the input (:func:`clean_source`), or one over
        ``max_source_tokens`` tokens without ``parameters.truncation``.
        """
        params: GenerationParameters = payload.parameters
        plan = params.plan()
        seed = params.seed
        if plan.sampling and seed is None:
            seed = secrets.randbits(63)  # the request's seed; each input draws from input_seed(seed, i)
        values = []
        for i, raw in enumerate(payload.inputs):
            where = "input" if payload.single else f"inputs[{i}]"
            source = clean_source(raw, where, params.task)
            with self._counter_lock:
                n_tokens = len(self._counter(source)["input_ids"])
            if n_tokens > self.max_source_tokens and not plan.truncate:
                raise RequestError(422, f"{where}: {n_tokens} tokens (prompt included) is over the model's "
                                        f"limit of {self.max_source_tokens} (or send parameters.truncation: "
                                        "only_first)")
            # a written prompt counts as naming its task (SMILES outputs are decoded as such)
            values.append(Source(task_of(source), source, input_seed(seed, i) if plan.sampling else None,
                                 min(n_tokens, self.max_source_tokens)))
        return plan, values

    def cost(self, plan: GenerationPlan, source: Source) -> int:
        """Token-steps of one input: source tokens + rows x new tokens (the decoder runs ``rows`` sequences,
        ``max(num_beams, num_return_sequences)``, for up to ``max_new_tokens`` steps)."""
        return source.tokens + max(plan.beams, plan.k) * plan.maximum

    def run_batch(self, plan: GenerationPlan, values: list[Source], control: Control | None = None) -> list[list[str]]:
        """``plan.k`` texts per input. One generate call per task (tasks decode SMILES differently);
        sampled inputs run one by one, each from its own seed, so no other input changes its draw.

        ``control`` bounds the calls: every ``generate`` stops at its next step once the control's
        deadline passes or every input is abandoned; a stopped call raises TimeLimit
        or Cancelled, never returns its partial text. Abandoned inputs run one-by-one are skipped.
        """
        from scilm.inference import generate

        control = control or Control(len(values), math.inf)
        outputs: list[list[str]] = [[] for _ in values]
        for task in dict.fromkeys(v.task for v in values):
            index = [i for i, v in enumerate(values) if v.task == task]
            smiles = task in MOLECULE_TASKS
            if not plan.sampling:
                texts = _bounded(control, generate.generate_sequences, self.model, self.tokenizer,
                                 [values[i].text for i in index], smiles, len(index), plan.k, **plan.kwargs)
                for i, text in zip(index, texts):
                    outputs[i] = text
                continue
            device = next(self.model.parameters()).device
            for i in index:
                if control.is_abandoned(i):
                    continue
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(values[i].seed)
                    outputs[i] = _bounded(control, generate.generate_sequences, self.model, self.tokenizer,
                                          [values[i].text], smiles, 1, plan.k, **plan.kwargs)[0]
        return outputs

    def respond(self, payload: Payload, texts: list[list[str]]) -> list:
        """``[{"generated_text"}]``, one per input; with num_return_sequences > 1 each input has a list
        of them (one input: that list alone), as the Transformers text2text pipeline answers."""
        answers = [[{"generated_text": text} for text in sequences] for sequences in texts]
        if payload.parameters.plan().k == 1:
            return [answer[0] for answer in answers]
        return answers[0] if payload.single else answers
