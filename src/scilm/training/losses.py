"""Per-item loss sums: what every recipe's training loss is normalised by.

A recipe's loss over one optimizer step is ``sum of per-item losses / number of items`` over the
*whole* accumulated window (all micro-batches of a gradient-accumulation step, all processes):

* an item is a label that is not ``-100``: one per sample for the classifier, one per target token
  for seq2seq, one per masked token for masked-LM pre-training;
* so the loss and its gradient do not depend on how the window is split into micro-batches
  (``--batch-size B --grad-accum 1`` = ``B/2, 2`` = ``B/4, 4``), on padding, or on a ragged last
  micro-batch, and every token of a seq2seq window weighs the same ("token-weighted").

Each function here maps a batch's model outputs and labels to ``(sums, items)``, both of shape
``(n,)`` for the ``n`` samples of the batch: the summed loss of each sample's items and how many
items it has. :class:`~scilm.training.trainer.ScilmTrainer` divides their sum by the window's item
count. (Hugging Face's own models return a per-batch *mean*; averaging means over micro-batches
weighs a short target's tokens more than a long one's: transformers issue #34242.)
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

IGNORE = -100  # label of padding / unmasked positions: not an item

ItemLoss = Callable[[object, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _logits(outputs) -> torch.Tensor:
    return outputs["logits"] if isinstance(outputs, dict) else outputs[0]


def count_items(labels: torch.Tensor) -> torch.Tensor:
    """Number of items (labels other than -100) in ``labels`` of any shape: a 0-d long tensor."""
    return labels.ne(IGNORE).sum()


def token_loss_sums(outputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Token cross-entropy: logits (n, T, V), labels (n, T) -> (sums (n,), items (n,)).

    ``sums[i]`` is the summed cross-entropy (nats) of sample i's tokens whose label is not -100;
    ``items[i]`` their count. Used by seq2seq (target tokens) and masked-LM (masked tokens).
    """
    logits = _logits(outputs)
    n, t, v = logits.shape
    tokens = F.cross_entropy(logits.float().reshape(n * t, v), labels.reshape(n * t).long(),
                             ignore_index=IGNORE, reduction="none").reshape(n, t)
    return tokens.sum(dim=1), labels.ne(IGNORE).sum(dim=1)


def class_loss_sums(weights: torch.Tensor | None = None) -> ItemLoss:
    """Sequence classification: logits (n, C), labels (n,) -> (w_y * CE (n,), items (n,) of 1).

    With class ``weights`` (C,) the loss of a window of N samples is ``sum_i w_{y_i} l_i / N``.
    That is the mean of the weighted losses, *not* PyTorch's ``reduction='mean'`` with weights
    (``sum w l / sum w``): a denominator that depends on which classes a micro-batch holds cannot
    be split over micro-batches, processes or a ragged last batch, so the two would train
    differently under gradient accumulation. With the "balanced" weights ``n / (k * count_c)``
    ``sum w`` over the whole training set equals N, so both agree over an epoch.
    """

    def loss(outputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = _logits(outputs)
        w = weights.to(logits.device) if weights is not None else None
        sums = F.cross_entropy(logits.float(), labels.long(), weight=w, ignore_index=IGNORE, reduction="none")
        return sums, labels.ne(IGNORE).long()

    return loss


def cross_entropy_sums(outputs, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The default: per-sample class cross-entropy for (n,) labels, token cross-entropy for (n, T)."""
    if labels.dim() == 1:
        return class_loss_sums()(outputs, labels)
    return token_loss_sums(outputs, labels)
