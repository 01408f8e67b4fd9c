"""The Inside tab's text-embeddings section: the Explain run's tokens as vectors, before and after the text encoder.

Layout and wiring only: sdplay/inside/text.py computes and draws; the two questions to the model are jobs.
"""

import gradio as gr

from sdplay.explain.render import ExplainView
from sdplay.explain.ui import ExplainControls
from sdplay.inside.text import (
    CAPTIONS,
    INTRO,
    CausalRequest,
    NeighboursRequest,
    TextEmbeddings,
    availability,
    causal_chart,
    causal_summary,
    causal_test,
    cosine_matrix,
    first_chunk,
    movement_chart,
    nearest_tokens,
    neighbours_table,
    similarity_image,
    vector_strips,
)
from sdplay.runtime.models import ModelManager
from sdplay.runtime.request import Limits
from sdplay.ui.common import GPU, job_result

QUIET = {"show_progress": "hidden", "api_visibility": "private"}
DRAWN_FROM_RUN = 8  # the panels text_views draws from the run: intro, status, table, 2 strips, 2 similarities, movement


def image(label: str, name: str) -> gr.Image:
    """A drawn panel: its title is in the picture, where Gradio's label would cover it."""
    return gr.Image(
        label=label,
        show_label=False,
        format="png",
        interactive=False,
        buttons=["download"],
        elem_classes=f"sdplay-{name}",
    )


def caption(key: str) -> gr.Markdown:
    return gr.Markdown(CAPTIONS[key], elem_classes="caption")


def build(manager: ModelManager, limits: Limits, explained: ExplainControls) -> None:
    gr.Markdown("## Text embeddings")
    gr.Markdown(INTRO.short)
    with gr.Accordion("More", open=False):
        intro = gr.Markdown()
    shown_now = gr.Markdown(availability(None, manager.model.name), elem_classes="sdplay-text-status")
    table = gr.Markdown(elem_classes="sdplay-token-table")
    static = image("Static embeddings", "static-strip")
    caption("static")
    contextual = image("Contextual embeddings", "contextual-strip")
    caption("contextual")
    with gr.Row():
        static_similarity = image("Similarity, static", "static-similarity")
        contextual_similarity = image("Similarity, contextual", "contextual-similarity")
    caption("similarity")
    movement = image("Movement", "movement")
    caption("movement")

    gr.Markdown("### Ask the model")
    with gr.Row():
        words_only = gr.Checkbox(True, label="Whole words only", info="Leave out pieces of words, letters and bytes.")
        find = gr.Button("Find each token's nearest vocabulary tokens", elem_classes="sdplay-find-neighbours")
    neighbours = gr.Markdown(elem_classes="sdplay-neighbours")
    caption("neighbours")
    with gr.Row():
        replacement = gr.Textbox(
            label="Replace with", placeholder="one word; empty: each word's nearest word", max_length=100, scale=2
        )
        test = gr.Button("Edit a later word, then an early one", elem_classes="sdplay-causal-test", scale=1)
    causal = image("Which tokens changed", "causal-chart")
    causal_note = gr.Markdown(elem_classes="sdplay-causal-note")
    caption("causal")

    drawn = [intro, shown_now, table, static, contextual, static_similarity, contextual_similarity, movement]

    def show(shown: ExplainView | None) -> list:
        return text_views(shown, manager.model.name)

    explained.view.change(show, explained.view, [*drawn, neighbours, causal, causal_note], **QUIET)

    def find_neighbours(shown: ExplainView | None, whole_words: bool, request: gr.Request) -> str:
        return neighbours_of(manager, limits, shown, whole_words, request)

    find.click(find_neighbours, [explained.view, words_only], neighbours, api_visibility="private", **GPU)

    def edit_words(shown: ExplainView | None, word: str, request: gr.Request) -> tuple:
        return causal_views(manager, limits, shown, word, request)

    test.click(edit_words, [explained.view, replacement], [causal, causal_note], api_visibility="private", **GPU)


def text_views(shown: ExplainView | None, loaded: str) -> list:
    """Everything drawn from the run alone (no model needed; `loaded` names the loaded one, for the status line),
    and nothing of what the model answered: that was for the last run."""
    cleared = [None, None, ""]  # neighbours, causal chart, causal note
    if shown is None:
        return [gr.skip()] * DRAWN_FROM_RUN + cleared
    run = shown.run
    status = availability(run, loaded)
    intro_text = INTRO.filled(shown.facts).more
    embeddings = TextEmbeddings.of_run(run)
    if embeddings is None:
        return [intro_text, status, "", None, None, None, None, None, *cleared]
    labels = embeddings.labels
    return [
        intro_text,
        status,
        embeddings.table(),
        vector_strips(embeddings.static, labels, "Static"),
        vector_strips(embeddings.contextual, labels, "Contextual"),
        similarity_image(cosine_matrix(embeddings.static), labels, "Static"),
        similarity_image(cosine_matrix(embeddings.contextual), labels, "Contextual"),
        movement_chart(embeddings),
        *cleared,
    ]


def neighbours_of(
    manager: ModelManager, limits: Limits, shown: ExplainView | None, whole_words: bool, request: gr.Request | None
) -> str:
    """The table of each token's nearest vocabulary tokens, asked of the run's model (a job)."""
    run = recorded(shown)
    tokens = tuple(first_chunk(run.tokens))
    job = NeighboursRequest(run.recipe.model, tokens, words_only=whole_words)
    return neighbours_table(job_result(manager, nearest_tokens, job, limits, request), tokens[0], tokens[-1])


def causal_views(
    manager: ModelManager, limits: Limits, shown: ExplainView | None, word: str, request: gr.Request | None
) -> tuple:
    """The causal test (edit a later word, then an early one; a job): its chart and its summary."""
    run = recorded(shown)
    job = CausalRequest(run.recipe.model, tuple(first_chunk(run.tokens)), word or "")
    result = job_result(manager, causal_test, job, limits, request)
    return causal_chart(result), causal_summary(result)


def recorded(shown: ExplainView | None):
    """The run on the Explain tab, or a clear error without one."""
    if shown is None:
        raise gr.Error("Record a run on the Explain tab first, or replay a saved one.")
    return shown.run
