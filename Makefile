# flareseg: `make demo` runs the whole pipeline on synthetic phantoms, `make test` runs the tests.
# Both create the virtual environment (.venv) on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/demo.yaml
WORK ?= work
PYTEST_ARGS ?=
STAGE_ARGS ?=

.PHONY: demo test test-fast all clean-work venv docker docker-save test-docker report evidence $(addprefix stage-,1 2 3 4 5 6)

venv: $(VENV)/.installed

# On Python >= 3.11 the runtime packages are installed at the versions pinned in docker/requirements.txt
# (the lock the submission image uses; tests/test_docker_pins.py checks the two agree), so a fresh clone
# tests what was tested before; older Pythons get the newest compatible releases. The openvino extra
# (inference.runtime: openvino) and the dicom-seg extra (highdicom), neither in the submission image, are
# installed so their tests run.
$(VENV)/.installed: pyproject.toml docker/requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if $(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then \
		$(PY) -m pip install -q -c docker/requirements.txt -e ".[test,openvino,dicom-seg]"; \
	else $(PY) -m pip install -q -e ".[test,openvino,dicom-seg]"; fi
	touch $@

demo: venv
	$(PY) -m flareseg.pipeline all --config configs/demo.yaml --work work-demo $(STAGE_ARGS)

# The paper's three claims (merge-max vs naive loss, CutMix vs none, uncertainty-selected vs rejected
# pseudo labels) over 3 seeds each, paired 95 % intervals, into docs/evidence.md (bench/evidence.py).
# Reads the demo's work dir (make demo first; its finished stages are skipped). Default budget 250
# iterations per training arm: 6-20 min per arm on the shared 2-core CPU (load 8-14), 2-3 hours in all
# (docs/evidence.md). EVIDENCE_ARGS: e.g. --seeds 0 1 2 3 4 --fine-budget 60x25 --scratch DIR
EVIDENCE_ARGS ?=
evidence: demo
	nice -n 10 $(PY) -m bench.evidence --work work-demo --out docs/evidence.md $(EVIDENCE_ARGS)

test: venv
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

all: venv
	$(PY) -m flareseg.pipeline all --config $(CONFIG) --work $(WORK) $(STAGE_ARGS)

stage-%: venv
	$(PY) stages/stage_$*.py --config $(CONFIG) --work $(WORK) $(STAGE_ARGS)

# removes $(WORK) only when everything in it is the pipeline's (python -m flareseg.pipeline clean)
clean-work: venv
	$(PY) -m flareseg.pipeline clean --config $(CONFIG) --work $(WORK)

# FLARE submission image (needs a Docker engine; first: flareseg export-model -m MODEL_DIR -o docker/model)
docker:
	docker build -f docker/Dockerfile -t flareseg:latest .

docker-save: docker
	docker save flareseg:latest | gzip > flareseg.tar.gz

# its CPU variant built and run with podman (root; apt-get install podman runc debootstrap), docker/README.md
test-docker: venv
	$(PY) -m pytest -q -m docker tests/test_docker_image.py $(PYTEST_ARGS)

report: venv
	$(PY) -m flareseg.cli report --work $(WORK)
