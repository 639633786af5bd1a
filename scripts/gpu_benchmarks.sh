#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md (issue 13) in one run, for a machine with a CUDA GPU and
# PyTorch + torchvision only (no Ray, MLflow, network or dataset files needed):
#   1. 64 small CNNs (convnet, MNIST-shaped) one at a time vs stacked (target >= 8x);
#   2. our training loop vs a tuned bf16 + channels_last + data-on-device loop, ResNet-18,
#      32x32, batch 512 (target >= 90 %).
# MNIST IDX files under $MNIST_ROOT (default data/mnist-t10k) are used when present, else
# random MNIST-shaped images (speed only depends on shapes). Outputs go to $1 (or $OUT).
#   bash scripts/gpu_benchmarks.sh [OUT_DIR]
# DEVICE=cpu QUICK=1 runs the same commands tiny, on the CPU (tests/test_bench_scripts.py).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${1:-${OUT:-.}}
mkdir -p "$out"
device=${DEVICE:-cuda}
mnist=${MNIST_ROOT:-data/mnist-t10k}
if [ -e "$mnist" ]; then data=(--dataset mnist --mnist-root "$mnist"); else data=(--dataset synthetic); fi
if [ "${QUICK:-0}" = 1 ]; then
    refs=(--model mlp --count 2 --epochs 1 --packs 2 --repeats 1 --threads 1)
    train=(--model lenet --image-size 28 --channels 1 --batch-size 16 --steps 2 --warmup 1 --workers 1)
else
    refs=(--model convnet --count 64 --epochs 2 --packs 8,auto --repeats 2)
    train=(--model resnet18 --image-size 32 --channels 3 --batch-size 512)
fi
python -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name(0) \
if torch.cuda.is_available() else 'no CUDA device')" | tee "$out/device.txt"
python scripts/bench_references.py --device "$device" "${data[@]}" "${refs[@]}" --no-pipeline \
    | tee "$out/bench_references_$device.txt"
python scripts/bench_train.py --device "$device" "${train[@]}" | tee "$out/bench_train_$device.txt"
