"""`imgcls`: send folders of images through the gateway, with retries, progress and resumable output.

Modules: cli.py (arguments), inputs.py (lazy walk, resume set), sender.py (HTTP and retries),
output.py (JSONL/CSV writers), pipeline.py (bounded workers, progress, summary, Ctrl-C).
"""

__version__ = "0.2.0"
