# Two commands run the course (see README.md):
#   make lab    set up .venv and open the course in JupyterLab
#   make test   set up .venv and run every test, notebooks included (CI runs this)
#   make test-fast   the quick loop while you work: every test not marked slow (no notebooks)
#   make exercise N=02   copy exercise 02 to my_exercises/ (your working copy; never overwritten)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lab test test-fast exercise clean

setup: $(STAMP)

# Re-install whenever the dependency lists change.
$(STAMP): pyproject.toml requirements-data.txt
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "llama-from-scratch needs Python 3.11 or newer; this is " + sys.version.split()[0] + " (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps -r requirements-data.txt
	@touch $(STAMP)

# LAB_ARGS passes options to JupyterLab, e.g. make lab LAB_ARGS="--no-browser --port 8899"
# JupyterLab refuses to start as root unless told --allow-root; containers and many cloud machines run as root.
AS_ROOT := $(filter 0,$(shell id -u))
lab: setup
	@$(if $(AS_ROOT),echo "make lab: running as root (a container?): JupyterLab starts with --allow-root")
	$(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/lab/tree/notebooks/00_overview.ipynb $(if $(AS_ROOT),--allow-root) $(LAB_ARGS)

# Headless: plots go to the Agg backend and progress bars stay quiet. The tests run on one worker per core
# (pytest-xdist, at most 4), each test file on one worker so that a notebook's cells run in order on one
# kernel, and each worker on one thread: two workers of two threads each on two cores would fight for them.
XDIST := -n auto --maxprocesses 4 --dist loadfile
test: setup
	OMP_NUM_THREADS=1 MPLBACKEND=Agg TQDM_DISABLE=1 $(BIN)/python -m pytest $(XDIST)

# The same without the tests marked slow (notebooks, CLI subprocesses, torch.compile, fuzzing, transformers on
# SmolLM2; see the marker in pyproject.toml): the loop to run while you work; make test before you push.
test-fast: setup
	OMP_NUM_THREADS=1 MPLBACKEND=Agg TQDM_DISABLE=1 $(BIN)/python -m pytest $(XDIST) -m "not slow"

# Your own copy of an exercise, in my_exercises/ (git ignores it; an existing copy is kept).
exercise: setup
	@test -n "$(N)" || { echo "usage: make exercise N=02"; exit 1; }
	$(BIN)/python -m llama_from_scratch exercise $(N)

clean:
	rm -rf $(VENV)

# make book: the course as a static website in book/_build/html (start at index.html), built from the notebooks'
# stored outputs, nothing executed. Its tools live in their own .venv-book (book/requirements.txt, all pinned),
# apart from the course's .venv; MathJax comes from the npm registry, so pages render math without a CDN.
# --all -W: every page is read again and any warning (a link to a missing page or section) fails the build.
BOOK_VENV := .venv-book
BOOK_STAMP := $(BOOK_VENV)/.installed
MATHJAX_VERSION := 3.2.2
MATHJAX := book/static/mathjax

.PHONY: book
book: $(BOOK_STAMP) $(MATHJAX)/.version-$(MATHJAX_VERSION)
	$(BOOK_VENV)/bin/jupyter-book build . --config book/_config.yml --toc book/_toc.yml --path-output book --all -W -n --keep-going --quiet
	@echo "make book: open book/_build/html/index.html"

$(BOOK_STAMP): book/requirements.txt
	$(PYTHON) -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/python -m pip install --quiet -r book/requirements.txt
	@touch $@

$(MATHJAX)/.version-$(MATHJAX_VERSION):
	@command -v npm >/dev/null || { echo "make book needs npm (Node.js) to fetch MathJax from the npm registry"; exit 1; }
	rm -rf $(MATHJAX) && mkdir -p $(MATHJAX)
	cd $(MATHJAX) && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz --strip-components=2 package/es5 && rm mathjax-$(MATHJAX_VERSION).tgz
	@touch $@
