"""The web UI's strings, one JSON file per language (read by webui/i18n.py); a package so that an installed
wheel carries them."""
