# The two quick-start commands (see README.md). Everything they need is installed by
# tools/bootstrap into .venv/ and .cache/, idempotently: it says what it installs, step by step,
# with pip's progress (a first run takes one to three minutes), and nothing when all is there.
# `make run` then runs a whole cluster on 127.0.0.1 in the foreground until Ctrl-C: 2 proxies,
# 2 aggregators, a ring of 2 carbon-caches, graphite-web and the cluster page (tools/run-local,
# harness/localcluster.py; its TALLYD_* variables are listed in the README, docs/quickstart.md).
.PHONY: run test

run:
	tools/bootstrap
	tools/run-local

test:
	tools/bootstrap --test
	.venv/bin/python -m pytest
