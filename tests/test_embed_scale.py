"""Embeddings at scale: layers, poolings and per-residue files against a direct computation; streaming
in chunks (memory bound, resume after a kill, several processes) giving the same file; progress bars.

Issue 14, part 2.
"""

from __future__ import annotations

import csv
import io
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import DEEPLOC_VALID, write_fasta
from scilm.data.protein import read_proteins

REPO = Path(__file__).resolve().parents[1]
MODEL = "esm2-tiny-mlm"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def encoder():
    from scilm.models.protein import load_protein_encoder

    return load_protein_encoder(MODEL)


@pytest.fixture(scope="module")
def proteins() -> list[tuple[str, str]]:
    """23 real proteins of 5 to 90 residues (ties in length; ids not sorted)."""
    records = read_proteins(DEEPLOC_VALID, task=None, label_column=None)
    rng = random.Random(3)
    lengths = [5, 12, 30, 30, 49, 64, 64, 80, 90, 17, 33, 41] * 2
    return [(f"{records[i].id}_{k}", records[i].sequence[:n])
            for k, (i, n) in enumerate(zip(rng.sample(range(len(records)), 23), lengths))]


def fasta(path: Path, proteins) -> Path:
    return write_fasta(path, [(i, "Cytoplasm-S", s) for i, s in proteins])


def direct(model, tokenizer, sequence: str, layer: int) -> np.ndarray:
    """(len + 2, H) hidden states of ``layer`` for one protein alone (no padding): the reference."""
    ids = tokenizer(sequence, return_tensors="pt")
    with torch.no_grad():
        return model(**ids, output_hidden_states=True).hidden_states[layer][0].numpy()


def embed_cli(run_cli, data, out, *extra):
    result = run_cli("embed", "--model", MODEL, "--data", data, "--out", out, "--no-progress", *extra)
    assert result.exit_code == 0, result.stderr
    return result


# -- what is computed --------------------------------------------------------------------------------

def test_layers_and_poolings_equal_a_direct_computation(encoder, proteins):
    from scilm.inference import embed_proteins

    model, tokenizer = encoder
    seqs = [s for _, s in proteins]
    n = model.config.num_hidden_layers
    last = embed_proteins(model, tokenizer, seqs, batch_size=7)
    for layers in ((n,), (-1,)):
        np.testing.assert_array_equal(embed_proteins(model, tokenizer, seqs, batch_size=7, layers=layers), last)
    several = embed_proteins(model, tokenizer, seqs, batch_size=7, layers=(0, -2, -1))  # (N, 3, H)
    cls = embed_proteins(model, tokenizer, seqs, batch_size=7, layers=(0, -1), pooling="cls")
    per_residue = embed_proteins(model, tokenizer, seqs, batch_size=7, layers=(1,), pooling="per-residue")
    assert several.shape == (len(seqs), 3, model.config.hidden_size)
    for i, s in enumerate(seqs):
        for j, layer in enumerate((0, n - 1, n)):
            np.testing.assert_allclose(several[i, j], direct(model, tokenizer, s, layer)[1:-1].mean(0), atol=1e-5)
        np.testing.assert_allclose(last[i], direct(model, tokenizer, s, n)[1:-1].mean(0), atol=1e-5)
        np.testing.assert_allclose(cls[i, 0], direct(model, tokenizer, s, 0)[0], atol=1e-5)
        np.testing.assert_allclose(cls[i, 1], direct(model, tokenizer, s, n)[0], atol=1e-5)
        np.testing.assert_allclose(per_residue[i], direct(model, tokenizer, s, 1)[1:-1], atol=1e-5)
    # switches agree: per-residue rows average to the mean pooling
    np.testing.assert_allclose(
        np.stack([r.mean(0) for r in embed_proteins(model, tokenizer, seqs, pooling="per-residue")]), last, atol=1e-6)


def test_bad_layers_and_poolings_are_one_line(run_cli, proteins, tmp_path):
    data = fasta(tmp_path / "p.fasta", proteins)
    for extra, message in ((["--layer", "3"], "--layer 3: this model has layers 0..2"),
                           (["--layer", "-4"], "--layer -4: this model has layers 0..2"),
                           (["--layer", "2", "--layer", "-1"], "--layer -1: layer 2 is named twice"),
                           (["--pooling", "max"], "--pooling must be one of mean, cls, per-residue"),
                           (["--pooling", "per-residue"], "per-residue embeddings are ragged"),
                           (["--chunk-size", "0"], "--chunk-size must be at least 1")):
        result = run_cli("embed", "--model", MODEL, "--data", data, "--out", tmp_path / "e.npy", *extra)
        assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, (extra, result.stderr)
        assert message in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.fasta"]


def test_per_residue_files_align_ids_lengths_and_residues(run_cli, encoder, proteins, tmp_path):
    import h5py
    import pyarrow.parquet as pq

    from scilm.inference import embed_proteins

    model, tokenizer = encoder
    data = fasta(tmp_path / "p.fasta", proteins)
    extra = ["--pooling", "per-residue", "--layer", "-1", "--layer", "0", "--truncate", "40", "--chunk-size", "5"]
    result = embed_cli(run_cli, data, tmp_path / "e.npz", *extra)
    cut = sum(len(s) > 40 for _, s in proteins)
    assert f"({cut} of {len(proteins)} sequences cut to 40 residues)" in result.stdout
    embed_cli(run_cli, data, tmp_path / "e.parquet", *extra)
    embed_cli(run_cli, data, tmp_path / "e.h5", *extra)
    expected = embed_proteins(model, tokenizer, [s for _, s in proteins], layers=(-1, 0), pooling="per-residue",
                              truncate=40)
    npz, h5 = np.load(tmp_path / "e.npz"), h5py.File(tmp_path / "e.h5")
    table = pq.read_table(tmp_path / "e.parquet").to_pylist()
    assert list(npz["ids"]) == [i for i, _ in proteins] == [x.decode() for x in h5["ids"]] == [r["id"] for r in table]
    assert list(npz["layers"]) == [2, 0] == list(h5["layers"])
    lengths = [min(len(s), 40) for _, s in proteins]
    assert list(npz["lengths"]) == lengths == list(h5["lengths"]) == [r["length"] for r in table]
    offsets = npz["offsets"]
    assert list(offsets) == list(np.concatenate([[0], np.cumsum(lengths)])) == list(h5["offsets"])
    for i, (_, s) in enumerate(proteins):
        rows = slice(offsets[i], offsets[i + 1])
        assert "".join(npz["residues"][rows]) == s[:40] == b"".join(h5["residues"][rows]).decode() == table[i]["residues"]
        np.testing.assert_allclose(npz["embeddings"][rows], expected[i], atol=1e-5)
        np.testing.assert_array_equal(h5["embeddings"][rows], npz["embeddings"][rows])
        np.testing.assert_array_equal(np.array(table[i]["embedding_layer2"]), npz["embeddings"][rows, 0])
        np.testing.assert_array_equal(np.array(table[i]["embedding_layer0"]), npz["embeddings"][rows, 1])


def test_pooled_formats_hold_the_same_rows(run_cli, encoder, proteins, tmp_path):
    import h5py
    import pyarrow.parquet as pq

    from scilm.inference import embed_proteins

    model, tokenizer = encoder
    data = fasta(tmp_path / "p.fasta", proteins)
    for suffix in (".npy", ".npz", ".parquet", ".hdf5"):
        embed_cli(run_cli, data, tmp_path / f"e{suffix}", "--chunk-size", "4")
    expected = embed_proteins(model, tokenizer, [s for _, s in proteins])
    npy = np.load(tmp_path / "e.npy")
    np.testing.assert_allclose(npy, expected, atol=1e-5)
    assert (tmp_path / "e.ids.txt").read_text().split() == [i for i, _ in proteins]
    np.testing.assert_array_equal(np.load(tmp_path / "e.npz")["embeddings"], npy)
    np.testing.assert_array_equal(np.stack(pq.read_table(tmp_path / "e.parquet")["embedding"].to_pylist()), npy)
    np.testing.assert_array_equal(h5py.File(tmp_path / "e.hdf5")["embeddings"][...], npy)


def test_chunk_and_batch_size_change_nothing(run_cli, proteins, tmp_path):
    data = fasta(tmp_path / "p.fasta", proteins)
    runs = {}
    for chunk, batch in (("1", "1"), ("4", "3"), ("1000", "16")):
        embed_cli(run_cli, data, tmp_path / f"c{chunk}.npz", "--chunk-size", chunk, "--batch-size", batch,
                  "--pooling", "per-residue")
        runs[chunk] = np.load(tmp_path / f"c{chunk}.npz")
    for name in ("ids", "lengths", "offsets", "residues"):
        assert list(runs["1"][name]) == list(runs["4"][name]) == list(runs["1000"][name])
    np.testing.assert_allclose(runs["4"]["embeddings"], runs["1"]["embeddings"], atol=1e-5)
    np.testing.assert_allclose(runs["1000"]["embeddings"], runs["1"]["embeddings"], atol=1e-5)


# -- streaming: resume, bad input, memory, processes -------------------------------------------------

def test_a_crashed_run_resumes_without_recomputing_written_chunks(encoder, proteins, tmp_path, monkeypatch):
    from scilm.inference import embed_stream
    from scilm.inference.policy import head_policy

    model, tokenizer = encoder
    data = fasta(tmp_path / "p.fasta", proteins)
    settings = dict(policy=head_policy(1022), pooling="per-residue", chunk_size=3, progress=False)
    embed_stream.embed_file(model, tokenizer, data, tmp_path / "whole.npz", **settings)
    real, calls = embed_stream._embed_chunk, []

    def crash_after_four(*args, **kwargs):
        if len(calls) == 4:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(embed_stream, "_embed_chunk", crash_after_four)
    out = tmp_path / "e.npz"
    with pytest.raises(KeyboardInterrupt):
        embed_stream.embed_file(model, tokenizer, data, out, **settings)
    parts = tmp_path / ".e.npz.parts"
    assert not out.exists() and len(list(parts.glob("part-*.npz"))) == 4
    calls.clear()
    monkeypatch.setattr(embed_stream, "_embed_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = embed_stream.embed_file(model, tokenizer, data, out, **settings)
    assert (result.n_chunks, result.n_reused, len(calls)) == (8, 4, 4)
    whole, resumed = np.load(tmp_path / "whole.npz"), np.load(out)
    for name in whole.files:
        np.testing.assert_array_equal(resumed[name], whole[name])
    assert not parts.exists()

    # other settings (another layer) do not reuse the parts of an interrupted run
    monkeypatch.setattr(embed_stream, "_embed_chunk", crash_after_four)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        embed_stream.embed_file(model, tokenizer, data, out, **settings)
    calls.clear()
    monkeypatch.setattr(embed_stream, "_embed_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = embed_stream.embed_file(model, tokenizer, data, out, **{**settings, "layers": (0,)})
    assert (result.n_reused, len(calls)) == (0, 8)
    # a record changed since the interruption: its chunk is recomputed, the others reused
    monkeypatch.setattr(embed_stream, "_embed_chunk", crash_after_four)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        embed_stream.embed_file(model, tokenizer, data, out, **settings)
    fasta(data, [proteins[0], (proteins[1][0], "MKVL"), *proteins[2:]])
    calls.clear()
    monkeypatch.setattr(embed_stream, "_embed_chunk", lambda *a, **k: calls.append(1) or real(*a, **k))
    result = embed_stream.embed_file(model, tokenizer, data, out, **settings)
    assert (result.n_reused, len(calls)) == (3, 5)
    saved = np.load(out)
    assert "".join(saved["residues"][saved["offsets"][1]:saved["offsets"][2]]) == "MKVL"


def test_a_bad_record_at_the_end_stops_before_any_work(run_cli, proteins, tmp_path):
    data = tmp_path / "p.fasta"
    fasta(data, proteins)
    with open(data, "a") as handle:
        handle.write(">last\nMK#L\n")
    result = run_cli("embed", "--model", MODEL, "--data", data, "--out", tmp_path / "e.npz")
    assert result.exit_code == 2
    assert result.stderr.strip() == (f"error: {data}:{2 * len(proteins) + 1} (record last): invalid residue '#' "
                                     "(U+0023 NUMBER SIGN) at position 3 (allowed: the 20 standard amino acids and X B Z U O)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.fasta"]  # no output, no parts


def _short_proteins(path: Path, n: int, seed: int = 0) -> Path:
    records = read_proteins(DEEPLOC_VALID, task=None, label_column=None)
    rng = random.Random(seed)
    with open(path, "w") as handle:
        for i in range(n):
            s = records[i % len(records)].sequence
            size = rng.randint(30, 60)
            start = rng.randint(0, max(0, len(s) - size))
            handle.write(f">p{i}\n{s[start:start + size]}\n")
    return path


def _run_measured(args: list[str], tmp_path: Path, name: str) -> tuple[subprocess.CompletedProcess, int]:
    """``scilm ARGS`` in a fresh process; (the process, its peak RSS in bytes from getrusage)."""
    peak = tmp_path / f"{name}.peak"
    code = ("import atexit, resource, sys\n"
            f"atexit.register(lambda: open({str(peak)!r}, 'w').write(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))\n"
            "from scilm.cli import main\n"
            f"sys.argv = ['scilm', *{args!r}]\n"
            "main()\n")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=1800)
    return done, int(peak.read_text()) * 1024


@pytest.mark.slow  # ~1.5 min on 2 shared cores: 20,000 proteins
def test_peak_memory_does_not_grow_with_the_number_of_proteins(tmp_path):
    small = _short_proteins(tmp_path / "small.fasta", 200)
    big = _short_proteins(tmp_path / "big.fasta", 20_000)
    runs = {}
    for name, data in (("small", small), ("big", big)):
        done, peak = _run_measured(["embed", "--model", MODEL, "--data", str(data), "--out", str(tmp_path / f"{name}.npz"),
                                    "--pooling", "per-residue"], tmp_path, name)
        assert done.returncode == 0, done.stderr
        runs[name] = peak
    big_out = np.load(tmp_path / "big.npz", mmap_mode=None)
    assert len(big_out["ids"]) == 20_000 and list(big_out["ids"][:2]) == ["p0", "p1"]
    held = big_out["embeddings"].nbytes  # what a run holding every result in memory would need on top
    assert held > 400 * 2**20
    assert runs["big"] - runs["small"] < 100 * 2**20, (runs, held)


@pytest.mark.slow  # two real processes, one killed: ~40 s
def test_a_killed_process_resumes_and_writes_the_identical_file(encoder, tmp_path):
    from scilm.inference import embed_stream
    from scilm.inference.policy import head_policy

    model, tokenizer = encoder
    data = _short_proteins(tmp_path / "p.fasta", 2000, seed=1)
    out = tmp_path / "e.npz"
    args = [sys.executable, "-m", "scilm", "embed", "--model", MODEL, "--data", str(data), "--out", str(out),
            "--chunk-size", "40", "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    parts = tmp_path / ".e.npz.parts"
    victim = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 600
    while len(list(parts.glob("part-*.npz"))) < 5 and time.time() < deadline and victim.poll() is None:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    written = len(list(parts.glob("part-*.npz")))
    assert victim.returncode == -signal.SIGKILL and not out.exists() and 5 <= written < 50
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    reused = int(done.stdout.split("; ")[-1].split(" of 50 chunks")[0])
    assert reused >= written  # every part on disk at the kill was reused (a part is written whole or not at all)
    reference = tmp_path / "reference.npz"
    embed_stream.embed_file(model, tokenizer, data, reference, policy=head_policy(1022), chunk_size=40, progress=False)
    for name in ("ids", "lengths", "layers", "embeddings"):
        np.testing.assert_array_equal(np.load(out)[name], np.load(reference)[name])
    assert not parts.exists()


@pytest.mark.slow  # torchrun with 2 CPU processes: ~1 min
def test_two_processes_write_the_same_file_in_input_order(proteins, tmp_path):
    data = fasta(tmp_path / "p.fasta", proteins * 3)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    outputs = {}
    for nproc in ("2", "1"):
        out = tmp_path / f"n{nproc}.npz"
        done = subprocess.run([sys.executable, "-m", "scilm", "embed", "--model", MODEL, "--data", str(data), "--out",
                               str(out), "--chunk-size", "5", "--pooling", "per-residue", "--nproc", nproc],
                              env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        assert done.stdout.count("wrote per-residue embeddings of 69 proteins") == 1  # process 0 only
        outputs[nproc] = np.load(out)
    for name in ("ids", "lengths", "offsets", "residues"):
        assert list(outputs["2"][name]) == list(outputs["1"][name])
    assert list(outputs["2"]["ids"]) == [i for i, _ in proteins * 3]
    np.testing.assert_allclose(outputs["2"]["embeddings"], outputs["1"]["embeddings"], atol=1e-5)


# -- progress --------------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_counts_proteins_per_second_on_a_terminal_only():
    from scilm.inference.progress import progress_bar

    for stream, enabled, drawn in ((Terminal(), True, True), (io.StringIO(), True, False), (Terminal(), False, False)):
        with progress_bar(30, "embed", enabled, stream=stream) as bar:
            bar.update(30)
        assert ("proteins/s" in stream.getvalue() and "30/30" in stream.getvalue()) == drawn
        assert bool(stream.getvalue()) == drawn


def test_commands_draw_no_bar_when_stderr_is_not_a_terminal(run_cli, tmp_path, proteins, capsys):
    from conftest import BUNDLED

    data = fasta(tmp_path / "p.fasta", proteins)
    result = run_cli("embed", "--model", MODEL, "--data", data, "--out", tmp_path / "e.npz")
    assert result.exit_code == 0 and "proteins/s" not in result.stderr and "\r" not in result.stderr
    result = run_cli("score-variants", "--model", MODEL, "--wild-type", BUNDLED / "proteingym_blat_ecolx" / "BLAT_ECOLX.fasta",
                     "--mutant", "H24C", "--out", tmp_path / "s.csv")
    assert result.exit_code == 0 and "proteins/s" not in result.stderr and "\r" not in result.stderr
    _classifier(tmp_path / "clf")
    capsys.readouterr()  # transformers' saving bar
    result = run_cli("predict", "--model", tmp_path / "clf", "--data", data, "--out", tmp_path / "p.csv")
    assert result.exit_code == 0 and "proteins/s" not in result.stderr and "\r" not in result.stderr


def _classifier(path):
    """A random esm2-tiny membrane/soluble classifier saved to ``path`` (seed 0); returns the model."""
    from transformers import EsmForSequenceClassification

    from scilm.models.protein import esm2_config, esm2_tokenizer

    torch.manual_seed(0)
    model = EsmForSequenceClassification(esm2_config("esm2-tiny", num_labels=2,
                                                     id2label={0: "soluble", 1: "membrane"},
                                                     label2id={"soluble": 0, "membrane": 1})).eval()
    model.save_pretrained(path)
    esm2_tokenizer().save_pretrained(path)
    return model


def test_embed_predict_and_score_variants_draw_a_bar_on_a_terminal_unless_no_progress(
        run_cli, tmp_path, proteins, monkeypatch, capsys):
    """Each command's bar reaches its total (proteins, or forwards for score-variants) on a terminal;
    --no-progress draws nothing (the same switch as the training commands' --progress/--no-progress)."""
    from conftest import BUNDLED

    data = fasta(tmp_path / "p.fasta", proteins)
    _classifier(tmp_path / "clf")
    capsys.readouterr()
    n = len(proteins)
    wild_type = BUNDLED / "proteingym_blat_ecolx" / "BLAT_ECOLX.fasta"
    commands = {
        "embed": (["embed", "--model", MODEL, "--data", data, "--out", tmp_path / "e.npz"], f"{n}/{n}", "proteins/s"),
        "predict": (["predict", "--model", tmp_path / "clf", "--data", data, "--out", tmp_path / "p.csv"],
                    f"{n}/{n}", "proteins/s"),
        "score-variants": (["score-variants", "--model", MODEL, "--wild-type", wild_type, "--mutant", "H24C",
                            "--mutant", "H24A:W286F", "--out", tmp_path / "s.csv"], "2/2", "forwards/s"),
    }
    for name, (args, count, rate) in commands.items():
        for extra, drawn in (([], True), (["--no-progress"], False)):
            terminal = Terminal()
            with monkeypatch.context() as patch:
                patch.setattr(sys, "stderr", terminal)
                result = run_cli(*args, *extra)
            shown = terminal.getvalue()
            assert result.exit_code == 0, (name, result.stderr, shown)
            assert (count in shown and rate in shown and f"{name}" in shown) == drawn, (name, extra, shown)
            if not drawn:
                assert "\r" not in shown and rate not in shown


@pytest.mark.slow  # ~30 s; the quick loop keeps predict's in-memory equalities
def test_predict_streams_the_same_rows_as_in_memory(run_cli, tmp_path, proteins):
    from scilm.inference import predict_proteins
    from scilm.models.protein import esm2_tokenizer

    model = _classifier(tmp_path / "clf")
    many = proteins * 50  # 1,150 records: two chunks of the stream
    data = fasta(tmp_path / "p.fasta", many)
    result = run_cli("predict", "--model", tmp_path / "clf", "--data", data, "--out", tmp_path / "p.csv", "--truncate", "40")
    assert result.exit_code == 0, result.stderr
    cut = sum(len(s) > 40 for _, s in many)
    assert f"wrote {len(many)} predictions to {tmp_path / 'p.csv'} ({cut} of {len(many)} sequences cut to 40 residues)" \
        in result.stdout
    rows = list(csv.DictReader(open(tmp_path / "p.csv", encoding="utf-8")))
    assert [r["id"] for r in rows] == [i for i, _ in many]
    expected = predict_proteins(model, esm2_tokenizer(), [s for _, s in many], truncate=40)
    np.testing.assert_allclose([[float(r["prob_soluble"]), float(r["prob_membrane"])] for r in rows],
                               [[p["soluble"], p["membrane"]] for p in expected], atol=2e-6)
