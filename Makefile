# covid-cxr: `make demo` and `make test` are all a new machine needs (Debian 12, Python 3.11).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# tfx 1.16 declares Requires-Python <3.11 but runs on 3.11; the constraints pin the whole tree so
# pip never backtracks.
PIP_INSTALL := $(BIN)/python -m pip install --quiet --disable-pip-version-check --ignore-requires-python -c constraints.txt
STAMP := $(VENV)/.install-stamp
OUT ?= demo-out

.PHONY: install demo test test-all bench quality lock clean

install: $(STAMP)

$(STAMP): setup.py requirements.txt constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@# The editable install maps the repo root to `covid_cxr`: that needs PEP 660 (setuptools >= 64,
	@# a recent pip); Python 3.11's bundled ones fall back to `setup.py develop`, which cannot.
	$(BIN)/python -m pip install --quiet --disable-pip-version-check pip==26.3 setuptools==84.2.1 wheel==0.48.0
	$(PIP_INSTALL) -r requirements.txt
	$(PIP_INSTALL) --no-deps --no-build-isolation -e .
	@touch $(STAMP)

## The main job on the embedded default: synthetic radiographs through the whole TFX DAG.
demo: install
	$(BIN)/covid-cxr demo --out $(OUT)

## The default suite: unit tests, the end-to-end DAG test, and lean real-data tests (skipped
## when ../shared/data is absent). Tests marked `slow` (none since stop 50) run only with `make test-all`; the long
## real-data runs are scripts: `make bench` (CPU cost per family) and `make quality` (docs/results.md).
## Two workers (pytest-xdist), one test file per worker: the end-to-end DAG file keeps its shared
## pipeline root on one worker while the other runs everything else. Files go out in collection order,
## which tests/conftest.py starts with the longest files. WORKERS=0 runs serially.
WORKERS ?= 2
PYTEST := $(BIN)/pytest -q -n $(WORKERS) --dist loadfile --no-loadscope-reorder
test: install
	$(PYTEST) -m "not slow"

test-all: install
	$(PYTEST)

## Real-data quality and speed figures (minutes to tens of minutes; prints tables).
bench: install
	$(BIN)/python scripts/benchmark_models.py
	$(BIN)/python scripts/benchmark_curation.py --synthetic 1000

## Real-data quality per task: curate ../shared/data, run the full pipeline, evaluate held-out data
## (~10-25 minutes per task on 2 cores). TASKS="covid-vs-normal three-class" to choose; SPLITS=3 repeats
## each task on 3 patient-disjoint splits; FIRST_SPLIT=1 numbers them from 1 (fresh random keys only,
## as docs/results.md's runs; 0 is your own pseudonym key); HOLD_OUT=cohen keeps that source out of training
## and tests on it too.
TASKS ?= covid-vs-normal covid-vs-pneumonia covid-vs-noncovid three-class
SPLITS ?= 1
FIRST_SPLIT ?= 0
HOLD_OUT ?=
quality: install
	$(BIN)/python scripts/quality_benchmark.py --tasks $(TASKS) --splits $(SPLITS) --first-split $(FIRST_SPLIT) \
		$(if $(HOLD_OUT),--hold-out $(HOLD_OUT)) --out runs/quality

lock:
	$(BIN)/python -m pip freeze --exclude-editable | grep -v '^covid-cxr' > constraints.txt

clean:
	rm -rf $(OUT) build *.egg-info
