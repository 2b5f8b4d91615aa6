# ddimbench — `make demo` (train digits → sweep → report, offline) and `make test` are the two set-up
# commands; both create .venv and install what they need first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Pinned for this offline machine (pip serves these from local disk); pyproject keeps torch>=2.2.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed
DDIM   := $(BIN)/ddimbench
# W&B: the demo logs offline (reproducible, nothing uploaded); the users' targets (train-*, sweep, report) pass
# --wandb only when WANDB is set, so they behave as the bare commands do (online after `wandb login`).
# One-value variables reach the shell single-quoted (q): a CHECKPOINT with a space or a NAME with a `;` is one
# argument, never split nor run. An empty DEMO_WANDB or WANDB passes no --wandb (the commands' own default).
q       = '$(subst ','\'',$(1))'
DEMO_WANDB ?= offline
DEMO_WB = $(if $(DEMO_WANDB),--wandb $(call q,$(DEMO_WANDB)))
WANDB  ?=
WB      = $(if $(WANDB),--wandb $(call q,$(WANDB)))
DEMO_STEPS ?= 2000

.PHONY: install system-packages test test-fast lint format demo demo-replicates bench bench-gpu clean train-digits train-mnist train-cifar10 \
	train-celeba sweep report

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# System programs some tests need: Debian's headless Chromium (tests/test_browser.py), a C++ compiler and ninja
# (the fused channels_last GroupNorm kernels, tests/test_fused_norm.py; built once per CPU on first use) and the
# PostgreSQL server (initdb and pg_ctl, found as tests/helpers/postgres.py finds them: on PATH or under Debian's
# /usr/lib/postgresql/<version>/bin; the package also adds the postgres user that runs them under root). With CI
# set their absence (or a failed install) fails those tests, elsewhere it skips them. One step collects what is missing and, as root
# where apt-get is, installs it with one apt-get update and one install (two apt-get runs at once, as under
# make -j, would race for the dpkg lock); nothing happens when everything is present.
CHROMIUM_FOUND = { command -v chromium || command -v chromium-browser; } >/dev/null
PG_LIB ?= /usr/lib/postgresql
PG_FOUND = { for b in initdb pg_ctl; do command -v $$b || ls $(PG_LIB)/*/bin/$$b || exit 1; done; \
	[ "$$(id -u)" != 0 ] || getent passwd postgres; } >/dev/null 2>&1
system-packages:
	@missing=""; \
	$(CHROMIUM_FOUND) || missing="$$missing chromium"; \
	command -v g++ >/dev/null || missing="$$missing g++"; \
	command -v ninja >/dev/null || missing="$$missing ninja-build"; \
	( $(PG_FOUND) ) || missing="$$missing postgresql"; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; } || \
		if [ -n "$$CI" ]; then exit 1; else echo "note: could not install$$missing (offline?): their tests skip"; fi; \
	else \
		echo "note: missing$$missing: the tests that need them skip here and fail with CI set;" \
			"install with: sudo apt-get install$$missing"; \
	fi

# Test files spread over the CPUs (pytest-xdist; each test runs one torch thread), at most 4 processes:
# `make test XDIST=` runs them in one process.
XDIST ?= -n auto --maxprocesses 4 --dist loadfile

test: $(STAMP) system-packages
	$(BIN)/python -m pytest -q $(XDIST)

# The inner loop: everything but the tests marked slow (subprocesses, kills, torchrun, PostgreSQL).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" $(XDIST)

lint: $(STAMP)
	$(BIN)/ruff check ddim bench tests
	$(BIN)/ruff format --check ddim bench tests

format: $(STAMP)
	$(BIN)/ruff check --fix ddim bench tests
	$(BIN)/ruff format ddim bench tests

# Train the digits preset, run sweeps/quick.yaml on it, write reports/digits-demo/. Offline; rerunning
# resumes whatever is unfinished (training from its checkpoint, the sweep's missing cells).
demo: $(STAMP)
	$(DDIM) train --dataset digits --max-steps $(DEMO_STEPS) --batch-size 128 \
		--run-dir runs/digits --resume $(DEMO_WB)
	$(DDIM) sweep --config sweeps/quick.yaml checkpoint=runs/digits name=digits-demo $(DEMO_WB)
	$(DDIM) report digits-demo --out reports/digits-demo $(DEMO_WB)

# The demo's spread across training seeds: two more digits runs (--seed 1, 2) swept with the same grid,
# and one combined table beside the demo's (reports/digits-replicates/). About 26 min on a 2-core Xeon.
REPLICATE_SEEDS ?= 1 2
demo-replicates: demo
	for s in $(REPLICATE_SEEDS); do \
		$(DDIM) train --dataset digits --max-steps $(DEMO_STEPS) --batch-size 128 --seed $$s \
			--run-dir runs/digits-seed$$s --resume $(DEMO_WB) && \
		$(DDIM) sweep --config sweeps/quick.yaml checkpoint=runs/digits-seed$$s name=digits-seed$$s \
			interpolation=false inversion=false $(DEMO_WB) || exit 1; \
	done
	$(DDIM) report digits-demo $(foreach s,$(REPLICATE_SEEDS),digits-seed$(s)) --out reports/digits-replicates \
		$(DEMO_WB)

bench: $(STAMP)
	$(BIN)/python -m bench.perf --out reports/perf

# On a GPU machine, after `make install` (or `make bench-gpu PY=python3` where torch, diffusers, torch-fidelity
# and optuna are installed): the CUDA tests, then the benchmark (train, sample, eval, compile, sweep, Table 1)
# into reports/perf/<card>/ with the CUDA profile of a cifar10 training step beside it. A failing test does not
# stop the benchmark; the target fails at the end if any step failed. PERF_ARGS narrows the benchmark, e.g.
# PERF_ARGS="--only train,sample,table1" (compile is the longest section: minutes of cold compiling).
# CUBLAS_WORKSPACE_CONFIG (ddim.runtime.CUBLAS_WORKSPACE): cuBLAS reads it once per process, so the
# deterministic-kernel test needs it set first. The CUDA profile goes to reports/perf/<card>/ even when
# PERF_ARGS passes another --out.
PY ?= $(BIN)/python
PERF_ARGS ?=
bench-gpu:
	export CUBLAS_WORKSPACE_CONFIG=$${CUBLAS_WORKSPACE_CONFIG:-$$($(PY) -c 'from ddim.runtime import CUBLAS_WORKSPACE as w; print(w)')}; \
	status=0; \
	$(PY) -m pytest -q -p no:cacheprovider tests/test_cuda.py || status=1; \
	$(PY) -m bench.perf --device cuda $(PERF_ARGS) || status=1; \
	$(PY) -m bench.perf.profile --device cuda --preset cifar10 --batch 128 \
		> "$$($(PY) -c 'from bench.perf.run import default_out; print(default_out("cuda"))')/profile_cuda.txt" || status=1; \
	exit $$status

train-digits: $(STAMP)
	$(DDIM) train --dataset digits --max-steps 2000 --batch-size 128 --run-dir runs/digits --resume $(WB)

# The seed trainer's run (`train.py --dataset mnist --epochs 6 --channels 1`): 6 epochs of the 60k training
# images at batch 128 (2813 steps), a sample grid per epoch in runs/mnist/samples/. Data: data/MNIST/raw/.
train-mnist: $(STAMP)
	$(DDIM) train --dataset mnist --epochs 6 --channels 1 --data-root data --resume $(WB)

# The paper's configs (Appendix D.1, after DDPM): lr 2e-4, batch 128, EMA 0.9999; DDPM trained 800k steps on
# CIFAR10 and 500k on CelebA. Data: data/cifar-10-batches-py, data/celebA/img_align_celeba.
train-cifar10: $(STAMP)
	$(DDIM) train --dataset cifar10 --data-root data --max-steps 800000 --batch-size 128 --lr 2e-4 \
		--save-every 5000 --sample-every 10000 --run-dir runs/cifar10 --resume $(WB)

train-celeba: $(STAMP)
	$(DDIM) train --dataset celeba --data-root data --max-steps 500000 --batch-size 128 --lr 2e-4 \
		--save-every 5000 --sample-every 10000 --run-dir runs/celeba --resume $(WB)

# The users' own commands: a sweep of the newest training run under runs/ (or CHECKPOINT=runs/x), then its
# paper-style report in reports/$(NAME)/. W&B as the bare commands (WANDB=offline|online|disabled to choose).
SWEEP      ?= steps=10,20,50,100 eta=0,0.5,1
CHECKPOINT ?=
NAME       ?= sweep

sweep: $(STAMP)
	$(DDIM) sweep $(SWEEP) $(if $(CHECKPOINT),checkpoint=$(call q,$(CHECKPOINT))) name=$(call q,$(NAME)) $(WB)

report: $(STAMP)
	$(DDIM) report $(call q,$(NAME)) $(WB)

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info
