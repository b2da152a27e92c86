"""scilm.chem"""
