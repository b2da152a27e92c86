"""Multi-label classification of proteins (DeepLoc-2 subcellular locations: one or more per protein)."""
