"""Sifting metrics for training frameworks (``smart_sifting.metrics``); :mod:`.lightning` needs pytorch-lightning."""
