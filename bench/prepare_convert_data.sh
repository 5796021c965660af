#!/bin/sh
# Gathers what bench/bench_convert.py needs on a machine without ../shared/data or a package
# registry (the H200) into runs/convert-data/ (ignored by git; about 4 MB), to be carried there:
#   nottingham/ABC_cleaned/*.abc, nottingham/MIDI/*.mid  the Nottingham files the bench reads
#   abc2midi                                              for the ABC parse rates (optional)
#   wheels/mido-*.whl                                     mido, which the H200's image lacks
# Run from the repository root:  sh bench/prepare_convert_data.sh [SHARED_DATA_DIR]
set -eu
DATA="${1:-../shared/data}/nottingham"
OUT=runs/convert-data
mkdir -p "$OUT/nottingham/MIDI" "$OUT/wheels"
cp -r "$DATA/ABC_cleaned" "$OUT/nottingham/"
cp "$DATA"/MIDI/*.mid "$OUT/nottingham/MIDI/"
if command -v abc2midi >/dev/null 2>&1; then
    cp "$(command -v abc2midi)" "$OUT/abc2midi"
else
    echo "abc2midi not found (sh scripts/setup-test-deps.sh installs it): the ABC parse rates will be missing" >&2
fi
python3 -m pip download -q --no-deps --only-binary=:all: -d "$OUT/wheels" "mido>=1.3"
du -sh "$OUT"
