#!/usr/bin/env bash
# The benchmark's calibration and the paper's ablation over three training seeds, in one run on one GPU, in the
# setting the README's ablations measure on the CPU (6000-iteration references, output stride 4, the paper's
# stage-1 terms), or a larger one through the variables below:
#   1. benchmarks/calibrate_gap.py: source-only and oracle at several gaps, the gap chosen by the rule stated
#      there (source-only / oracle nearest 0.55, the oracle segmenting every class); no ProDA stage runs;
#   2. `proda ablation $PIPELINE` at the chosen gap, one process per training seed side by side,
#      then once more over all seeds (every row finished: it only writes the merged tables);
#   3. controls, first seed only: the same ablation on the full gap (1.0); stage 1 and its denoise row with
#      the EMA and prototype time constants at the paper's share of the run (EMA 0.9, prototypes 0.02),
#      from that seed's own warm-up model, soft labels and prototypes.
# Usage: bash benchmarks/gpu_synthetic.sh OUT [extra dotted overrides for every run, e.g. optim.iterations=2 for
# a smoke run]. A larger regime, e.g. images twice as wide and high and a network twice as wide:
#   SIZE=384x192 bash benchmarks/gpu_synthetic.sh OUT 'data.crop_size=[256,128]' model.width=32
# Environment: DEVICE (default cuda), GAPS (default 1.0,0.9,0.8,0.7), SEEDS (default 1337,1,2), WORK (scratch),
# DEADLINE (seconds after the start at which unfinished ablation processes stop, so the results still come back),
# SIZE (benchmark image size, default the benchmark's 192x96), PIPELINE (default synthetic/pipeline_6k; its
# references' budget is what the calibration's REFERENCE_OVERRIDES must repeat, default optim.iterations=6000
# run.eval_every=1500), STAGE1_TERMS (the stage-1 loss weights of the ablation, default the paper's GTA5 ones).
set -uo pipefail
OUT=$(realpath -m "$1"); shift
EXTRA=("$@")
DEVICE=${DEVICE:-cuda}
GAPS=${GAPS:-1.0,0.9,0.8,0.7}
SEEDS=${SEEDS:-1337,1,2}
WORK=${WORK:-/tmp/proda_gpu_synthetic}
DEADLINE=${DEADLINE:-100000}
SIZE=${SIZE:-192x96}
PIPELINE=${PIPELINE:-synthetic/pipeline_6k}
read -ra REFERENCE_OVERRIDES <<< "${REFERENCE_OVERRIDES:-optim.iterations=6000 run.eval_every=1500}"
read -ra STAGE1_TERMS <<< "${STAGE1_TERMS:-stage1.sce_alpha=0.1 stage1.sce_beta=1.0 stage1.regular_weight=0.1}"
mkdir -p "$OUT" "$WORK"
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
COMMON=(run.device="$DEVICE" data.num_workers=1 model.output_stride=4 "${EXTRA[@]}")
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 )) s] $*" | tee -a "$OUT/timeline.txt"; }

stamp "calibration: gaps $GAPS"
python benchmarks/calibrate_gap.py "$WORK/calibration" --gaps "$GAPS" --size "$SIZE" --parallel 8 \
    "${REFERENCE_OVERRIDES[@]}" "${COMMON[@]}" \
    > "$OUT/calibration.log" 2>&1 || { stamp "calibration failed"; tail -50 "$OUT/calibration.log"; }
cp "$WORK/calibration/calibration.json" "$WORK/calibration/calibration.md" "$OUT/" 2>/dev/null
GAP=$(python -c "import json,sys; print(json.load(open(sys.argv[1]))['chosen'])" "$WORK/calibration/calibration.json") || exit 1
stamp "chosen gap $GAP"

ablation() {  # ablation OUT_DIR GAP SEEDS [overrides...]
    local dir=$1 gap=$2 seeds=$3; shift 3
    local data="$WORK/calibration/gap_$gap/data"
    timeout $(( DEADLINE - ($(date +%s) - t0) )) proda ablation "$PIPELINE" --seeds "$seeds" --no-progress out_dir="$dir" \
        data.source_root="$data/gta5" data.target_root="$data/cityscapes" "${STAGE1_TERMS[@]}" "${COMMON[@]}" "$@"
}
IFS=, read -ra SEED_LIST <<< "$SEEDS"
for seed in "${SEED_LIST[@]}"; do
    ablation "$WORK/ablation" "$GAP" "$seed" > "$WORK/ablation_seed_$seed.log" 2>&1 &
done
control() {  # control NAME [overrides...]: stage 1 of the first seed from its ablation's warm-up outputs
    local name=$1; shift
    local seed=${SEED_LIST[0]}
    local run="$WORK/ablation/seed_$seed" data="$WORK/calibration/gap_$GAP/data"
    until [ -d "$run/self_training" ]; do  # the variants start once the soft labels and prototypes exist
        sleep 5
        [ $(( $(date +%s) - t0 )) -lt "$DEADLINE" ] || return 1
    done
    timeout $(( DEADLINE - ($(date +%s) - t0) )) proda train synthetic/stage1 --no-progress \
        run.out_dir="$WORK/controls/$name" run.seed="$seed" data.source_root="$data/gta5" \
        data.target_root="$data/cityscapes" model.init="$run/warmup/latest.pth" model.init_format=proda \
        stage1.soft_labels="$run/warmup/pseudo_soft" stage1.prototypes="$run/warmup/prototypes.pth" \
        "${STAGE1_TERMS[@]}" "${COMMON[@]}" "$@"
}
control denoise_fast_time_constants stage1.consistency_weight=0 stage1.regular_weight=0 \
    stage1.ema_momentum=0.9 stage1.prototype_momentum=0.02 > "$WORK/control_denoise.log" 2>&1 &
control stage1_fast_time_constants stage1.ema_momentum=0.9 stage1.prototype_momentum=0.02 \
    > "$WORK/control_stage1.log" 2>&1 &
if [ "$GAP" != "1" ]; then
    ablation "$WORK/ablation_gap1" 1 "${SEED_LIST[0]}" > "$WORK/ablation_gap1.log" 2>&1 &
fi
wait
stamp "ablation processes done"
# the merged tables from every seed's pipeline report (what `proda ablation --seeds ...` writes once all rows
# are done; a row a seed did not finish is null)
python - "$WORK/ablation" "$SEEDS" <<'PY' || stamp "merge failed"
import json, sys
from pathlib import Path
from proda.ablation import ablation_summary, write_ablation
out, seeds = Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")]
reports = {s: json.loads((out / f"seed_{s}" / "report.json").read_text()) for s in seeds
           if (out / f"seed_{s}" / "report.json").is_file()}
write_ablation(out, ablation_summary(seeds, reports))
PY
stamp "merged"

# what comes back: the tables, every seed's pipeline report and the logs' tails, in one archive
(cd "$WORK" && tar czf "$OUT/results.tgz" --exclude='*.pth' --exclude='pseudo_*' --exclude='*.png' \
    --exclude='data' --exclude='tb' --exclude='events.*' calibration ablation ablation_gap1 controls ./*.log 2>/dev/null)
cp "$WORK/ablation/ablation.md" "$WORK/ablation/ablation.json" "$OUT/" 2>/dev/null
cp "$WORK/ablation/ablation.png" "$OUT/" 2>/dev/null
stamp "done"
