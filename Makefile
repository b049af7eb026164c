# medaug: the two commands are `make demo` and `make test`; both set everything up first.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BUNDLE ?= bundles/imbalance_baselines
RUNS   ?= $(BUNDLE)/runs
PORT   ?= 5000
MLFLOW_DIR ?= mlflow-server

.PHONY: install demo test lint format docker-test bench bench-oversampling bench-predict bench-augment bench-data bench-bootstrap bench-epoch bench-pretrain study study-bundles report \
	mlflow-ui mlflow-server mlflow-screenshot clean

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

# Two pytest workers (pytest-xdist), one file per worker at a time, one PyTorch thread each: the suite
# is mostly subprocess start-up and small tensors, where two single-threaded workers on 2 cores finish
# in about half the time of one two-threaded run. The 20 slowest tests are listed to keep the CI budget in view.
test: install lint
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=20

# ruff (configured in pyproject.toml): formatting, lint and import order; `make format` fixes what it can.
lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Builds docker/Dockerfile with podman (installed from Debian's packages if missing; needs root) and runs
# it with --network none on a messy DICOM folder; minutes, not part of `make test`. See docker/README.md.
docker-test: install
	$(BIN)/python docker/test_image.py

bench: install
	$(BIN)/python benchmarks/baselines.py
	$(BIN)/python benchmarks/oversampling_efficacy.py

bench-oversampling: install
	$(BIN)/python benchmarks/oversampling_efficacy.py

bench-predict: install
	$(BIN)/python benchmarks/predict_throughput.py

# TorchIO is the peer of this benchmark only: installed here, never a runtime dependency.
bench-augment: install
	$(BIN)/python -m pip install --quiet -e ".[bench]" -c constraints.txt
	$(BIN)/python benchmarks/augment_throughput.py

bench-data: install
	$(BIN)/python benchmarks/data_loading.py

bench-bootstrap: install
	$(BIN)/python benchmarks/bootstrap_ci.py

# Where a training epoch's time goes (forward/backward, data, validation, bookkeeping) per zoo network; ~10 min.
bench-epoch: install
	$(BIN)/python benchmarks/epoch_time.py

# From scratch vs SimCLR pretraining for the zoo networks beside the plain MONAI peer; resumable
# (records in benchmarks/results/tmp_pretraining/); hours on 2 CPU cores. e.g. make bench-pretrain
# PRETRAIN_ARGS="--datasets breastmnist_64 --networks resnet18"
bench-pretrain: install
	$(BIN)/python benchmarks/pretraining.py $(PRETRAIN_ARGS)

# The bundle's study grid (configs/grid.yaml) as MLflow child runs; run again to resume.
# e.g. make study SEEDS=5, make study STUDY_ARGS="--config smoke.json"
study: install
	$(BIN)/medaug study run $(BUNDLE) --output-dir $(RUNS) $(if $(SEEDS),--seeds $(SEEDS)) $(STUDY_ARGS)

# The five study bundles' configs, generated from the default bundle + scripts/study_bundles/*.yaml.
study-bundles: install
	$(BIN)/python scripts/build_study_bundles.py

# HTML + Markdown report of the latest study in the bundle's runs (also logged to its parent run).
report: install
	$(BIN)/medaug report --experiment $(notdir $(BUNDLE)) --runs-dir $(RUNS)

mlflow-ui: install
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(RUNS))/mlflow.db \
		--default-artifact-root $(abspath $(RUNS))/mlruns --port $(PORT)

# A shared tracking server on this machine: SQLite backend, artifacts served from a local folder.
# Point bundles at it with MLFLOW_TRACKING_URI=http://127.0.0.1:$(PORT); team setup: README.
mlflow-server: install
	mkdir -p $(MLFLOW_DIR)/artifacts
	$(BIN)/mlflow server --host 127.0.0.1 --port $(PORT) \
		--backend-store-uri sqlite:///$(abspath $(MLFLOW_DIR))/mlflow.db \
		--artifacts-destination $(abspath $(MLFLOW_DIR))/artifacts --serve-artifacts

# docs/mlflow_compare_runs.png: two smoke runs compared in the MLflow UI (needs chromium)
mlflow-screenshot: install
	$(BIN)/python scripts/mlflow_ui_screenshot.py --output docs/mlflow_compare_runs.png

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache $(RUNS) benchmarks/results/tmp benchmarks/results/tmp_oversampling benchmarks/results/tmp_pretraining
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
