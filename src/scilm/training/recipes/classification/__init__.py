"""Sequence classification of proteins: membrane/soluble, 10 locations, or any label column."""
