"""`imgcls`: send folders of images through the gateway, with retries, progress and resumable output.

Modules: cli.py (arguments), inputs.py (lazy walk), tasks.py (what is asked: Classify or Embed),
sender.py (HTTP and retries), wire.py (what is read of the gateway's answers), records.py (one result per
file), output.py (JSONL/CSV and .npy writers, the resume set), pipeline.py (bounded workers, progress,
summary, Ctrl-C).
"""

__version__ = "0.2.0"
