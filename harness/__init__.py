"""What the suite, the benchmark and mutation runs share: throwaway PostgreSQL clusters, PgBouncer,
HAProxy, server processes, traffic and the test server's databases. Nothing here imports `tests`.
"""
