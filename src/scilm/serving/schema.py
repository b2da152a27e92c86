"""The request schema: the payload's shape and each model kind's ``parameters``, validated in one place.

A request is the Hugging Face inference payload ``{"inputs": ..., "parameters": {...}}``, plus the
top-level ``"stream"`` that ``InferenceClient.text_generation`` sends and the legacy ``"options"``.
:func:`parse_payload` checks the shape and validates ``parameters`` with the pydantic model of the
served kind (:class:`ClassifierParameters` or :class:`GenerationParameters`); every failure is a
:class:`~scilm.serving.limits.RequestError` whose one-line message names the field. The models'
JSON schemas (bounds, defaults, meaning) are what ``GET /info`` shows under ``"parameters"``.

Parameter names and meanings are Hugging Face's: the text-classification task (``top_k``,
``function_to_apply``), the text2text-generation task (``generate_parameters``, ``truncation``,
``clean_up_tokenization_spaces``), Transformers' ``generate`` (``num_beams``, ``max_length``, ...)
and Text Generation Inference's text-generation API (``details``, ``stop``, ``best_of``, ...).
Parameters this server cannot honour are accepted only at the value that asks for nothing
(``details: false``, ``best_of: 1``, ...) and otherwise refused by name, never silently ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from scilm.data.textchem import PROMPTS
from scilm.serving.limits import MAX_BEAMS, MAX_NEW_TOKENS, RequestError

MAX_SEED = 2**63 - 1  # torch.manual_seed takes a 64-bit integer
MAX_TOP_K = 2**31 - 1
MAX_TEMPERATURE = 100.0
# temperature and repetition_penalty divide float32 logits: 1e-300 is 0.0 in float32, the division gives
# inf and sampling fails (a 500 before this floor); 0.01 keeps every division finite
MIN_DIVISOR = 0.01
MAX_REPETITION_PENALTY = 100.0
DEFAULT_BEAMS = 1  # greedy: CPU-friendly; the Text+Chem demo used 10 (ask with parameters.num_beams)
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass
class Payload:
    """A validated request: ``inputs`` (always a list), whether it was one string, the typed parameters."""

    inputs: list[str]
    single: bool  # "inputs" was one string, not a list
    parameters: Any = None  # a ClassifierParameters or GenerationParameters instance
    options: dict[str, Any] = field(default_factory=dict)


class _Parameters(BaseModel):
    """Strict types (no "2" for 2, no true for 1), unknown names refused."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)
    kind: ClassVar[str] = ""

    def check(self) -> None:
        """Rules between fields; raises RequestError naming the field."""


# -- classifier -------------------------------------------------------------------------------

class ClassifierParameters(_Parameters):
    """Parameters of the Hugging Face text-classification task (plus ``truncation``)."""

    kind: ClassVar[str] = "classifier"
    top_k: int | None = Field(
        None, ge=1, description="Return the top_k best labels, best first; a cap (a larger value returns every "
                                "label, as the Hugging Face Inference API does). Default: every label.")
    function_to_apply: Literal["softmax", "sigmoid", "none"] | None = Field(
        None, description="Scores from logits: softmax (single-label), sigmoid (multi-label) or none (raw "
                          "logits). Default: sigmoid for multi-label or one-output models, else softmax.")
    truncation: bool | None = Field(
        None, description="true: cut sequences longer than the model's limit instead of refusing them.")


# -- seq2seq ----------------------------------------------------------------------------------

# Sampling filters: each one asks for sampling (as in Text Generation Inference), and is refused
# with an explicit do_sample: false rather than silently ignored (as Transformers would).
SAMPLING_FIELDS = ("temperature", "top_k", "top_p", "typical_p", "epsilon_cutoff", "eta_cutoff")

# Parameters of Hugging Face's generation APIs that this server does not implement: the value that
# asks for nothing is accepted (clients send some of them by default), any other is refused by name.
UNSUPPORTED: dict[str, tuple[tuple[Any, ...], str]] = {
    "details": ((False,), "token details are not returned; only generated_text"),
    "decoder_input_details": ((False,), "token details are not returned; only generated_text"),
    "top_n_tokens": ((0,), "token details are not returned; only generated_text"),
    "return_full_text": ((False,), "a seq2seq model's output never contains its input"),
    "best_of": ((1,), "use num_beams (beam search) or num_return_sequences"),
    "watermark": ((False,), "watermarking is not implemented"),
    "stop": (([],), "stop sequences are not implemented; the output ends at the model's end token"),
    "truncate": ((), "inputs over the model's limit are refused, or cut with truncation: only_first"),
    "frequency_penalty": ((0, 0.0), "not implemented; use repetition_penalty"),
    "grammar": ((), "constrained decoding is not implemented"),
    "adapter_id": ((), "this server serves one model"),
    "num_beam_groups": ((1,), "diverse beam search is not in this Transformers version's generate"),
    "penalty_alpha": ((0, 0.0), "contrastive search is not in this Transformers version's generate"),
    "clean_up_tokenization_spaces": ((False,), "outputs are decoded exactly (SMILES have meaningful spaces)"),
}


class _Generation(_Parameters):
    """Transformers' generation parameters (the HF ``generate_parameters`` object), within stated bounds."""

    num_beams: int | None = Field(None, ge=1, le=MAX_BEAMS,
                                  description=f"Beam search width. Default {DEFAULT_BEAMS} (greedy).")
    max_new_tokens: int | None = Field(
        None, ge=1, le=MAX_NEW_TOKENS,
        description=f"At most this many generated tokens (the end token included). Default {DEFAULT_MAX_NEW_TOKENS}.")
    max_length: int | None = Field(
        None, ge=2, le=MAX_NEW_TOKENS + 1,
        description="Transformers' meaning: the decoder sequence including its start token, so at most "
                    "max_length - 1 generated tokens. Give max_new_tokens or max_length, not both.")
    min_new_tokens: int | None = Field(None, ge=0, le=MAX_NEW_TOKENS,
                                       description="At least this many generated tokens (end token blocked until then).")
    min_length: int | None = Field(None, ge=0, le=MAX_NEW_TOKENS + 1,
                                   description="Transformers' meaning: min_new_tokens + 1 (the start token counts).")
    do_sample: bool | None = Field(
        None, description="Sample instead of greedy/beam search. Default: false, or true when a sampling "
                          f"parameter ({', '.join(SAMPLING_FIELDS)}) is given.")
    temperature: float | None = Field(None, ge=MIN_DIVISOR, le=MAX_TEMPERATURE,
                                      description=f"Sampling temperature ({MIN_DIVISOR}-{MAX_TEMPERATURE:g}). "
                                                  "Default 1.0.")
    top_k: int | None = Field(None, ge=1, le=MAX_TOP_K,
                              description="Sample from the top_k most likely tokens. Default: off.")
    top_p: float | None = Field(None, gt=0, le=1, description="Nucleus sampling mass. Default 1.0 (off).")
    typical_p: float | None = Field(None, gt=0, le=1, description="Typical sampling mass. Default 1.0 (off).")
    epsilon_cutoff: float | None = Field(None, ge=0, lt=1, description="Epsilon sampling cutoff. Default 0 (off).")
    eta_cutoff: float | None = Field(None, ge=0, lt=1, description="Eta sampling cutoff. Default 0 (off).")
    repetition_penalty: float | None = Field(None, ge=MIN_DIVISOR, le=MAX_REPETITION_PENALTY,
                                             description="Penalty for repeated tokens (1.0: none).")
    num_return_sequences: int | None = Field(
        None, ge=1, le=MAX_BEAMS,
        description="Sequences per input; at most num_beams unless sampling. Answers with more than one "
                    "are a list of {generated_text} per input.")
    early_stopping: bool | Literal["never"] | None = Field(None, description="Beam search stopping rule.")
    use_cache: bool | None = Field(None, description="Key/value cache: changes speed, never the output.")
    num_beam_groups: int | None = None
    penalty_alpha: float | None = None


class GenerateParameters(_Generation):
    """The nested ``generate_parameters`` object of the text2text-generation task."""

    kind: ClassVar[str] = "seq2seq"


class GenerationParameters(_Generation):
    """Parameters of a seq2seq request: the generation ones, Text+Chem's ``task``, HF's other names."""

    kind: ClassVar[str] = "seq2seq"
    task: str | None = Field(
        None, description=f"A Text+Chem task ({', '.join(PROMPTS)}): the server adds its prompt. Without it, "
                          "the input is the whole prompt.")
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED,
        description="Seed of the sampling RNG. Input i of the request draws from a seed derived from this one "
                    "and i (input 0: this seed itself), so identical inputs of one request get different "
                    "samples; the same seed, inputs and parameters give the same outputs, whatever else is "
                    "in the batch. Default: a fresh random seed per request.")
    generate_parameters: GenerateParameters | None = Field(
        None, description="Generation parameters nested as in the text2text-generation task; the same "
                          "names may also be given directly.")
    truncation: Literal["do_not_truncate", "only_first", "longest_first"] | None = Field(
        None, description="do_not_truncate (default): refuse inputs over the model's limit; only_first / "
                          "longest_first: cut them at the limit.")
    details: Any = None
    decoder_input_details: Any = None
    top_n_tokens: Any = None
    return_full_text: Any = None
    best_of: Any = None
    watermark: Any = None
    stop: Any = None
    truncate: Any = None
    frequency_penalty: Any = None
    grammar: Any = None
    adapter_id: Any = None
    clean_up_tokenization_spaces: Any = None

    def merged(self) -> dict[str, Any]:
        """Every generation field given, top-level and nested; a 422 RequestError if the two disagree."""
        given = {name: getattr(self, name) for name in _Generation.model_fields if getattr(self, name) is not None}
        nested = self.generate_parameters
        if nested is not None:
            for name in _Generation.model_fields:
                value = getattr(nested, name)
                if value is None:
                    continue
                if name in given and given[name] != value:
                    raise RequestError(422, f"parameters.generate_parameters.{name}: {value!r} disagrees with "
                                            f"parameters.{name}: {given[name]!r}")
                given[name] = value
        return given

    def check(self) -> None:
        """Cross-field rules pydantic's per-field bounds cannot say; raises a 422 RequestError naming the parameter.

        A known ``task``; unsupported TGI options only at their neutral value; not both
        ``max_new_tokens`` and ``max_length`` (nor both minimums); a minimum not over the maximum; no
        sampling parameter beside ``do_sample: false``; ``num_return_sequences`` at most ``num_beams``
        (when sampling, only if ``num_beams`` > 1).
        """
        if self.task is not None and self.task not in PROMPTS:
            raise RequestError(422, f"parameters.task: unknown task {self.task!r}; tasks are: {', '.join(PROMPTS)}")
        given = self.merged()
        for name, (neutral, why) in UNSUPPORTED.items():
            value = given.get(name, getattr(self, name, None))
            if value is not None and not _is_neutral(value, neutral):
                raise RequestError(422, f"parameters.{name}: {value!r} is not supported by this server ({why})")
        if "max_new_tokens" in given and "max_length" in given:
            raise RequestError(422, "parameters.max_length: give max_new_tokens or max_length, not both")
        if "min_new_tokens" in given and "min_length" in given:
            raise RequestError(422, "parameters.min_length: give min_new_tokens or min_length, not both")
        plan = self.plan()
        if plan.minimum > plan.maximum:
            raise RequestError(422, f"parameters.min_new_tokens: {plan.minimum} is over the maximum of "
                                    f"{plan.maximum} new tokens")
        if given.get("do_sample") is False:
            asked = [name for name in SAMPLING_FIELDS if name in given]
            if asked:
                raise RequestError(422, f"parameters.{asked[0]}: a sampling parameter, but do_sample is false")
        if not plan.sampling and plan.k > plan.beams:
            raise RequestError(422, f"parameters.num_return_sequences: {plan.k} is over num_beams ({plan.beams}); "
                                    "without sampling each returned sequence is a beam")
        if plan.sampling and plan.beams > 1 and plan.k > plan.beams:
            raise RequestError(422, f"parameters.num_return_sequences: {plan.k} is over num_beams ({plan.beams})")

    def plan(self) -> GenerationPlan:
        """The ``generate`` call this request asks for (after :meth:`check`)."""
        given = self.merged()
        sampling = given.get("do_sample")
        if sampling is None:
            sampling = any(name in given for name in SAMPLING_FIELDS)
        if "max_length" in given:
            maximum = given["max_length"] - 1  # T5's decoder start token counts in max_length
        else:
            maximum = given.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)
        minimum = given["min_length"] - 1 if given.get("min_length") else given.get("min_new_tokens", 0)
        kwargs: dict[str, Any] = {"num_beams": given.get("num_beams", DEFAULT_BEAMS), "max_new_tokens": maximum,
                                  "do_sample": sampling}
        if minimum:
            kwargs["min_new_tokens"] = minimum
        for name in ("repetition_penalty", "early_stopping", "use_cache"):
            if name in given:
                kwargs[name] = given[name]
        if sampling:  # unset filters are off, whatever the model's generation_config says (TGI's defaults)
            kwargs.update(temperature=given.get("temperature", 1.0), top_k=given.get("top_k", 0),
                          top_p=given.get("top_p", 1.0), typical_p=given.get("typical_p", 1.0),
                          epsilon_cutoff=given.get("epsilon_cutoff", 0.0), eta_cutoff=given.get("eta_cutoff", 0.0))
        return GenerationPlan(tuple(sorted(kwargs.items())), given.get("num_return_sequences", 1), sampling,
                              self.truncation in ("only_first", "longest_first"))


def _is_neutral(value: Any, neutral: tuple[Any, ...]) -> bool:
    # bool is an int in Python: False must not pass for 0, nor 1 for True
    return any(type(value) is type(n) and value == n for n in neutral)


@dataclass(frozen=True)
class GenerationPlan:
    """A hashable description of one kind of generate call (the micro-batcher's group key)."""

    generate: tuple[tuple[str, Any], ...]  # model.generate keyword arguments, sorted
    k: int  # num_return_sequences
    sampling: bool
    truncate: bool  # cut over-long inputs instead of refusing them

    @property
    def kwargs(self) -> dict[str, Any]:
        """The ``model.generate`` keyword arguments."""
        return dict(self.generate)

    @property
    def beams(self) -> int:
        """``num_beams``."""
        return self.kwargs["num_beams"]

    @property
    def maximum(self) -> int:
        """New tokens at most (``max_new_tokens``, T5's start token not counted)."""
        return self.kwargs["max_new_tokens"]

    @property
    def minimum(self) -> int:
        """New tokens at least (0: none forced)."""
        return self.kwargs.get("min_new_tokens", 0)


# -- the payload --------------------------------------------------------------------------------

_OPTIONS = {"use_cache", "wait_for_model"}  # the legacy Inference API's options: no-ops for a local server


def parse_payload(data: Any, max_inputs: int, parameters: type[_Parameters] = ClassifierParameters) -> Payload:
    """The HF inference payload, validated: ``inputs`` a string or a list of strings, typed ``parameters``.

    Raises RequestError (422 for a bad shape or value, 413 for too many inputs), naming the field.
    """
    if isinstance(data, str):  # a bare JSON string is what some clients send
        data = {"inputs": data}
    if not isinstance(data, dict) or "inputs" not in data:
        raise RequestError(422, 'expected a JSON object with "inputs" (a string or a list of strings)')
    unknown = set(data) - {"inputs", "parameters", "options", "stream"}
    if unknown:
        raise RequestError(422, f"unknown field(s) {sorted(unknown)}; expected 'inputs' and 'parameters'")
    stream = data.get("stream")
    if stream is not None and stream is not False:
        raise RequestError(422, f"stream: {stream!r} is not supported (answers come whole); send false or omit it")
    options = data.get("options") or {}
    if not isinstance(options, dict) or set(options) - _OPTIONS or not all(
            isinstance(v, bool) for v in options.values()):
        raise RequestError(422, f'"options" must be an object of booleans among {sorted(_OPTIONS)}')
    inputs, single = data["inputs"], isinstance(data["inputs"], str)
    if single:
        inputs = [inputs]
    if not isinstance(inputs, list):
        raise RequestError(422, '"inputs" must be a string or a list of strings')
    if not inputs:
        raise RequestError(422, '"inputs" is an empty list')
    if len(inputs) > max_inputs:
        raise RequestError(413, f"too many inputs: {len(inputs)} (at most {max_inputs} per request)")
    for i, item in enumerate(inputs):
        if not isinstance(item, str):
            raise RequestError(422, f"inputs[{i}] is {type(item).__name__}, expected a string")
    raw = data.get("parameters")
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RequestError(422, '"parameters" must be an object')
    return Payload(inputs=inputs, single=single, parameters=validate_parameters(parameters, raw), options=options)


def validate_parameters(model: type[_Parameters], raw: dict) -> _Parameters:
    """``raw`` as a ``model`` instance; the first problem as a 422 naming ``parameters.<field>``."""
    try:
        parsed = model.model_validate(raw)
    except ValidationError as exc:
        raise RequestError(422, _describe(exc, model)) from None
    parsed.check()
    return parsed


def _describe(exc: ValidationError, model: type[_Parameters]) -> str:
    errors = exc.errors(include_url=False)
    unknown = sorted(str(e["loc"][-1]) for e in errors if e["type"] == "extra_forbidden" and len(e["loc"]) == 1)
    if unknown:
        return (f"unknown parameter(s) {unknown} for a {model.kind} model; known: "
                f"{', '.join(model.model_fields)} (see GET /info)")
    error = errors[0]
    where = "parameters." + ".".join(str(part) for part in error["loc"] if not _is_union_tag(part))
    message = error["msg"]
    if error["type"] == "extra_forbidden":
        message = "unknown parameter"
    return f"{where}: {message[0].lower()}{message[1:]} (got {error.get('input')!r})"


def _is_union_tag(part: Any) -> bool:
    """Pydantic names the branch of a union in the error location (``int``, ``literal['never']``...)."""
    return isinstance(part, str) and (part in {"int", "float", "bool", "str", "none"} or "[" in part)


def parameters_schema(model: type[_Parameters]) -> dict[str, Any]:
    """Name -> {type, bounds, description} of every parameter, for ``GET /info``."""
    schema = model.model_json_schema()
    out = {}
    for name, spec in schema["properties"].items():
        if name in UNSUPPORTED:
            neutral = UNSUPPORTED[name][0]
            out[name] = {"description": "Not supported: " + UNSUPPORTED[name][1]
                         + (f"; accepted only as {neutral[0]!r}" if neutral else "; accepted only as null")}
            continue
        branches = [{k: v for k, v in branch.items() if k != "title"}
                    for branch in spec.get("anyOf", [spec]) if branch.get("type") != "null"]
        out[name] = dict(branches[0]) if len(branches) == 1 else {"anyOf": branches}
        out[name]["description"] = spec.get("description", "")
        if name == "generate_parameters":
            out[name] = {"description": spec.get("description", ""), "fields": sorted(_Generation.model_fields)}
    return out
