"""Load and soak tests (the long soak is `python -m bench.soak`, see README.md, "Reliability")."""
