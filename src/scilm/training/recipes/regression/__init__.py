"""Regression of one number per protein (fitness, stability)."""
