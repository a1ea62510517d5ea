#!/usr/bin/env bash
# perf.precompile on the GPU machine (issue 16's warm start): one cold + one warm process with Dynamo's regional
# compile, then one cold + two warm with the saved compiled block, the fp8 GPU test, and the headline grid from a
# fresh process with a warm cache. Run from the repository root on the device (carry .whl/, see ../shared/reference/gpu.md):
#     bash benchmarks/gpu_precompile.sh 2>&1 | grep -v "Enum subclass" | tail -c 11000
# Writes $OUT/h200_run<N>_* (RUN=<N>, default 42); each JSON holds its own command. perf=fast saves the compiled
# block (perf.precompile=true) since run44: the Dynamo lines turn it off. ACCEL=1 also runs bench_accel.py --compiled.
set -x
python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WORKBENCH_CACHE=/tmp/wbcache PYTHONPYCACHEPREFIX=/tmp/pyc
unset PYTHONDONTWRITEBYTECODE
ln -sfn ../conf workbench/conf
python -c "import workbench.pipeline, workbench.sweep, diffusers, transformers, torchao, isal, torch._inductor.select_algorithm"
P=benchmarks/profile_first_call.py; R=$OUT/h200_run${RUN:-42}; PRE=""; DYN="--override perf.precompile=false"
[ -n "$ACCEL" ] && python benchmarks/bench_accel.py --compiled --out ${R}_accel_compiled.json 2>&1 | tail -c 600
python $P --precision fp8_torchao --clear-cache --no-profile $DYN --out ${R}_first_call_fp8_dynamo_cold | tail -c 300
python $P --precision fp8_torchao --no-profile $DYN --out ${R}_first_call_fp8_dynamo_warm | tail -c 300
python $P --precision fp8_torchao --no-profile $PRE --out ${R}_first_call_fp8_precompile_cold | tail -c 300
python $P --precision fp8_torchao --no-profile $PRE --out ${R}_first_call_fp8_precompile_warm | tail -c 300
python $P --precision fp8_torchao --no-profile $PRE --out ${R}_first_call_fp8_precompile_warm_2 | tail -c 300
du -sh $WORKBENCH_CACHE/torch-compile/precompiled; ls -la $WORKBENCH_CACHE/torch-compile/precompiled/*
python -m pytest -o addopts="" -q -p no:cacheprovider tests/test_precompiled.py -k fp8 2>&1 | tail -5
python benchmarks/bench_headline.py --precision fp8_torchao $PRE --out ${R}_headline_fp8_precompile_warm.json 2>&1 | tail -c 1500
