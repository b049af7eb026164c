# medaug: the two commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUNDLE ?= bundles/imbalance_baselines
RUNS   ?= $(BUNDLE)/runs
PORT   ?= 5000

.PHONY: install demo test bench bench-predict study report mlflow-ui clean

install: $(STAMP)

# Re-installs only when the package definition or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]" -c constraints.txt
	touch $(STAMP)

demo: install
	$(BIN)/python -m monai.bundle run \
		--config_file $(BUNDLE)/configs/train.json \
		--bundle_root $(BUNDLE) --output_dir $(RUNS)
	@echo
	@echo "Runs are tracked in MLflow at $(RUNS)/mlflow.db; open the UI with: make mlflow-ui"

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/baselines.py

bench-predict: install
	$(BIN)/python benchmarks/predict_throughput.py

# The bundle's study grid (configs/grid.yaml) as MLflow child runs; run again to resume.
# e.g. make study SEEDS=5, make study STUDY_ARGS="--config smoke.json"
study: install
	$(BIN)/medaug study run $(BUNDLE) --output-dir $(RUNS) $(if $(SEEDS),--seeds $(SEEDS)) $(STUDY_ARGS)

# HTML + Markdown report of the latest study in the bundle's runs (also logged to its parent run).
report: install
	$(BIN)/medaug report --experiment $(notdir $(BUNDLE)) --runs-dir $(RUNS)

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUNS))/mlflow.db \
		--default-artifact-root $(abspath $(RUNS))/mlruns --port $(PORT)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(RUNS) benchmarks/results/tmp
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
