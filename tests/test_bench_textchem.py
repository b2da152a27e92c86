"""``scilm bench textchem`` end to end on the bundled slices with the smallest settings (issue 15):
the table is the evaluation's numbers, every task is there, the PNG and the command are written."""

from __future__ import annotations

import json

import pytest

from scilm.bench.textchem import BUNDLED, TextChemBenchSettings, run_textchem_bench
from scilm.data.textchem import TASKS


def test_bundled_slices_are_there_with_their_attribution():
    names = {p.name for p in BUNDLED.iterdir()}
    assert {"README.md", "chebi20-validation-400.txt", "uspto50k-valid_sources-600.txt",
            "uspto50k-valid_targets-600.txt"} <= names
    readme = (BUNDLED / "README.md").read_text()
    for citation in ("Text2Mol", "MolT5", "Liu et al.", "Vaucher et al.", "CC BY 4.0", "Apache-2.0", "MIT"):
        assert citation in readme
    assert len((BUNDLED / "uspto50k-valid_sources-600.txt").read_text().splitlines()) == 600


@pytest.mark.slow  # converts 1,100 molecules and reactions, trains 2 steps, evaluates: ~1 minute here
def test_bench_smallest_run(tmp_path):
    settings = TextChemBenchSettings.for_mode(True, steps=2, per_task=1)
    settings = TextChemBenchSettings(**{**settings.__dict__, "num_beams": 2, "top_k": (1, 2), "max_length": 8,
                                        "spellings": 2, "max_source_length": 64, "max_target_length": 64})
    table = run_textchem_bench(tmp_path, settings, "scilm bench textchem --test")
    results = json.loads((tmp_path / "results.json").read_text())
    tasks = results["evaluation"]["tasks"]
    assert set(tasks) == set(TASKS) and all(v["n_examples"] == 1 for v in tasks.values())
    assert results["conversion"]["reaction_classes"]  # USPTO classes kept
    for task in TASKS:
        row = next(line for line in table.splitlines() if line.startswith(f"| {task} |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        if task != "smiles-to-caption":
            assert cells[2:4] == [f"{tasks[task]['top_1']:.3f}", f"{tasks[task]['top_2']:.3f}"]
        assert cells[5] == f"{tasks[task]['coverage']:.3f} ({tasks[task]['n_failed']})"
    assert "round_trip" in tasks["retrosynthesis"]
    assert (tmp_path / "topk.png").read_bytes()[:4] == b"\x89PNG"
    assert table.startswith("`scilm bench textchem --test` on ") and "rdkit" in table
