"""Helpers for fault-injection tests: throwaway PostgreSQL, PgBouncer and server processes."""
