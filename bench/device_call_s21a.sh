#!/bin/bash
# s21's first device call on one H200 (bench/RESULTS.md: issue 12's CPU-trace row, issue 13's
# start-up row). Carry runs/call3 (the constriction and mido wheels, GCIDE slices, a prompt).
# 1. `omnibyte generate` start-up with the compiled bytecode kept between runs
#    (PYTHONPYCACHEPREFIX): the device image's PyTorch ships no .pyc files, so the first run
#    writes them and the second is the start a user with a pip-installed PyTorch gets.
# 2. CPU state modelling with bGPT-style trace targets and 800,000 fresh records (s18 used
#    100,000 final-state records and stopped learning at 98.49%).
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site runs/call3/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache
OB="python -m omnibyte.cli"
timed() { local log=$1; shift; local TIMEFORMAT="wall %R s"; { time "$@" > "$log" 2>&1 ; } 2>> "$log"; }
mkdir -p $OUT/s21a
cd_out() { cd $OUT && tar czf s21a.tgz s21a; }
trap cd_out EXIT
timeout 60 $OB train runs/call3/train.txt.gz --preset small --steps 20 --batch-size 8 --no-progress --out runs/small \
  > $OUT/s21a/train.log 2>&1
for run in first second third; do
  timed $OUT/s21a/gen_$run.log timeout 60 $OB generate --model runs/small --prompt-file runs/call3/prompt.txt \
    --max-bytes 1000 --seed 0 -o /tmp/gen_$run.bin
done
timeout 40 python -X importtime -m omnibyte.cli generate --model runs/small --prompt-file runs/call3/prompt.txt \
  --max-bytes 1000 --seed 0 -o /tmp/gen_importtime.bin 2> $OUT/s21a/importtime.log > /dev/null
timeout 30 python -m cProfile -o $OUT/s21a/gen_warm.prof -m omnibyte.cli generate --model runs/small \
  --prompt-file runs/call3/prompt.txt --max-bytes 1000 --seed 0 -o /tmp/gen_prof.bin > /dev/null 2>&1
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv > $OUT/s21a/gpu.txt
timeout 470 python bench/bench_convert.py --tasks cpu --cpu-trace --cpu-records 800000 --minutes 6.2 --context 1024 \
  --out $OUT/s21a/cpu_trace > $OUT/s21a/cpu_trace.log 2>&1
