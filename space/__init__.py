"""The Gradio demo of trainer_ext (`python -m space.app`): model code here is free of Gradio; `app.py` builds
the page and `handlers.py` turns its events into calls of that code."""
