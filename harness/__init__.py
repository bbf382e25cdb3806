"""What tests, benchmarks and the soak use to drive tallyd from outside: process launchers
(tallyd's daemons, the reference Etsy statsd, carbon-cache), Carbon sinks, port helpers,
clients and load generators.

harness imports common only, never aggregator or proxy: it starts them as processes and
talks to them over sockets, so its model of their behaviour stays independent of their code.

Pure: the package itself holds no code.
"""
