"""Chemistry for Text+Chem T5: SMILES canonicalisation, SMILES tokenisation, MolT5-style metrics."""
