# Set-up is automatic: `make demo` / `make test` create .venv and install everything on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install demo test test-fast lint test-floors bench-overhead bench-accuracy clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# animal-mnist declares tensorflow; lkd_hf reads only its data files
	$(PY) -m pip install -q --no-deps animal-mnist==0.4
	touch $@

demo: install
	$(PY) recipes/quickstart.py

test: install
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

lint: install
	$(PY) -m ruff check .

# The declared dependency floors: a venv with the `>=` versions of pyproject.toml's dependencies pinned (torch
# aside: it uses the .venv's packages for everything else) runs a few tests that reach the Trainer, accelerate, Hub,
# datasets, evaluate and timm APIs lkd_hf overrides or calls (training logs, evaluation, checkpoint save / resume,
# Hub repo creation and pushes, the LearnedLoss folder, per-student gradient clipping).
FLOORS_VENV ?= $(VENV)/floors
FLOORS_TESTS ?= tests/test_hub.py::test_round_trip_gives_identical_losses_config_card_and_plot \
	tests/test_hub.py::test_trainer_pushes_the_loss_with_the_student_and_to_its_own_repo \
	tests/test_trainer.py::test_lkd_training_logs_meta_statistics_and_evaluates \
	tests/test_resume.py::test_hand_made_loss_resumes_and_a_checkpoint_without_lkd_state_or_settings_warns \
	tests/test_population.py::test_each_member_trains_as_it_would_alone
SITE_PACKAGES := import sysconfig; print(sysconfig.get_paths()["purelib"])
FLOOR_PINS := import re, tomllib; deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
	print(" ".join(d.replace(">=", "==") for d in deps if ">=" in d and not re.match("torch\\b", d)))

test-floors: install
	$(PY) -m venv $(FLOORS_VENV)
	$(PY) -c '$(SITE_PACKAGES)' > "$$($(FLOORS_VENV)/bin/python -c '$(SITE_PACKAGES)')/lkd_hf_venv.pth"
	$(FLOORS_VENV)/bin/python -m pip install -q $$($(PY) -c '$(FLOOR_PINS)')
	PYTHONPATH=$(CURDIR) $(FLOORS_VENV)/bin/python -m pytest -q -p no:cacheprovider $(FLOORS_TESTS)

bench-overhead: install
	$(PY) benchmarks/overhead.py

bench-accuracy: install
	$(PY) benchmarks/accuracy.py --threads 1 --workers 2 --validate
	$(PY) benchmarks/accuracy.py --dataset mnist-5k --threads 1 --workers 2 --validate

clean:
	rm -rf outputs .pytest_cache
