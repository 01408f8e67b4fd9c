"""The Explain view's engine: capture a run (latents, predictions, cross-attention), export it, render its panels.

Nothing here imports Gradio: a notebook can call `explain()` and `save_run()` directly.
"""
