"""How far a reduced precision moves a classifier's logits, and what the fp32 fallback near a decision
boundary answers (:class:`scilm.inference.precision.Fp32Fallback`).

    python docs/bench/fallback.py MODEL_DIR [OUT_DIR]   # a single-label classifier trained by scilm

For each mode: :func:`scilm.bench.inference.label_agreement`'s row (labels identical to fp32's, bare
and as ``predict``/``serve`` answer; share recomputed in fp32), then the headroom of the margin: the
probe's delta, the largest and 99th-percentile logit change of any protein over that delta, the
largest bare margin (over delta) at which a label changed, and the share that margins of 4, 8, 16 and
24 deltas would recompute. On the DeepLoc-1 validation set (bundled). Writes OUT_DIR/table.md and
results.json when OUT_DIR is given.
"""

import json
import sys
from pathlib import Path

import torch

from scilm.bench.inference import DEEPLOC_VALID, SCILM_MODES, agreement_table, label_agreement
from scilm.bench.report import markdown_table
from scilm.data.protein import read_proteins
from scilm.inference import precision as P
from scilm.inference.policy import model_policy
from scilm.inference.predict import policy_logits
from scilm.models.protein import load_trained_classifier


def headroom(model_dir: str) -> list[dict]:
    net, tokenizer = load_trained_classifier(model_dir)
    sequences = [r.sequence for r in read_proteins(DEEPLOC_VALID, task=None, label_column=None, unique_ids=False)]
    policy = model_policy(net.config, tokenizer)
    reference = policy_logits(net, tokenizer, sequences, policy)
    rows = []
    for mode in SCILM_MODES[1:]:
        try:
            model = P.apply_mode(net, mode)
        except Exception as exc:  # a mode this machine cannot run
            print(f"{mode}: skipped ({exc})", file=sys.stderr)
            continue
        bare = policy_logits(model, tokenizer, sequences, policy)
        delta = P.probe_logit_change(model, net, tokenizer, [s[: policy.max_residues] for s in sequences[: P.PROBE_POOL]])
        change = (bare - reference).abs().amax(1)
        changed = bare.argmax(1) != reference.argmax(1)
        margin = P.decision_margin(net.config, bare)
        rows.append({"mode": mode, "delta": delta, "largest_change_over_delta": float(change.max() / delta),
                     "p99_change_over_delta": float(change.quantile(0.99) / delta),
                     "labels_changed": int(changed.sum()),
                     "largest_changed_margin_over_delta": float((margin[changed] / delta).max()) if changed.any() else None,
                     **{f"share_at_{k}x": float((margin <= k * delta).float().mean()) for k in (4, 8, 16, 24)}})
    return rows


def main() -> None:
    model_dir, out = sys.argv[1], Path(sys.argv[2]) if len(sys.argv) > 2 else None
    agreement = label_agreement(model_dir)
    room = headroom(model_dir)
    table = agreement_table(agreement, model_dir) + "\nHeadroom of the margin (delta: the probe's largest logit change):\n\n"
    table += markdown_table(
        ["mode", "delta", "largest change / delta", "p99 change / delta", "labels changed (bare)",
         "largest margin of a changed label / delta", "recomputed at 4x (%)", "8x", "16x", "24x"],
        [[r["mode"], f"{r['delta']:.4f}", f"{r['largest_change_over_delta']:.1f}", f"{r['p99_change_over_delta']:.1f}",
          r["labels_changed"], "-" if r["largest_changed_margin_over_delta"] is None else
          f"{r['largest_changed_margin_over_delta']:.1f}",
          *[f"{100 * r[f'share_at_{k}x']:.1f}" for k in (4, 8, 16, 24)]] for r in room]) + "\n"
    print(table)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        machine = P.cpu_description()
        (out / "table.md").write_text(
            f"Machine: {machine['cpu']}, ISA flags {', '.join(machine['isa'])}, {machine['cores']} cores, torch "
            f"{torch.__version__}.\nCommand: `python docs/bench/fallback.py {model_dir} {out}` (the README demo's "
            "model).\n\n" + table)
        (out / "results.json").write_text(json.dumps({"agreement": agreement, "headroom": room}, indent=1))


if __name__ == "__main__":
    main()
