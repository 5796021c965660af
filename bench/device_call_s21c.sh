#!/bin/bash
# s21's third device call on one H200: issue 13's compiled rounds on the device again (greedy
# rounds now make no noise), then issue 12's CPU state modelling with bGPT-style trace targets
# on 400,000 fresh records (the first call's run of 800,000 ran out of its time while training).
# Carry runs/call3 (wheels, GCIDE slices, a prompt).
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site runs/call3/whl/*.whl
unset PYTHONDONTWRITEBYTECODE
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache
OB="python -m omnibyte.cli"
R=$OUT/s21c
mkdir -p $R
finish() { cd $OUT && tar czf s21c.tgz s21c; }
trap finish EXIT
python -c "import gzip; open('/tmp/test.txt', 'wb').write(gzip.open('runs/call3/test.txt.gz').read())"
timeout 85 $OB train runs/call3/train.txt.gz --preset small --steps auto --time-limit 60 --batch-size 32 --lr 2e-3 \
  --no-progress --out runs/small > $R/train.log 2>&1
timeout 90 python bench/bench_speculative.py --model runs/small --device cuda --dtype bf16 --fast --compile --batches 1 \
  --temperatures 0,1 --gen-bytes 1000 --repeats 2 --prompt-file /tmp/test.txt --out $R/spec_compiled.json \
  > $R/spec_compiled.log 2>&1
timeout 400 python bench/bench_convert.py --tasks cpu --cpu-trace --cpu-records 400000 --minutes 4.5 --context 1024 \
  --out $R/cpu_trace > $R/cpu_trace.log 2>&1
