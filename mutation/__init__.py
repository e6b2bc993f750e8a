"""`make mutation`: mutation testing of the modules that carry a guarantee (docs/testing.md)."""
