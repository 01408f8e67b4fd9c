"""The UI edge (sdplay/ui/common.py): every message that leaves it is one a user may see, with no server path."""

import gradio as gr
import pytest

from sdplay.errors import UserError
from sdplay.ui.common import user_errors

PATHS = [
    "/tmp/gradio/2c1f0e9a/junk.png",
    "/root/.cache/huggingface/hub/models--org--name/unet/model.safetensors",
    "~/models/secret/model.safetensors",
    "C:\\Users\\ann\\models\\model.safetensors",
    "C:/Users/ann/models/model.safetensors",
    "\\\\fileserver\\share\\models\\model.safetensors",
]
SERVER_WORDS = ["/tmp", "/root", "gradio", "2c1f0e9a", ".cache", "huggingface", "Users", "fileserver", "~"]


def shown(error: Exception) -> str:
    """The message a user sees when `error` is raised inside `user_errors()`."""
    with pytest.raises(gr.Error) as caught, user_errors():
        raise error
    return caught.value.message


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", [UserError, gr.Error, OSError])
def test_no_message_names_a_server_path(kind, path):
    message = shown(kind(f"cannot identify image file '{path}' (see {path}, then retry)"))
    assert all(word not in message for word in SERVER_WORDS), message
    assert "cannot identify image file" in message and path.replace("\\", "/").rsplit("/")[-1] in message


def test_urls_fractions_and_slashes_in_words_are_kept():
    text = "See https://huggingface.co/stabilityai/sd-turbo: 1/2 steps, CFG / steps, and/or a C: drive."
    assert shown(UserError(text)) == text
