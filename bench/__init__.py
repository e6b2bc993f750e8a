"""Benchmarks of the service against a bare Flask floor: `python -m bench`, docs/performance.md.

The bench starts everything it measures (a throwaway PostgreSQL cluster, the service and the floor
under the project's gunicorn.conf.py) so a run is reproducible on any machine with wrk installed.
"""
