"""The Gradio web UI: talks to the fishtts HTTP API (server/) over HTTP only; never imports core or torch.

Start it with `fishtts webui` or `python -m webui` (GRADIO_SERVER_NAME/PORT, FISHTTS_API_URL, FISHTTS_API_KEY).
"""
