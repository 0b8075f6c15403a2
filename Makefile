PY := .venv/bin/python
VENV_STAMP := .venv/.installed

.PHONY: demo test format clean i2d-venv

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
	rm -rf .venv demo .i2d-venv

# img2dataset, for `capgen bench shards --urls` (and its test), in an environment of its own:
# it pins its own numpy, opencv, pyarrow, wandb; not part of `make test` (780 MB, 2 min from PyPI).
i2d-venv:
	test -x .i2d-venv/bin/img2dataset || (python3 -m venv .i2d-venv && .i2d-venv/bin/pip install -q img2dataset)

format: $(VENV_STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .
