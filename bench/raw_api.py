"""Raw calls to the app's Gradio API, for the benchmarks: one POST and one streamed GET per job.

They send any JSON (gradio_client checks what it sends), and they cost the client almost no CPU: gradio_client
polls each job's state every 50 ms from threads of its own, and 20 clients waiting at once took a sixth of a 2-core
machine's CPU from the server that a benchmark measures on it.
"""

import json
from dataclasses import dataclass

import requests

JOB_TIMEOUT = 900.0  # seconds for one job, queue included


@dataclass(frozen=True)
class Answer:
    outcome: str  # "refused" (an error with a message), "accepted", or "failed" (a server error, an empty error)
    message: str
    data: list | None = None  # the outputs, when accepted


def call(url: str, api_name: str, data: list, session_hash: str | None = None) -> Answer:
    """A `/gradio_api/call/<api_name>` request of the app at `url` (ending in /) and its last event."""
    body = json.dumps({"data": data} | ({"session_hash": session_hash} if session_hash else {}))
    joined = requests.post(
        f"{url}gradio_api/call/{api_name}", data=body, headers={"content-type": "application/json"}, timeout=60
    )
    if joined.status_code != 200:
        return Answer("failed" if joined.status_code >= 500 else "refused", f"HTTP {joined.status_code}: {joined.text}")
    stream = requests.get(f"{url}gradio_api/call/{api_name}/{joined.json()['event_id']}", timeout=JOB_TIMEOUT).text
    event, _, data_line = stream.strip().split("\n\n")[-1].partition("\n")
    payload = json.loads(data_line.removeprefix("data: "))
    if event == "event: complete":
        return Answer("accepted", "a result", payload)
    message = payload.get("error") if isinstance(payload, dict) else None
    return Answer("refused", message) if message else Answer("failed", f"{event}: {payload}")


def parameters(url: str) -> dict[str, list[dict]]:
    """Each named endpoint's parameters (name, default, ...), as the app's API page lists them."""
    info = requests.get(f"{url}gradio_api/info", timeout=60).json()["named_endpoints"]
    return {name: endpoint["parameters"] for name, endpoint in info.items()}


def positional(parameters: list[dict], **values) -> list:
    """An endpoint's inputs in order, as a raw request sends them: `values` over the defaults."""
    return [values.get(p["parameter_name"], p.get("parameter_default")) for p in parameters]


def download(file: dict) -> bytes:
    """The bytes of a file an answer names (its FileData)."""
    response = requests.get(file["url"], timeout=60)
    response.raise_for_status()
    return response.content
