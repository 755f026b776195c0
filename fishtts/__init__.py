"""The `fishtts` command: core's subcommands (download, vqgan, generate, tts, g2p) plus `serve` (the
HTTP API, server/) and `webui` (the web UI, webui/). This package sits above the three layers and
is the only place that joins them; core itself knows nothing of the other two."""
