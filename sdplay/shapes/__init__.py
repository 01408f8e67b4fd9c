"""The bundled "shapes" model: a synthetic world of coloured shapes and a tiny Stable Diffusion trained on it.

`world` renders scenes with prompts and masks, `train` trains the model into `assets/shapes/`.
"""
