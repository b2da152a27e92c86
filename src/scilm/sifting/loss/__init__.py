"""Per-sample losses for scoring: the abstract ``Loss`` of the original interface and built-ins."""

from __future__ import annotations

import abc
from typing import Any, Mapping

import torch
import torch.nn.functional as F

from scilm.errors import ScilmError


class Loss(abc.ABC):
    """Scores a batch: return one loss per sample, shape (n,) or (n, 1) (``reduction='none'``).

    ``transformed_batch`` is the batch as the sifter sees it (after ``batch_transforms``, moved to
    the model's device); ``original_batch`` is what the DataLoader yielded.
    """

    @abc.abstractmethod
    def loss(self, model: torch.nn.Module, transformed_batch: Any, original_batch: Any = None) -> torch.Tensor:
        """Per-sample losses ``(B,)`` of ``model`` on ``transformed_batch`` (no reduction): higher, kept likelier."""
        ...


def per_sample_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(n, C) logits, (n,) class ids -> (n,) cross-entropy."""
    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def per_sample_token_mean(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """(n, T, V) logits, (n, T) labels -> (n,) mean cross-entropy over each sample's unmasked tokens.

    A sample with no unmasked token gets loss 0.
    """
    n, t, v = logits.shape
    tokens = F.cross_entropy(logits.float().reshape(n * t, v), labels.reshape(n * t).long(),
                             ignore_index=ignore_index, reduction="none").reshape(n, t)
    counts = (labels != ignore_index).sum(dim=1)
    return tokens.sum(dim=1) / counts.clamp(min=1)


def _labels(batch: Any) -> torch.Tensor:
    if not isinstance(batch, Mapping) or "labels" not in batch:
        raise ScilmError("this loss needs dict batches with a 'labels' key (Hugging Face style)")
    return batch["labels"]


class SequenceClassificationLoss(Loss):
    """Cross-entropy per sample for Hugging Face sequence-classification batches.

    Batch: a dict with input_ids / attention_mask / labels; the model is called without the labels
    (no reduced loss computed) and its ``.logits`` (n, num_labels) are scored.
    """

    def loss(self, model, transformed_batch, original_batch=None):
        labels = _labels(transformed_batch)
        inputs = {k: v for k, v in transformed_batch.items() if k != "labels"}
        return per_sample_cross_entropy(model(**inputs).logits, labels)


class SquaredErrorLoss(Loss):
    """Squared error per sample for regression batches: the model's ``.logits`` (n, 1) against labels (n,)."""

    def loss(self, model, transformed_batch, original_batch=None):
        labels = _labels(transformed_batch)
        inputs = {k: v for k, v in transformed_batch.items() if k != "labels"}
        return (model(**inputs).logits.float().reshape(-1) - labels.float().reshape(-1)) ** 2


class Seq2SeqLoss(Loss):
    """Token-averaged cross-entropy per sample; labels equal to -100 are ignored.

    Encoder-decoder models (T5): decoder inputs come from ``prepare_decoder_input_ids_from_labels``.
    ``causal=True`` for decoder-only models: logits at position t predict label t+1.
    """

    def __init__(self, causal: bool = False, ignore_index: int = -100):
        self.causal = causal
        self.ignore_index = ignore_index

    def loss(self, model, transformed_batch, original_batch=None):
        labels = _labels(transformed_batch)
        inputs = {k: v for k, v in transformed_batch.items() if k != "labels"}
        if not self.causal and "decoder_input_ids" not in inputs:
            prepare = getattr(model, "prepare_decoder_input_ids_from_labels", None)
            if prepare is None:
                raise ScilmError("Seq2SeqLoss needs decoder_input_ids in the batch or a model with "
                                 "prepare_decoder_input_ids_from_labels (use causal=True for decoder-only models)")
            inputs["decoder_input_ids"] = prepare(labels=labels)
        logits = model(**inputs).logits
        if self.causal:
            logits, labels = logits[:, :-1], labels[:, 1:]
        return per_sample_token_mean(logits, labels, self.ignore_index)


class RandomLoss(Loss):
    """A control, not a method: uniform random "losses" (no forward pass), so the selection rule
    drops samples at the same expected rate, 1/(1+beta), but independently of how hard they are."""

    def __init__(self, seed: int = 0):
        # Offset: with the selector's own seed, both streams would run in lockstep and the rule
        # rand < percentile**beta would keep almost everything.
        self.generator = torch.Generator().manual_seed(seed + 7919)

    def loss(self, model, transformed_batch, original_batch=None):
        from scilm.sifting.batching import batch_size

        return torch.rand(batch_size(transformed_batch), generator=self.generator)
