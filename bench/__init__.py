"""Speed benchmark of the TTS pipeline with official-size random-weight models (`python -m bench`).

Weights' values do not change speed, so no checkpoint is needed. See bench/run.py for what is measured.
"""
