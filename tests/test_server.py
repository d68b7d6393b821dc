"""Chapter 15's server, spoken to over HTTP on 127.0.0.1 by the official ``openai`` client and by ``httpx``.

The model is the tiny preset with random weights and a byte-level tokenizer, saved as a checkpoint with a
chat template, so that the server starts in a second and answers in milliseconds. The server runs in a
thread of the test process (uvicorn on a free port); the load and SIGTERM tests start ``serve`` as a subprocess.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the server needs the serve extra: pip install -e '.[serve]'")
openai = pytest.importorskip("openai", reason="the client tests need the openai package (test extra)")
import httpx  # noqa: E402 (the openai client's own HTTP library)
import torch  # noqa: E402
import uvicorn  # noqa: E402
from helpers import SMOLLM2, needs_smollm2  # noqa: E402
from test_evaluation import byte_tokenizer, tiny_model  # noqa: E402

from llama_from_scratch import save_checkpoint  # noqa: E402
from llama_from_scratch.chat import render_chat  # noqa: E402
from llama_from_scratch.checkpoints.load import load_pretrained  # noqa: E402
from llama_from_scratch.generate import GenerationConfig, generate  # noqa: E402
from llama_from_scratch.serving.server import ServerSettings, create_app  # noqa: E402
from llama_from_scratch.tokenization.chat import (  # noqa: E402
    chat_stop_tokens,
    decode_stream,
    encode_chat,
    special_texts,
)

pytestmark = pytest.mark.slow  # a web server in a thread (and one in a subprocess)

TEMPLATE = "{% for m in messages %}{{ m['role'][0] }}:{{ m['content'] }}\n{% endfor %}a:"
MODEL = "tiny"
KEY = "sesame"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "tiny"
    return save_checkpoint(tiny_model(torch.float32), byte_tokenizer(), path, chat_template=TEMPLATE)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(checkpoint, **limits):
    """A server for ``checkpoint`` (a path, or a checkpoint loaded already) in a thread, on a free port of
    127.0.0.1; yields (base URL, app)."""
    engine = {k: limits.pop(k) for k in ("max_num_seqs", "num_blocks") if k in limits}
    pretrained = load_pretrained(checkpoint) if isinstance(checkpoint, (str, os.PathLike)) else checkpoint
    app = create_app(pretrained, ServerSettings(model_name=MODEL, **limits), **engine)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="module")
def server(checkpoint):
    with serving(checkpoint, max_num_seqs=2, max_queue=1, max_tokens_cap=100) as running:
        yield running


@pytest.fixture(scope="module")
def reference(checkpoint):
    """What the course's ``generate`` answers, greedily: the served text must be the same."""
    pretrained = load_pretrained(checkpoint)
    tokenizer = pretrained.tokenizer

    def answer(prompt: list[int], max_tokens: int, stop: list[int]) -> str:
        tokens = generate(pretrained.model, prompt, GenerationConfig(max_tokens, stop_tokens=stop))
        return "".join(decode_stream(tokenizer, tokens, prompt))

    def chat(messages, max_tokens):
        prompt = encode_chat(tokenizer, render_chat(TEMPLATE, messages))
        return answer(prompt, max_tokens, chat_stop_tokens(tokenizer))

    def complete(text, max_tokens):
        return answer(tokenizer.encode(text, bos=True), max_tokens, [tokenizer.eos_id])

    return chat, complete


def client(url, key="none"):
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=30)


MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a llama?"}]


def test_chat_completion_with_the_openai_client(server, reference):
    url, _ = server
    reply = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    assert reply.choices[0].message.content == reference[0](MESSAGES, 12)
    assert reply.choices[0].finish_reason in ("stop", "length") and reply.usage.completion_tokens <= 12
    assert reply.object == "chat.completion" and reply.model == MODEL


def test_streaming_gives_the_same_text_and_ends_with_done(server, reference):
    url, _ = server
    stream = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
                                                 stream=True)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reference[0](MESSAGES, 12)
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    body = {"model": MODEL, "prompt": "ROMEO:", "max_tokens": 5, "temperature": 0, "stream": True}
    with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=30) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert raw.headers["content-type"].startswith("text/event-stream")
    assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"


def test_completions_and_models(server, reference):
    url, _ = server
    reply = client(url).completions.create(model=MODEL, prompt="ROMEO:", max_tokens=10, temperature=0)
    assert reply.choices[0].text == reference[1]("ROMEO:", 10)
    assert reply.usage.prompt_tokens == len("ROMEO:") + 1  # one byte each, and BOS
    assert [m.id for m in client(url).models.list()] == [MODEL]
    assert httpx.get(f"{url}/health").json() == {"status": "ok"}


def test_an_api_key_is_required_when_set(checkpoint):
    with serving(checkpoint, api_key=KEY) as (url, _):
        reply = client(url, KEY).completions.create(model=MODEL, prompt="a", max_tokens=2)
        assert reply.choices[0].finish_reason in ("stop", "length")
        with pytest.raises(openai.AuthenticationError) as refused:
            client(url, "wrong").completions.create(model=MODEL, prompt="a", max_tokens=2)
        assert refused.value.status_code == 401 and refused.value.body["code"] == "invalid_api_key"
        assert httpx.get(f"{url}/v1/models").status_code == 401  # no header at all
        assert httpx.get(f"{url}/health").status_code == 200  # a load balancer's probe needs no key


@needs_smollm2
def test_smollm2_served_greedily_says_what_generate_says():
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    pretrained = load_pretrained(SMOLLM2, device="cpu", dtype=torch.float32)
    tokenizer, template = pretrained.tokenizer, pretrained.chat_template
    prompt = encode_chat(tokenizer, render_chat(template, messages, **special_texts(tokenizer)))
    tokens = generate(pretrained.model, prompt, GenerationConfig(24, stop_tokens=chat_stop_tokens(tokenizer)))
    expected = "".join(decode_stream(tokenizer, tokens, prompt))
    with serving(pretrained, max_num_seqs=2, num_blocks=64) as (url, _):  # the engine takes over the model
        reply = client(url).chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    assert reply.choices[0].message.content == expected and "Paris" in expected


def error_of(response, status: int) -> dict:
    """The OpenAI error body of ``response``, which must have ``status``."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    return error


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
        ({"model": MODEL}, 422, "messages"),
        ({"model": MODEL, "messages": "hello"}, 422, "messages"),
        ({"model": MODEL, "messages": MESSAGES, "temperature": "hot"}, 422, "temperature"),
        ({"model": MODEL, "messages": MESSAGES, "temperature": -1}, 400, "temperature must be a finite number >= 0"),
        ({"model": MODEL, "messages": MESSAGES, "top_p": 2}, 400, "top_p must be None or a number in (0, 1]"),
        ({"model": MODEL, "messages": MESSAGES, "max_tokens": 10**9}, 400, "max_tokens is 1000000000, more than"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 200}]}, 400, "context of 128 tokens"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 100}], "max_tokens": 50}, 400,
         "+ max_new_tokens (50) exceeds the model's context of max_seq_len=128"),
        ({"model": "gpt-4", "messages": MESSAGES}, 404, "the model 'gpt-4' does not exist"),
    ],
)
def test_a_bad_request_gets_its_status_and_an_error_body(server, body, status, words):
    url, _ = server
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = httpx.post(f"{url}/v1/chat/completions", content=content, headers={"content-type": "application/json"})
    assert words in error_of(response, status)["message"]


def test_a_20_megabyte_body_is_refused_and_the_server_serves_on(server):
    url, _ = server
    huge = json.dumps({"model": MODEL, "prompt": "x" * (20 << 20)})
    refused = httpx.post(f"{url}/v1/completions", content=huge)
    assert "larger than this server's limit" in error_of(refused, 413)["message"]
    chunks = (huge[i : i + (1 << 20)].encode() for i in range(0, len(huge), 1 << 20))  # no Content-Length: chunked
    assert error_of(httpx.post(f"{url}/v1/completions", content=chunks), 413)["code"] == "request_too_large"
    assert httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 2}).status_code == 200


def wait_until(condition, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def counter(url, name: str) -> float:
    """The value of metric ``name`` (without labels) at ``url``'s /metrics."""
    return float(next(x for x in httpx.get(f"{url}/metrics").text.splitlines() if x.startswith(name + " ")).split()[-1])


def generated_tokens(url) -> float:
    return counter(url, "llama_generation_tokens_total")


def test_a_full_queue_gets_429_and_clients_that_leave_are_cancelled(server):
    url, app = server
    engine = app.app.state.engine
    gate, step = threading.Event(), engine.step
    engine.step = lambda: gate.wait() and step()  # the engine waits until the test lets it go on
    before = generated_tokens(url)
    # greedy, these answers run to max_tokens (no end-of-text among their first 90 tokens): only a cancel stops them
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 90, "temperature": 0, "stream": True}
    try:
        # two to decode (max_num_seqs=2) and one to wait (max_queue=1) fill the server
        with httpx.Client(timeout=30) as a, httpx.Client(timeout=30) as b, httpx.Client(timeout=30) as c:
            streams = [x.stream("POST", f"{url}/v1/chat/completions", json=body) for x in (a, b, c)]
            lines = [s.__enter__().iter_lines() for s in streams]  # kept: a dropped iterator closes its connection
            for line in lines:
                assert next(line).startswith("data: ")  # the role chunk: the request is in
            refused = httpx.post(f"{url}/v1/chat/completions", json=body)
            assert error_of(refused, 429)["code"] == "queue_full"
            for s in streams:
                s.__exit__(None, None, None)  # the clients hang up mid-stream
    finally:
        gate.set()
    wait_until(lambda: not engine.has_unfinished_requests() and engine.cache.allocator.num_in_use == 0)
    engine.step = step
    assert generated_tokens(url) - before < 90  # cancelled: three finished answers would be 270 tokens
    reply = httpx.post(f"{url}/v1/completions", json={"model": MODEL, "prompt": "b", "max_tokens": 3})
    assert reply.status_code == 200 and reply.json()["usage"]["completion_tokens"] <= 3
    # Nothing of the four requests is left: the engine thread forgets a finished stream just after delivering
    # its last output (a busy machine can hold the thread between the two), so wait for that too.
    thread = app.app.state.engine_thread
    wait_until(lambda: not thread.streams)
    assert not engine.texts
    metrics = httpx.get(f"{url}/metrics").text
    for name in ("llama_requests_total", "llama_time_to_first_token_seconds_count", "llama_kv_blocks_in_use",
                 "llama_inter_token_latency_seconds_bucket", "llama_requests_waiting", "llama_kv_blocks_cached"):
        assert name in metrics
    assert 'llama_requests_total{status="429"} 1.0' in metrics


def test_a_client_that_stops_waiting_for_a_whole_answer_cancels_it(server):
    url, app = server
    engine = app.app.state.engine
    gate, step = threading.Event(), engine.step
    engine.step = lambda: gate.wait() and step()
    before = generated_tokens(url)
    try:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up: its connection closes
            body = {"model": MODEL, "prompt": "a", "max_tokens": 90, "temperature": 0}  # greedy: 90 tokens, no stop
            httpx.post(f"{url}/v1/completions", json=body, timeout=0.5)
        time.sleep(1.0)  # the server looks every half second whether a non-streaming client is still there
    finally:
        gate.set()
    wait_until(lambda: not engine.has_unfinished_requests() and engine.cache.allocator.num_in_use == 0)
    engine.step = step
    assert generated_tokens(url) - before < 90


def test_the_chat_page_streams_an_answer_and_its_stop_button_cancels(server, reference):
    """The page at / in headless Chromium: a question with a system prompt, the streamed answer (the greedy
    text), the tokens/s line; then a second question whose answer the Stop button cancels on the server."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("no Chromium to open the page with (Debian: apt-get install chromium; .ci/run installs it)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="drives the browser: pip install playwright")
    url, app = server
    engine = app.app.state.engine
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            errors = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(f"{url}/")
            page.wait_for_function("document.getElementById('model').textContent === 'tiny'")
            page.click("summary")  # open the settings
            page.fill("#system", MESSAGES[0]["content"])
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "12")
            page.fill("#message", MESSAGES[1]["content"])
            page.press("#message", "Enter")
            page.wait_for_function("document.getElementById('stats').textContent.includes('tokens/s')"
                                   " && !document.getElementById('send').disabled")
            assert page.text_content(".assistant") == reference[0](MESSAGES, 12)
            counted = client(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
            shown = re.search(r"(\d+) tokens, [0-9.]+ tokens/s", page.text_content("#stats"))
            assert shown and int(shown.group(1)) == counted.usage.completion_tokens  # the server's count, at the end

            gate, step = threading.Event(), engine.step
            engine.step = lambda: gate.wait() and step()  # the answer cannot end before Stop is pressed
            before = generated_tokens(url)
            try:
                page.fill("#max-tokens", "30")
                page.fill("#message", "And a camel?")
                page.press("#message", "Enter")
                page.wait_for_function("!document.getElementById('stop').disabled")
                page.click("#stop")
                page.wait_for_selector(".error:has-text('(stopped)')")
            finally:
                gate.set()
            wait_until(lambda: not engine.has_unfinished_requests() and engine.cache.allocator.num_in_use == 0)
            engine.step = step
            assert generated_tokens(url) - before < 30  # cancelled, not run to max_tokens
            assert not errors
        finally:
            browser.close()


def start_serve(checkpoint, log: Path, *options: str) -> tuple[subprocess.Popen, str]:
    """``serve`` for ``checkpoint`` as a subprocess on a free port of 127.0.0.1, once it answers; (process, URL).

    Its output goes to the file ``log``: a pipe nobody reads would fill with the access log and stop the server.
    """
    port = free_port()
    command = [sys.executable, "-m", "llama_from_scratch", "serve", "--checkpoint", str(checkpoint), "--port",
               str(port), "--model-name", MODEL, *options]
    with open(log, "w") as output:
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT,
                                   env={**os.environ, "TQDM_DISABLE": "1"})
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        assert process.poll() is None, log.read_text()
        try:
            return httpx.get(f"{url}/health").status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(up, 120)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return process, url


def resident_bytes(pid: int) -> int:
    """Process ``pid``'s resident memory, from the kernel's ``/proc/PID/status``."""
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmRSS:"))


LOAD_WARM_UP, LOAD_MEASURED = 100, 400


def test_a_bounded_load_completes_every_answer_and_keeps_its_memory(checkpoint, tmp_path):
    """500 requests to ``serve`` in a subprocess, 16 at a time (8 decoding, 8 queued: the server's capacity),
    streaming or not, chat or completion, of 1 to 30 tokens: no error, every answer complete (its end, and
    ``max_tokens`` tokens when cut by the length), nothing left running or holding KV blocks afterwards, and
    the server's resident memory stable over the last 400."""
    # 64 blocks (1,024 tokens) hold the 16 requests in flight (<= 60 tokens, 4 blocks each); the warm-up fills
    # them, so the prefix cache's index of named blocks has its final size before memory is measured.
    process, url = start_serve(checkpoint, tmp_path / "serve.log", "--max-num-seqs", "8", "--max-queue", "8",
                               "--kv-blocks", "64")
    local, clients = threading.local(), []

    def one(i: int) -> None:
        max_tokens, stream, chat = 1 + i % 30, i % 2 == 0, i % 3 == 0
        body = {"model": MODEL, "max_tokens": max_tokens, "temperature": 0, "stream": stream}
        # 16 different prompts: the tokenizer's cache of words is full after the warm-up too
        body |= {"messages": MESSAGES} if chat else {"prompt": f"request {i % 16}"}
        body |= {"stream_options": {"include_usage": True}} if stream else {}
        path = "/v1/chat/completions" if chat else "/v1/completions"
        if not hasattr(local, "http"):
            local.http = httpx.Client(timeout=60)  # one per worker thread, kept: its connection is reused
            clients.append(local.http)
        if stream:
            with local.http.stream("POST", url + path, json=body) as response:
                lines = [line for line in response.iter_lines() if line]
            assert response.status_code == 200 and lines[-1] == "data: [DONE]", lines
            finish = json.loads(lines[-3][6:])["choices"][0]["finish_reason"]
            tokens = json.loads(lines[-2][6:])["usage"]["completion_tokens"]
        else:
            response = local.http.post(url + path, json=body)
            assert response.status_code == 200, response.text
            finish = response.json()["choices"][0]["finish_reason"]
            tokens = response.json()["usage"]["completion_tokens"]
        assert finish == "stop" and tokens < max_tokens or finish == "length" and tokens == max_tokens

    try:
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(one, range(LOAD_WARM_UP)))  # re-raises the first failure
            before = resident_bytes(process.pid)
            list(pool.map(one, range(LOAD_WARM_UP, LOAD_WARM_UP + LOAD_MEASURED)))
            grown = resident_bytes(process.pid) - before
        for http in clients:
            http.close()
        wait_until(lambda: all(counter(url, gauge) == 0 for gauge in (
            "llama_requests_running", "llama_requests_waiting", "llama_kv_blocks_in_use")))
        statuses = re.findall(r'^llama_requests_total{status="(\d+)"} (\S+)$', httpx.get(f"{url}/metrics").text, re.M)
        assert [s for s, count in statuses if s != "200"] == []  # no error of any kind
        # Memory: over these 400 requests a sound server's resident memory grew by 0.17 to 0.46 MiB in five runs
        # on a busy 2-core machine (allocators settling: tracemalloc finds no Python objects accumulating). The
        # bound, 4x that, fails a leak of 5 kB or more per request (its outputs, a tensor per request). A smaller
        # leak of a request's Python state (its Sequence and text kept: 2 to 3 kB, 0.8 to 1.1 MiB here) would
        # drown in that noise: the in-thread tests check that state structurally (engine.texts, thread.streams).
        assert grown < 2 * 2**20, f"resident memory grew by {grown / 2**20:.2f} MiB over {LOAD_MEASURED} requests"
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()


def test_sigterm_drains_and_exits_zero(checkpoint, tmp_path):
    process, url = start_serve(checkpoint, tmp_path / "serve.log", "--drain-seconds", "20", "--max-num-seqs", "1")
    try:
        # One at a time (--max-num-seqs 1): when the signal comes, one answer is decoding and two are queued.
        body = {"model": "tiny", "prompt": "a", "max_tokens": 90, "temperature": 0, "stream": True}
        answers = [[] for _ in range(3)]

        def ask(lines: list[str]) -> None:
            with httpx.stream("POST", f"{url}/v1/completions", json=body, timeout=60) as response:
                for line in response.iter_lines():
                    if line:
                        lines.append(line)

        askers = [threading.Thread(target=ask, args=(lines,)) for lines in answers]
        for asker in askers:
            asker.start()
        wait_until(lambda: counter(url, "llama_prompt_tokens_total") == 3 * 2, 60)  # all three are in ("a" and BOS)
        process.send_signal(signal.SIGTERM)
        for asker in askers:
            asker.join(60)
        for lines in answers:  # every request in flight was finished, not cut
            assert lines[-1] == "data: [DONE]" and json.loads(lines[-2][6:])["choices"][0]["finish_reason"] == "length"
        assert process.wait(30) == 0
    finally:
        process.kill()
        process.wait()
