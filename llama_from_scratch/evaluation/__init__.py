"""Evaluation: how good is a model? Benchmarks scored the way the LLaMA paper scores them (chapter 12).

The measuring: :mod:`.likelihood` (the log-probability of a continuation given a context, each context run
once and its KV cache shared by its continuations; batches), :mod:`.multiple_choice` (the most likely choice,
normalised none / per token / per character / per "Answer:"), :mod:`.generation` (answers written up to a
stop sequence, one at a time or in batches; exact match; maj@k), :mod:`.pass_at_k` (Chen et al.'s unbiased
estimator), :mod:`.statistics` (standard errors, a paired comparison of two models), :mod:`.few_shot` (solved examples
from a separate split in front of the question), :mod:`.contamination` (how much of an item the training
corpus holds) and :mod:`.sandbox` (generated code run only in a separate, limited process).

The tasks: :mod:`.task` (items, tasks and their cards), :mod:`.shakespeare_tasks` (who speaks? which line
comes next? which play? on held-out plays), :mod:`.arithmetic` (seeded word problems, answers verified),
:mod:`.humaneval` (HumanEval, offline) and :mod:`.registry` (tasks by name, or from a JSON-lines file).

The report: :mod:`.report` (tasks x shots on one model: results.json, report.md, report.png; what
``python -m llama_from_scratch eval`` runs) and :mod:`.lm_eval_adapter` (our model inside
lm-evaluation-harness; needs the optional extra ``lm-eval``, so it is not imported here).

Below this package: the model core, tokenization, checkpoints, training and finetuning.
"""

from .few_shot import draw_examples, few_shot_prompt, prompts
from .generation import exact_match, generate_until, generate_until_batch, majority_vote, normalize_answer
from .likelihood import Request, Scored, encode_pair, rolling_requests, score
from .multiple_choice import NORMALIZATIONS, ChoiceResult, MultipleChoiceItem, answer_choices, choice_scores
from .pass_at_k import pass_at_k
from .statistics import Estimate, PairedComparison, compare, mcnemar, mean_with_stderr
from .task import CodeProblem, GenerationItem, Task, TaskCard

__all__ = [
    "NORMALIZATIONS",
    "ChoiceResult",
    "CodeProblem",
    "Estimate",
    "GenerationItem",
    "MultipleChoiceItem",
    "PairedComparison",
    "Request",
    "Scored",
    "Task",
    "TaskCard",
    "answer_choices",
    "choice_scores",
    "compare",
    "draw_examples",
    "encode_pair",
    "exact_match",
    "few_shot_prompt",
    "generate_until",
    "generate_until_batch",
    "majority_vote",
    "mcnemar",
    "mean_with_stderr",
    "normalize_answer",
    "pass_at_k",
    "prompts",
    "rolling_requests",
    "score",
]
