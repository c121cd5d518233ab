#!/usr/bin/env bash
# Resume the full-scale FER+ study from a pinned checkout (see README.md here). Idempotent: the data folders are
# imported and prepared only where missing, and every recorded cell is skipped.
#
#   experiments/ferplus-full/run.sh [ROWS [OPTIONS...]]  # ROWS: comma-separated report rows (default: every row);
#                                  # OPTIONS go to `synfer experiment`, e.g. --seeds '[0]' (cell keys do not change)
#
# Environment: RUNS (the runs folder, default <checkout>/runs), PIN (the study's commit, default below),
# WT (the pinned worktree, default <RUNS>/../wt-study), FERPLUS (the FER+ folder, default ../shared/data/ferplus),
# AU_MODEL (MediaPipe's face_landmarker.task). Logs: $RUNS/study.log (progress bars) and the cells' metrics.jsonl.
set -euo pipefail
main=$(cd "$(dirname "$0")/../.." && pwd)
RUNS=${RUNS:-$main/runs}
PIN=${PIN:-0d0a89a}  # the commit the synthetic sets were generated at: generate --resume checks the generator's hash
# commits of this repository whose src changes are applied on top of PIN: fixes of the study's own machinery that
# change no cell's result (the cells' resume of a recorded cell's interrupted recomputation; a recomputation keeps
# the first run's results and notes whether it reproduced them)
FIXES=${FIXES:-9730a58 7e6c147 59dfae1}
WT=${WT:-$(dirname "$RUNS")/wt-study}
FERPLUS=${FERPLUS:-$main/../shared/data/ferplus}
AU_MODEL=${AU_MODEL:-$main/../shared/data/mediapipe_face_landmarker/face_landmarker.task}
synfer=${SYNFER:-$main/.venv/bin/synfer}
mkdir -p "$RUNS"
RUNS=$(cd "$RUNS" && pwd)

[ -f "$RUNS/ferplus/manifest.parquet" ] || [ -d "$RUNS/ferplus" ] || "$synfer" import-ferplus "$FERPLUS" "$RUNS/ferplus"
[ -d "$RUNS/ferplus_ce" ] || "$synfer" import-ferplus "$FERPLUS" "$RUNS/ferplus_ce" --label-mode crossentropy
[ -d "$RUNS/ferplus_prepared" ] || "$synfer" prepare "$RUNS/ferplus" "$RUNS/ferplus_prepared" --au-model "$AU_MODEL"

if [ ! -d "$WT" ]; then
  git -C "$main" worktree prune
  git -C "$main" worktree add --detach "$WT" "$PIN"
fi
applied="$(git -C "$WT" rev-parse --absolute-git-dir)/study-fixes"  # the fixes this worktree has, one per line
touch "$applied"
for c in $FIXES; do  # each fix once, in order; -C1: the pin's lines around a fix may differ from main's
  grep -qx "$c" "$applied" && continue
  git -C "$main" diff "$c^" "$c" -- src | git -C "$WT" apply -C1
  echo "$c" >> "$applied"
done
[ "$(git -C "$WT" rev-parse --short=7 HEAD)" = "${PIN:0:7}" ] || { echo "$WT is not at $PIN" >&2; exit 1; }
ln -sfn "$RUNS" "$WT/runs"

cd "$WT"
rows=()
[ -n "${1:-}" ] && rows=(--rows "[$1]")
PYTHONPATH=src exec "$synfer" experiment --config configs/experiments/ferplus.yaml --work runs/study \
  --record "$main/experiments/ferplus-full/cells" "${rows[@]}" "${@:2}"
