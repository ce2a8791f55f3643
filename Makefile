# vs-vllm developer entry points. `make demo` and `make test` install what they need on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
VPY    := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help setup demo test test-mrv2 test-fast lint clean

help:
	@echo "make demo       serve the committed synthetic-benchmark model with vLLM + the plugin, sweep ratio x method"
	@echo "make test       the whole test suite on vLLM's V1 runner and the engine tests on Model Runner V2 (CPU),"
	@echo "                as three pytest processes side by side (TEST_SUITE_ARGS=--jobs 1: one after another)"
	@echo "make test-mrv2  only the engine tests, on Model Runner V2 (vLLM's runner on GPUs and in 0.34)"
	@echo "make test-fast  unit and property tests (< 3 min): no vLLM, HF model, compile or subprocess (-m 'not slow')"
	@echo "make test-parallel  only the TP/DP/PP 2 tests on the CPU backend vs one process (~2 min; part of make test)"
	@echo "make setup      build or check the CPU environment in $(VENV)"
	@echo "make lint       ruff"
	@echo "make clean      remove build outputs and caches (keeps $(VENV))"
	@echo "make gpu-check  on a CUDA machine (python3 + torch/triton/transformers, no venv): kernel tests, kernel and"
	@echo "                HF 7B prefill timings -> benchmarks/results/*_<gpu>.* (+ \$$OUT); DRY_RUN=1 rehearses on the CPU"
	@echo "make gpu-serve-pack   build the slim vLLM 0.33 bundle for the GPU machine in parts (.cache/gpu-serve-pack/)"
	@echo "make gpu-serve-check  on the GPU machine, one part per command: stock vLLM vs vs-vllm serve, tiny models and"
	@echo "                      a 7B-shaped benchmark -> benchmarks/results/serve_check_<gpu>.* (+ \$$OUT); DRY_RUN=1 too"

setup:
	@$(PYTHON) -m vs_vllm.envsetup.setup_cpu_env --venv $(VENV)

demo: setup
	@$(VPY) -m vs_vllm demo

# pytest exits 5 when it collected nothing: that is a failure here, never a pass. make test runs the engine-driving
# tests (marker runner_matrix) on vLLM's V1 model runner and on Model Runner V2 (the runner GPU users run, on this CPU
# through the test bed that make setup installs), and every other test on V1: three pytest processes side by side,
# each pass's vLLM servers on their own core (vs_vllm/testing/suite.py says why); it fails if any pass fails.
# TEST_SUITE_ARGS: e.g. --jobs 1 (one pass after another), --passes v1-other.
PYTEST_CHECKED = rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; rc=1; fi
TEST_SUITE_ARGS ?=

test: setup
	@$(VPY) -m vs_vllm.testing.suite $(TEST_SUITE_ARGS) -- $(PYTEST_ARGS)

# Only the engine-driving tests, on Model Runner V2 (vLLM's switch VLLM_USE_V2_MODEL_RUNNER=1 for every process).
test-mrv2: setup
	@$(VPY) -m pytest --runner mrv2 -m runner_matrix $(PYTEST_ARGS); $(PYTEST_CHECKED); exit $$rc

# vLLM's parallelism with the plugin (tensor, data and pipeline parallel 2 on the CPU backend), alone; make test runs it too.
test-parallel: setup
	@$(VPY) -m pytest tests/vllm/test_parallel_serving.py $(PYTEST_ARGS)

test-fast: setup
	@$(VPY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: setup
	@$(VPY) -m ruff check vs_vllm kernels tests benchmarks

clean:
	rm -rf .cache build dist *.egg-info .pytest_cache .hypothesis .ruff_cache

# Prefill benchmark through vLLM's OpenAI server: stock vLLM vs vs-vllm across retention ratios, image sizes and
# concurrency (benchmarks/prefill/). Needs a quiet machine: results go to benchmarks/results/prefill_cpu.*.
.PHONY: bench-prefill bench-prefill-quick bench-prefill-video
BENCH_ARGS ?=

bench-prefill: setup
	@$(VPY) -m vs_vllm bench prefill $(BENCH_ARGS)

# < 5 min smoke run of the same sweep (one image size, 3 ratios, concurrency 1 and 4); results go to
# .cache/bench-prefill-quick/ unless BENCH_ARGS sets --out-dir.
bench-prefill-quick: setup
	@$(VPY) -m vs_vllm bench prefill --quick $(BENCH_ARGS)

# The same sweep with one 16- or 32-frame video per request (video_retention_ratio 1 / 0.3 / 0.1), ~6 min;
# results go to benchmarks/results/prefill_video_cpu.*.
bench-prefill-video: setup
	@$(VPY) -m vs_vllm bench prefill --workload video --video-frames 16,32 $(BENCH_ARGS)

# Decode benchmark (the plugin's cost when nothing is pruned): ITL p50/p99, TPOT and TTFT of stock vLLM vs vs-vllm
# for text-only, ratio-1.0 and ratio-0.3 image requests, one server at a time, 3 repeats in ABBA order. Needs a quiet
# machine: results go to benchmarks/results/decode_cpu.* (~10 min on 2 cores); BENCH_ARGS="--model-kind tiny" for the
# tiny model (decode_cpu_tiny.*), BENCH_ARGS=--quick for a ~2 min smoke run into .cache/bench-decode-quick/.
.PHONY: bench-decode
bench-decode: setup
	@$(VPY) -m vs_vllm bench decode $(BENCH_ARGS)

# Synthetic visual-QA benchmark (benchmarks/synthetic/): generate data, train a small model from scratch, train its
# scorer, evaluate every method at every ratio through `vs-vllm serve`; results go to benchmarks/results/synthetic_*.
# ARCH=qwen3_vl builds the base model as Qwen3-VL (artefacts under artifacts/qwen3_vl, results synthetic_qwen3_vl_*).
.PHONY: bench-synthetic bench-synthetic-quick
ARCH ?= qwen2_5_vl
bench-synthetic: setup
	@$(VPY) benchmarks/synthetic/run_benchmark.py --arch $(ARCH) $(BENCH_ARGS)

bench-synthetic-quick: setup
	@$(VPY) benchmarks/synthetic/run_benchmark.py --quick --arch $(ARCH) $(BENCH_ARGS)

# The synthetic video task (benchmarks/synthetic/video_quality.py) on the committed video model
# (BENCH_ARGS="--model-dir benchmarks/synthetic/model" for the image model zero-shot): 4-scene videos with the striped
# target in one scene, every method x video_retention_ratio through vs-vllm serve (~4 min on 2 cores); results go to
# benchmarks/results/synthetic_video_model_video_accuracy.{md,csv,png}.
.PHONY: bench-synthetic-video
bench-synthetic-video: setup
	@$(VPY) benchmarks/synthetic/video_quality.py --model-dir benchmarks/synthetic/model_video $(BENCH_ARGS)

# One prepared run for a short window on a CUDA machine (benchmarks/gpu/README.md): kernel tests and an odd-shape sweep
# in strict mode, kernel timings, the HF Qwen2.5-VL-7B prefill, and a summary against the goals, all in < 8 min. Needs
# no venv and no install (so no `setup`): the machine's python3 with torch, triton and transformers. DRY_RUN=1 runs the
# same script on the CPU (toy sizes, Triton interpreter, results in a temp dir) with $(VPY) when it exists.
# GPU_CHECK_ARGS: e.g. --quick, --out-dir DIR, --stages env,sweep.
.PHONY: gpu-check test-parallel
DRY_RUN ?=
GPU_CHECK_ARGS ?=
GPU_CHECK_PY = $(if $(filter-out 0 false no,$(DRY_RUN)),$(if $(wildcard $(VPY)),$(VPY),$(PYTHON)),$(PYTHON))

gpu-check:
	@DRY_RUN=$(DRY_RUN) $(GPU_CHECK_PY) benchmarks/gpu/gpu_check.py $(GPU_CHECK_ARGS)

# vLLM on the GPU machine (benchmarks/gpu/README.md, "make gpu-serve-check"). gpu-serve-pack builds here, from the
# registry, the slim vLLM 0.33 bundle pinned by benchmarks/gpu/serve_pack.lock, in parts of at most 64 MiB less the
# working tree (.cache/gpu-serve-pack/partN, git-ignored); ~10 min on a fresh clone, seconds when up to date.
# gpu-serve-check runs on the GPU machine once per part (each command carries one part; the last one runs the check),
# in a GPU window before make gpu-check. DRY_RUN=1 rehearses it on the CPU. GPU_SERVE_CHECK_ARGS: e.g. --stages.
.PHONY: gpu-serve-pack gpu-serve-check
GPU_SERVE_CHECK_ARGS ?=
gpu-serve-pack:
	@$(if $(wildcard $(VPY)),$(VPY),$(PYTHON)) benchmarks/gpu/serve_pack.py build

gpu-serve-check:
	@DRY_RUN=$(DRY_RUN) $(GPU_CHECK_PY) benchmarks/gpu/serve_check.py $(GPU_SERVE_CHECK_ARGS)
