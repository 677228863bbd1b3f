#!/usr/bin/env bash
# Every GPU bench in one call, one JSON line per bench in one folder.
#
#   bash bench/gpu.sh [--out DIR] [--wheels DIR] [--dry-run]      (or: make bench-gpu)
#
# Made for a bare GPU machine with torch preinstalled and no network: the project's other packages
# (open_clip_torch, ftfy, wcwidth, webdataset, braceexpand, av, datasets, dill, multiprocess) come
# along as wheels in --wheels (default .whl/; bench/README.md says how to download them) and are
# installed into a scratch folder on PYTHONPATH, only when an import is missing. Each bench runs under
# its own time limit (about 8 minutes in all on an H200); one that fails or runs out of time leaves
# {"bench": NAME, "error": ...} and the rest still run. DIR/NAME.json holds each line, DIR/NAME.log its
# stderr, DIR/all.jsonl all of them.
#
# --dry-run runs the same benches at toy sizes on the CPU in about a minute (tests/test_bench_gpu.py runs
# it in `make test`), so the script is known to work before the GPU time is spent.
set -uo pipefail

out="bench_out/gpu-$(date -u +%Y%m%dT%H%M%SZ)"
wheels=".whl"
dry=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --wheels) wheels="$2"; shift 2 ;;
        --dry-run) dry=1; shift ;;
        -h|--help) sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/gpu.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
py="${PYTHON:-python3}"
cd "$(dirname "$0")/.." || exit 2
mkdir -p "$out" || exit 2
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1

needed="import open_clip, webdataset, av, datasets, safetensors, accelerate, tqdm, pyarrow"
if ! "$py" -c "$needed" 2>/dev/null; then
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "bench/gpu.sh: packages missing ($needed) and no wheels in $wheels/ (bench/README.md: GPU machines)" >&2
        exit 2
    fi
    site="$(mktemp -d)/site"
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" "$wheels"/*.whl || exit 2
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
    "$py" -c "$needed" || { echo "bench/gpu.sh: still missing after installing $wheels/" >&2; exit 2; }
fi

# name, script, time limit in seconds, arguments: the GPU run, then the dry run
if [ "$dry" = 1 ]; then
    benches=(
        "generator|generator|120|--dry-run"
        "embed|embed|120|--dry-run"
        "embed_device_decode|embed|120|--dry-run --image-decode device"
        "train_step|train_step|180|--dry-run"
        "swap|swap|180|--frames 6 --device cpu"
    )
else
    benches=(
        "generator|generator|90|--device cuda --no-cpu --quick --batches 1,8,32,64 --compile cuda-graph:1,8,32"
        "embed|embed|45|--device cuda --n 1024 --batch-size 256 --repeats 2"
        "embed_device_decode|embed|35|--device cuda --n 1024 --batch-size 256 --repeats 2 --image-decode device"
        "swap|swap|60|--device cuda --preset alphaface --frames 120"
        "train_step|train_step|130|--skip-fast --repeats 1 --identities 4 --per-identity 32 --steps 7 --warmup 3 --cases base,fast"
        "train_step_memory|train_step|130|--skip-fast --repeats 1 --identities 4 --per-identity 32 --steps 6 --warmup 3 --cases memory,fits24"
    )
fi

failed=0
: > "$out/all.jsonl"
for entry in "${benches[@]}"; do
    IFS='|' read -r name script limit args <<< "$entry"
    echo "# bench/gpu.sh: $name (at most ${limit}s): bench/$script.py $args" >&2
    start=$(date +%s)
    # shellcheck disable=SC2086  # the arguments are split on purpose
    timeout "$limit" "$py" "bench/$script.py" $args > "$out/$name.stdout" 2> "$out/$name.log"
    rc=$?
    line="$(grep '^{' "$out/$name.stdout" | tail -n 1)"
    if [ "$rc" -ne 0 ] || [ -z "$line" ]; then
        why="exit status $rc"; [ "$rc" = 124 ] && why="ran past its ${limit}s limit"
        line="{\"bench\": \"$name\", \"error\": \"$why (see $name.log)\"}"
        failed=$((failed + 1))
    fi
    rm -f "$out/$name.stdout"
    echo "$line" > "$out/$name.json"
    echo "$line" >> "$out/all.jsonl"
    echo "# bench/gpu.sh: $name done in $(( $(date +%s) - start ))s" >&2
done
echo "# bench/gpu.sh: ${#benches[@]} benches, $failed failed; lines in $out/all.jsonl" >&2
[ "$failed" -eq 0 ]
