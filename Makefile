.PHONY: setup test demo bench
PY ?= python3

setup:
	bash scripts/setup.sh

# The whole test suite, including set-up on a fresh machine.
test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest -n 2 --timeout 900 -q tests

# Build the tiny preset and run one forward pass + a short generation.
demo: setup
	HF_HUB_OFFLINE=1 got demo

bench: setup
	$(PY) benchmarks/model_speed.py
