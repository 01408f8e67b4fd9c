"""The Gradio layer: one module per tab, thin; logic lives in the plain modules of sdplay."""
