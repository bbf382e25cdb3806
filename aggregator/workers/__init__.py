"""The worker processes of one aggregator (``workers > 1``): which worker owns a line and
the messages between them (codec), the flush barrier (barrier), the sockets (exchange
receives, outbox sends), what each worker is handed (context) and how they are run (pool)."""
