"""Our model inside EleutherAI's lm-evaluation-harness, so that any of its hundreds of tasks can score it.

Importing this module registers :class:`LlamaFromScratchLM` under the name ``llama-from-scratch``::

    import lm_eval
    import llama_from_scratch.evaluation.lm_eval_adapter  # registers the model

    lm_eval.simple_evaluate(model="llama-from-scratch", model_args="checkpoint=runs/shakespeare", tasks=["arc_easy"])

``checkpoint`` is anything :func:`~llama_from_scratch.checkpoints.load_pretrained` reads (a Hugging Face
folder, a GGUF file, a Meta folder, a training run). The harness asks a model three things, and each is
answered by this package's own code:

* ``loglikelihood``: ``(context, continuation)`` -> ``(log P(continuation | context), is it greedy?)``,
  by :func:`.likelihood.score`: requests that share a context (the choices of one question) share its KV cache;
* ``loglikelihood_rolling``: a whole text's log-likelihood, in windows that fill the model's context
  (:func:`.likelihood.rolling_requests`), for perplexity tasks;
* ``generate_until``: greedy (or sampled) text up to the request's stop sequences, requests with the same
  settings in batches (:func:`.generation.generate_until_batch`).

Texts are tokenized by :func:`.likelihood.encode_pair`, with the tokenizer's BOS token in front unless
``add_bos_token=false`` (an empty context is then the BOS token alone). A context too long for the model loses its beginning, as the harness's
own models do. ``lm-eval`` is an optional extra (``pip install llama-from-scratch[eval]``), not a course
dependency: importing this module without it raises ModuleNotFoundError with the command to install it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ModuleNotFoundError as error:  # pragma: no cover - depends on the environment
    raise ModuleNotFoundError(
        "the lm-evaluation-harness adapter needs lm-eval: pip install 'llama-from-scratch[eval]' (or pip install lm-eval)"
    ) from error

from ..checkpoints import Pretrained, load_pretrained
from .generation import generate_until_batch
from .likelihood import Request, encode_pair, fit_context, rolling_requests, score

NAME = "llama-from-scratch"


def _int_option(name: str, value: object, default: int) -> int:
    if value is None or value == "auto":
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"model_args {name} must be an integer, got {value!r}") from None
    if number < 1:
        raise ValueError(f"model_args {name} must be >= 1, got {number}")
    return number


@register_model(NAME)
class LlamaFromScratchLM(LM):
    """A checkpoint of this package as an lm-evaluation-harness model (``model_args``: ``checkpoint=PATH``, and
    optionally ``batch_size``, ``device``, ``max_gen_toks``)."""

    def __init__(
        self,
        checkpoint: str | None = None,
        batch_size: int | str | None = 8,
        device: str | None = None,
        max_gen_toks: int | str = 256,
        add_bos_token: bool | str = True,
        pretrained: Pretrained | None = None,
        **unused,
    ):
        """``checkpoint``: the path to load; or ``pretrained``, a model already loaded (adapters merged,
        quantized: what ``python -m llama_from_scratch eval --harness lm-eval`` passes). ``add_bos_token``:
        the tokenizer's BOS token in front of every context (as our own harness does), or not (``False``: as
        lm-evaluation-harness's ``hf`` model does for a tokenizer that adds none, SmolLM2's)."""
        super().__init__()
        if isinstance(add_bos_token, str):
            if add_bos_token.lower() not in ("true", "false"):
                raise ValueError(f"model_args add_bos_token must be true or false, got {add_bos_token!r}")
            add_bos_token = add_bos_token.lower() == "true"
        self.add_bos_token = bool(add_bos_token)
        if pretrained is None:
            if not checkpoint:
                raise ValueError(
                    f"the {NAME} model needs model_args checkpoint=PATH (a checkpoint load_pretrained reads)"
                )
            pretrained = load_pretrained(checkpoint, device=device)
        self.model = pretrained.model.eval()
        self.tokenizer = pretrained.tokenizer
        self.batch_size = _int_option("batch_size", batch_size, 8)
        self.max_gen_toks = _int_option("max_gen_toks", max_gen_toks, 256)
        self.max_length = self.model.config.max_seq_len

    # -- likelihoods ------------------------------------------------------------------------------------------

    def _pair(self, context: str, continuation: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
        context_ids, continuation_ids = encode_pair(self.tokenizer, context, continuation, self.add_bos_token)
        return fit_context(context_ids, continuation_ids, self.max_length), tuple(continuation_ids)

    def loglikelihood_pairs(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        """``(log-likelihood, greedy)`` for each ``(context, continuation)`` pair, in order."""
        encoded = [self._pair(context, continuation) for context, continuation in pairs]
        by_context: dict[tuple[int, ...], list[int]] = {}  # context -> its pairs, in the order first seen
        for i, (context, _) in enumerate(encoded):
            by_context.setdefault(context, []).append(i)
        requests = [Request(context, tuple(encoded[i][1] for i in group)) for context, group in by_context.items()]
        results: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for group, scored in zip(by_context.values(), score(self.model, requests, self.batch_size)):
            for i, s in zip(group, scored):
                results[i] = (s.logprob, s.greedy)
        return results

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        return self.loglikelihood_pairs([tuple(request.args[:2]) for request in requests])

    def loglikelihood_rolling(self, requests) -> list[float]:
        start = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else self.tokenizer.eos_id
        if start is None:
            raise ValueError("loglikelihood_rolling needs a BOS or end-of-text token to start the text from")
        totals = []
        for request in requests:
            chunks = rolling_requests([start, *self.tokenizer.encode(request.args[0])], self.max_length)
            totals.append(sum(s.logprob for item in score(self.model, chunks, self.batch_size) for s in item))
        return totals

    # -- generation -------------------------------------------------------------------------------------------

    def generate_until(self, requests) -> list[str]:
        """Each request's text up to its ``until`` sequences; requests with the same settings in batches."""
        groups: dict[tuple, list[int]] = {}  # settings -> the requests that have them, in order
        prompts = []
        for i, request in enumerate(requests):
            context, options = request.args[0], dict(request.args[1] or {})
            until = options.pop("until", None) or []
            until = (until,) if isinstance(until, str) else tuple(until)
            max_new = _int_option("max_gen_toks", options.pop("max_gen_toks", None), self.max_gen_toks)
            temperature = float(options.pop("temperature", 0.0) or 0.0)
            if not options.pop("do_sample", temperature > 0):
                temperature = 0.0
            max_new = min(max_new, self.max_length - 1)
            prompt = self.tokenizer.encode(context, bos=self.add_bos_token and self.tokenizer.bos_id is not None)
            prompts.append(prompt[-(self.max_length - max_new) :])
            groups.setdefault((until, max_new, temperature, options.pop("seed", None)), []).append(i)
        outputs = [""] * len(prompts)
        for (until, max_new, temperature, seed), group in groups.items():
            written = generate_until_batch(
                self.model, self.tokenizer, [prompts[i] for i in group], until, max_new,
                batch_size=self.batch_size, temperature=temperature, seed=seed,
            )
            for i, text in zip(group, written):
                outputs[i] = text
        return outputs


def run_harness(
    pretrained: Pretrained,
    tasks: Sequence[str],
    shots: Sequence[int] = (0,),
    limit: int | None = None,
    batch_size: int = 8,
    out: str | Path | None = None,
    include: str | Path | None = None,
) -> str:
    """Run lm-evaluation-harness's ``tasks`` on a loaded model, at each number of ``shots``; the harness's
    tables, one per number of shots. With ``out``, its results (without the per-sample logs) are written to
    ``out/lm_eval_<shots>shot.json``. ``include``: a folder of task YAML files of your own. The harness's
    tasks download their data sets unless they are cached."""
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import make_table

    model = LlamaFromScratchLM(pretrained=pretrained, batch_size=batch_size)
    tables = []
    for k in shots:
        results = lm_eval.simple_evaluate(
            model=model,
            tasks=list(tasks),
            num_fewshot=k,
            limit=limit,
            log_samples=False,
            task_manager=TaskManager(include_path=str(include) if include else None),
        )
        tables.append(f"{k}-shot\n{make_table(results)}")
        if out is not None:
            Path(out).mkdir(parents=True, exist_ok=True)
            kept = {key: results[key] for key in ("results", "versions", "n-shot", "configs") if key in results}
            (Path(out) / f"lm_eval_{k}shot.json").write_text(json.dumps(kept, indent=1, default=str) + "\n")
    return "\n".join(tables)
