# The two quick-start commands (see README.md). Everything they need is installed by
# tools/bootstrap into .venv/ and .cache/, idempotently: it says what it installs, step by step,
# with pip's progress (a first run takes one to three minutes), and nothing when all is there.
# `make run` then serves carbon-cache, graphite-web and tallyd-aggregator on 127.0.0.1
# (tools/run-local; its TALLYD_* variables are listed in the README).
.PHONY: run test

run:
	tools/bootstrap
	tools/run-local

test:
	tools/bootstrap --test
	.venv/bin/python -m pytest
