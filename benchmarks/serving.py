"""Serving SmolLM2-135M to many clients at once: throughput and latency against concurrency, and the paged cache.

One load generator (asyncio + httpx, streaming ``/v1/chat/completions``, greedy, the same questions in the
same order for every server) drives each server, started as a subprocess on 127.0.0.1, at 1, 4, 8 and 16
concurrent streams. Each stream sends its next request as soon as its previous answer has ended. Servers:

* ``one_at_a_time``: ``serve --max-num-seqs 1``: one request decodes, the others queue;
* ``static``: ``serve --batching static``: up to 16 start together, the next batch waits for the last answer;
* ``continuous``: ``serve`` as it is (Orca's iteration-level scheduling), float32;
* ``continuous_int8``: ``serve --quantize int8`` (weights int8, eager: each layer multiplies by its codes a
  tile of rows at a time and scales the outputs, never forming the float weight; no compile);
* ``llama_cpp``: llama.cpp's OpenAI-compatible server (``python -m llama_cpp.server``, from
  ``llama-cpp-python[server]``) on the packaged Q4_1 GGUF, when installed; otherwise its row says
  "not installed" and which module is missing.

Per server and concurrency: aggregate generated tokens/s (all answers' tokens over the wall time), time to
first token (request sent to first piece of text) and inter-token latency (gaps between pieces), p50 and p95.

Then, in this process, on the engine itself (no HTTP):

* the paged cache's **memory held against tokens in flight** while 16 chat requests run (prefix caching off,
  so that only the blocks' rounding up is measured), short chats and chats that each start with their own
  500-token system prompt, and what a preallocated cache of 16 full contexts holds;
* a shared **500-token system prompt**: time to first token of a request on a prefix-cache miss (the system
  prompt computed) and on a hit (a second question after the same system prompt), medians of ``--repeats``,
  with the prompt tokens each computed (the engine's ``num_computed_tokens``: the work the time follows).

Every row is printed as soon as it is measured; a closing note sets the figures beside the targets of
chapter 15 (at 8 streams: continuous >= 3x one at a time and >= llama.cpp, p95 time to first token <= 2 s;
paged memory <= 1.1x the tokens in flight; time to first token >= 5x lower on a prefix-cache hit). They are
ratios of one run on one machine, reported, not asserted: on a machine busy with other work they say little.
``--quick`` runs every part with a few short answers, to prove the script works, not to meet the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from decode_smollm2 import smollm2_file
from long_context_perplexity import save
from llama_from_scratch.checkpoints.load import load_pretrained
from llama_from_scratch.chat import render_chat
from llama_from_scratch.serving import BLOCK_SIZE, LLMEngine, SamplingParams, use_plain_attention
from llama_from_scratch.tokenization.chat import chat_stop_tokens, encode_chat, special_texts

QUESTIONS = [
    "How does a llama differ from an alpaca?",
    "Explain what a hash table is to a child.",
    "Write a short poem about the sea.",
    "What causes the seasons on Earth?",
    "Give three tips for a job interview.",
    "Why is the sky blue?",
    "Describe how bread is made.",
    "What is the difference between weather and climate?",
    "Summarise the plot of Romeo and Juliet.",
    "How do vaccines work?",
    "What should I pack for a week of hiking?",
    "Explain recursion with an example.",
    "Why do cats purr?",
    "How does a bicycle stay upright?",
    "What is photosynthesis?",
    "Suggest a name for a bakery and say why.",
]

SERVERS = {  # name: extra arguments of `python -m llama_from_scratch serve`
    "one_at_a_time": ["--max-num-seqs", "1"],
    "static": ["--batching", "static"],
    "continuous": [],
    "continuous_int8": ["--quantize", "int8"],
}
LLAMA_CPP_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 4) if values else None


class ServerProcess:
    """A server command in a subprocess on a free port of 127.0.0.1, up once ``GET url/v1/models`` answers 200
    (every OpenAI-compatible server has it; llama.cpp's has no ``/health``)."""

    def __init__(self, command: list[str], threads: int, timeout: float = 600.0):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile(mode="w+")
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
        self.process = subprocess.Popen(command + ["--port", str(self.port)], stdout=self.log, stderr=subprocess.STDOUT,
                                        env=env)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{' '.join(command)} exited with {self.process.returncode}:\n{self.log.read()[-3000:]}")
            try:
                if httpx.get(self.url + "/v1/models", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"{' '.join(command)} did not answer /v1/models within {timeout:.0f} s")
            time.sleep(0.5)
        self.model = httpx.get(self.url + "/v1/models", timeout=30).json()["data"][0]["id"]

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def one_request(client: httpx.AsyncClient, model: str, question: str, max_tokens: int) -> dict:
    """Stream one greedy chat answer: seconds to the first piece of text, the gaps between pieces, the tokens."""
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens,
            "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    arrivals, tokens = [], None
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        if response.status_code != 200:
            raise RuntimeError(f"status {response.status_code}: {(await response.aread())[:300]!r}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            if chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            if chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                arrivals.append(time.perf_counter())
    if not arrivals:
        raise RuntimeError(f"an empty answer to {question!r}")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return {"ttft": arrivals[0] - start, "gaps": gaps, "tokens": tokens if tokens is not None else len(arrivals)}


async def load(url: str, model: str, concurrency: int, requests: int, max_tokens: int) -> dict:
    """``requests`` answers over ``concurrency`` streams: aggregate tokens/s, TTFT and inter-token latency."""
    pending = list(range(requests))
    results = []

    async def stream(client: httpx.AsyncClient) -> None:
        while pending:
            i = pending.pop(0)
            results.append(await one_request(client, model, f"{QUESTIONS[i % len(QUESTIONS)]} ({i})", max_tokens))

    limits = httpx.Limits(max_connections=concurrency + 1)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(600.0), limits=limits) as client:
        await one_request(client, model, "Hello!", 4)  # warm-up, not counted
        start = time.perf_counter()
        await asyncio.gather(*(stream(client) for _ in range(concurrency)))
        wall = time.perf_counter() - start
    ttft = [r["ttft"] for r in results]
    gaps = [g for r in results for g in r["gaps"]]
    tokens = sum(r["tokens"] for r in results)
    return {
        "concurrency": concurrency,
        "requests": len(results),
        "tokens": tokens,
        "wall_s": round(wall, 2),
        "tok_s": round(tokens / wall, 2),
        "ttft_p50_s": percentile(ttft, 50),
        "ttft_p95_s": percentile(ttft, 95),
        "itl_p50_s": percentile(gaps, 50),
        "itl_p95_s": percentile(gaps, 95),
    }


def llama_cpp_missing() -> str | None:
    """Why llama.cpp's server cannot run here (a missing module), or None."""
    for name in LLAMA_CPP_SERVER_MODULES:
        if importlib.util.find_spec(name) is None:
            return f"not installed (no module {name}: pip install 'llama-cpp-python[server]')"
    return None


def server_command(name: str, threads: int, max_num_seqs: int) -> list[str]:
    if name == "llama_cpp":
        return [sys.executable, "-m", "llama_cpp.server", "--model", str(smollm2_file()), "--host", "127.0.0.1",
                "--n_threads", str(threads), "--n_ctx", "4096",
                # by default a new request interrupts the one streaming (its answer ends empty): queue them instead
                "--interrupt_requests", "False"]
    return [sys.executable, "-m", "llama_from_scratch", "serve", "--max-num-seqs", str(max_num_seqs),
            "--max-queue", "256", "--model-name", "smollm2", *SERVERS[name]]


def chat_prompt(pretrained, system: str | None, question: str) -> list[int]:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": question}]
    text = render_chat(pretrained.chat_template, messages, **special_texts(pretrained.tokenizer))
    return encode_chat(pretrained.tokenizer, text)


def memory_in_flight(pretrained, requests: int, max_tokens: int, max_num_seqs: int, system_tokens: int = 0) -> dict:
    """Tokens the paged cache holds (whole blocks) against tokens whose keys and values it stores, step by step.

    Measured after each step, when every running sequence has stored ``num_computed`` tokens (its last sampled
    token is not computed yet: its keys and values are written, into a slot allocated just before, in the next
    step). A sequence of ``n`` stored tokens needs ``ceil(n / 16)`` blocks, so rounding up alone holds less than
    one block more per sequence: held / in flight < 1 + 16 * sequences / in flight, the **bound** reported beside
    the ratio. ``held_beyond_rounding_tokens`` is what the cache holds beyond that rounding (0: no waste); the
    rest of the ratio is inherent, and large when sequences are short (7.5 tokens per sequence on average against
    a chat prompt of ~40 tokens and a short answer). With ``system_tokens``, every request starts with a system
    prompt of about that many tokens, its own (:func:`system_prompt`, one version per request: nothing shared),
    as a deployed assistant's do: the same rounding, spread over longer sequences.
    """
    engine = LLMEngine(pretrained.model, pretrained.tokenizer, max_num_seqs=max_num_seqs, enable_prefix_caching=False)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, stop_token_ids=tuple(chat_stop_tokens(pretrained.tokenizer)))
    for i in range(requests):
        system = system_prompt(i, pretrained.tokenizer, system_tokens) if system_tokens else None
        engine.add_request(f"m{i}", chat_prompt(pretrained, system, QUESTIONS[i % len(QUESTIONS)]), params)
    held, in_flight, rounded, sequences = [], [], [], []
    while engine.has_unfinished_requests():
        engine.step()
        running = engine.scheduler.running
        if running:
            held.append(engine.cache.allocator.num_in_use * BLOCK_SIZE)
            in_flight.append(sum(s.num_computed for s in running))
            rounded.append(sum(engine.cache.blocks_for(s.num_computed) for s in running) * BLOCK_SIZE)
            sequences.append(len(running))
    use_plain_attention(pretrained.model)  # the engine is done: the next one may take the model
    c = pretrained.model.config
    bytes_per_token = 2 * c.n_layers * c.n_kv_heads * c.head_dim * pretrained.model.tok_embeddings.weight.element_size()
    preallocated = max_num_seqs * c.max_seq_len
    peak = max(range(len(in_flight)), key=in_flight.__getitem__)
    return {
        "requests": requests,
        "system_prompt_tokens": system_tokens,
        "steps": len(held),
        "held_over_in_flight": round(sum(held) / sum(in_flight), 4),  # averaged over the steps
        # rounding up costs < 1 block per sequence: the ratio stays below this, whatever the cache does right
        "rounding_bound": round(1 + BLOCK_SIZE * sum(sequences) / sum(in_flight), 4),
        "held_beyond_rounding_tokens": max(h - r for h, r in zip(held, rounded)),  # waste: 0 if blocks come just in time
        "mean_tokens_per_sequence": round(sum(in_flight) / sum(sequences), 1),
        "held_over_in_flight_worst_step": round(max(h / f for h, f in zip(held, in_flight)), 4),
        "peak_in_flight_tokens": in_flight[peak],
        "held_at_peak_tokens": held[peak],  # the same step's
        "sequences_at_peak": sequences[peak],
        "peak_held_tokens": max(held),
        "peak_held_mb": round(max(held) * bytes_per_token / 2**20, 1),
        "preallocated_tokens": preallocated,
        "preallocated_mb": round(preallocated * bytes_per_token / 2**20, 1),
        "preallocated_over_peak_in_flight": round(preallocated / max(in_flight), 1),
    }


SYSTEM_TOKENS = 500  # a deployed assistant's system prompt, as long as the prefix-cache section's


def system_prompt(version: int, tokenizer, tokens: int = SYSTEM_TOKENS) -> str:
    """A customer-service system prompt of about ``tokens`` tokens; ``version`` makes its first block unique."""
    rules = [f"You are the assistant of shop number {version}. Follow these rules."]
    while len(tokenizer.encode(" ".join(rules))) < tokens:
        k = len(rules)
        rules.append(f"Rule {k}: answer politely and briefly, mention order {1000 + 7 * k} only if asked.")
    return " ".join(rules)


def time_to_first_token(
    engine: LLMEngine, request_id: str, prompt: list[int], params: SamplingParams
) -> tuple[float, int, int]:
    """Seconds from adding the request to its first token, how many prompt tokens came from the prefix cache,
    and how many its prefill computed."""
    cached_before, computed_before = engine.cache.allocator.num_cached, engine.num_computed_tokens
    start = time.perf_counter()
    engine.add_request(request_id, prompt, params)
    while not any(o.request_id == request_id and o.token_ids for o in engine.step()):
        pass
    seconds = time.perf_counter() - start
    hit_blocks = cached_before - engine.cache.allocator.num_cached  # cached blocks taken back into use
    engine.abort(request_id)
    return seconds, hit_blocks * BLOCK_SIZE, engine.num_computed_tokens - computed_before


def prefix_cache_ttft(pretrained, repeats: int) -> dict:
    """A 500-token system prompt: time to first token on a miss (new system prompt) and on a hit (same one)."""
    engine = LLMEngine(pretrained.model, pretrained.tokenizer, max_num_seqs=1)
    params = SamplingParams(max_tokens=4, temperature=0.0)
    # warm-up: a miss of the same length, so that the first timed prefill finds the allocator and kernels warm
    time_to_first_token(engine, "warm-up", chat_prompt(pretrained, system_prompt(-1, pretrained.tokenizer), "Hi!"), params)
    miss, hit, hit_rate, lengths, computed_miss, computed_hit = [], [], [], [], [], []
    for r in range(repeats):
        system = system_prompt(r, pretrained.tokenizer)
        first = chat_prompt(pretrained, system, QUESTIONS[0])
        second = chat_prompt(pretrained, system, QUESTIONS[1])
        seconds, cached, computed = time_to_first_token(engine, f"miss{r}", first, params)
        miss.append(seconds)
        computed_miss.append(computed)
        if cached:
            raise RuntimeError(f"a new system prompt hit the cache ({cached} tokens)")
        seconds, cached, computed = time_to_first_token(engine, f"hit{r}", second, params)
        hit.append(seconds)
        computed_hit.append(computed)
        hit_rate.append(cached / len(second))
        lengths.append(len(second))
    use_plain_attention(pretrained.model)
    return {
        "system_prompt_tokens": len(pretrained.tokenizer.encode(system_prompt(0, pretrained.tokenizer))),
        "prompt_tokens": statistics.median(lengths),
        "repeats": repeats,
        "ttft_miss_s": round(statistics.median(miss), 4),
        "ttft_hit_s": round(statistics.median(hit), 4),
        "miss_over_hit": round(statistics.median(miss) / statistics.median(hit), 2),
        "hit_rate": round(statistics.median(hit_rate), 3),  # share of the second prompt's tokens not computed
        "computed_tokens_miss": statistics.median(computed_miss),  # the prefill's work, whatever the machine
        "computed_tokens_hit": statistics.median(computed_hit),
    }


def target_notes(servers: dict, memories: dict[str, dict], prefix: dict, concurrency: list[int]) -> list[str]:
    """Chapter 15's targets beside this run's figures, one line each: the figures, the ratio, met or not."""

    def at(name: str, streams: int) -> dict | None:
        levels = servers.get(name, {}).get("levels", [])
        return next((x for x in levels if x["concurrency"] == streams), None)

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"

    streams = 8 if 8 in concurrency else max(concurrency)
    notes = [f"targets (at {streams} streams; one run on this machine, reported, not asserted):"]
    alone, llama_cpp = at("one_at_a_time", streams), at("llama_cpp", streams)
    for name in ("continuous", "continuous_int8"):
        ours = at(name, streams)
        if ours is None:
            continue
        if alone is not None:
            ratio = ours["tok_s"] / alone["tok_s"]
            notes.append(f"  {name}: {ours['tok_s']:.1f} tok/s = {ratio:.2f}x one at a time's {alone['tok_s']:.1f} "
                         f"(target >= 3x): {verdict(ratio >= 3)}")
        if llama_cpp is not None:
            ratio = ours["tok_s"] / llama_cpp["tok_s"]
            notes.append(f"  {name}: {ratio:.2f}x llama.cpp's server's {llama_cpp['tok_s']:.1f} tok/s "
                         f"(target >= 1x): {verdict(ratio >= 1)}")
        else:
            why = servers.get("llama_cpp", {}).get("error", "not run (--servers)")
            notes.append(f"  {name} against llama.cpp's server: {why}")
        notes.append(f"  {name}: p95 time to first token {ours['ttft_p95_s']:.2f} s (target <= 2 s): "
                     f"{verdict(ours['ttft_p95_s'] <= 2)}")
    for what, memory in memories.items():
        ratio, bound = memory["held_over_in_flight"], memory["rounding_bound"]
        notes.append(f"  paged cache, {what}: holds {ratio:.3f}x the tokens in flight (target <= 1.1x): "
                     f"{verdict(ratio <= 1.1)}; rounding up to {BLOCK_SIZE}-token blocks alone allows < {bound:.3f}x "
                     f"at {memory['mean_tokens_per_sequence']:.0f} tokens per sequence, "
                     f"{memory['held_beyond_rounding_tokens']} tokens held beyond it")
    ratio, miss, hit = prefix["miss_over_hit"], prefix["computed_tokens_miss"], prefix["computed_tokens_hit"]
    notes.append(f"  prefix cache: time to first token {ratio:.2f}x lower on a hit ({miss:.0f} against {hit:.0f} "
                 f"prompt tokens computed) (target >= 5x): {verdict(ratio >= 5)}")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--requests-per-stream", type=int, default=4, help="answers each stream asks for in turn")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--max-num-seqs", type=int, default=16, help="the batched servers' sequences at once")
    parser.add_argument("--servers", nargs="*", default=[*SERVERS, "llama_cpp"], choices=[*SERVERS, "llama_cpp"])
    parser.add_argument("--repeats", type=int, default=3, help="system prompts for the prefix-cache timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true",
                        help="prove it runs: every part, with one 8-token answer per stream and one system prompt")
    parser.add_argument("--save", type=Path, help="write the figures to this JSON file (chapter 15 reads it)")
    args = parser.parse_args()
    if args.quick:
        args.requests_per_stream, args.max_tokens, args.repeats = 1, 8, 1
    torch.set_num_threads(args.threads)
    print(f"threads {args.threads}, streams {args.concurrency}, {args.requests_per_stream} answers per stream of at most "
          f"{args.max_tokens} tokens, greedy", flush=True)

    servers = {}
    for name in args.servers:
        missing = llama_cpp_missing() if name == "llama_cpp" else None
        if missing:
            servers[name] = {"error": missing}
            print(f"{name:16s} {missing}", flush=True)
            continue
        try:
            server = ServerProcess(server_command(name, args.threads, args.max_num_seqs), args.threads)
        except RuntimeError as error:  # one server that cannot start costs its row, not the whole run
            servers[name] = {"error": str(error)[-500:]}
            print(f"{name:16s} {servers[name]['error']}", flush=True)
            continue
        levels = []
        servers[name] = {"levels": levels}
        try:
            for c in args.concurrency:
                levels.append(asyncio.run(load(server.url, server.model, c, c * args.requests_per_stream, args.max_tokens)))
                x = levels[-1]
                print(f"{name:16s} {c:3d} streams {x['tok_s']:7.1f} tok/s  TTFT p50 {x['ttft_p50_s']:6.2f} s "
                      f"p95 {x['ttft_p95_s']:6.2f} s  ITL p50 {x['itl_p50_s'] * 1000:6.0f} ms "
                      f"p95 {x['itl_p95_s'] * 1000:6.0f} ms", flush=True)
        except (RuntimeError, httpx.HTTPError) as error:  # a server that fails mid-run keeps the levels it finished
            servers[name]["error"] = f"{type(error).__name__}: {error}"[:500]
            print(f"{name:16s} stopped: {servers[name]['error']}", flush=True)
        finally:
            server.stop()

    pretrained = load_pretrained(smollm2_file(), device="cpu", dtype=torch.float32)
    memory = memory_in_flight(pretrained, max(args.concurrency), args.max_tokens, args.max_num_seqs)
    memory_system = memory_in_flight(pretrained, max(args.concurrency), args.max_tokens, args.max_num_seqs, SYSTEM_TOKENS)
    memories = {"short chats": memory, f"a {SYSTEM_TOKENS}-token system prompt each": memory_system}
    for what, m in memories.items():
        print(f"paged cache, {what}: holds {m['held_over_in_flight']:.3f}x the tokens in flight (bound of rounding "
              f"up {m['rounding_bound']:.3f}x, {m['held_beyond_rounding_tokens']} tokens beyond it; worst step "
              f"{m['held_over_in_flight_worst_step']:.3f}x); a preallocated cache would hold "
              f"{m['preallocated_over_peak_in_flight']:.0f}x the peak", flush=True)
    prefix = prefix_cache_ttft(pretrained, args.repeats)
    print(f"{prefix['system_prompt_tokens']}-token system prompt: TTFT {prefix['ttft_miss_s']:.3f} s on a miss, "
          f"{prefix['ttft_hit_s']:.3f} s on a hit ({prefix['miss_over_hit']:.1f}x; {prefix['hit_rate']:.0%} of the "
          f"prompt from the cache, {prefix['computed_tokens_miss']:.0f} tokens computed on a miss, "
          f"{prefix['computed_tokens_hit']:.0f} on a hit)", flush=True)
    print("\n".join(target_notes(servers, memories, prefix, args.concurrency)), flush=True)

    summary = {
        "threads": args.threads,
        "max_tokens": args.max_tokens,
        "requests_per_stream": args.requests_per_stream,
        "max_num_seqs": args.max_num_seqs,
        "servers": servers,
        "paged_memory": memory,
        "paged_memory_system_prompt": memory_system,
        "prefix_cache": prefix,
    }
    print(json.dumps(summary))
    if args.save is not None:
        save(args.save, "serving.py", summary)


if __name__ == "__main__":
    main()
