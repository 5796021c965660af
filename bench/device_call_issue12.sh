#!/bin/bash
# The s20 issue-12 device call (bench/RESULTS.md, "bGPT tasks"), as run on nvidia-h200-x2:
# carry runs/task_data/fsdd and runs/task_data/fashion-mnist (bench/pack_task_data.py's copy of the
# data; no wheels: the classification benches need none, and all three are over the 64 MiB); run
# `bash bench/device_call_issue12.sh` (each bench under `timeout 585`). FSDD on GPU 0, pre-trained
# 4.3 minutes and fine-tuned 4.3; Fashion-MNIST (with mirrored and moved training copies) on GPU 1,
# pre-trained 4.5 and fine-tuned 3.8 (its fine-tuning over-fitted after two thirds of 4.3 minutes in
# the first s20 call): 8.6 and 8.3 of the 10 minutes per model. Everything comes back as
# $OUT/results.tgz.
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
mkdir -p $OUT/tasks
(CUDA_VISIBLE_DEVICES=0 timeout 585 python bench/bench_tasks.py --data runs/task_data --tasks fsdd --pretrain --no-scratch \
   --pretrain-minutes 4.3 --minutes 4.3 --out $OUT/tasks/fsdd > $OUT/tasks/fsdd.log 2>&1) &
(CUDA_VISIBLE_DEVICES=1 timeout 585 python bench/bench_tasks.py --data runs/task_data --tasks fashion-mnist --pretrain --no-scratch \
   --pretrain-minutes 4.5 --minutes 3.8 --out $OUT/tasks/fashion > $OUT/tasks/fashion.log 2>&1) &
wait
tail -n 6 $OUT/tasks/*.log
cd $OUT && tar czf results.tgz tasks && rm -rf tasks
