"""Inference on trained protein models: class probabilities and per-protein embeddings."""

from scilm.inference.embed import embed_proteins, write_embeddings
from scilm.inference.predict import predict_proteins, write_predictions

__all__ = ["predict_proteins", "write_predictions", "embed_proteins", "write_embeddings"]
