"""The OpenAI-compatible API through the whole pipeline (ingress -> Kafka -> worker -> the
MLX backend on the tiny model -> the live stream), driven by the official ``openai`` client."""

from __future__ import annotations

import json
import os
import subprocess
import time
from typing import TYPE_CHECKING

import httpx
import openai
import psycopg
import pytest

from tests.e2e.fixtures import CLI, REPO_ROOT, Services

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.e2e

MODEL = "tiny-chat"


@pytest.fixture(scope="module")
def client(services: Services, tiny_model_dir: Path) -> openai.OpenAI:
    """An OpenAI client of the ingress, the tiny model registered through the CLI first."""
    result = subprocess.run(
        [*CLI, "models", "register", MODEL, "--backend", "mlx", "--source",
         str(tiny_model_dir), "--context-length", "4096", "--alias", "tiny-alias"],
        capture_output=True, text=True, env=services.env, cwd=REPO_ROOT, timeout=120,
        check=False,
    )  # fmt: skip
    assert result.returncode == 0 or "already registered" in result.stdout, (
        result.stdout + result.stderr
    )
    api = openai.OpenAI(base_url=f"{services.base_url}/v1", api_key=services.api_key)
    deadline = time.monotonic() + 30
    while MODEL not in {m.id for m in api.models.list()}:
        assert time.monotonic() < deadline, "the registered model never showed in /v1/models"
        time.sleep(0.2)
    return api


def completion_text(services: Services, command_id: str, timeout_s: float = 30) -> str:
    """The text recorded in the event store, as its read model shows it."""
    deadline = time.monotonic() + timeout_s
    with psycopg.connect(services.env["UAIT_DATABASE_URL"], autocommit=True) as conn:
        while time.monotonic() < deadline:
            row = conn.execute(
                "SELECT text FROM inference_completions WHERE command_id = %s"
                " AND status = 'completed'",
                (command_id,),
            ).fetchone()
            if row is not None:
                return str(row[0])
            time.sleep(0.1)
    raise AssertionError(f"no completed row for {command_id}")


def test_models_are_listed_with_their_aliases(client: openai.OpenAI) -> None:
    ids = {m.id for m in client.models.list()}
    assert {MODEL, "tiny-alias"} <= ids


def test_a_chat_completion(client: openai.OpenAI, services: Services) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=12,
        temperature=0,
    )
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens > 0
    text = reply.choices[0].message.content
    assert text
    command_id = raw.headers["x-uait-command-id"]
    assert completion_text(services, command_id) == text
    status = httpx.get(
        f"{services.base_url}/v1/commands/{command_id}", headers=services.headers, timeout=10
    ).json()
    assert status["status"] == "succeeded"


def test_a_streamed_chat_completion_is_the_recorded_text_in_order(
    client: openai.OpenAI, services: Services
) -> None:
    with client.chat.completions.with_streaming_response.create(
        model="tiny-alias",
        messages=[{"role": "user", "content": "Stream something."}],
        max_tokens=40,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    ) as raw:
        command_id = raw.headers["x-uait-command-id"]
        chunks = list(raw.parse())
    pieces = [c.choices[0].delta.content or "" for c in chunks if c.choices]
    finishes = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finishes == ["length"]
    usage = [c.usage for c in chunks if c.usage]
    assert usage
    assert usage[-1].completion_tokens == 40
    assert len([p for p in pieces if p]) > 1, "streamed in one piece: not a stream"
    assert "".join(pieces) == completion_text(services, command_id)


def test_a_json_schema_answer_validates_even_from_the_random_model(
    client: openai.OpenAI,
) -> None:
    schema = {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 20},
            "count": {"type": "integer", "minimum": 0, "maximum": 99},
        },
        "required": ["title", "count"],
        "additionalProperties": False,
    }
    for seed in range(3):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Give me a title and a count."}],
            max_tokens=200,
            temperature=1.0,
            seed=seed,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "item", "schema": schema, "strict": True},
            },
        )
        data = json.loads(reply.choices[0].message.content or "")
        assert set(data) == {"title", "count"}
        assert isinstance(data["title"], str)
        assert len(data["title"]) <= 20
        assert isinstance(data["count"], int)
        assert 0 <= data["count"] <= 99


def test_a_text_completion(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=8)
    assert reply.object == "text_completion"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert reply.usage.completion_tokens == 8


def test_errors_are_in_openai_shape(client: openai.OpenAI, services: Services) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(
            model="no-such-model", messages=[{"role": "user", "content": "hi"}]
        )
    assert missing.value.code == "model_not_found"
    bad = openai.OpenAI(base_url=f"{services.base_url}/v1", api_key="uait_not_a_key")
    with pytest.raises(openai.AuthenticationError) as refused:
        bad.models.list()
    assert refused.value.body is not None
    assert "message" in refused.value.body  # type: ignore[operator]
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=0
        )


def test_the_command_stream_resumes_after_last_event_id(
    client: openai.OpenAI, services: Services
) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Say something."}],
        max_tokens=30,
        temperature=0,
    )
    command_id = raw.headers["x-uait-command-id"]
    url = f"{services.base_url}/v1/commands/{command_id}/stream"

    def read(headers: dict[str, str]) -> list[tuple[str, str, str]]:
        events: list[tuple[str, str, str]] = []
        with httpx.stream("GET", url, headers={**services.headers, **headers}, timeout=30) as r:
            assert r.status_code == 200, r.read()
            fields: dict[str, str] = {}
            for line in r.iter_lines():
                if not line:
                    if fields:
                        events.append((fields.get("id", ""), fields["event"], fields["data"]))
                    fields = {}
                elif not line.startswith(":"):
                    key, _, value = line.partition(": ")
                    fields[key] = value
        return events

    everything = read({})
    assert everything[-1][1] == "final"
    tokens = [e for e in everything if e[1] == "token"]
    assert len(tokens) >= 2
    resumed = read({"Last-Event-ID": tokens[0][0]})
    assert resumed == everything[everything.index(tokens[0]) + 1 :]
    text = "".join(json.loads(e[2])["text"] for e in tokens)
    assert text == raw.parse().choices[0].message.content


def test_dspy_pointed_at_the_ingress(client: openai.OpenAI, services: Services) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch at import
    import dspy

    lm = dspy.LM(
        f"openai/{MODEL}",
        api_base=f"{services.base_url}/v1",
        api_key=services.api_key,
        max_tokens=16,
        temperature=0.0,
        cache=False,
    )
    outputs = lm("Say something.")
    assert len(outputs) == 1
    assert isinstance(outputs[0], str)
    assert outputs[0]


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    texts = ["the event store keeps every fact", "a projection reads them in order"]
    plain = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in plain.data] == [0, 1]
    first = plain.data[0].embedding
    assert len(first) == 128  # the tiny model's hidden size
    assert abs(sum(x * x for x in first) - 1.0) < 1e-3  # L2-normalised
    assert plain.usage.prompt_tokens > 0
    # The client's default asks for base64 and decodes it: the same vectors.
    decoded = client.embeddings.create(model=MODEL, input=texts)
    for a, b in zip(plain.data, decoded.data, strict=True):
        assert max(abs(x - y) for x, y in zip(a.embedding, b.embedding, strict=True)) < 1e-6
    assert plain.data[0].embedding != plain.data[1].embedding
