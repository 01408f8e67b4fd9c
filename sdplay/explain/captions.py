"""Plain-language captions for the Explain view's panels, for someone who has never seen a diffusion model.

Each panel has a one-line `short` text under it and a `more` text behind a "More" toggle; both are Markdown. A
panel's record in render.py's `PANELS` names its caption; the texts of the tab's other parts are here too. Texts
that state the model's numbers (the VAE's patch size, the text encoder's positions, ...) are templates, filled in
per model by `captions()`: the bundled model, for one, does not have Stable Diffusion's 8×8 patches.
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelFacts:
    """The numbers of a model that captions state, from the loaded pipeline or from the run being shown."""

    vae_factor: int  # pixels per latent position along each side (8 in Stable Diffusion)
    latent_channels: int  # numbers per latent position (4 in Stable Diffusion)
    text_positions: int = 77  # the text encoder's positions: start token, prompt tokens, end token, padding
    embedding_size: int | None = None  # numbers per token embedding (768 in SD 1.x); None: not recorded
    vocabulary: int | None = None  # tokens the tokenizer knows (49,408 in CLIP's); None: not recorded

    @classmethod
    def of_pipeline(cls, pipe) -> "ModelFacts":
        """The facts of a loaded Stable Diffusion pipeline."""
        return cls(
            vae_factor=pipe.vae_scale_factor,
            latent_channels=pipe.vae.config.latent_channels,
            text_positions=pipe.tokenizer.model_max_length,
            embedding_size=pipe.text_encoder.config.hidden_size,
            vocabulary=len(pipe.tokenizer),
        )

    @property
    def prompt_tokens(self) -> int:
        """How many of the prompt's tokens are read: the start and end tokens take two positions."""
        return self.text_positions - 2

    def fields(self) -> dict[str, object]:
        """The values the caption templates name. Runs saved before these facts were recorded lack the text
        encoder's sizes: those texts then give Stable Diffusion's, and say so."""
        embedding = self.embedding_size
        return {
            "vae_factor": self.vae_factor,
            "latent_channels": self.latent_channels,
            "text_positions": self.text_positions,
            "prompt_tokens": self.prompt_tokens,
            "vocabulary": f"{self.vocabulary:,}" if self.vocabulary else "about 49,000 (CLIP's)",
            "embedding": f"{embedding} numbers in this model" if embedding else "768 numbers for SD 1.x",
        }


@dataclass(frozen=True)
class Caption:
    short: str
    more: str

    def filled(self, facts: ModelFacts) -> "Caption":
        return Caption(self.short.format(**facts.fields()), self.more.format(**facts.fields()))

    @property
    def per_model(self) -> bool:
        """Whether it states the model's numbers: the Explain tab fills it in again for each run."""
        return "{" in self.short + self.more


# Templates: `captions()` fills in the model's numbers.
CAPTIONS: dict[str, Caption] = {
    "overview": Caption(
        "Explain makes one image and records what happens inside the model at every step. "
        "Then scrub through the steps and pick a word to see where in the picture it is looking.",
        "Stable Diffusion starts from random noise and removes a little of it per step, guided by your prompt. "
        "It does this in three parts: a **text encoder** turns the prompt into numbers, a **UNet** predicts the "
        "noise to remove at each step, and a **VAE** turns the final result into pixels. Every panel below shows "
        "one of these parts at work, for your own prompt.",
    ),
    "step": Caption(
        "Each step has a timestep *t* and a noise level *σ*: both fall as the image gets cleaner.",
        "During training the model saw 1000 noise levels, from *t* = 999 (almost pure noise) to *t* = 0 (clean). "
        "A sampler visits only a few of them, one per step, e.g. 20. σ = √((1 − ᾱ)/ᾱ) is the ratio of noise to "
        "signal at that level, where ᾱ is the share of the signal's variance still left: σ is about 14.6 at "
        "*t* = 999 for Stable Diffusion and near 0 at the end. Image-to-Image and Inpaint with a strength *s* below "
        "1 skip the start of the schedule: they noise your image to the level of step (1 − *s*)·N and run only the "
        "steps after it. ▶ Play steps through the run on its own.",
    ),
    "final": Caption(
        "The finished image: the last step's latent, decoded into pixels by the VAE.",
        "This is the same image the other tabs would make with these settings and seed. The word heatmaps are "
        "drawn over it.",
    ),
    "x_t": Caption(
        "x_t: the noisy latent the model is cleaning at this step, seen through a rough colour preview.",
        "Stable Diffusion does not work on pixels. A **VAE** (variational autoencoder) compresses each "
        "{vae_factor}×{vae_factor} patch of pixels into {latent_channels} numbers (its *latent*), and all the "
        "denoising happens on that small grid; the VAE's "
        "decoder turns the final latent into the image. x_t mixes a clean latent x₀ with noise ε: "
        "x_t = √ᾱ·x₀ + √(1 − ᾱ)·ε. Text-to-Image starts from pure noise; Image-to-Image starts from your image's "
        "latent with noise added. The preview is a fixed linear map from the {latent_channels} latent channels to "
        "RGB, fitted to "
        "this model's VAE: cheap, blurry, and only roughly the right colours.",
    ),
    "x0": Caption(
        "x̂₀: the model's current guess of the finished image, if all remaining noise were removed at once.",
        "Knowing x_t and the predicted noise ε̂, the clean latent follows by solving the mixing formula: "
        "x̂₀ = (x_t − √(1 − ᾱ)·ε̂)/√ᾱ. Early guesses are blurry averages of everything the prompt could mean; "
        "they sharpen as the steps go by. The sampler does not jump to x̂₀: it moves x_t part of the way towards "
        "it and lowers the noise level. *Decode x̂₀ of every step with the VAE* shows the guesses through the real "
        "decoder (exact, but slower) instead of the linear preview; a small model's are decoded by themselves.",
    ),
    "eps_uncond": Caption(
        "ε_uncond: the noise the model predicts when it reads only the negative prompt (empty by default).",
        "The denoiser is a **UNet**: a network that shrinks the latent to coarser and coarser grids and back up "
        "again, looking at the prompt on the way. Given x_t, the timestep and the text, it predicts the noise ε "
        "that was mixed in, which is exactly what it was trained to do on millions of noised images. For "
        "classifier-free guidance it runs twice per step: once with the negative prompt (this panel) and once "
        "with yours. The colours use the preview's colour map without its offset: grey means 0.",
    ),
    "eps_cond": Caption(
        "ε_cond: the noise predicted when the model reads your prompt.",
        "It looks almost the same as ε_uncond: most of the prediction is about the noise itself, and the prompt "
        "changes it only slightly. That small difference is what steers the image towards the prompt. Both ε "
        "panels share one colour scale, so you can compare them directly.",
    ),
    "guidance": Caption(
        "The guidance term w·(ε_cond − ε_uncond): how the prompt steers this step, on its own colour scale.",
        "Classifier-free guidance (CFG) combines the two predictions as ε̂ = ε_uncond + w·(ε_cond − ε_uncond), "
        "where w is the CFG scale. With w = 1 that is just ε_cond; a larger w pushes the image further in the "
        "direction your prompt adds and away from the negative prompt, at the cost of variety (and, when too "
        "large, of burnt-looking colours). With w ≤ 1 the second branch is skipped and this panel stays grey. "
        "The term gets its own colour scale, so that a small one still shows: the note under the panels says how "
        "much brighter or dimmer than the ε panels it is drawn.",
    ),
    "channels": Caption(
        "The latent's channels one by one, in grey (mid-grey = 0). Top row: x_t; bottom row: x̂₀.",
        "A latent is not an image: its channels loosely encode brightness, colour contrasts and texture, and "
        "the VAE's decoder needs all of them together to make pixels. Each square is one latent position, "
        "covering a {vae_factor}×{vae_factor} patch of pixels. Each row keeps one grey scale for the whole run, "
        "so steps compare: watch structure appear in x̂₀ long before the noise leaves x_t.",
    ),
    "mask": Caption(
        "The inpainting mask at latent resolution: white is repainted, black is kept.",
        "Inpainting also happens on the latent grid, so your painted mask is shrunk to it. A regular model "
        "repaints the white area while, after every step, the black area is replaced by your image's latent "
        "noised to the current level (see the next panel). Dedicated inpainting models instead receive the mask "
        "and the masked image as extra inputs to the UNet.",
    ),
    "blended": Caption(
        "The latent after this step once the known (black) region is put back: the pasted part stays yours.",
        "Because the kept region is re-noised to the same level as the rest, the model always sees a "
        "consistent picture, and the repainted part grows to fit its surroundings.",
    ),
    "tokens": Caption(
        "Your prompt as the text encoder reads it, as words. Pick one to see where in the image it is looking.",
        "A **tokenizer** cuts the text into tokens from a fixed vocabulary of {vocabulary}: common words are one "
        "token, rarer ones are split into pieces (see *Subwords*). The prompt is framed by a start and an end "
        "token and padded to {text_positions} positions, so it reads {prompt_tokens} tokens at a time; a longer "
        "prompt (or one with BREAK) is read in chunks of {prompt_tokens}, each framed and padded alike, and the "
        "UNet attends to all of them side by side. The **text encoder** (CLIP's, a transformer) then turns each "
        "position into a vector of numbers, its *token embedding* ({embedding}), which also carries context from "
        "the words before it. "
        "CLIP reads left to right, so the start token's embedding is the same for every prompt.",
    ),
    "heatmap": Caption(
        "Where the chosen word gets attention: bright regions are the parts of the image that looked at it most.",
        "Inside the UNet, **cross-attention** layers let every position of the latent grid ask the prompt what "
        "matters to it: the position's *query* is compared with each token's *key*, and a softmax turns the "
        "scores into shares that add up to 1 over the {text_positions} positions. The position then takes in a mix "
        "of the tokens' *values* with those shares. This map is the chosen word's share (its pieces added up), "
        "averaged over attention heads and over every cross-attention layer, and smoothly (bicubically) enlarged "
        "to the image. **Per word** stretches each map to its own minimum and maximum, to show *where*; **shared "
        "scale** uses one scale for all words, to show *which word dominates*. **A range of steps** adds the maps "
        "of those steps up, as the DAAM method does.",
    ),
    "layers": Caption(
        "The chosen word in each part of the UNet, at that part's own resolution (each square is one position).",
        "The UNet goes *down* to coarser grids with more abstract features, through the *middle* (the "
        "coarsest), and back *up* to finer grids, with cross-attention at most levels. Coarse levels tend to "
        "settle the layout (where things go), fine levels the details. Each tile averages its block's "
        "cross-attention layers and heads and is stretched to its own min–max. The last tile is the average "
        "over all layers, weighted by how many each block has: the map above, before smoothing.",
    ),
    "timeline": Caption(
        "When each word settles: per step, how much attention it gets (mass) and how focused it is (concentration).",
        "**Mass** is the word's share of all cross-attention at that step: its attention averaged over every "
        "position, head and layer. The masses of all tokens, with start, end and padding, add up to 1. "
        "**Concentration** is 1 − the entropy of the word's map divided by its largest possible value, log N "
        "for N positions: 0 when the word's attention is spread evenly over the image, 1 when it all falls on "
        "one spot. A word whose concentration rises early has found its place early.",
    ),
    "budget": Caption(
        "Where each step's attention goes: the start token, your words, or the end and padding tokens.",
        "The softmax makes every position hand out exactly 1 of attention. Positions that need nothing in "
        "particular from the text still have to put it somewhere, and most of it lands on the start token, "
        "which works as a neutral sink because it carries no information about the prompt. The end and padding "
        "positions come after the whole prompt, so they carry a summary of it. A growing share on your words "
        "means the text is doing more of the steering.",
    ),
    "negative": Caption(
        "Where the image looks at the negative prompt's words, in the unconditional branch (ε_uncond).",
        "With CFG on, the UNet's second pass reads the negative prompt instead of yours, and guidance pushes the "
        "image away from what that pass predicts. These maps show which regions the negative words touch. With "
        "an empty negative prompt the branch sees only the start and end tokens; with CFG scale ≤ 1 there is no "
        "second pass and nothing to show. The maps follow the colour map, scale and step settings above.",
    ),
    "export": Caption(
        "Save the whole run as one file, and replay a saved run here, without the model.",
        "The file is a `.safetensors` file (plain tensors, no code): `image`, the `latents` x_t and `x0` of "
        "every step, the `attention` of every token averaged over heads and layers, per-block maps, the noise "
        "predictions, each token's `token_embeddings` and `text_embeddings` (before and after the text encoder), "
        "and the `tokens` and `recipe` as metadata. A class can replay it on any machine with "
        "sdplay, or open it in a notebook with `safetensors.torch.load_file`.",
    ),
}


def captions(facts: ModelFacts) -> dict[str, Caption]:
    """Every caption, with `facts`' numbers filled in."""
    return {key: caption.filled(facts) for key, caption in CAPTIONS.items()}
