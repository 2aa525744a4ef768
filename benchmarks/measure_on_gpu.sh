#!/usr/bin/env bash
# The GPU measurements the launch-overhead projection needs (README "Launch overhead and the 20-minute
# target"), in one command of about 9 minutes on one H100/H200, each step under its own timeout and each
# step's output written to OUTDIR as soon as it ends (a step cut short still leaves what it wrote):
#
#   1. memory   handout-2025's measured memory cells at context 128 (2.7B, forward and training step, fp32
#               and bf16: forked fresh-process cells), whose records now time their parts (build_s, step_s,
#               dump_s, viewer_s, ...): where a memory cell's 10-15 s go on a GPU;
#   2. bench    handout-2025's bench cells at context 512 for sizes small and xl through the worker: the worker's
#               overhead per cell on real cells (records' wall_s - timed_s), and torch.compile's cost for a
#               12-layer and a 48-layer model (a compiled cell's first_step_ms against its steady step);
#   3. launch   benchmarks/bench_launch_overhead.py --profile gpu-quick: inline, subprocess and worker on the
#               same 12 CUDA cells (the issue's "gpu-quick timed with both executors");
#   4. project  benchmarks/project_handout_wall.py from these records (and the H200 samples where they are
#               beside the checkout): the full handout-2025 run projected from measurements on this GPU;
#   5. records  the run's JSON records in OUTDIR/records.tar.gz (no snapshots, traces or HTML).
#
#   bash benchmarks/measure_on_gpu.sh OUTDIR        after `make install` (WHEELS=... without network)
#
# Without a GPU it says so and exits 2; with ALLOW_CPU=1 it runs anyway, every CUDA cell recorded `skipped`
# (what proves the wiring on a CPU machine before a GPU's minutes are spent). STEP_TIMEOUTS="100 240 170"
# changes the first three steps' limits (seconds).
set -u
out=${1:?usage: bash benchmarks/measure_on_gpu.sh OUTDIR}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2
cd "$(dirname "$0")/.." || exit 2
py=${PYTHON_BIN:-.venv/bin/python}
lmreport=(${py} -m lmreport)
read -r t_memory t_bench t_launch <<<"${STEP_TIMEOUTS:-100 240 170}"
runs=$(mktemp -d)  # this script's own runs folder: its records never mix with (or replace) a study's
export PYTHONUNBUFFERED=1

if ! nvidia-smi -L >/dev/null 2>&1 && [ "${ALLOW_CPU:-0}" != 1 ]; then
  echo "measure_on_gpu.sh needs a CUDA GPU: nvidia-smi finds none on this machine (ALLOW_CPU=1 runs it anyway)"
  exit 2
fi
nvidia-smi -L >"$out/gpu.txt" 2>&1

step() {  # step NAME SECONDS COMMAND...: run it under a timeout, its output in OUTDIR/NAME.log, say how it ended
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout --signal=INT --kill-after=20 "$limit" "$@" >"$out/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc after $((SECONDS - t0)) s (limit $limit s)" | tee -a "$out/steps.txt"
}

step memory "$t_memory" "${lmreport[@]}" run memory --profile handout-2025 --ctx 128 --rerun --no-progress \
  --runs-dir "$runs"
step bench "$t_bench" "${lmreport[@]}" run bench --profile handout-2025 --ctx 512 --size small --size xl --rerun \
  --no-progress --runs-dir "$runs"
step launch "$t_launch" "$py" benchmarks/bench_launch_overhead.py --profile gpu-quick --json

samples=(../shared/samples/h200/runs)
[ -d "${samples[0]}" ] || samples=()
step project 60 "$py" benchmarks/project_handout_wall.py ${samples:+--records "${samples[0]}"} --records "$runs"
(cd "$runs" && find . -name '*.json' -print0 | tar --null -czf "$out/records.tar.gz" -T -) 2>>"$out/steps.txt"
echo "records: $(tar -tzf "$out/records.tar.gz" 2>/dev/null | wc -l) files in $out/records.tar.gz" | tee -a "$out/steps.txt"
rm -rf "$runs"
