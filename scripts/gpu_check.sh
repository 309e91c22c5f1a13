#!/usr/bin/env bash
# Everything a session with a GPU measures, in one call of under 9 minutes:
#   scripts/gpu_check.sh OUT          (on the GPU machine, in the repository root)
# 1. the gpu-marked tests; 2. the scale bench: Pythia-12B's architecture with seeded random weights
# (no download), bf16, 2,000 documents of 64-2,048 tokens drawn log-uniformly from the built-in
# corpus, packed batches; with the batch-invariance measurement (document 0 alone vs in 50 batches).
# OUT gets device.txt, gpu_tests.log, bench.log, bench.json and a short summary.txt.
# CPU_SMOKE=1 runs the same steps on the tiny model on the CPU (to check this script without a GPU).
set -uo pipefail
out=${1:?usage: scripts/gpu_check.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
start=$SECONDS

if [[ "${CPU_SMOKE:-0}" == 1 ]]; then
  model=(model=tiny hardware=cpu) docs=60 mean_docs=16 tests_timeout=60
else
  model=(model=pythia-12b model.random_init=true hardware=cuda) docs=2000 mean_docs=32 tests_timeout=60
fi

{ date -u; nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__,
             'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"; } > "$out/device.txt" 2>&1

timeout -s INT "$tests_timeout" python -m pytest -q -m gpu tests/test_gpu.py > "$out/gpu_tests.log" 2>&1
echo "gpu tests: exit $? ($(tail -n 1 "$out/gpu_tests.log"))" > "$out/summary.txt"

# One warm-up on 32 documents, one timed pass of each measurement over the 2,000 (about 1.1M tokens:
# 45-55 s each at 20-26k tokens/s, and one more for the mean that centres); the seed's way on 16
# documents (one text at a time, every layer written to disk). A timeout sends Ctrl-C: the bench's
# scratch files go, and bench.log keeps every timing taken so far.
timeout -s INT 450 python -m actexp.run job=bench "${model[@]}" logger=none \
  bench.docs=$docs bench.min_tokens=64 bench.doc_tokens=2048 bench.mean_docs=$mean_docs \
  bench.warmup=1 bench.warmup_docs=32 bench.repeats=1 bench.seed_docs=16 bench.invariance=50 \
  'bench.measure=[bare_forward,extract_long_centered,store,corpus_mean,seed_style,seed_style_mean]' \
  hydra.run.dir="$out/bench" > "$out/bench.log" 2>&1
status=$?
cp "$out/bench/bench.json" "$out/bench.json" 2>/dev/null
{ echo "bench: exit $status after $((SECONDS - start)) s"; sed -n '/^bench: /,$p' "$out/bench.log"; } >> "$out/summary.txt"
cat "$out/summary.txt"
