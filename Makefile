# mm1lab: `make demo` runs the main job, `make test` runs the tests. Both set everything up first.
# TORCH_SPEC pins torch and is installed before anything else: these machines carry a local CPU wheel for
# exactly torch==2.13.0, while an open range would pull a multi-GB CUDA build. Override it on other machines,
# e.g. `make test TORCH_SPEC="torch==2.5.1 --index-url https://download.pytorch.org/whl/cu124"`.
PYTHON ?= python3
TORCH_SPEC ?= torch==2.13.0
EXTRAS ?= all
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.mm1lab-installed
KERNEL := $(VENV)/share/jupyter/kernels/mm1lab/kernel.json

.PHONY: setup demo test lint lab samples clean

setup: $(STAMP) $(KERNEL)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-runs only when the dependencies or the torch pin change.
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/pip install --disable-pip-version-check -q $(TORCH_SPEC)
	$(BIN)/pip install --disable-pip-version-check -q -e ".[$(EXTRAS)]"
	# lmms-eval without its declared dependencies (torchvision, timm: CUDA builds here); the `harness` extra has
	# what its evaluator really imports. The mm1lab plugin registers through pyproject's entry point.
	$(BIN)/pip install --disable-pip-version-check -q --no-deps lmms-eval==0.7.3
	touch $@

# The kernel lives inside the venv (--sys-prefix), so papermill and JupyterLab from the venv find it.
$(KERNEL): $(STAMP)
	$(BIN)/python -m ipykernel install --sys-prefix --name mm1lab --display-name "mm1lab (.venv)" >/dev/null
	@test -f $@

demo: setup
	$(BIN)/mm1lab demo

lint: setup
	$(BIN)/ruff check mm1lab tests

# Two pytest workers with one torch thread each: two threads per worker would oversubscribe 2 cores.
test: lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadgroup

lab: setup
	$(BIN)/jupyter lab --notebook-dir=notebooks --MappingKernelManager.default_kernel_name=mm1lab

samples: setup
	$(BIN)/mm1lab data samples data_samples/

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
