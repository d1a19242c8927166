"""Load and soak tests (the long soak is `python -m bench.soak`, see docs/operations.md, "Reliability")."""
