"""ESM-2's feed-forward GELU in one kernel, for every scilm forward and backward of an ESM model.

transformers' ESM computes the feed-forward activation with the original ESM repository's formula,
``x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))`` (``modeling_esm.gelu``): five elementwise passes
over the (B, T, 4H) intermediate tensor, the widest tensor of the layer, each writing a new tensor
(and autograd keeps them for the backward pass). ``torch.nn.functional.gelu`` with
``approximate="none"`` is the same function, x * Phi(x) with the normal CDF Phi written through
``erf`` (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units"; PyTorch's kernel computes
``x * 0.5 * (1 + erf(x * M_SQRT1_2))``), in one pass forward and one backward. It is not the tanh
approximation (``approximate="tanh"``), which is a different function.

What it changes: float rounding only. ``x * (1/sqrt 2)`` and ``x / sqrt 2`` may differ in the last bit,
so elementwise the two differ by at most a few units in the last place of the result (tests/test_fused_gelu.py:
<= 1e-6 absolute on [-30, 30], gradients too; hidden states, logits and a training step's gradients
of whole models equal transformers' to 1e-5).

What it saves (measured, ``scilm bench inference``; one layer's activation on (16, 512, 1920) fp32
on the 2-core EPYC of the README: ~170 ms as five passes, ~13 ms fused): at the esm2-35m shape about
a sixth of an inference forward. When it does not help: on a GPU, where elementwise kernels are a
small share of the time, and in bf16 autocast or int8 modes it saves the same passes but their share
is another.

Applied by :func:`use_fused_gelu` to every ``EsmIntermediate`` of a model (by class swap: same
module, same parameters and submodules, so PEFT adapters, quantisation and saving are unaffected;
``state_dict`` keys do not change). Subclasses of ``EsmIntermediate`` from elsewhere are left alone.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.esm.modeling_esm import EsmIntermediate


class FusedGeluEsmIntermediate(EsmIntermediate):
    """:class:`EsmIntermediate` with ``torch.nn.functional.gelu`` (exact erf form, one kernel).

    (B, T, H) in, (B, T, intermediate_size) out, as the class it replaces.
    """

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return nn.functional.gelu(self.dense(hidden_states))


def use_fused_gelu(model: nn.Module) -> int:
    """Swap every plain ``EsmIntermediate`` of ``model`` (in place) to :class:`FusedGeluEsmIntermediate`.

    Returns how many modules now use it (0 for a model without ESM layers, e.g. T5: nothing changes).
    Idempotent. Raises nothing.
    """
    count = 0
    for module in model.modules():
        if type(module) is EsmIntermediate:
            module.__class__ = FusedGeluEsmIntermediate
        count += type(module) is FusedGeluEsmIntermediate
    return count
