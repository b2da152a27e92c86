"""scilm.serving"""
