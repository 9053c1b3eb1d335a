#!/usr/bin/env bash
# One-shot GPU check and benchmark, within about 8 minutes on one H100 / H200:
#
#   1. the machine: nvidia-smi, Python / torch / torchvision versions;
#   2. the CUDA tests (pytest -m cuda: tests/test_cuda.py and every other test marked cuda);
#   3. the side-by-side benchmark (benchmarks/run.py) on the GPU: inference of R-50-C4 and R-101-C4
#      against torchvision's C4 Faster R-CNN with the same weights and training throughput with batch
#      2 and 8 at 600/1000, each detector in fp32 and in bf16 autocast in the same turns; then the
#      speed options and channels-last weights in training, one left out at a time (R-50, batch 8);
#   4. a short training of the demo detector on the synthetic shapes dataset (tools/train_net.py)
#      in bf16 autocast (solver.amp), its time and mAP;
#   5. RESULTS_GPU.md: everything above in one Markdown file.
#
# Usage:   bash benchmarks/gpu.sh                 (writes under $OUT, else benchmarks/out/gpu/)
# Every stage has its own time limit and runs even if an earlier one failed; a stage's
# output goes to <stage>.log next to the results. Needs no network and installs nothing.
# The dry run below took 1267 s on the shared 2-core CPU at load ~8 (2026-12-07), every stage ok.
# Environment knobs: OUT, PYTHON (default python), DEMO_ITERS (default 1500, the demo
# config's schedule), STAGE_SCALE (multiplies every time limit; default 1), DEVICE
# (default cuda) and BENCH_ARGS (added to both benchmark calls). A dry run of every
# stage on the CPU, before any GPU is at hand:
#   DEVICE=cpu BENCH_ARGS="--quick --depths 50 --train-batch-sizes 2" DEMO_ITERS=20 STAGE_SCALE=8 \
#       OUT=/tmp/gpu_dry bash benchmarks/gpu.sh
set -uo pipefail

cd "$(dirname "$0")/.."
REPO="$(pwd)"
PYTHON="${PYTHON:-python}"
OUT="${OUT:-$REPO/benchmarks/out/gpu}"
DEMO_ITERS="${DEMO_ITERS:-1500}"
STAGE_SCALE="${STAGE_SCALE:-1}"
DEVICE="${DEVICE:-cuda}"
BENCH_ARGS="${BENCH_ARGS:-}"
# tests/test_cuda.py runs on this device (cpu for a dry run).
export DETECTRON_RES_TEST_DEVICE="$DEVICE"
mkdir -p "$OUT"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
START=$(date +%s)
SUMMARY="$OUT/stages.tsv"
printf 'stage\tstatus\tseconds\n' > "$SUMMARY"

limit() {  # limit SECONDS -> SECONDS * STAGE_SCALE (integer)
    awk -v s="$1" -v k="$STAGE_SCALE" 'BEGIN { printf "%d", s * k }'
}

run_stage() {  # run_stage NAME SECONDS COMMAND...
    local name="$1" seconds
    seconds="$(limit "$2")"
    shift 2
    local log="$OUT/$name.log" t0 status
    t0=$(date +%s)
    echo "=== [$(( t0 - START )) s] $name (limit ${seconds} s): $*"
    timeout --signal=TERM --kill-after=15 "$seconds" "$@" > "$log" 2>&1
    status=$?
    local took=$(( $(date +%s) - t0 ))
    if [ "$status" -eq 0 ]; then
        echo "    ok in ${took} s"
        printf '%s\tok\t%s\n' "$name" "$took" >> "$SUMMARY"
    else
        [ "$status" -eq 124 ] && echo "    TIMED OUT after ${took} s" || echo "    FAILED (exit $status) after ${took} s"
        tail -n 15 "$log" | sed 's/^/    | /'
        printf '%s\tfailed (exit %s)\t%s\n' "$name" "$status" "$took" >> "$SUMMARY"
    fi
    return 0
}

# ---------------------------------------------------------------- 1. machine
{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "host: $(hostname)"
    nvidia-smi || echo "nvidia-smi not available"
    "$PYTHON" - <<'EOF'
import platform, torch, torchvision
print(f"python {platform.python_version()}, torch {torch.__version__}, torchvision {torchvision.__version__}")
print(f"cuda available: {torch.cuda.is_available()}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"gpu {i}: {p.name}, {p.total_memory / 2**30:.1f} GiB, {p.multi_processor_count} SMs")
for name in ("omegaconf", "pycocotools", "albumentations", "cv2", "matplotlib"):
    try:
        module = __import__(name)
        print(f"{name} {getattr(module, '__version__', '?')}")
    except Exception as e:  # noqa: BLE001
        print(f"{name}: NOT importable ({type(e).__name__}: {e})")
EOF
} > "$OUT/machine.log" 2>&1
cat "$OUT/machine.log"

# ------------------------------------------------------------- 2. CUDA tests
run_stage cuda_tests 80 "$PYTHON" -m pytest -m cuda -q -rs -p no:cacheprovider tests/

# ------------------------------------------------------------ 3. benchmarks
# --budget-s bounds the timed repeats; building the models (on the CPU) comes on top.
# shellcheck disable=SC2086  # BENCH_ARGS is a list of arguments
run_stage bench 190 "$PYTHON" benchmarks/run.py --device "$DEVICE" --depths 50,101 \
    --train-batch-sizes 2,8 --budget-s 120 --min-repeats 3 --out "$OUT/bench" $BENCH_ARGS
# shellcheck disable=SC2086
run_stage bench_ablation 80 "$PYTHON" benchmarks/run.py --device "$DEVICE" --depths 50 --train-batch-sizes 8 \
    --train-ablation --bf16 off --skip scaling,profile,contention --budget-s 45 --min-repeats 2 --out "$OUT/ablation" $BENCH_ARGS

# ------------------------------------------------------------- 4. demo training
export DETECTRON_RES_DATASETS="$OUT/datasets"
run_stage demo_data 20 "$PYTHON" -m detectron_res.data.shapes --out "$DETECTRON_RES_DATASETS/shapes"
DEMO_T0=$(date +%s)
run_stage demo_train 110 "$PYTHON" tools/train_net.py \
    --config demo_shapes.yaml --device "$DEVICE" --output-dir "$OUT/demo" --overwrite \
    solver.max_iter="$DEMO_ITERS" test.eval_period=500 data.num_workers=6 solver.checkpoint_period=100000 \
    solver.amp.enabled=true solver.amp.dtype=bf16
DEMO_SECONDS=$(( $(date +%s) - DEMO_T0 ))

# ------------------------------------------------------------- 5. summary
"$PYTHON" - "$OUT" "$DEMO_ITERS" "$DEMO_SECONDS" "$(( $(date +%s) - START ))" > "$OUT/RESULTS_GPU.md" <<'EOF'
import json, sys
from pathlib import Path

out, demo_iters, demo_seconds, total = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
print("# GPU results (benchmarks/gpu.sh)\n")
print(f"Total wall time: {total} s. Stage logs: `<stage>.log` next to this file.\n")
print("## Machine\n\n```")
print((out / "machine.log").read_text().strip() if (out / "machine.log").exists() else "(missing)")
print("```\n\n## Stages\n\n| stage | status | seconds |\n|---|---|---|")
for line in (out / "stages.tsv").read_text().splitlines()[1:]:
    print("| " + " | ".join(line.split("\t")) + " |")
tests = out / "cuda_tests.log"
if tests.exists():
    lines = [l for l in tests.read_text().splitlines() if l.strip()]
    print("\n## CUDA tests\n\n```\n" + "\n".join(lines[-12:]) + "\n```")
for name, log in (("bench", "bench"), ("ablation", "bench_ablation")):
    md = sorted((out / name).glob("RESULTS*.md")) if (out / name).is_dir() else []
    if not md:
        print(f"\n## Benchmark, {name}\n\n(no results: see {log}.log)")
        continue
    # One level down: the run's title becomes a section, its sections subsections.
    for line in md[0].read_text().splitlines():
        if line.startswith("# "):
            line = f"## Benchmark, {name}: " + line[2:]
        elif line.startswith("#"):
            line = "#" + line
        print(line.replace("](scaling_", f"]({name}/scaling_"))
print("\n## Demo training (configs/demo_shapes.yaml on the GPU, bf16 autocast)\n")
metrics = out / "demo" / "metrics.json"
evals = []
if metrics.exists():
    for line in metrics.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        scores = {k: v for k, v in record.items() if "AP" in k.split("/")[-1]}
        if scores:
            evals.append((record.get("iteration"), scores))
print(f"{demo_iters} iterations requested; training stage wall time {demo_seconds} s (includes evaluation every 500 iterations and start-up).\n")
if evals:
    print("| iteration | " + " | ".join(sorted(evals[-1][1])) + " |")
    print("|---|" + "---|" * len(evals[-1][1]))
    for it, scores in evals:
        print(f"| {it} | " + " | ".join(f"{scores.get(k, float('nan')):.2f}" for k in sorted(evals[-1][1])) + " |")
else:
    print("(no evaluation found in demo/metrics.json: see demo_train.log)")
EOF
echo "=== [$(( $(date +%s) - START )) s] wrote $OUT/RESULTS_GPU.md"
cat "$SUMMARY"
