#!/bin/bash
# s21's last device call on one H200 (issue 13): where a round of speculation on the device goes,
# uncompiled and compiled, next to a plain step (random `small`, bf16). No carry needed.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 PYTHONPYCACHEPREFIX=/tmp/pycache
mkdir -p $OUT/s21d
timeout 190 python bench/bench_decode_profile.py --presets small --paths fast,compiled --rounds \
  --out $OUT/s21d > $OUT/s21d/run.log 2>&1
cd $OUT && tar czf s21d.tgz s21d
