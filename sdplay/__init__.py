"""sdplay: a Stable Diffusion playground for generating images and seeing how diffusion works.

Everything below `sdplay.ui` is plain Python (no Gradio) and usable from a notebook or a script.
"""
