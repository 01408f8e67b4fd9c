"""Gradio's own cost for sdplay's API results: endpoints shaped like `/txt2img` and `/explain` that return a finished
result at once. bench/overhead.py serves this next to the app and times both through gradio_client.

The inputs, outputs and queue are the app's (same components, a streaming handler, PNG output); the result is a
file the app made: its image (with the infotext) and its Explain export. What is left is Gradio and gradio_client
carrying that result: the queue, the messages, writing the PNG into Gradio's cache, and the downloads.
"""

import argparse
from pathlib import Path

import gradio as gr
from PIL import Image


def build(image: Image.Image, infotext: str, export: Path) -> gr.Blocks:
    with gr.Blocks() as demo:
        prompt, negative = gr.Textbox(label="Prompt"), gr.Textbox(label="Negative prompt")
        sampler = gr.Dropdown(["DPM++ 2M", "LCM", "Euler"], value="DPM++ 2M", label="Sampler")
        steps, guidance = gr.Slider(1, 150, value=20, step=1), gr.Slider(0, 30, value=4.0, step=0.5)
        seed, width, height = gr.Number(-1, precision=0), gr.Slider(0, 1024, value=64), gr.Slider(0, 1024, value=64)
        batch, schedule = gr.Slider(1, 8, value=1, step=1), gr.Dropdown(["Uniform", "Automatic"], value="Uniform")
        gallery, text, seed_used = gr.Gallery(format="png"), gr.Textbox(), gr.Number()
        final, download = gr.Image(format="png"), gr.File()

        # The app's parameter names: gradio_client calls the endpoints by them.
        def txt2img(prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height, batch_size, schedule):
            yield [(image, "Seed 1234")], infotext, 1234

        def explain(prompt, negative_prompt, sampler, steps, guidance_scale, seed, width, height, schedule):
            yield image, str(export)

        common = [prompt, negative, sampler, steps, guidance, seed]
        gr.Button().click(txt2img, [*common, width, height, batch, schedule], [gallery, text, seed_used],
                          api_name="txt2img")  # fmt: skip
        gr.Button().click(explain, [*common, width, height, schedule], [final, download], api_name="explain")
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--image", type=Path, required=True, help="a PNG from the app's /txt2img")
    parser.add_argument("--export", type=Path, required=True, help="an export from the app's /explain")
    args = parser.parse_args()
    image = Image.open(args.image)
    image.load()
    demo = build(image, image.info.get("parameters", ""), args.export)
    demo.queue(api_open=False, max_size=32)
    demo.launch(server_port=args.port, allowed_paths=[str(args.export.parent)], show_error=False)


if __name__ == "__main__":
    main()
