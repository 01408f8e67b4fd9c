"""The Inside tab's text embeddings: each token's static and contextual vectors, their similarities and movement,
its nearest vocabulary tokens, and a live test that the text encoder reads left to right (it is causal).

The vectors come from the recorded run (`ExplainRun.token_embeddings`, `.text_embeddings`), so they show without
the model; the nearest tokens and the causal test run the model's own table and encoder, as jobs.
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from sdplay.explain.captions import Caption
from sdplay.explain.capture import ExplainRun
from sdplay.explain.render import code, token_text
from sdplay.runtime.errors import UserError
from sdplay.runtime.executor import JobControl
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits
from sdplay.runtime.tokenizer import END_OF_WORD

# The section's text for students, with the run's model's numbers (`{embedding}`, `{vocabulary}`: ModelFacts).
INTRO = Caption(
    "Before the UNet sees your prompt, the text encoder turns each token into a vector of numbers: first a fixed "
    "one per token (static), then one that depends on the words before it (contextual).",
    "Step 1 is a lookup: the encoder's input table has a row for each of the {vocabulary} tokens it knows, a vector "
    "of {embedding}. That row is the token's **static embedding**: 'cat' gets the same vector in every prompt, and "
    "training puts tokens used alike near each other (the Word2Vec idea). CLIP then adds a *position* embedding (one "
    "vector per position) so that word order counts; the stripes here show the table's row alone, what the word "
    "itself brings, and the nearest tokens are measured on it.\n\n"
    "Step 2 is a transformer: layers of self-attention mix each token with the tokens before it. Its output is the "
    "**contextual embedding**, and it is what the UNet's cross-attention reads, one vector per position. CLIP's "
    "encoder is *causal*: each position reads only the positions before it, so the start token's vector is the same "
    "for every prompt, and a word cannot be taken back by giving it weight 0: the words after it have already read it.",
)
# One short caption per panel.
CAPTIONS = {
    "static": "Static embeddings: each token's row of the input table, one column per number (white 0, red +, blue −).",
    "contextual": "Contextual embeddings: the encoder's output for each token, what the UNet reads.",
    "similarity": "Cosine similarity of every pair of tokens: red 1 (same direction), white 0, blue −1.",
    "movement": "How far the encoder turned each token away from its static vector (1 − cosine; 0 = same direction).",
    "neighbours": "The tokens of the whole vocabulary whose static vectors point most nearly the same way (cosine).",
    "causal": "Change one word and encode again: tokens before it keep exactly their vectors; tokens after it change.",
}
SHOWN_TOKENS = 77  # one chunk: a longer prompt's other chunks are in the file, the pictures show the first 77
NEIGHBOURS = 5
# An edit changes nothing before it in a causal encoder: bit for bit here; a GPU's kernels may differ in the last
# bits of a float, far below what a real dependence on the edited word shows (above 1e-3 on the bundled model).
CAUSAL_TOLERANCE = 1e-6  # in 1 − cosine
MAX_REPLACEMENT_CHARS = 100
# Pictures for a projector: big type, white background. The default font is ASCII-only here: labels stay ASCII.
FONT = 18
WIDTH = 760
TEXT = (40, 40, 40)
GRID = (225, 225, 225)
POSITIVE, NEGATIVE = np.array([202, 0, 32]), np.array([5, 113, 176])  # red above 0, blue below, white at 0
LATER_COLOUR, EARLY_COLOUR = (230, 85, 13), (49, 130, 189)


@functools.cache
def font(size: int = FONT) -> ImageFont.FreeTypeFont:
    """The default font at `size` pixels, loaded once: loading it took more time than drawing a chart."""
    return ImageFont.load_default(size)


def token_label(name: str, first: str, last: str) -> str:
    """A token as a picture can print it: <start> and <end> for the frame, a trailing '-' for a piece of a word
    that goes on in the next token ('water-' of 'watercolor')."""
    if name == first:
        return "<start>"
    if name == last:
        return "<end>"
    text = token_text([name])
    return text if name.endswith(END_OF_WORD) else f"{text}-"


@dataclass(frozen=True)
class TextEmbeddings:
    """The first chunk of a run's prompt as the text encoder saw it: T tokens (start to end token), D numbers each."""

    tokens: list[str]  # as the tokenizer spells them
    ids: list[int] | None  # None in a file without them
    static: np.ndarray  # [T, D]: the input table's rows (the same for a token wherever it stands)
    contextual: np.ndarray  # [T, D]: the encoder's last hidden state (what the UNet reads)
    total: int  # tokens the run recorded, every chunk

    @classmethod
    def of_run(cls, run: ExplainRun) -> "TextEmbeddings | None":
        """The run's first chunk; None for a run saved before embeddings were recorded."""
        if run.token_embeddings is None or run.text_embeddings is None:
            return None
        shown = len(first_chunk(run.tokens))
        ids = run.token_ids[:shown].tolist() if run.token_ids is not None else None
        static, contextual = (t[:shown].float().numpy() for t in (run.token_embeddings, run.text_embeddings))
        return cls(run.tokens[:shown], ids, static, contextual, len(run.tokens))

    @property
    def labels(self) -> list[str]:
        return [token_label(name, self.tokens[0], self.tokens[-1]) for name in self.tokens]

    def movement(self) -> tuple[np.ndarray, np.ndarray]:
        """Per token, how far its contextual vector moved from its static one: their cosine similarity, and the
        distance between them."""
        return cosine_pairs(self.static, self.contextual), np.linalg.norm(self.contextual - self.static, axis=1)

    def table(self) -> str:
        """Markdown: each token's position, spelling, id, both vectors' lengths and how far it moved."""
        cosine, distance = self.movement()
        rows = [
            "| # | token | id | length, static | length, contextual | cosine (static, contextual) | distance |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, name in enumerate(self.tokens):
            token_id = self.ids[i] if self.ids is not None else "?"
            static, contextual = np.linalg.norm(self.static[i]), np.linalg.norm(self.contextual[i])
            numbers = f"{static:.3g} | {contextual:.3g} | {cosine[i]:.3f} | {distance[i]:.3g}"
            rows.append(f"| {i} | {code(name)} | {token_id} | {numbers} |")
        return "\n".join(rows)


def first_chunk(tokens: list[str]) -> list[str]:
    """The tokens of a prompt's first chunk, from the start token to its end token (at most SHOWN_TOKENS)."""
    end = tokens[-1]
    last = tokens.index(end, 1) if end in tokens[1:-1] else len(tokens) - 1
    return tokens[: min(last + 1, SHOWN_TOKENS)]


def availability(run: ExplainRun | None, loaded: str) -> str:
    """Markdown: what this section shows of `run` and what needs its model, `loaded` being the model loaded now."""
    if run is None:
        return "Record a run on the **Explain** tab, or replay a saved one: this section shows its prompt's tokens."
    made = run.recipe.model
    lines = []
    if run.token_embeddings is None:
        lines.append(
            "This run was saved before sdplay recorded text embeddings, so there are no vectors to show: record it "
            "again on the Explain tab (its recipe keeps the seed)."
        )
    else:
        shown = len(first_chunk(run.tokens))
        if shown < len(run.tokens):
            lines.append(f"The pictures show the prompt's first chunk: {shown} of its {len(run.tokens)} tokens.")
    if made == loaded:
        lines.append(f"The nearest tokens and the causal test below ask {made} itself.")
    else:
        lines.append(
            f"This run was made by **{made}**, and **{loaded}** is loaded. What is shown comes from the run's file "
            "(each token's id, static and contextual vectors, their similarities and how far each moved). "
            f"**The nearest vocabulary tokens and the causal test need {made}'s own table and encoder**: load it "
            "to use them."
        )
    return " ".join(lines)


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The cosine similarity of each row of `a` with the same row of `b` (0 for a zero row)."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.divide((a * b).sum(axis=1), norms, out=np.zeros(len(a), dtype=np.float64), where=norms > 0)


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
    """[T, T]: the cosine similarity of every pair of rows."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float64), where=norms > 0)
    return unit @ unit.T


# Pictures -------------------------------------------------------------------------------------------------------


def signed_colours(values: np.ndarray, scale: float) -> np.ndarray:
    """uint8 RGB: white at 0, red up to +scale, blue down to −scale (and beyond, clipped)."""
    v = np.clip(values / (scale or 1.0), -1, 1)[..., None]
    towards = np.where(v >= 0, POSITIVE, NEGATIVE)
    return (255 + np.abs(v) * (towards - 255)).round().astype(np.uint8)


def label_width(labels: list[str], size: int) -> int:
    return int(max((font(size).getlength(label) for label in labels), default=0)) + 14


def row_layout(rows: int) -> tuple[int, int]:
    """(row height, label font size) for `rows` rows: large while they fit a screen, then smaller."""
    height = max(10, min(28, 640 // max(rows, 1)))
    return height, max(9, min(FONT, height - 6))


def vector_strips(vectors: np.ndarray, labels: list[str], title: str) -> Image.Image:
    """One row per token, one column per number of its vector, coloured by value (white 0, red +, blue −) on a
    scale that covers 99% of the values: similar tokens have similar stripes."""
    rows, size = vectors.shape
    height, text_size = row_layout(rows)
    zoom = max(1, (WIDTH - 180) // size)
    left = label_width(labels, text_size)
    scale = float(np.percentile(np.abs(vectors), 99)) or 1.0
    top = 34
    image = Image.new("RGB", (left + size * zoom + 10, top + rows * height + 6), "white")
    strip = signed_colours(vectors, scale).repeat(height, axis=0).repeat(zoom, axis=1)
    image.paste(Image.fromarray(strip), (left, top))
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), f"{title} (colour scale +-{scale:.3g}, {size} numbers)", fill=TEXT, font=font())
    for row, label in enumerate(labels):
        draw.text((left - 8, top + row * height + height // 2), label, fill=TEXT, font=font(text_size), anchor="rm")
    return image


def similarity_image(matrix: np.ndarray, labels: list[str], title: str) -> Image.Image:
    """The token-by-token cosine similarities, red for 1, white for 0, blue for −1, with the values written in when
    the cells are large enough to read."""
    count = len(matrix)
    cell = max(4, min(48, 480 // max(count, 1)))
    text_size = max(9, min(FONT, cell - 4)) if cell >= 14 else 0
    left = label_width(labels, text_size) if text_size else 10
    top = 36 + (text_size + 6 if text_size else 0)
    image = Image.new("RGB", (max(left + count * cell + 10, 360), top + count * cell + 6), "white")
    image.paste(Image.fromarray(signed_colours(matrix, 1.0).repeat(cell, 0).repeat(cell, 1)), (left, top))
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill=TEXT, font=font())
    for i, label in enumerate(labels if text_size else []):
        middle = i * cell + cell // 2
        draw.text((left - 8, top + middle), label, fill=TEXT, font=font(text_size), anchor="rm")
        draw.text((left + middle, top - 4), str(i), fill=TEXT, font=font(text_size), anchor="mb")
    if cell >= 44:  # the values themselves, a dozen tokens or fewer
        for (i, j), value in np.ndenumerate(matrix):
            ink = "white" if abs(value) > 0.6 else TEXT
            where = (left + j * cell + cell // 2, top + i * cell + cell // 2)
            draw.text(where, f"{value:.2f}", fill=ink, font=font(13), anchor="mm")
    return image


def written(value: float) -> str:
    """A bar's value: an exact 0 says so, a tiny one is not rounded to it."""
    return "0" if value == 0 else f"{value:.2g}"


def bar_rows(
    labels: list[str], series: list[tuple[str, np.ndarray, tuple]], title: str, floor: float | None = None
) -> Image.Image:
    """Horizontal bars, one row per token and one bar per series in it, each value written at its bar's end: a
    list of tokens reads better down a page than along it. All series share one scale: linear from 0, or with a
    `floor`, logarithmic from it, so that 0.001 and 0.9 both show and only what is below the floor has no bar."""
    text, small = font(), font(15)
    left = label_width(labels, FONT)
    bar, gap = 16, 12
    row = bar * len(series) + gap
    top = 40 + 26 * len(series) + (24 if floor else 0)
    right = WIDTH - 80
    high = max((float(values.max()) for _, values, _ in series), default=0.0)

    if floor:
        decades = max(1, math.ceil(math.log10(max(high, floor * 10) / floor)))

        def length(value: float) -> int:
            return round((right - left) * max(0.0, math.log10(max(value, floor) / floor)) / decades)
    else:

        def length(value: float) -> int:
            return round((right - left) * value / (high or 1.0))

    image = Image.new("RGB", (WIDTH, top + row * len(labels) + 8), "white")
    draw = ImageDraw.Draw(image)
    draw.text((4, 4), title, fill=TEXT, font=text)
    for k, (name, _, colour) in enumerate(series):
        y = 38 + 26 * k
        draw.rectangle([(8, y + 3), (24, y + 19)], fill=colour)
        draw.text((32, y + 11), name, fill=TEXT, font=text, anchor="lm")
    bottom = top + row * len(labels)
    if floor:  # a grid line and a label per power of ten
        for decade in range(0, decades + 1, 1 if decades <= 6 else 2):
            x = left + length(floor * 10**decade)
            draw.line([(x, top - 4), (x, bottom)], fill=GRID, width=1)
            draw.text((x, top - 6), f"{floor * 10**decade:g}", fill=TEXT, font=small, anchor="mb")
    draw.line([(left, top - 4), (left, bottom)], fill=GRID, width=2)
    for i, label in enumerate(labels):
        y = top + i * row
        draw.text((left - 8, y + (row - gap) // 2), label, fill=TEXT, font=text, anchor="rm")
        for k, (_, values, colour) in enumerate(series):
            end = left + length(float(values[i]))
            y0 = y + k * bar
            if end > left:
                draw.rectangle([(left, y0 + 1), (end, y0 + bar - 2)], fill=colour)
            draw.text((end + 6, y0 + bar // 2), written(float(values[i])), fill=TEXT, font=small, anchor="lm")
    return image


def movement_chart(embeddings: TextEmbeddings) -> Image.Image:
    """How far each token's contextual vector turned away from its static one (1 − cosine)."""
    cosine, _ = embeddings.movement()
    series = [("1 - cosine(static, contextual)", 1 - cosine, LATER_COLOUR)]
    return bar_rows(embeddings.labels, series, "How far the text encoder moved each token")


# Jobs: they need the model's table and encoder ------------------------------------------------------------------


def checked_ids(tokenizer, tokens: tuple[str, ...]) -> list[int]:
    """The ids of `tokens` in the loaded tokenizer; a token it does not know is a `UserError` (an upload's)."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    if tokenizer.convert_ids_to_tokens(ids) != list(tokens):
        raise UserError("This run's tokens are not in the loaded model's vocabulary.")
    return ids


def check_model(manager: ModelManager, model: str) -> None:
    if manager.model.name != model:
        raise UserError(f"This run was made by {model}, and {manager.model.name} is loaded: load {model} for this.")


@dataclass(frozen=True)
class NeighboursRequest:
    """The tokens whose nearest vocabulary tokens to find (picklable: it crosses the executor boundary)."""

    model: str  # the model that made the run: another model's table would answer for other vectors
    tokens: tuple[str, ...]
    count: int = NEIGHBOURS
    words_only: bool = True  # among whole words only (see `whole_words`), or among every token


@dataclass(frozen=True)
class Neighbours:
    token: str
    nearest: list[tuple[str, float]]  # (token, cosine similarity), most similar first; the token itself left out


def nearest_tokens(
    manager: ModelManager, request: NeighboursRequest, limits: Limits = Limits(), control: JobControl = JobControl()
) -> list[Neighbours]:
    """For each distinct token, the `count` tokens whose static embeddings have the highest cosine similarity with
    its own, over the model's whole input table (49,408 rows in CLIP: one matrix product)."""
    if not 1 <= request.count <= 50 or len(request.tokens) > SHOWN_TOKENS:
        raise UserError(f"Ask for 1 to 50 neighbours of at most {SHOWN_TOKENS} tokens.")
    with manager.job(control):
        check_model(manager, request.model)
        pipe = manager.model.pipe
        tokens = list(dict.fromkeys(request.tokens))
        ids = checked_ids(pipe.tokenizer, tuple(tokens))
        table = pipe.text_encoder.get_input_embeddings().weight.detach()
        with torch.no_grad():
            similarity = cosine_to_table(table, ids)
            similarity[torch.arange(len(ids)), ids] = -2  # below any cosine: a token is not its own neighbour
            if request.words_only:
                similarity[:, ~whole_words(pipe.tokenizer).to(similarity.device)] = -2
            values, nearest = similarity.topk(min(request.count, len(table) - 1), dim=1)
        names = [pipe.tokenizer.convert_ids_to_tokens(row) for row in nearest.tolist()]
        # Fewer candidates than asked for (a small vocabulary's whole words): the ones left out scored -2.
        return [
            Neighbours(token, [(name, float(score)) for name, score in zip(row, scores, strict=True) if score > -1.5])
            for token, row, scores in zip(tokens, names, values.cpu(), strict=True)
        ]


def cosine_to_table(table: torch.Tensor, ids: list[int]) -> torch.Tensor:
    """[len(ids), vocabulary]: each token's cosine similarity with every row of the table, in float32."""
    table = table.float()
    rows = table[torch.tensor(ids, device=table.device)]
    norms = table.norm(dim=1).clamp_min(1e-12)
    return (rows @ table.T) / (rows.norm(dim=1, keepdim=True).clamp_min(1e-12) * norms)


def neighbours_table(found: list[Neighbours], first: str, last: str) -> str:
    """Markdown: each token and its nearest vocabulary tokens with their cosine similarities."""
    rows = ["| token | nearest vocabulary tokens (cosine similarity) |", "|---|---|"]
    for item in found:
        nearest = ", ".join(f"{code(name)} {score:.2f}" for name, score in item.nearest)
        rows.append(f"| {code(token_label(item.token, first, last))} | {nearest} |")  # <start> is no HTML tag
    return "\n".join(rows)


@dataclass(frozen=True)
class CausalRequest:
    """Edit one word of a prompt at a time and see which tokens' contextual vectors change."""

    model: str
    tokens: tuple[str, ...]  # one chunk, start to end token
    replacement: str = ""  # a word of one token; "" (or the edited word itself): its nearest vocabulary token


@dataclass(frozen=True)
class Edit:
    position: int
    old: str
    new: str
    role: str  # "later word" or "early word"


@dataclass(frozen=True)
class CausalTest:
    """Per edit, per token position (start to end token): how much its contextual vector changed."""

    tokens: list[str]
    edits: list[Edit]
    cosine_change: np.ndarray  # [edits, T]: 1 − cosine(original, edited)
    distance: np.ndarray  # [edits, T]: the distance between the two vectors

    def largest_before(self, edit: int) -> float:
        """The largest change (1 − cosine) of any token before the edited one: 0 for a causal encoder."""
        return float(self.cosine_change[edit, : self.edits[edit].position].max(initial=0.0))

    @property
    def causal(self) -> bool:
        """Whether no edit changed any token before it."""
        return all(self.largest_before(k) <= CAUSAL_TOLERANCE for k in range(len(self.edits)))


def causal_test(
    manager: ModelManager, request: CausalRequest, limits: Limits = Limits(), control: JobControl = JobControl()
) -> CausalTest:
    """Encode the prompt, then the prompt with its last word changed, then with its first word changed, each on its
    own, padded as the pipeline pads it; compare every token's contextual vector with the original's."""
    if len(request.replacement) > MAX_REPLACEMENT_CHARS:
        raise UserError(f"The replacement word is {len(request.replacement):,} characters: give one word.")
    with manager.job(control):
        check_model(manager, request.model)
        pipe = manager.model.pipe
        tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
        if not 3 <= len(request.tokens) <= tokenizer.model_max_length:
            raise UserError("The causal test needs a prompt of at least one word (and one chunk of it).")
        ids = checked_ids(tokenizer, request.tokens)
        words = range(1, len(ids) - 1)  # between the start and the end token
        chosen = [(words[-1], "later word"), (words[0], "early word")] if len(words) > 1 else [(words[0], "word")]
        table = encoder.get_input_embeddings().weight.detach()
        typed = replacement_id(tokenizer, request.replacement.strip()) if request.replacement.strip() else None
        edits, sequences = [], [ids]
        for position, role in chosen:
            new = (
                typed if typed is not None and typed != ids[position] else nearest_word(table, tokenizer, ids[position])
            )
            sequences.append([*ids[:position], new, *ids[position + 1 :]])
            names = tokenizer.convert_ids_to_tokens([ids[position], new])
            edits.append(Edit(position, names[0], names[1], role))
        original, *edited = (encode_alone(encoder, tokenizer, sequence) for sequence in sequences)
        distance = np.stack([np.linalg.norm(vectors - original, axis=1) for vectors in edited])
        # 1 − cosine of two equal vectors is a rounding error (±2e-16), not a change: equal vectors read 0.
        change = np.where(distance > 0, np.stack([1 - cosine_pairs(original, vectors) for vectors in edited]), 0.0)
        return CausalTest(list(request.tokens), edits, change, distance)


def replacement_id(tokenizer, text: str) -> int:
    """The one token `text` is, or a `UserError` saying what it is instead."""
    ids = tokenizer(text, add_special_tokens=False).input_ids
    if len(ids) != 1:
        pieces = " · ".join(tokenizer.convert_ids_to_tokens(ids)) or "nothing"
        raise UserError(
            f"“{text}” is {len(ids)} tokens for this model ({pieces}): the test swaps one token for one, so give a "
            "word that is a single token, or leave the box empty to use each word's nearest token."
        )
    return ids[0]


def whole_words(tokenizer) -> torch.Tensor:
    """[vocabulary] bool: the tokens that are a whole word of two or more Latin letters ('cat</w>'), not a piece
    of one ('cat'), a letter, a byte or a mark. Byte-level vocabularies hold hundreds of rare pieces and bytes whose
    rows a small model never trained (the bundled model's nearest tokens were mostly bytes)."""
    names = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
    words = [name[: -len(END_OF_WORD)] if name.endswith(END_OF_WORD) else "" for name in names]
    return torch.tensor([len(word) >= 2 and word.isascii() and word.isalpha() for word in words])


def nearest_word(table: torch.Tensor, tokenizer, token: int) -> int:
    """The whole word whose static embedding is closest (cosine) to `token`'s, other than itself: a small,
    meaningful edit."""
    similarity = cosine_to_table(table, [token])[0]
    similarity[~whole_words(tokenizer).to(similarity.device)] = -2
    similarity[token] = -2
    return int(similarity.argmax())


def encode_alone(encoder, tokenizer, ids: list[int]) -> np.ndarray:
    """[len(ids), D]: the encoder's last hidden state for `ids` padded to its positions as the pipeline pads
    them, one sequence per call, so that a difference can only come from the tokens."""
    padded = ids + [tokenizer.pad_token_id] * (tokenizer.model_max_length - len(ids))
    with torch.no_grad():
        states = encoder(torch.tensor([padded], device=encoder.device))[0][0]
    return states[: len(ids)].float().cpu().numpy().astype(np.float64)


def causal_chart(test: CausalTest) -> Image.Image:
    """Per token, how much each edit changed its contextual vector: nothing before the edited token."""
    first, last = test.tokens[0], test.tokens[-1]
    labels = [f"{i} {token_label(name, first, last)}" for i, name in enumerate(test.tokens)]
    colours = [LATER_COLOUR, EARLY_COLOUR]
    series = [
        (
            f"{edit.role}: {token_label(edit.old, first, last)} -> {token_label(edit.new, first, last)} "
            f"at token {edit.position}",
            test.cosine_change[k],
            colours[k % 2],
        )
        for k, edit in enumerate(test.edits)
    ]
    title = "Change of each token's contextual vector (1 - cosine, log scale)"
    return bar_rows(labels, series, title, floor=CAUSAL_TOLERANCE)


def counted(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def causal_summary(test: CausalTest) -> str:
    """Markdown: what each edit changed, before and after the edited token, and what that says."""
    lines = []
    first, last = test.tokens[0], test.tokens[-1]
    for k, edit in enumerate(test.edits):
        before = test.largest_before(k)
        after = test.cosine_change[k, edit.position + 1 :]
        changed = int((after > CAUSAL_TOLERANCE).sum())
        lines.append(
            f"- **{edit.role}** `{token_label(edit.old, first, last)}` → `{token_label(edit.new, first, last)}` "
            f"(token {edit.position}): {counted(edit.position, 'token')} before it changed by at most "
            f"**{written(before)}**; {changed} of {counted(len(after), 'token')} after it changed."
        )
    lines.append("")  # a paragraph of its own, after the list
    lines.append(
        "The encoder is **causal**: each token sees only the tokens before it, so an edit changes nothing before it."
        if test.causal
        else "Tokens before an edit changed too: this text encoder is **not causal** (it reads both ways)."
    )
    return "\n".join(lines)
