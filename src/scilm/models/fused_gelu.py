"""ESM-2's feed-forward GELU in one kernel, for every scilm forward and backward of an ESM model.

transformers' ESM computes the feed-forward activation with the original ESM repository's formula,
``x * 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))`` (``modeling_esm.gelu``): five elementwise passes
over the (B, T, 4H) intermediate tensor, the widest tensor of the layer, each writing a new tensor
(autograd keeps several of them for the backward pass). ``torch.nn.functional.gelu`` with
``approximate="none"`` is the same function, x * Phi(x) with the normal CDF Phi written through
``erf`` (Hendrycks & Gimpel 2016, "Gaussian Error Linear Units"; PyTorch's kernel computes
``x * 0.5 * (1 + erf(x * M_SQRT1_2))``), in one pass forward and one backward. It is not the tanh
approximation (``approximate="tanh"``), a different function (up to ~5e-4 apart). transformers'
``gelu`` says "Using F.gelu yields subtly wrong results"; measured here, the difference is float
rounding: ``x * (1/sqrt 2)`` against ``x / sqrt 2`` in the last bit (tests/test_fused_gelu.py: the
swapped module against transformers' on pre-activations over [-8, 8], outputs within 2e-6 absolute,
gradients within 1e-5; hidden states and logits of the pre-trained ``esm2-tiny-mlm`` and of random
models within 1e-5; a training step's loss within 1e-6 and gradients within rtol 1e-4).

What it saves: the four extra passes over (B, T, 4H), forward and backward; the README gives the
``scilm bench inference`` and ``scilm bench throughput`` rows measured with it. Where it would help
less (not measured here): a GPU, where elementwise kernels are a smaller share of the time.

Applied by :func:`use_fused_gelu` to every ``EsmIntermediate`` of a model (by class swap: same
module, same parameters and submodules, so PEFT adapters, quantisation and saving are unaffected;
``state_dict`` keys do not change). Subclasses of ``EsmIntermediate`` from elsewhere are left alone.
A module pickled whole (``torch.save(model)``, which scilm never does) needs scilm to unpickle.
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
