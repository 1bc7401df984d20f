"""Workers that feed an issue tracker's backlog to the orchestrator.

Each one is a separate process that talks to claude-box only over its HTTP API
(through `cbox.cli.client.Client`), so it can run on another host and be
restarted independently: `linear` (Linear) and `github` (GitHub Issues).
"""
