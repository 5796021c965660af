#!/bin/bash
# s21's second device call on one H200 (bench/RESULTS.md, issue 13): speculative rounds on the
# device against the host's, the user's `generate` start-up with bytecode kept, compression with
# the CLI's defaults, and the generation grid. Carry runs/call3 (wheels, GCIDE slices, a prompt).
python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target /tmp/site runs/call3/whl/*.whl
env | grep -E "^PYTHON" > /tmp/python_env.txt
# the device image sets PYTHONDONTWRITEBYTECODE, so no run keeps the .pyc files a pip-installed
# PyTorch ships; keep them (under /tmp) so that later runs start as a user's would
unset PYTHONDONTWRITEBYTECODE
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache
OB="python -m omnibyte.cli"
R=$OUT/s21b
mkdir -p $R && cp /tmp/python_env.txt $R/
timed() { local log=$1; shift; local TIMEFORMAT="wall %R s"; { time "$@" > "$log" 2>&1 ; } 2>> "$log"; }
finish() { cd $OUT && tar czf s21b.tgz s21b; }
trap finish EXIT
python -c "import gzip; open('/tmp/test.txt', 'wb').write(gzip.open('runs/call3/test.txt.gz').read())"
head -c 500000 /tmp/test.txt > /tmp/test500k.txt
timeout 130 $OB train runs/call3/train.txt.gz --preset small --steps auto --time-limit 90 --batch-size 32 --lr 2e-3 \
  --no-progress --out runs/small > $R/train.log 2>&1
GEN="$OB generate --model runs/small --prompt-file runs/call3/prompt.txt --max-bytes 1000 --seed 0"
for run in 1 2 3; do timed $R/gen_default_$run.log timeout 40 $GEN -o /tmp/gen_$run.bin; done
timed $R/gen_greedy.log timeout 40 $GEN --temperature 0 -o /tmp/gen_greedy.bin
timed $R/gen_greedy_spec.log timeout 40 $GEN --temperature 0 --speculative -o /tmp/gen_greedy_spec.bin
timed $R/gen_spec.log timeout 40 $GEN --speculative -o /tmp/gen_spec.bin
cmp /tmp/gen_greedy.bin /tmp/gen_greedy_spec.bin > $R/greedy_cmp.txt 2>&1; echo "rc $?" >> $R/greedy_cmp.txt
cmp /tmp/gen_1.bin /tmp/gen_spec.bin > $R/sample_cmp.txt 2>&1; echo "rc $?" >> $R/sample_cmp.txt
SPEC="python bench/bench_speculative.py --model runs/small --device cuda --dtype bf16 --fast --batches 1 --temperatures 0,1 --gen-bytes 1000 --repeats 2 --prompt-file /tmp/test.txt"
timeout 100 $SPEC --host-rounds --out $R/spec.json > $R/spec.log 2>&1
timeout 100 $SPEC --compile --out $R/spec_compiled.json > $R/spec_compiled.log 2>&1
timed $R/compress.log timeout 40 $OB compress --model runs/small /tmp/test500k.txt -o /tmp/t.omb
timed $R/decompress.log timeout 40 $OB decompress --model runs/small /tmp/t.omb -o /tmp/t.out
cmp /tmp/test500k.txt /tmp/t.out > $R/compress_cmp.txt 2>&1; echo "rc $?" >> $R/compress_cmp.txt; ls -l /tmp/t.omb >> $R/compress_cmp.txt
timeout 100 python bench/bench_flat.py --device cuda --sections gen --gen-presets small,base --gen-methods eager,fast \
  --gen-bytes 512 --out $R/flat_gen.json > $R/flat_gen.log 2>&1
