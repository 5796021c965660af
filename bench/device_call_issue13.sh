#!/bin/bash
# The s19 issue-13 device call (bench/RESULTS.md, "Decode-attention kernel and graph-captured
# speculative verify"), as run on nvidia-h200-x2: carry .whl (the wheels) and runs/text
# (gcide.txt.gz); run `timeout -s TERM 355 bash bench/device_call_issue13.sh`; everything comes
# back as $OUT/results.tgz (a call returns only a few files).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
OB="python -m omnibyte.cli"
timed() { local log=$1; shift; local TIMEFORMAT="wall %R s"; { time "$@" > "$log" 2>&1 ; } 2>> "$log"; }
python - <<'PY'
import gzip
data = gzip.open("runs/text/gcide.txt.gz").read()
open("runs/text/gcide_train.txt", "wb").write(data[:-2_000_000])
open("runs/text/gcide_test.txt", "wb").write(data[-2_000_000:])
open("runs/text/gcide_test_500k.txt", "wb").write(data[-2_000_000:-1_500_000])
open("runs/text/prompt.txt", "wb").write(data[-1_000_000:-999_900])
PY
mkdir -p $OUT/g0 $OUT/g1
(
  export CUDA_VISIBLE_DEVICES=0
  timeout 140 $OB train runs/text/gcide_train.txt --preset small --steps auto --time-limit 100 --batch-size 32 --lr 2e-3 --no-progress --out runs/small > $OUT/g0/train.log 2>&1
  touch runs/small/DONE
  timed $OUT/g0/gen_default.log timeout 40 $OB generate --model runs/small --prompt-file runs/text/prompt.txt --max-bytes 1000 --seed 0 -o $OUT/g0/gen_default.bin
  timed $OUT/g0/gen_t0.log timeout 40 $OB generate --model runs/small --prompt-file runs/text/prompt.txt --max-bytes 1000 --seed 0 --temperature 0 -o $OUT/g0/gen_t0.bin
  timed $OUT/g0/gen_t0_spec.log timeout 40 $OB generate --model runs/small --prompt-file runs/text/prompt.txt --max-bytes 1000 --seed 0 --temperature 0 --speculative -o $OUT/g0/gen_t0_spec.bin
  timeout 40 python -m cProfile -o $OUT/g0/gen_default.prof -m omnibyte.cli generate --model runs/small --prompt-file runs/text/prompt.txt --max-bytes 1000 --seed 0 -o /tmp/gp.bin > /dev/null 2>&1
  timeout 70 python bench/bench_speculative.py --model runs/small --device cuda --dtype bf16 --fast --batches 1 --gen-bytes 1000 --repeats 1 --prompt-file runs/text/gcide_test.txt --out $OUT/g0/spec.json > $OUT/g0/spec.log 2>&1
  timed $OUT/g0/compress.log timeout 45 $OB compress runs/text/gcide_test_500k.txt --model runs/small -o $OUT/g0/t.omb
  timed $OUT/g0/decompress.log timeout 45 $OB decompress $OUT/g0/t.omb --model runs/small -o /tmp/t.out
  cmp /tmp/t.out runs/text/gcide_test_500k.txt >> $OUT/g0/decompress.log 2>&1 && echo roundtrip-ok >> $OUT/g0/decompress.log
  rm -f $OUT/g0/t.omb
) &
(
  export CUDA_VISIBLE_DEVICES=1
  timeout 80 python bench/bench_decode_attention.py --out $OUT/g1/attn > $OUT/g1/attn.log 2>&1
  timeout 120 python bench/bench_decode_profile.py --presets small,base --paths fast,compiled --out $OUT/g1/prof_triton > $OUT/g1/prof_triton.log 2>&1
  OMNIBYTE_DECODE_ATTENTION=sdpa timeout 60 python bench/bench_decode_profile.py --presets small,base --paths fast --out $OUT/g1/prof_sdpa > $OUT/g1/prof_sdpa.log 2>&1
  timeout 60 python bench/bench_hierarchical.py --peers --skip-long --skip-train --out $OUT/g1/hier.json > $OUT/g1/hier.log 2>&1
  for i in $(seq 60); do [ -f runs/small/DONE ] && break; sleep 2; done
  timeout 90 python bench/bench_speculative.py --model runs/small --device cuda --dtype bf16 --fast --compile --batches 1 --gen-bytes 1000 --repeats 1 --prompt-file runs/text/gcide_test.txt --out $OUT/g1/spec_compiled.json > $OUT/g1/spec_compiled.log 2>&1
) &
wait
tail -n 4 $OUT/g0/*.log $OUT/g1/*.log
cd $OUT && tar czf results.tgz g0 g1 && rm -rf g0 g1
