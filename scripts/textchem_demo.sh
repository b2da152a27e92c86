#!/usr/bin/env bash
# Text+Chem demo: real public data -> Text+Chem JSONL -> t5-tiny trained for a few minutes on CPU
# -> `scilm generate` for each of the five tasks -> `scilm evaluate` on a slice of the test split.
#
#   bash scripts/textchem_demo.sh                 # ../shared/data if present, else the repo's fixture slices
#   OUT=runs/tc STEPS=300 bash scripts/textchem_demo.sh
#   STEPS=2 PER_TASK=1 BEAMS=1 MAX_LENGTH=16 bash scripts/textchem_demo.sh   # a smoke test (the test suite's)
#
# A 0.7M-parameter model trained for minutes scores low: this shows the pipeline end to end, not a
# competitive model (the released GT4SD checkpoints are 60M-220M parameters trained for days on GPUs).
set -euo pipefail
cd "$(dirname "$0")/.."

SHARED=${SHARED:-../shared/data}
OUT=${OUT:-runs/textchem-demo}
STEPS=${STEPS:-1100}            # ~6 minutes at ~3 steps/s (batch 16) on one busy CPU core
PER_TASK=${PER_TASK:-20}        # test examples per task for `scilm evaluate`
BEAMS=${BEAMS:-4}               # the published demo uses 10; fewer keeps evaluation to ~a minute here
MAX_LENGTH=${MAX_LENGTH:-256}   # generated tokens at most
mkdir -p "$OUT"

# 1. Convert the real sets (paragraph2actions' train/valid/test pooled: it is small). `awk 1` adds
#    the final newline a file may lack, so that concatenation never glues two lines together.
if [ -d "$SHARED/chebi20" ]; then
  CHEBI=$SHARED/chebi20/validation.txt
  USPTO_SRC=$SHARED/uspto50k-liu2017/valid_sources USPTO_TGT=$SHARED/uspto50k-liu2017/valid_targets
  awk 1 "$SHARED"/paragraph2actions-testdata/src-{train,valid,test}.txt > "$OUT/p2a-src.txt"
  awk 1 "$SHARED"/paragraph2actions-testdata/tgt-{train,valid,test}.txt > "$OUT/p2a-tgt.txt"
else
  echo "no $SHARED: using the fixture slices in tests/data/textchem (a few lines each)"
  CHEBI=tests/data/textchem/chebi20-validation.txt
  USPTO_SRC=tests/data/textchem/uspto-valid_sources USPTO_TGT=tests/data/textchem/uspto-valid_targets
  awk 1 tests/data/textchem/p2a-src-test.txt > "$OUT/p2a-src.txt"
  awk 1 tests/data/textchem/p2a-tgt-test.txt > "$OUT/p2a-tgt.txt"
fi
scilm data textchem --out "$OUT/data" --chebi20 "$CHEBI" --uspto-sources "$USPTO_SRC" --uspto-targets "$USPTO_TGT" \
  --actions-src "$OUT/p2a-src.txt" --actions-tgt "$OUT/p2a-tgt.txt" > "$OUT/conversion.json"
python3 -c "import json,sys; s=json.load(open(sys.argv[1])); print('converted', s['examples'], 'examples', s['splits'], s['tasks'])" "$OUT/conversion.json"

# 2. Train t5-tiny (its BPE tokenizer is trained on the training texts first).
scilm train --data "$OUT/data/train.jsonl" --valid "$OUT/data/valid.jsonl" --model t5-tiny --out "$OUT/run" \
  --overwrite --max-steps "$STEPS" --batch-size 16 --lr 2e-3 --warmup-ratio 0.05 \
  --max-source-length 256 --max-target-length 256 --tokenizer-vocab-size 2000 \
  --eval-steps 250 --eval-max-batches 4 --keep-best --no-progress

# 3. One generation per task: the input of the first test example of that task. A small corpus (the
#    fixture slices) can leave a task out of the test split; its input then comes from the validation
#    or training split, and the script says so. The evaluation slice is the test split as it is.
python3 - "$OUT" "$PER_TASK" <<'EOF'
import os
import sys
from scilm.data.textchem import TASKS, input_of, read_jsonl, write_jsonl
out, per_task = sys.argv[1], int(sys.argv[2])
paths = {name: f"{out}/data/{name}.jsonl" for name in ("test", "valid", "train")}
splits = {name: read_jsonl(path) if os.path.getsize(path) else [] for name, path in paths.items()}
evaluated = "test" if splits["test"] else "valid"
if evaluated != "test":
    print("the test split is empty: evaluating on the validation split")
write_jsonl(f"{out}/test-slice.jsonl",
            [e for task in TASKS for e in [e for e in splits[evaluated] if e.task == task][:per_task]])
with open(f"{out}/tasks.txt", "w") as tasks:
    for task in TASKS:
        found = next(((name, e) for name, part in splits.items() for e in part if e.task == task), None)
        if found is None:
            print(f"{task}: no example in any split, not generated")
            continue
        if found[0] != "test":
            print(f"{task}: no test example; generating for the first {found[0]} example")
        with open(f"{out}/input-{task}.txt", "w") as handle:
            handle.write(input_of(found[1]) + "\n")
        tasks.write(task + "\n")
EOF
while read -r task; do
  scilm generate --model "$OUT/run/model" --task "$task" --input-file "$OUT/input-$task.txt" \
    --num-beams "$BEAMS" --max-length "$MAX_LENGTH" --out "$OUT/generated-$task.jsonl" < /dev/null
  cat "$OUT/generated-$task.jsonl"
done < "$OUT/tasks.txt"

# 4. Evaluate on the test slice: per-task metrics and a per-example predictions file.
scilm evaluate --model "$OUT/run/model" --data "$OUT/test-slice.jsonl" --out "$OUT/eval/metrics.json" \
  --num-beams "$BEAMS" --max-length "$MAX_LENGTH" --batch-size 16
