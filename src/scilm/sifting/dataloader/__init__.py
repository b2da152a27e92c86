"""The sifting loader (``smart_sifting.dataloader``); the implementation is in :mod:`.sift_dataloader`."""

from scilm.sifting.dataloader.sift_dataloader import SiftingDataLoader, SiftingDataloader

__all__ = ["SiftingDataLoader", "SiftingDataloader"]
