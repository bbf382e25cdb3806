# The two quick-start commands (see README.md). Everything they need is installed by
# tools/bootstrap into .venv/ and .cache/, idempotently.
.PHONY: run test

run:
	tools/bootstrap
	tools/run-local

test:
	tools/bootstrap --test
	.venv/bin/python -m pytest
