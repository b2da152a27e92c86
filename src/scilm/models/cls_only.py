"""ESM-2's last layer computed at ``<cls>`` only, when ``<cls>`` is all that is read.

A sequence classifier (:class:`~transformers.EsmForSequenceClassification`: single-label,
multi-label, regression) reads one vector per protein: the last layer's output at position 0
(``EsmClassificationHead`` takes ``features[:, 0, :]``). In that last layer every other position's
query, attention row, output projection and feed-forward are computed and thrown away; only its
keys and values (which ``<cls>`` attends to) matter. :func:`cls_only_last_layer` computes exactly
the part that is read: keys and values at every position, the rest at position 0.

What it saves, in multiply-adds per token of one layer (hidden size H, length T): the query, output
and feed-forward projections (10 H^2 of the layer's 12 H^2) and all attention rows but one (2 T H):
about (10 H^2 + 2 T H) / (12 H^2 + 2 T H) of the last layer, forward and backward, i.e. most of
1/num_layers of the encoder (esm2-8m: 6 layers; esm2-35m: 12). What it changes: nothing but the shapes of the last layer's matrix products, so
logits, losses and gradients are equal to float rounding (tests/test_cls_only.py: logits and a few
training steps' losses against the model without it).

When it does not apply (the model runs unchanged): per-residue and masked-LM models (every position
is read), hidden states or attentions asked for (in the call or the config: the layer then runs in
full, so what is collected is the full layer's), another thread's forward of the same model during
an inference block (it runs the full layer), attention other than ``eager``/``sdpa``, a last layer already replaced (FSDP2,
another patch), a quantized last layer (dynamic int8 scales its activations per tensor: fewer rows,
other scales), and dropout in the last layer while training (a smaller tensor would draw other
random masks: the same distribution, not the same numbers; ESM-2's configs have no dropout, LoRA's
``lora_dropout`` has).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

import torch
from torch import nn
from transformers import EsmForSequenceClassification
from transformers.models.esm import modeling_esm
from transformers.models.esm.modeling_esm import EsmClassificationHead, EsmLayer

try:  # transformers 5 collects hidden states / attentions through forward hooks while this is set
    from transformers.utils.output_capturing import _active_collector
except ImportError:  # another transformers: cannot tell whether outputs are being collected, so never used
    _active_collector = None

_OWNER = "_scilm_cls_only_thread"  # the thread that entered the block (inference: others run the full layer)


class ClsOnlyEsmLayer(EsmLayer):
    """An :class:`EsmLayer` whose output is position 0's alone: (B, T, H) in, (B, 1, H) out.

    Same parameters, same submodules (PEFT adapters are looked up at call time). Gradient checkpointing
    wraps this class's ``forward`` as it wraps EsmLayer's (``GradientCheckpointingLayer.__init_subclass__``),
    so a recomputation in the backward pass, after the block, replays the forward it checkpointed.
    Runs the full layer (:meth:`EsmLayer.forward`) while hidden states or attentions are being collected,
    and for another thread's inference forward. Only set on a layer by :func:`cls_only_last_layer`.
    """

    def forward(self, hidden_states, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, position_embeddings=None, **kwargs):
        collecting = _active_collector.get() or {}
        other_thread = not torch.is_grad_enabled() and getattr(self, _OWNER, None) != threading.get_ident()
        if "hidden_states" in collecting or "attentions" in collecting or other_thread:
            return super().forward(hidden_states, attention_mask, encoder_hidden_states, encoder_attention_mask,
                                   position_embeddings, **kwargs)
        attention, self_attention = self.attention, self.attention.self
        batch, length, _ = hidden_states.shape
        head = self_attention.attention_head_size
        normed = attention.LayerNorm(hidden_states)  # (B, T, H): every position's key and value
        query = self_attention.query(normed[:, :1]).view(batch, 1, -1, head).transpose(1, 2)
        key = self_attention.key(normed).view(batch, length, -1, head).transpose(1, 2)
        value = self_attention.value(normed).view(batch, length, -1, head).transpose(1, 2)
        query = query * head ** -0.5  # ESM scales the query before the rotary embedding (as EsmSelfAttention)
        if self_attention.position_embedding_type == "rotary":
            cos, sin = position_embeddings  # (1 | B, T, head)
            query = modeling_esm.apply_rotary_pos_emb(query, query, cos[:, :1], sin[:, :1])[0]
            key = modeling_esm.apply_rotary_pos_emb(key, key, cos, sin)[1]
        if attention_mask is not None and attention_mask.dim() == 4 and attention_mask.shape[-2] > 1:
            attention_mask = attention_mask[:, :, :1, :]  # (B, 1, 1, T): position 0's row
        interface = modeling_esm.ALL_ATTENTION_FUNCTIONS.get_interface(
            self_attention.config._attn_implementation, modeling_esm.eager_attention_forward)
        context, _ = interface(self_attention, query, key, value, attention_mask,
                               dropout=self_attention.dropout if self_attention.training else 0.0,
                               scaling=self_attention.scaling, **kwargs)
        context = context.reshape(batch, 1, -1).contiguous()
        attended = attention.output(context, hidden_states[:, :1])  # (B, 1, H), residual included
        return self.feed_forward_chunk(attended)


def _classifier_model(model) -> EsmForSequenceClassification | None:
    """The ESM sequence classifier inside ``model`` (through PEFT's and DDP's wrappers), or None."""
    for _ in range(4):
        if isinstance(model, EsmForSequenceClassification):
            return model
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return None
    return None


def _computes_row_by_row(layer: nn.Module) -> bool:
    """Whether each position's output of ``layer``'s Linear layers depends on that position alone: plain
    (or PEFT-adapted) float weights; not quantized modules or weight tensor subclasses (torchao)."""
    for module in layer.modules():
        if type(module).__module__.startswith(("torch.ao.", "torch.nn.quantized", "torchao")):
            return False
        if any(type(p) is not nn.Parameter for p in module.parameters(recurse=False)):
            return False
    return True


def _reads_cls_only(head: nn.Module) -> bool:
    original = getattr(head, "original_module", None)  # PEFT's ModulesToSaveWrapper around the head
    return type(head) is EsmClassificationHead or type(original) is EsmClassificationHead


def last_layer_if_applicable(model) -> EsmLayer | None:
    """The last :class:`EsmLayer` of ``model`` when computing it at ``<cls>`` only leaves the logits
    unchanged (module docstring: which models and settings), else None."""
    classifier = _classifier_model(model)
    if classifier is None or not _reads_cls_only(classifier.classifier) or _active_collector is None:
        return None
    config = classifier.config
    if config.is_decoder or getattr(config, "add_cross_attention", False):
        return None
    if getattr(config, "output_hidden_states", False) or getattr(config, "output_attentions", False):
        return None
    if config._attn_implementation not in ("eager", "sdpa"):
        return None
    layer = classifier.esm.encoder.layer[-1]
    if type(layer) is not EsmLayer or not _computes_row_by_row(layer):
        return None
    if layer.training:
        dropouts = [m.p for m in layer.modules() if isinstance(m, nn.Dropout)]
        if any(p > 0 for p in dropouts) or layer.attention.self.dropout > 0:
            return None
    return layer


@contextmanager
def cls_only_last_layer(model) -> Iterator[bool]:
    """Within the block, ``model``'s last ESM layer computes position 0 only (yields whether it does).

    Enter it only around calls whose logits (or loss) alone are read: the encoder's last hidden state
    inside is (B, 1, H) (hidden states or attentions asked for are the full layer's). The layer is
    restored on exit, also on error; a nested block yields False and leaves the outer one in charge.
    One thread at a time per model for training; inference forwards of the same model from other
    threads during the block run the full layer.
    """
    layer = last_layer_if_applicable(model)
    if layer is None:
        yield False
        return
    setattr(layer, _OWNER, threading.get_ident())
    layer.__class__ = ClsOnlyEsmLayer
    try:
        yield True
    finally:
        layer.__class__ = EsmLayer
        delattr(layer, _OWNER)
