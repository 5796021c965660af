#!/bin/bash
# The s20 closing device call on nvidia-h200-x2 (bench/RESULTS.md: "bGPT tasks" and issue 13's
# start-up and Pace rows). Carry runs/task_data/fsdd, runs/task_data/fashion-mnist and runs/call3
# (the constriction and mido wheels; the first 4 MB of GCIDE's training part, 600 KB of its test
# part and a 100-byte prompt from it). Each job tars its own results into $OUT as it ends.
# GPU 0: Fashion-MNIST, pre-trained 4.6 minutes, fine-tuned 3.8 (mirrored and moved copies).
# GPU 1: `small` trained 90 s on the GCIDE slice; `omnibyte generate` of 1,000 bytes twice (the
#        first run also writes the .pyc files the device image lacks; the second is a user's
#        usual start); bench_speculative at temperatures 0 and 1 (Pace); then FSDD pre-trained
#        2.2 minutes and fine-tuned 2.1 with delayed training copies.
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site runs/call3/whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OB="python -m omnibyte.cli"
timed() { local log=$1; shift; local TIMEFORMAT="wall %R s"; { time "$@" > "$log" 2>&1 ; } 2>> "$log"; }
mkdir -p $OUT/fashion $OUT/g1
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 560 python bench/bench_tasks.py --data runs/task_data --tasks fashion-mnist --pretrain --no-scratch \
    --pretrain-minutes 4.6 --minutes 3.8 --out $OUT/fashion > $OUT/fashion/run.log 2>&1
  cd $OUT && tar czf fashion.tgz fashion && rm -rf fashion
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 130 $OB train runs/call3/train.txt.gz --preset small --steps auto --time-limit 90 --batch-size 32 --lr 2e-3 \
    --no-progress --out runs/small > $OUT/g1/train.log 2>&1
  timed $OUT/g1/gen_first.log timeout 60 $OB generate --model runs/small --prompt-file runs/call3/prompt.txt --max-bytes 1000 --seed 0 -o $OUT/g1/gen_first.bin
  timed $OUT/g1/gen_second.log timeout 60 $OB generate --model runs/small --prompt-file runs/call3/prompt.txt --max-bytes 1000 --seed 0 -o $OUT/g1/gen_second.bin
  timeout 40 python -X importtime -m omnibyte.cli generate --model runs/small --prompt-file runs/call3/prompt.txt --max-bytes 1000 --seed 0 -o /tmp/g.bin 2> $OUT/g1/importtime.log > /dev/null
  timeout 40 python -m cProfile -o $OUT/g1/gen_third.prof -m omnibyte.cli generate --model runs/small --prompt-file runs/call3/prompt.txt --max-bytes 1000 --seed 0 -o /tmp/g.bin > /dev/null 2>&1
  python -c "import gzip; open('runs/call3/test.txt', 'wb').write(gzip.open('runs/call3/test.txt.gz').read())"
  timeout 80 python bench/bench_speculative.py --model runs/small --device cuda --dtype bf16 --fast --batches 1 --temperatures 0,1 \
    --gen-bytes 1000 --repeats 1 --prompt-file runs/call3/test.txt --out $OUT/g1/spec.json > $OUT/g1/spec.log 2>&1
  timeout 330 python bench/bench_tasks.py --data runs/task_data --tasks fsdd --pretrain --no-scratch \
    --pretrain-minutes 2.2 --minutes 2.1 --out $OUT/g1/fsdd > $OUT/g1/fsdd.log 2>&1
  cd $OUT && tar czf g1.tgz g1 && rm -rf g1
) &
wait
ls -la $OUT
