"""``smart_sifting.loss.abstract_sift_loss_module``: the abstract ``Loss`` (defined in :mod:`scilm.sifting.loss`)."""

from scilm.sifting.loss import Loss

__all__ = ["Loss"]
