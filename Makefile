PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo test format clean

$(VENV_STAMP): setup.cfg setup.py constraints.txt pipeline/imaging/_resample.c
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(VENV_STAMP)

demo: $(VENV_STAMP)
	.venv/bin/capgen demo --out demo

test: $(VENV_STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	bash tests/browser_setup.sh
	$(PY) -m pytest -q

clean:
	rm -rf .venv demo

format: $(VENV_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
