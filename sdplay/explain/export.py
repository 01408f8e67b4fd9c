"""An Explain run as one .safetensors file that works without the model: for a class to replay, or a notebook.

Contract: tensors `image` uint8 [H,W,3], `latents` and `x0` float [S,C,h,w], `attention` float [S,T,h,w] (start to
end token, conditional branch, averaged over heads and layers); string metadata `tokens` and `recipe` (JSON).
The rest (per-block maps, ε, the negative branch, the schedule) is what the view needs to redraw every panel.
Also the prompt's tokens as the text encoder saw them (start to end token, every chunk): `token_ids` int64 [T],
`token_embeddings` float [T,D] (static: the input table's rows) and `text_embeddings` float [T,D] (the encoder's
output); files saved before lack them, and still replay. Which tensors a file holds, their dtypes and shapes, is
the run's own declaration (`capture.RUN_TENSORS`) plus the averaged `attention` that only files hold.
"""

import json
import re
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file

from sdplay.explain.captions import ModelFacts
from sdplay.explain.capture import RUN_TENSORS, ExplainRun, Recipe, RunTensor
from sdplay.runtime.errors import UserError
from sdplay.runtime.request import Limits

FORMAT = "sdplay-explain/1"
# The one tensor a file holds beyond the run's: each token's map averaged over the blocks, for notebooks. The view
# recomputes it, so it is checked but never loaded.
AVERAGED = RunTensor("attention", ("steps", "tokens", "height", "width"))
# Caps on what an upload may ask of the server. A real export's header is a few KB (its recipe holds the prompts).
MAX_HEADER_BYTES = 1_000_000
# CLIP's 77 positions (start and end tokens included) per chunk of 75 tokens, 32 chunks: about the longest prompt
# a request may have (10,000 characters). MAX_MAP_VALUES caps what the maps of that many tokens cost.
MAX_TOKENS = 77 * 32
MAX_BLOCKS = 16  # UNet blocks with cross-attention (SD 1.x has 7)
MAX_CHANNELS = 16  # latent channels
MAX_EMBEDDING = 4096  # numbers per token embedding (768 in SD 1.x, 1024 in SD 2.x)
# steps × text positions × latent pixels: the view keeps each token's map at the latent size in float32 (256 MB
# here). An upload of SD 1.5 at 512² reaches this near 160 steps, far past the 64 MB upload limit (~130 steps).
MAX_MAP_VALUES = 2**26
FLOATS = {"F16", "F32"}  # what the view can turn into numpy arrays
DTYPES = {"float": FLOATS, "number": FLOATS | {"F64", "I64"}, "uint8": {"U8"}, "int64": {"I64"}}  # by a kind
BLOCK = re.compile(r"(down_blocks|up_blocks)\.\d{1,2}|mid_block")
METADATA = {
    "tokens": list,
    "negative_tokens": list,
    "recipe": dict,
    "layers": dict,
    "unet_calls": int,
    "first_step": int,
}
RECIPE = {
    "task": str, "prompt": str, "negative_prompt": str, "sampler": str, "steps": int, "guidance_scale": (int, float),
    "seed": int, "width": int, "height": int, "model": str, "schedule": str, "strength": (int, float),
    "model_facts": dict, "chunks": int, "prompt_schedule": dict,
}  # fmt: skip
# Runs saved before these existed, text-to-image runs (strength).
OPTIONAL_RECIPE = {"schedule", "strength", "model_facts", "chunks", "prompt_schedule"}
FACTS = {field.name for field in fields(ModelFacts)}


def save_run(run: ExplainRun, path: str | Path) -> Path:
    """Write `run` as one .safetensors file: every tensor the run has (`RUN_TENSORS`) plus the averaged maps."""
    tensors = {AVERAGED.name: run.averaged_attention().half()}
    for declared in RUN_TENSORS:
        value = getattr(run, declared.name)
        if declared.per_block:
            tensors |= {f"{declared.name}.{block}": maps for block, maps in value.items()}
        elif value is not None:
            value = torch.from_numpy(value.copy()) if isinstance(value, np.ndarray) else value
            tensors[declared.name] = value if declared.stored is None else value.to(declared.stored)
    metadata = {
        "format": FORMAT,
        "tokens": json.dumps(run.tokens, ensure_ascii=False),
        "negative_tokens": json.dumps(run.negative_tokens, ensure_ascii=False),
        "recipe": json.dumps(run.recipe.as_dict(), ensure_ascii=False),
        "layers": json.dumps(run.layers),
        "unet_calls": str(run.unet_calls),
        "first_step": str(run.first_step),
    }
    save_file({name: t.contiguous() for name, t in tensors.items()}, str(path), metadata=metadata)
    return Path(path)


def load_run(path: str | Path, limits: Limits = Limits()) -> ExplainRun:
    """Read a file written by `save_run`; anything else is a `UserError` (uploads are untrusted).

    The header is read and checked against the contract first (names, dtypes, shapes, metadata, and caps on the
    tensors, steps, tokens and latent size), so that a hostile file is refused before any tensor is built; then
    only the tensors the view needs are loaded.
    """
    header = read_header(path)
    metadata = header.pop("__metadata__", None)
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise UserError(f"This is not an sdplay Explain file (format {found!r}).")
    contents = _checked_contents(metadata)
    entries = _checked_entries(header, contents["tokens"], contents["negative_tokens"], contents["layers"], limits)
    needed = [name for name in entries if name != AVERAGED.name]
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {name: f.get_tensor(name) for name in needed}
    except (SafetensorError, OSError) as error:
        raise UserError(f"Could not read this Explain file: {error.__class__.__name__}.") from error
    fields = {}
    for declared in RUN_TENSORS:
        if declared.per_block:  # the blocks the file has maps of (every one, for the prompt's: checked)
            named = {block: f"{declared.name}.{block}" for block in contents["layers"]}
            fields[declared.name] = {block: tensors[name] for block, name in named.items() if name in tensors}
        else:
            fields[declared.name] = tensors.get(declared.name)
    fields["image"] = fields["image"].numpy()  # the run's one numpy array: what the view draws over
    metadata_fields = {key: contents[key] for key in METADATA} | {"recipe": Recipe.of(contents["recipe"])}
    return ExplainRun(**metadata_fields, **fields)


def read_header(path: str | Path) -> dict:
    """The safetensors header (8 bytes of little-endian length, then JSON), read without building any tensor."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            raise UserError("This is not an sdplay Explain file (it is not a safetensors file).")
        length = int.from_bytes(prefix, "little")
        if length > MAX_HEADER_BYTES:
            raise UserError(
                f"This Explain file's header is {length:,} bytes; an Explain file's is at most {MAX_HEADER_BYTES:,}."
            )
        text = f.read(length)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise UserError("This is not an sdplay Explain file (its header is not valid JSON).") from error
    if not isinstance(header, dict):
        raise UserError("This is not an sdplay Explain file (its header is not a JSON object).")
    return header


def _json(metadata: dict, key: str, kind: type) -> object:
    """A metadata entry: a string holding JSON of type `kind`."""
    text = metadata.get(key)
    if not isinstance(text, str):
        raise UserError(f"Explain file: the metadata {key!r} is missing or not a string.")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as error:
        raise UserError(f"Explain file: the metadata {key!r} is not valid JSON.") from error
    if not isinstance(value, kind) or isinstance(value, bool) and kind is int:
        raise UserError(f"Explain file: the metadata {key!r} is not a JSON {kind.__name__}.")
    return value


def _checked_contents(metadata: dict) -> dict:
    """The metadata's values, each of the type and within the bounds the view relies on."""
    contents = {key: _json(metadata, key, kind) for key, kind in METADATA.items()}
    for key in ("tokens", "negative_tokens"):
        tokens = contents[key]
        if not 2 <= len(tokens) <= MAX_TOKENS or not all(isinstance(t, str) and len(t) <= 100 for t in tokens):
            raise UserError(
                f"Explain file: {key} must list 2 to {MAX_TOKENS} tokens (start and end included) as strings."
            )
    layers = contents["layers"]
    if not 1 <= len(layers) <= MAX_BLOCKS or not all(
        BLOCK.fullmatch(block) and type(count) is int and 1 <= count <= 64 for block, count in layers.items()
    ):
        raise UserError(f"Explain file: layers must name 1 to {MAX_BLOCKS} UNet blocks, each with its layer count.")
    recipe = contents["recipe"]
    for key, kind in RECIPE.items():
        value = recipe.get(key)
        if (key in recipe or key not in OPTIONAL_RECIPE) and (not isinstance(value, kind) or isinstance(value, bool)):
            raise UserError(f"Explain file: the recipe's {key!r} is missing or of the wrong type.")
    facts = recipe.get("model_facts", {})
    if not set(facts) <= FACTS or not all(type(v) is int and 0 < v < 10**7 for v in facts.values()):
        raise UserError("Explain file: the recipe's model_facts are not the model's numbers.")
    if facts and not {"vae_factor", "latent_channels"} <= set(facts):
        raise UserError("Explain file: the recipe's model_facts lack the VAE factor or the latent channels.")
    for key in ("unet_calls", "first_step"):
        if contents[key] < 0:
            raise UserError(f"Explain file: {key} is negative.")
    return contents


def file_tensors(layers: dict) -> dict[str, RunTensor]:
    """Each tensor a file of a run with these UNet blocks may hold, by its name in the file, with its declaration:
    the run's (`RUN_TENSORS`; one per block for the block maps), then the averaged maps."""
    names = {}
    for declared in RUN_TENSORS:
        blocks = [f"{declared.name}.{block}" for block in layers] if declared.per_block else [declared.name]
        names |= dict.fromkeys(blocks, declared)
    return names | {AVERAGED.name: AVERAGED}


def dimension_sizes(steps: int, latent: list[int], tokens: int, negative: int, limits: Limits) -> dict[str, range]:
    """The sizes a file's tensors may have along each named dimension of `RunTensor.dims`: the run's own numbers of
    steps, latent channels, latent pixels and tokens exactly; block maps at most the latent's size."""
    _, channels, height, width = latent

    def exactly(size: int) -> range:
        return range(size, size + 1)

    return {
        "steps": exactly(steps), "channels": exactly(channels), "height": exactly(height), "width": exactly(width),
        "channels + bias": exactly(channels + 1), "rgb": exactly(3), "tokens": exactly(tokens),
        "tokens + padding": exactly(tokens + 1), "negative tokens + padding": exactly(negative + 1),
        "block height": range(1, height + 1), "block width": range(1, width + 1),
        "image height": range(1, limits.max_size + 1), "image width": range(1, limits.max_size + 1),
        "embedding": range(1, MAX_EMBEDDING + 1),
    }  # fmt: skip


def _checked_entries(header: dict, tokens: list, negative_tokens: list, layers: dict, limits: Limits) -> dict:
    """The tensor entries, each checked against the contract: known name, dtype and shape, within the caps."""
    allowed = file_tensors(layers)
    if len(header) > len(allowed):
        raise UserError(f"Explain file: {len(header):,} tensors; an Explain file has at most {len(allowed)}.")
    for name, entry in header.items():
        if name not in allowed:
            raise UserError(f"Explain file: unexpected tensor {name[:60]!r}.")
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            raise UserError(f"Explain file: the tensor {name!r} has no valid shape.")
    missing = [name for name, declared in allowed.items() if not declared.optional and name not in header]
    if missing or ("mask" in header) != ("blended" in header):
        raise UserError(f"Explain file: tensors missing: {', '.join(missing) or 'mask or blended'}.")
    if ("token_embeddings" in header) != ("text_embeddings" in header):
        raise UserError("Explain file: token_embeddings and text_embeddings come together (the view compares them).")

    steps = header["timesteps"]["shape"][0] if len(header["timesteps"]["shape"]) == 1 else 0
    if not 1 <= steps <= limits.max_steps:
        raise UserError(f"Explain file: {steps} steps; this server shows 1 to {limits.max_steps}.")
    latent = header["latents"]["shape"]
    side = limits.max_size // 4  # the smallest VAE factor of a supported model (the bundled one's) is 4
    if len(latent) != 4 or not (1 <= latent[1] <= MAX_CHANNELS and 1 <= latent[2] <= side and 1 <= latent[3] <= side):
        raise UserError(
            f"Explain file: the latents are {latent[:5]}; this server shows [steps, 1 to {MAX_CHANNELS} channels, "
            f"up to {side}×{side}]."
        )
    _, channels, height, width = latent
    if steps * (max(len(tokens), len(negative_tokens)) + 1) * height * width > MAX_MAP_VALUES:
        raise UserError("Explain file: its steps × tokens × latent size is more than this server draws.")
    sizes = dimension_sizes(steps, latent, len(tokens), len(negative_tokens), limits)
    for name, entry in header.items():
        dtypes, dims = DTYPES[allowed[name].kind], tuple(sizes[d] for d in allowed[name].dims)
        shape, dtype = entry["shape"], str(entry.get("dtype"))[:8]
        if dtype not in dtypes or len(shape) != len(dims) or any(d not in r for d, r in zip(shape, dims, strict=True)):
            expected = ", ".join(f"{r.start}" if len(r) == 1 else f"{r.start}–{r.stop - 1}" for r in dims)
            found = shape if len(shape) <= len(dims) else f"{len(shape)} dimensions"
            raise UserError(
                f"Explain file: the tensor {name!r} is {dtype} {found}; the contract says "
                f"{' or '.join(sorted(dtypes))} [{expected}]."
            )
    if "token_embeddings" in header and header["token_embeddings"]["shape"] != header["text_embeddings"]["shape"]:
        raise UserError("Explain file: token_embeddings and text_embeddings differ in shape.")
    return header
