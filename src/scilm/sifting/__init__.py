"""scilm.sifting"""
