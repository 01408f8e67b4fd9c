"""Prompt embeddings for A1111 prompts: weighted tokens in chunks of 75, encoded by the pipeline's text encoder,
and the schedule of prompt editing handed to diffusers as `prompt_embeds` that change between steps.

How A1111 does it (`modules/sd_hijack_clip.py`), and so how we do: each chunk is 75 tokens between a start and an
end token, padded to 77 and encoded on its own; the chunks' outputs are concatenated (so a prompt is never cut);
weights scale each token's output and the chunk is rescaled to its original mean ("Original" emphasis).
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from diffusers import DiffusionPipeline

from sdplay.runtime.prompts import ScheduledPrompt, parse_emphasis, prompt_at, prompt_schedule

CHUNK_TOKENS = 75  # the text encoder reads 77 positions: start, 75 tokens, end
# A1111's default "comma_padding_backtrack": a chunk that fills up within this many tokens of a comma ends at the
# comma instead, so a phrase is not cut in two.
COMMA_BACKTRACK = 20


@dataclass(frozen=True)
class Chunk:
    """Up to 75 token ids (no start, end or padding) and the weight of each."""

    tokens: list[int]
    weights: list[float]


def chunk_tokens(pieces: list[tuple[list[int], float] | None], comma: int | None) -> list[Chunk]:
    """Pack the token ids of a prompt's runs (None for a BREAK) into chunks of 75, as A1111's `tokenize_line`.

    A BREAK always starts a new chunk (even an empty one); a prompt gives at least one chunk.
    """
    chunks: list[Chunk] = []
    tokens: list[int] = []
    weights: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal tokens, weights, last_comma
        chunks.append(Chunk(tokens, weights))
        tokens, weights, last_comma = [], [], -1

    for piece in pieces:
        if piece is None:
            next_chunk()
            continue
        ids, weight = piece
        for token in ids:
            if token == comma:
                last_comma = len(tokens)
            elif len(tokens) == CHUNK_TOKENS and last_comma != -1 and len(tokens) - last_comma <= COMMA_BACKTRACK:
                cut = last_comma + 1
                moved_tokens, moved_weights = tokens[cut:], weights[cut:]
                tokens, weights = tokens[:cut], weights[:cut]
                next_chunk()
                tokens, weights = moved_tokens, moved_weights
            if len(tokens) == CHUNK_TOKENS:
                next_chunk()
            tokens.append(token)
            weights.append(weight)
    if tokens or not chunks:
        next_chunk()
    return chunks


def tokenize(tokenizer, text: str, label: str = "prompt") -> list[Chunk]:
    """The chunks of a plain prompt (emphasis syntax allowed; prompt editing already resolved)."""
    fragments = parse_emphasis(text, label)
    texts = [fragment.text for fragment in fragments if not fragment.is_break]
    # verbose=False: the tokenizer would warn that a run longer than 77 tokens cannot be encoded; chunks can.
    ids = iter(tokenizer(texts, add_special_tokens=False, verbose=False).input_ids)
    pieces = [None if fragment.is_break else (next(ids), fragment.weight) for fragment in fragments]
    comma = tokenizer.convert_tokens_to_ids(",</w>")  # not get_vocab(): that copies all 49,408 entries each call
    if comma == tokenizer.unk_token_id:
        comma = None
    return chunk_tokens(pieces, comma)


def chunk_token_names(tokenizer, text: str, steps: int, label: str = "prompt") -> list[tuple[list[str], list[float]]]:
    """What the text encoder reads of the run's first prompt (prompt editing at its first step): each chunk's
    tokens as the tokenizer spells them, start and end token included, syntax and BREAK removed; and their weights."""
    first = prompt_schedule(text, steps, label)[0].text
    start, end = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [
        (tokenizer.convert_ids_to_tokens([start, *c.tokens, end]), [1.0, *c.weights, 1.0])
        for c in tokenize(tokenizer, first, label)
    ]


def encode(pipe: DiffusionPipeline, chunks: list[Chunk], n_chunks: int) -> torch.Tensor:
    """Embeddings [1, 77 × n_chunks, dim] of `chunks`, padded with empty chunks to `n_chunks`.

    A chunk of weight 1 everywhere is encoded exactly as diffusers encodes a prompt (same ids, same call), so a
    prompt without syntax, or with weights of 1, gives bit-identical embeddings, hence pixels.
    """
    tokenizer, text_encoder = pipe.tokenizer, pipe.text_encoder
    start, end, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    chunks = chunks + [Chunk([], [])] * (n_chunks - len(chunks))
    ids = [[start, *c.tokens, end, *[pad] * (CHUNK_TOKENS - len(c.tokens))] for c in chunks]
    with torch.no_grad():
        hidden = text_encoder(torch.tensor(ids, device=pipe._execution_device))[0]
    outputs = []
    for chunk, states in zip(chunks, hidden, strict=True):
        if any(weight != 1.0 for weight in chunk.weights):
            weights = [1.0, *chunk.weights, *[1.0] * (CHUNK_TOKENS + 1 - len(chunk.weights))]
            original_mean = states.mean()
            states = states * torch.tensor(weights, dtype=states.dtype, device=states.device)[:, None]
            states = states * (original_mean / states.mean())
        outputs.append(states)
    return torch.cat(outputs).unsqueeze(0).to(dtype=text_encoder.dtype)


@dataclass(frozen=True)
class PromptConditioning:
    """A request's prompt and negative prompt: their schedules of plain prompts, and each plain prompt's embeddings
    [1, 77 × chunks, dim] (all padded to the same number of chunks)."""

    schedules: tuple[list[ScheduledPrompt], list[ScheduledPrompt]]  # (prompt, negative prompt)
    embeddings: dict[str, torch.Tensor]  # plain prompt -> its embeddings

    @property
    def scheduled(self) -> bool:
        """Whether the conditioning changes during the run (prompt editing or alternation)."""
        return any(len({entry.text for entry in schedule}) > 1 for schedule in self.schedules)

    def at(self, call: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative embeddings for denoiser call `call` (0-based), as A1111 picks them."""
        positive, negative = (self.embeddings[prompt_at(schedule, call)] for schedule in self.schedules)
        return positive, negative

    def pipe_kwargs(self) -> dict[str, torch.Tensor]:
        """The arguments that replace diffusers' `prompt=` and `negative_prompt=`: the first call's embeddings."""
        positive, negative = self.at(0)
        return {"prompt_embeds": positive, "negative_prompt_embeds": negative}

    def switching(self, callback: Callable, batch_size: int) -> Callable:
        """`callback` (a `callback_on_step_end`) that also hands the pipeline the next call's embeddings when they
        change. With guidance, diffusers concatenated [negative, positive] before the loop and uses the tensor
        named "prompt_embeds" at each step: that is what must be replaced."""
        if not self.scheduled:
            return callback

        def on_step_end(pipe, step: int, timestep, tensors: dict) -> dict:
            outputs = callback(pipe, step, timestep, tensors)
            now, after = self.at(step), self.at(step + 1)
            if any(a is not b for a, b in zip(now, after, strict=True)):
                positive, negative = (e.repeat(batch_size, 1, 1) for e in after)
                guided = pipe.do_classifier_free_guidance
                outputs = {**outputs, "prompt_embeds": torch.cat([negative, positive]) if guided else positive}
            return outputs

        return on_step_end


def encode_prompts(pipe: DiffusionPipeline, prompt: str, negative_prompt: str, steps: int) -> PromptConditioning:
    """Parse and encode both prompts for a run of `steps`; `UserError` (naming the character) for bad syntax.

    Every plain prompt of both schedules is padded to the same number of chunks: the positive and negative
    embeddings are concatenated for guidance, and the embeddings that replace them mid-run must keep their shape.
    """
    schedules = (prompt_schedule(prompt, steps, "prompt"), prompt_schedule(negative_prompt, steps, "negative prompt"))
    chunks: dict[str, list[Chunk]] = {}
    for label, schedule in zip(("prompt", "negative prompt"), schedules, strict=True):
        for entry in schedule:
            if entry.text not in chunks:
                chunks[entry.text] = tokenize(pipe.tokenizer, entry.text, label)
    n_chunks = max(len(c) for c in chunks.values())
    return PromptConditioning(schedules, {text: encode(pipe, c, n_chunks) for text, c in chunks.items()})
