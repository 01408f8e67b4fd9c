"""The Explain capture: one normal generation with recorders attached, kept as an `ExplainRun`.

Cross-attention is recorded by wrapping the `attn2` processors (self-attention keeps its fast SDPA processor);
latents, x̂₀ and the guidance split come from the UNet's own inputs and outputs (see predictions.py). The tensors a
run holds are declared once, in `RUN_TENSORS`: the recorder stacks its per-step ones, and export.py saves, checks
and loads them all from that declaration.
"""

import math
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np
import torch
from diffusers import DiffusionPipeline, PNDMScheduler

from sdplay.explain.captions import ModelFacts
from sdplay.runtime.conditioning import CHUNK_TOKENS, Chunk, chunk_token_names, encode
from sdplay.runtime.executor import JobControl
from sdplay.runtime.generate import generate
from sdplay.runtime.models import ModelManager
from sdplay.runtime.predictions import Prediction, watch_predictions
from sdplay.runtime.prompts import prompt_schedule
from sdplay.runtime.request import GenerationRequest, Limits, Task, validated
from sdplay.runtime.samplers import AUTOMATIC


@dataclass(frozen=True)
class RunTensor:
    """One tensor of an `ExplainRun`, as the capture records it and its export holds it."""

    name: str  # the run's field; in a file, the tensor's name (per block: `attention.up_blocks.1`)
    dims: tuple[str, ...]  # its dimensions by name; export.py says which sizes each name allows in a file
    kind: str = "float"  # "float", "number" (float or integer), "uint8" or "int64": the dtypes a file may hold
    per_step: bool = False  # one per step, stacked by the recorder: the first dimension is the step
    per_block: bool = False  # one per UNet block: the run holds a dict, a file one tensor a block
    optional: bool = False  # a run may lack it: an older file, a run without a mask or without guidance
    stored: torch.dtype | None = None  # the dtype a file holds it in (None: as recorded)


LATENT = ("steps", "channels", "height", "width")  # a latent per step, at the latent's size
# Every tensor of a run. The recorder fills the per-step ones (its step records are keyed by these names); the
# export saves each one the run has, refuses a file without a required one, and checks each against its dims.
RUN_TENSORS = (
    RunTensor("latents", LATENT, per_step=True),
    RunTensor("x0", LATENT, per_step=True),
    RunTensor("eps_cond", LATENT, per_step=True),
    RunTensor("eps_uncond", LATENT, per_step=True),
    RunTensor("guidance", LATENT, per_step=True),
    RunTensor("timesteps", ("steps",), "number", per_step=True),
    RunTensor("sigmas", ("steps",), "number", per_step=True),
    RunTensor("image", ("image height", "image width", "rgb"), "uint8"),
    RunTensor("latent_rgb", ("channels + bias", "rgb")),
    RunTensor("mask", ("height", "width"), optional=True),
    RunTensor("blended", LATENT, per_step=True, optional=True),  # inpaint only, with the mask
    RunTensor("weights", ("tokens",), optional=True, stored=torch.float32),
    RunTensor("token_ids", ("tokens",), "int64", optional=True),
    RunTensor("token_embeddings", ("tokens", "embedding"), optional=True),
    RunTensor("text_embeddings", ("tokens", "embedding"), optional=True),
    RunTensor("attention", ("steps", "tokens + padding", "block height", "block width"), per_block=True),
    RunTensor(
        "negative_attention", ("steps", "negative tokens + padding", "block height", "block width"), per_block=True,
        optional=True,
    ),
)  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class Recipe:
    """What made a run: the validated request (its seed drawn, its size the image's), the model that ran it, and
    what the captions and replays need. An export stores it as JSON with these names as keys (`as_dict`, `of`)."""

    task: str
    prompt: str
    negative_prompt: str
    sampler: str
    schedule: str | None = None  # None: a run saved before schedule types (its sampler's own)
    steps: int
    guidance_scale: float
    seed: int
    width: int
    height: int
    model: str
    model_facts: dict[str, int] | None = None  # the model's numbers, for the captions (None: saved before them)
    chunks: int | None = None  # chunks of 75 tokens (None: saved when long prompts were cut)
    # Which plain prompt applies up to which step (prompt editing, alternation): {"prompt": [[last step, text], ...],
    # "negative_prompt": [...]}; None: saved before it was recorded.
    prompt_schedule: dict[str, list] | None = None
    strength: float | None = None  # image-to-image and inpaint only

    @classmethod
    def of(cls, values: dict) -> "Recipe":
        """The recipe of an export's JSON (checked by export.load_run first; unknown keys are left out)."""
        return cls(**{name: values[name] for name in RECIPE_FIELDS if name in values})

    def as_dict(self) -> dict[str, object]:
        """The JSON an export stores: every field but those a run does not have."""
        return {name: value for name, value in asdict(self).items() if value is not None}

    def request(self) -> GenerationRequest:
        """The request that makes this run again (an image-to-image run's input image aside)."""
        strength = {} if self.strength is None else {"strength": self.strength}
        return GenerationRequest(
            task=Task(self.task), prompt=self.prompt, negative_prompt=self.negative_prompt, sampler=self.sampler,
            schedule=self.schedule or AUTOMATIC, steps=self.steps, guidance_scale=self.guidance_scale, seed=self.seed,
            width=self.width, height=self.height, **strength,
        )  # fmt: skip


RECIPE_FIELDS = [field.name for field in fields(Recipe)]


@dataclass
class ExplainRun:
    """Everything the Explain view shows, for one image; S steps, C latent channels, latents h×w.

    Attention maps are kept per UNet block (all its cross-attention layers averaged), conditional and negative
    branch apart, in fp16, each with its tokens (every chunk of 75, each from its start to its end token) plus one
    last channel that sums the padding positions, so that every map sums to 1 over the channels at every pixel.
    """

    image: np.ndarray  # uint8 [H, W, 3], the final image
    tokens: list[str]  # the prompt's tokens, chunk after chunk from start to end token, as the tokenizer spells them
    negative_tokens: list[str]
    recipe: Recipe
    timesteps: torch.Tensor  # [S]
    sigmas: torch.Tensor  # [S]: σ_t = √((1 − ᾱ_t)/ᾱ_t), the noise-to-signal ratio
    latents: torch.Tensor  # [S, C, h, w]: the x_t entering each step (variance-preserving scale)
    x0: torch.Tensor  # [S, C, h, w]: predicted clean latents
    eps_cond: torch.Tensor  # [S, C, h, w]: the UNet's prediction with the prompt
    eps_uncond: torch.Tensor  # [S, C, h, w]: with the negative prompt (zeros without guidance)
    guidance: torch.Tensor  # [S, C, h, w]: w·(ε_cond − ε_uncond)
    attention: dict[str, torch.Tensor]  # block -> [S, T+1, hb, wb]
    negative_attention: dict[str, torch.Tensor]  # block -> [S, Tn+1, hb, wb]; empty without guidance
    layers: dict[str, int]  # cross-attention layers in each block
    latent_rgb: torch.Tensor  # [C+1, 3]: the model's linear latent -> RGB preview map
    unet_calls: int
    first_step: int  # image-to-image and inpaint start the schedule of `recipe.steps` here (strength)
    mask: torch.Tensor | None = None  # [h, w]: inpainting mask at latent resolution (1 = repaint)
    blended: torch.Tensor | None = None  # [S, C, h, w]: latents after the known region is put back (inpaint)
    weights: torch.Tensor | None = None  # [T]: each token's A1111 emphasis weight (1 for start/end); None: not saved
    # The prompt's tokens seen by the text encoder (None in runs saved before they were recorded): their ids, their
    # static input embeddings (the vocabulary's rows, before CLIP adds a position embedding inside the encoder) and
    # their contextual embeddings (the encoder's last hidden state, without emphasis weights: what the UNet reads
    # when every weight is 1).
    token_ids: torch.Tensor | None = None  # [T] int64
    token_embeddings: torch.Tensor | None = None  # [T, D]
    text_embeddings: torch.Tensor | None = None  # [T, D]

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    def averaged_attention(self, negative: bool = False) -> torch.Tensor:
        """[S, T, h, w]: each token's map averaged over all cross-attention layers, resized to the latent grid."""
        maps = self.negative_attention if negative else self.attention
        size = tuple(self.latents.shape[-2:])
        total = sum(
            self.layers[block] * torch.nn.functional.interpolate(m.float(), size=size, mode="bilinear")
            for block, m in maps.items()
        )
        return total[:, :-1] / sum(self.layers[block] for block in maps)


def block_of(layer: str) -> str:
    """'up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor' -> 'up_blocks.1'."""
    parts = layer.split(".")
    return parts[0] if parts[0] == "mid_block" else ".".join(parts[:2])


def attention_probabilities(attn, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
    """softmax(QKᵀ·scale) of one cross-attention layer from its projected query and key, averaged over heads:
    [batch, pixels, text positions]."""
    batch = query.shape[0]
    query = query.view(batch, -1, attn.heads, query.shape[-1] // attn.heads).transpose(1, 2)
    key = key.view(batch, -1, attn.heads, key.shape[-1] // attn.heads).transpose(1, 2)
    if attn.norm_q is not None:
        query, key = attn.norm_q(query), attn.norm_k(key)
    scores = (query.float() @ key.float().transpose(-1, -2)) * attn.scale
    return scores.softmax(dim=-1).mean(dim=1)


class CrossAttentionRecorder:
    """Stands in for one `attn2` processor: runs the original unchanged, then records its probabilities.

    The query and key come from hooks on the layer's `to_q` and `to_k` (`listen`), as the original processor
    computed them: computing them again cost about a fifth of the capture.
    """

    def __init__(self, processor, block: str, record: Callable[[str, torch.Tensor], None]) -> None:
        self.processor, self.block, self.record = processor, block, record
        self.projected: dict[str, torch.Tensor] = {}

    @contextmanager
    def listen(self, attn) -> Iterator[None]:
        """Keep the outputs of `attn.to_q` and `attn.to_k` while the block runs; the hooks are always removed."""

        def keeper(name: str):
            return lambda module, args, output: self.projected.__setitem__(name, output)

        hooks = [attn.to_q.register_forward_hook(keeper("query")), attn.to_k.register_forward_hook(keeper("key"))]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        output = self.processor(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        with torch.no_grad():
            self.record(
                self.block, attention_probabilities(attn, self.projected.pop("query"), self.projected.pop("key"))
            )
        return output


def latent_grid(pixels: int, height: int, width: int) -> tuple[int, int]:
    """The (h, w) of a UNet level with `pixels` positions: each level halves the latent grid, rounding up."""
    for level in range(8):
        h, w = math.ceil(height / 2**level), math.ceil(width / 2**level)
        if h * w == pixels:
            return h, w
    raise ValueError(f"{pixels} positions match no level of a {height}×{width} latent")


def mid_step(scheduler) -> bool:
    """Whether the sampler's next UNet call still belongs to the step it is in (diffusers loops once per call).

    Heun-type samplers call the UNet twice a step and say so with `state_in_first_order`. PLMS has no history to
    extrapolate from at its first step, so it takes that step as Heun does: a second UNet call at the next timestep
    (which is why `set_timesteps(n)` lists that timestep twice, n + 1 in all), then the step again from the same x_t
    with the mean of both predictions. We count that call in the first step rather than show it as a step of its
    own: its x_t is a trial that the sampler throws away. So a PLMS run of n steps records n steps (n + 1 UNet calls),
    one per timestep, and `first_step` counts in the request's n steps as it does for any sampler.
    """
    if isinstance(scheduler, PNDMScheduler):
        return scheduler.counter == 1  # one call made: the first step's second call is next
    return not getattr(scheduler, "state_in_first_order", True)


class ExplainRecorder:
    """Records one run for the Explain view; `generate()` attaches it for that request only."""

    tensor_inputs = ["mask"]

    def __init__(self, token_positions: tuple[list[int], list[int]], prompt: "PromptTokens | None" = None) -> None:
        # Where the prompt's and the negative prompt's tokens are among the text encoder's positions (77 per
        # chunk): each chunk's start token, tokens and end token; the rest is padding.
        self.token_positions = token_positions
        self.prompt = prompt  # its tokens' embeddings are kept too (see `text_embeddings`)
        self.static: torch.Tensor | None = None  # [T, D]
        self.unweighted: torch.Tensor | None = None  # [77 × chunks, D], only for a prompt with emphasis weights
        self.text_states: torch.Tensor | None = None  # [77 × chunks, D]: the prompt's branch of the first UNet call
        self.layers: dict[str, int] = {}
        self.latent_size: tuple[int, int] = (0, 0)
        self.call_maps: dict[str, list[torch.Tensor]] = {}  # block -> this UNet call's probabilities, one per layer
        self.calls: list[tuple[Prediction, dict[str, torch.Tensor]]] = []  # per UNet call, this step
        self.steps: list[dict] = []
        self.mask: torch.Tensor | None = None
        self.guided = False
        self.unet_calls = 0
        self.scheduler = None
        self.tensors: dict[str, torch.Tensor] = {}

    @contextmanager
    def attached(self, pipe: DiffusionPipeline) -> Iterator[None]:
        unet = pipe.unet
        self.scheduler = pipe.scheduler
        if self.prompt is not None:
            self._read_text_encoder(pipe)
        originals = unet.attn_processors
        recorders = {}
        with ExitStack() as listening:
            for name, processor in originals.items():
                if name.endswith("attn2.processor"):
                    block = block_of(name)
                    self.layers[block] = self.layers.get(block, 0) + 1
                    recorders[name] = CrossAttentionRecorder(processor, block, self._record)
                    listening.enter_context(recorders[name].listen(unet.get_submodule(name.removesuffix(".processor"))))
            unet.set_attn_processor({**originals, **recorders})
            sizer = unet.register_forward_pre_hook(self._start_call, with_kwargs=True)
            try:
                with watch_predictions(pipe, self._end_call):
                    yield
            finally:
                unet.set_attn_processor(originals)
                sizer.remove()

    def _read_text_encoder(self, pipe: DiffusionPipeline) -> None:
        """Keep the static embeddings of the prompt's tokens: rows of the encoder's input table, a lookup. The
        contextual ones are the UNet's input (`_start_call`), free; only a prompt with emphasis weights is encoded
        again without them, as its chunks were before weighting (one text-encoder pass: far less than a UNet step)."""
        prompt = self.prompt
        table = pipe.text_encoder.get_input_embeddings().weight
        self.static = table[torch.tensor(prompt.ids, device=table.device)].detach().float().cpu()
        if any(weight != 1.0 for weight in prompt.weights):
            chunks = [Chunk(ids[1:-1], [1.0] * (len(ids) - 2)) for ids in prompt.chunk_ids()]
            self.unweighted = encode(pipe, chunks, len(chunks))[0]

    def _start_call(self, module, args, kwargs) -> None:
        sample = args[0] if args else kwargs["sample"]
        self.latent_size = tuple(sample.shape[-2:])
        self.call_maps = {}
        if self.text_states is None:  # the first call reads the run's first prompt, the one `tokens` lists
            states = args[2] if len(args) > 2 else kwargs["encoder_hidden_states"]
            self.text_states = states[-1]  # the prompt's branch: with guidance the batch is [negative, prompt]

    def text_embeddings(self) -> dict[str, torch.Tensor]:
        """The prompt's tokens (start to end token, chunk after chunk): ids, static and contextual embeddings."""
        if self.prompt is None or self.text_states is None:
            return {}
        states = self.text_states if self.unweighted is None else self.unweighted
        return {
            "token_ids": torch.tensor(self.prompt.ids),
            "token_embeddings": self.static,
            "text_embeddings": states[self.prompt.positions].detach().float().cpu(),
        }

    def _record(self, block: str, probabilities: torch.Tensor) -> None:
        self.call_maps.setdefault(block, []).append(probabilities)

    def _end_call(self, prediction: Prediction) -> None:
        """Average each block's layers, then keep the real tokens (of every chunk) and one summed padding channel of
        each branch (the prompt's first), reshaped to the block's grid: once per block, not per layer."""
        self.guided = prediction.eps_uncond is not None
        maps = {}
        for block, layers in self.call_maps.items():
            probabilities = torch.stack(layers).mean(0)  # [batch, pixels, text positions]
            h, w = latent_grid(probabilities.shape[1], *self.latent_size)
            maps[block] = [
                torch.cat([probs[:, real], probs[:, ~real].sum(-1, keepdim=True)], dim=-1).T.reshape(-1, h, w).half()
                for probs, real in zip(
                    probabilities.flip(0), self._real(probabilities.shape[-1], probabilities.device), strict=False
                )
            ]
        self.calls.append((prediction, maps))

    def _real(self, positions: int, device: torch.device) -> list[torch.Tensor]:
        """Per branch, a mask of the text positions that are tokens (not padding)."""
        masks = []
        for tokens in self.token_positions:
            mask = torch.zeros(positions, dtype=torch.bool, device=device)
            mask[tokens] = True
            masks.append(mask)
        return masks

    def step_ended(self, step: int, tensors: dict[str, torch.Tensor]) -> None:
        """Close the step unless the sampler is in the middle of it (see `mid_step`). A step of two UNet calls
        takes x_t from the first call, the predictions from the last, and the mean of both calls' attention."""
        self.tensors = tensors
        if not mid_step(self.scheduler):
            self._close_step()

    def _close_step(self) -> None:
        first, last = self.calls[0][0], self.calls[-1][0]
        blocks = self.calls[-1][1]
        maps = {
            block: [torch.stack([m[block][i].float() for _, m in self.calls]).mean(0).half() for i in range(len(v))]
            for block, v in blocks.items()
        }
        # Copies, not views: a view of image 0 would keep the UNet's whole batch alive until the run ends.
        eps_cond = last.eps_cond[0].cpu().clone()
        eps_uncond = last.eps_uncond[0].cpu().clone() if self.guided else torch.zeros_like(eps_cond)
        self.steps.append(
            {
                "timesteps": first.timestep,
                "sigmas": math.sqrt((1 - first.alpha_bar) / first.alpha_bar),
                "latents": first.x_t[0].cpu().clone(),
                "x0": last.x0[0].cpu().clone(),
                "eps_cond": eps_cond,
                "eps_uncond": eps_uncond,
                # The guided prediction is ε_uncond + w·(ε_cond − ε_uncond): the guidance term is the difference.
                "guidance": last.eps[0].cpu() - eps_uncond if self.guided else torch.zeros_like(eps_cond),
                "blended": self.tensors["latents"][0].float().cpu(),
                "maps": maps,
            }
        )
        if "mask" in self.tensors and self.mask is None:
            self.mask = self.tensors["mask"][0, 0].float().cpu()
        self.unet_calls += len(self.calls)
        self.calls = []

    def run(self, image, tokens: list[str], negative_tokens: list[str], recipe: Recipe, latent_rgb, first_step: int):
        """The recorded steps as one `ExplainRun`."""
        if self.calls:  # Heun's last step ends in its second-order state: close it here
            self._close_step()
        stacked = {t.name: stack([step[t.name] for step in self.steps]) for t in RUN_TENSORS if t.per_step}
        if self.mask is None:  # every step records its blended latents; only inpainting blends anything in
            stacked["blended"] = None
        branches = [
            {block: torch.stack([step["maps"][block][i] for step in self.steps]) for block in self.layers}
            for i in range(2 if self.guided else 1)
        ]
        return ExplainRun(
            image=np.asarray(image.convert("RGB")),
            tokens=tokens,
            negative_tokens=negative_tokens,
            recipe=recipe,
            attention=branches[0],
            negative_attention=branches[1] if self.guided else {},
            layers=dict(self.layers),
            latent_rgb=latent_rgb.float().cpu(),
            unet_calls=self.unet_calls,
            first_step=first_step,
            mask=self.mask,
            **stacked,
        )


def stack(values: list) -> torch.Tensor:
    """One tensor of a step record's values: tensors stacked, numbers (a timestep, a σ) as a float tensor."""
    return torch.stack(values) if torch.is_tensor(values[0]) else torch.tensor(values)


CHUNK_POSITIONS = CHUNK_TOKENS + 2  # a chunk's start token, 75 tokens, end token


@dataclass(frozen=True)
class PromptTokens:
    """The tokens the text encoder reads (A1111 syntax parsed; the first prompt of an edit), chunk after chunk,
    each chunk from its start token to its end token, with their weights and their positions among the
    77 × chunks text positions."""

    names: list[str]
    weights: list[float]
    positions: list[int]
    chunks: int
    ids: list[int] = field(default_factory=list)  # the tokenizer's id of each of `names`

    def chunk_ids(self) -> list[list[int]]:
        """The ids of each chunk, from its start token to its end token."""
        chunks: list[list[int]] = [[] for _ in range(self.chunks)]
        for token, position in zip(self.ids, self.positions, strict=True):
            chunks[position // CHUNK_POSITIONS].append(token)
        return chunks


def tokens_of(tokenizer, text: str, steps: int, label: str = "prompt") -> PromptTokens:
    names: list[str] = []
    weights: list[float] = []
    positions: list[int] = []
    chunks = chunk_token_names(tokenizer, text, steps, label)
    for chunk, (chunk_names, chunk_weights) in enumerate(chunks):
        names += chunk_names
        weights += chunk_weights
        positions += range(chunk * CHUNK_POSITIONS, chunk * CHUNK_POSITIONS + len(chunk_names))
    return PromptTokens(names, weights, positions, len(chunks), tokenizer.convert_tokens_to_ids(names))


def explain(
    manager: ModelManager, request: GenerationRequest, limits: Limits = Limits(), control: JobControl = JobControl()
) -> ExplainRun:
    """Generate one image for `request` with the recorders attached, and return the whole run."""
    request = replace(validated(request, limits), batch_size=1)
    tokenizer = manager.model.pipe.tokenizer
    tokens = tokens_of(tokenizer, request.prompt, request.steps)
    negative = tokens_of(tokenizer, request.negative_prompt, request.steps, "negative prompt")
    recorder = ExplainRecorder((tokens.positions, negative.positions), prompt=tokens)
    result = generate(manager, request, limits, control, recorder=recorder)
    recipe = Recipe(
        task=request.task.value,
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        sampler=request.sampler,
        schedule=request.schedule,
        steps=request.steps,
        guidance_scale=request.guidance_scale,
        seed=result.seeds[0],
        width=result.images[0].width,
        height=result.images[0].height,
        model=manager.model.name,
        model_facts=asdict(ModelFacts.of_pipeline(manager.model.pipe)),  # for the captions, in replays too
        chunks=tokens.chunks,  # of 75 tokens: the prompt is never cut
        prompt_schedule={
            key: [[entry.end_at_step, entry.text] for entry in prompt_schedule(text, request.steps)]
            for key, text in (("prompt", request.prompt), ("negative_prompt", request.negative_prompt))
        },
        strength=None if request.task == Task.TXT2IMG else request.strength,
    )
    first_step = request.steps - len(recorder.steps)
    run = recorder.run(result.images[0], tokens.names, negative.names, recipe, manager.model.latent_rgb, first_step)
    return replace(run, weights=torch.tensor(tokens.weights), **recorder.text_embeddings())
