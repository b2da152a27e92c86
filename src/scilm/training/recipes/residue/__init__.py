"""Per-residue classification: one label per residue (signal peptides, secondary structure, binding sites)."""
