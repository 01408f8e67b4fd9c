"""sdplay: a Stable Diffusion playground for generating images and seeing how diffusion works.

Everything below `sdplay.ui` is plain Python (no Gradio) and usable from a notebook or a script.
"""

import logging

# diffusers' Stable Diffusion pipeline imports transformers' CLIP and SigLIP image processors. Without torchvision
# (sdplay does not need it), transformers 5 falls back to their PIL versions, the ones diffusers always used, and
# warns about it at every start. Drop exactly those warnings; the logger's other messages still show.
logging.getLogger("transformers.utils.import_utils").addFilter(
    lambda record: "requires torchvision (not installed); falling back to" not in record.getMessage()
)
