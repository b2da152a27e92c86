"""scilm.bench"""
