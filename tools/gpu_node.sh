#!/usr/bin/env bash
# The whole GPU measurement on a bare offline node, in one go (run from anywhere; uses this checkout).
#
#   bash tools/gpu_node.sh [--parts DIR] [--images N] [--out DIR] [--work DIR] [--site DIR]
#                          [--deadline S] [--cpu] [--install-only]
#
#   1 install:  DIR/wheels.tar.part-* (a split tar of .whl files) -> pip install --target SITE
#               (no index, no deps); PYTHONPATH=SITE:REPO. Without --parts: nothing installed.
#   2 synth:    capgen synth N images (640x480) with every core            [N default 20000]
#   3 shards:   capgen shards build --workers $(nproc), 256 px (+ DALI index files)
#   4 features: capgen features extract: resnet50 layer4, random init, bf16 on the GPU
#   5 bench:    capgen bench gpu --json OUT/bench_gpu.json; pytest tests/test_dali.py -k gpu
#   6 scaling:  capgen bench shards --workers 1 8 16 (needs scikit-image), else timed shard
#               builds of a small synthetic set with 1, 8 and all workers
#
# Everything goes to OUT/log.txt and stdout; each step logs when it starts and ends, its
# seconds and exit code, so a cut-off run still says what it did. Steps 1-3 are needed by
# all later ones (the script stops if they fail); 6 is skipped past --deadline seconds.
# --cpu: a dry run without a GPU (CUDA hidden, small N, 64 px, bench gpu --quick).
#
# Making the parts (on a machine with PyPI; the node's Python is 3.12):
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform any -d .whl \
#     nvidia-dali-cuda130 'nvidia-nvimgcodec-cu13<0.10,>=0.9' nvidia-nvjpeg nvtx makefun astunparse \
#     gast optree 'libcst~=1.8' webdataset braceexpand simplejpeg pycocotools nltk
#   tar cf - -C .whl . | split -b 58m - .gpu/wheels.tar.part-     # each part fits one device call
# PY (default python3) runs capgen; PIP_EXTRA is added to the pip command line.
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PARTS="" IMAGES="" CPU=0 INSTALL_ONLY=0 DEADLINE=330
OUT=${OUT:-/tmp/capgen-gpu-out} WORK=/tmp/capgen-gpu SITE=/tmp/site
while [ $# -gt 0 ]; do
  case $1 in
    --parts) PARTS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --site) SITE=$2; shift 2 ;;
    --deadline) DEADLINE=$2; shift 2 ;;
    --cpu) CPU=1; shift ;;
    --install-only) INSTALL_ONLY=1; shift ;;
    *) echo "gpu_node.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done

PY=${PY:-python3}
CORES=$(nproc)
SIZE=256
if [ "$CPU" = 1 ]; then
  export CUDA_VISIBLE_DEVICES=""
  IMAGES=${IMAGES:-96} SIZE=64
fi
IMAGES=${IMAGES:-20000}
SHARD_SIZE=$(( IMAGES / (4 * CORES) > 50 ? IMAGES / (4 * CORES) : 50 ))  # >= 4 shards per core
mkdir -p "$OUT" "$WORK"
export PYTHONPATH=$SITE:$REPO PYTHONUNBUFFERED=1 TQDM_DISABLE=1 TQDM_MININTERVAL=30
export PARTS WORK SITE PY PIP_EXTRA=${PIP_EXTRA:-}
cd "$REPO" || exit 1
CAPGEN=("$PY" -c "from tools.cli.main import main; main()")
T0=$(date +%s.%N)

elapsed() { echo "$(date +%s.%N) $T0" | awk '{printf "%.1f", $1 - $2}'; }

step() {  # step NAME TIMEOUT_S COMMAND...: run, log start / end / seconds / exit code
  local name=$1 limit=$2 start rc
  shift 2
  start=$(date +%s.%N)
  echo "=== [$(elapsed) s] $name: start (limit ${limit} s): $*"
  timeout --kill-after=10 "$limit" "$@"
  rc=$?
  echo "=== [$(elapsed) s] $name: end rc=$rc after $(echo "$(date +%s.%N) $start" | awk '{printf "%.1f", $1 - $2}') s"
  return $rc
}

main() {
echo "=== gpu_node.sh $(date -Is): repo $REPO, out $OUT, work $WORK, site $SITE, $CORES cores, N=$IMAGES, cpu=$CPU"
nvidia-smi --query-gpu=name,driver_version,memory.total,utilization.gpu --format=csv 2>/dev/null || echo "no nvidia-smi"
df -h "$WORK" | tail -1

# 1 install
if [ -n "$PARTS" ]; then
  # shellcheck disable=SC2016
  step install 180 bash -c 'set -e -o pipefail; rm -rf "$WORK/wheels"; mkdir -p "$WORK/wheels"
    ls -l "$PARTS"/wheels.tar.part-*
    cat "$PARTS"/wheels.tar.part-* | tar x -C "$WORK/wheels"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --upgrade --target "$SITE" ${PIP_EXTRA:-} "$WORK"/wheels/*.whl
    ls "$WORK"/wheels; rm -rf "$WORK/wheels"' || return 1
fi
"$PY" - <<'EOF' || return 1
import importlib, sys
import torch, nvidia.dali, webdataset
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name() if torch.cuda.is_available() else "", "| dali", nvidia.dali.__version__,
      nvidia.dali.__file__)
for name in ("simplejpeg", "pynvml", "skimage", "nltk"):
    try:
        importlib.import_module(name)
        print(f"  {name}: yes")
    except Exception as err:  # noqa: BLE001
        print(f"  {name}: no ({type(err).__name__})")
EOF
[ "$INSTALL_ONLY" = 1 ] && return 0

# 2 synth, 3 shards: nothing after works without them
rm -rf "$WORK/data" "$WORK/train" "$WORK/train.h5"
step synth 180 "${CAPGEN[@]}" synth "$WORK/data" --images "$IMAGES" --seed 0 --val-fraction 0 --workers "$CORES" || return 1
step shards 180 "${CAPGEN[@]}" shards build --coco-root "$WORK/data" --split train2014 --out "$WORK/train" \
  --image-size "$SIZE" --shard-size "$SHARD_SIZE" --workers "$CORES" --quiet || return 1

# 4 features
PYTHONWARNINGS=ignore::UserWarning step features 180 "${CAPGEN[@]}" features extract --shards "$WORK/train" --out "$WORK/train.h5" --encoder resnet50 \
  --encoder-stop layer4 --encoder-weights none --batch-size 256 --workers "$CORES"
FEATURES=()
[ -f "$WORK/train.h5" ] && FEATURES=(--features "$WORK/train.h5")

# 5 bench gpu, DALI GPU tests
QUICK=()
[ "$CPU" = 1 ] && QUICK=(--quick)
step bench-gpu 330 "${CAPGEN[@]}" bench gpu --shards "$WORK/train" "${FEATURES[@]}" "${QUICK[@]}" \
  --json "$OUT/bench_gpu.json" | tee "$OUT/bench_gpu.txt"
step test-dali-gpu 150 "$PY" -m pytest -q -p no:cacheprovider tests/test_dali.py -k gpu

# 6 shard-build scaling (last: the least needed)
if awk "BEGIN {exit !($(elapsed) > $DEADLINE)}"; then
  echo "=== [$(elapsed) s] scaling: skipped (past --deadline $DEADLINE s)"
elif "$PY" -c "import skimage" 2>/dev/null; then
  step bench-shards 150 "${CAPGEN[@]}" bench shards --images $(( 30 * CORES )) --rounds 1 \
    --workers 1 --workers $(( CORES / 2 )) --workers "$CORES"
else
  echo "=== scaling: no scikit-image for capgen bench shards; timing shard builds of one synthetic set instead"
  SMALL=$(( 100 * CORES ))
  rm -rf "$WORK/small"
  step synth-small 60 "${CAPGEN[@]}" synth "$WORK/small" --images "$SMALL" --seed 1 --val-fraction 0 --workers "$CORES"
  for w in $(printf "%s\n" 1 $(( CORES / 2 )) "$CORES" | sort -nu); do
    rm -rf "$WORK/scale"
    step "shards-workers-$w" 60 "${CAPGEN[@]}" shards build --coco-root "$WORK/small" --split train2014 \
      --out "$WORK/scale" --shard-size $(( SMALL / (2 * CORES) )) --workers "$w" --quiet --no-index
  done
fi
echo "=== [$(elapsed) s] gpu_node.sh: done; $OUT: $(ls "$OUT" | tr '\n' ' ')"
}

main 2>&1 | tee -a "$OUT/log.txt"
exit "${PIPESTATUS[0]}"
