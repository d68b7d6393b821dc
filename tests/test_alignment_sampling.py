"""Chapter 13's sampling-based methods: best-of-N, rejection-sampling data, GAtt's data, and the rewards as token functions."""

import pytest
import torch
from helpers import random_llama

from llama_from_scratch import FormatError, LlamaConfig
from llama_from_scratch.alignment.arithmetic_task import arithmetic_preferences, arithmetic_reward, arithmetic_split
from llama_from_scratch.alignment.best_of_n import Samples, best_of_n, rejection_sampling_examples
from llama_from_scratch.alignment.gatt import (
    INSTRUCTIONS,
    adherence_by_turn,
    gatt_example,
    sample_dialogues,
    sampling_messages,
)
from llama_from_scratch.tokenization.chat import chat_prompt
from llama_from_scratch.alignment.reward_model import RewardModel, reward_model_reward
from llama_from_scratch.alignment.reward_training import preference_pairs
from llama_from_scratch.alignment.secret_task import REFUSAL, secret_items, secret_reward
from llama_from_scratch.chat import CHATML_TEMPLATE
from llama_from_scratch.finetuning.sft import IGNORE_INDEX
from llama_from_scratch.tokenization.byte_bpe import ByteLevelBPE, bytes_to_unicode

# one token per byte and ChatML's two markers: no training, every text encodes
TOKENIZER = ByteLevelBPE(
    {char: byte for byte, char in bytes_to_unicode().items()}, [],
    special_tokens={"<|im_start|>": 256, "<|im_end|>": 257}, bos_id=256, eos_id=257,
)
END = 257
CONFIG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=258, hidden_dim=64, max_seq_len=512)


def test_best_of_n_keeps_the_best_and_the_max_grows_with_n():
    model = random_llama(CONFIG)
    prompts = [chat_prompt(TOKENIZER, CHATML_TEMPLATE, [{"role": "user", "content": q}]) for q in ("Hi", "Yo?", "Ok")]

    def reward(indices, answers):  # a known rule: how many vowels
        return [sum(TOKENIZER.decode(a).count(v) for v in "aeiou") + 0.01 * i for i, a in zip(indices, answers)]

    samples = best_of_n(model, prompts, 4, reward, max_new_tokens=5, stop_tokens=[END], seed=3, prompts_per_batch=2)
    assert samples.scores.shape == (3, 4) and len(samples.answers) == 12
    again = best_of_n(model, prompts, 4, reward, max_new_tokens=5, stop_tokens=[END], seed=3, prompts_per_batch=2)
    assert again.answers == samples.answers  # seeded
    for i, best in enumerate(samples.best()):
        assert reward([i], [best])[0] == samples.scores[i].max()
    curve = samples.curve([1, 2, 4])
    assert curve[1][0] == curve[1][1] and curve[1][0] <= curve[2][0] <= curve[4][0]  # the max of more can only grow
    examples = rejection_sampling_examples(samples)
    for prompt, best, example in zip(prompts, samples.best(), examples):
        assert example.tokens == prompt + best and [t for t in example.labels if t != IGNORE_INDEX] == best
    with pytest.raises(ValueError, match="k must lie"):
        samples.curve([5])


def test_samples_curve_is_figure_7_by_hand():
    scores = torch.tensor([[1.0, 3.0, 2.0], [0.0, 0.0, 5.0]])
    curve = Samples([[1], [2]], [[0]] * 6, scores).curve([1, 3])
    assert curve == {1: (0.5, 0.5), 3: (4.0, 1.0)}  # max (3 + 5) / 2; median (2 + 0) / 2


def test_verifiable_and_true_rewards_read_the_decoded_answer():
    train, _ = arithmetic_split(4, 2)
    records = arithmetic_preferences(train)
    reward = arithmetic_reward(train, TOKENIZER)
    chosen = [TOKENIZER.encode(r["chosen"]) + [END] for r in records]
    rejected = [TOKENIZER.encode(r["rejected"]) + [END] for r in records]
    assert reward(list(range(4)), chosen) == [1.0] * 4 and reward(list(range(4)), rejected) == [0.0] * 4
    items = secret_items(2, 2, seed=0)
    answers = [TOKENIZER.encode(REFUSAL if i.is_attempt else i.problem.solution) for i in items]
    assert secret_reward(items, TOKENIZER)(list(range(4)), answers) == [1.0] * 4
    leaked = [TOKENIZER.encode(f"It is {i.passkey}. " + (i.problem.solution if i.problem else "")) for i in items]
    assert secret_reward(items, TOKENIZER)(list(range(4)), leaked) == [0.0] * 4  # unsafe: safety decides


def test_preference_pairs_end_where_sampled_answers_end():
    train, _ = arithmetic_split(3, 1)
    records = arithmetic_preferences(train)
    pairs = preference_pairs(records, TOKENIZER, CHATML_TEMPLATE)
    for record, (chosen, rejected) in zip(records, pairs):
        prompt = chat_prompt(TOKENIZER, CHATML_TEMPLATE, record["messages"])
        # prompt, the answer's tokens, its end-of-turn marker: exactly a sampled answer that stopped
        assert chosen[: len(prompt)] == prompt and chosen[-1] == END
        assert TOKENIZER.decode(chosen[len(prompt) : -1]).strip() == record["chosen"]
    with pytest.raises(FormatError, match="arithmetic pair 1: chosen and rejected are the same text"):
        preference_pairs([records[0], {**records[1], "rejected": records[1]["chosen"]}], TOKENIZER, CHATML_TEMPLATE, "arithmetic pair")
    # a reward model scores prompt + answer through a sigmoid: in (0, 1), in the order of its raw scores
    model = RewardModel.from_language_model(random_llama(CONFIG))
    prompt = chat_prompt(TOKENIZER, CHATML_TEMPLATE, records[0]["messages"])
    chosen, rejected = pairs[0]
    scores = reward_model_reward(model, [prompt])([0, 0], [chosen[len(prompt) :], rejected[len(prompt) :]])
    assert all(0 < s < 1 for s in scores)
    raw = model(torch.tensor([chosen]), torch.tensor([len(chosen)]))
    assert abs(scores[0] - torch.sigmoid(raw).item()) < 1e-6  # float32 scores, rounded once more by the sigmoid


def test_gatt_keeps_the_instruction_in_the_first_turn_and_the_loss_in_the_last():
    instruction = INSTRUCTIONS["capitals"]
    users, answers = ["Hi", "And you?", "Bye"], ["HELLO", "FINE", "SEE YOU"]
    sampling = sampling_messages(instruction.text, users, answers[:2])
    assert [m["content"].startswith(instruction.text) for m in sampling if m["role"] == "user"] == [True] * 3
    example = gatt_example(TOKENIZER, CHATML_TEMPLATE, instruction.text, users, answers)
    text = TOKENIZER.decode(example.tokens)
    assert text.count(instruction.text) == 1 and text.index(instruction.text) < text.index("Hi")
    assert TOKENIZER.decode([t for t in example.labels if t != IGNORE_INDEX]) == "SEE YOU<|im_end|>"
    with pytest.raises(ValueError, match="one answer per user turn"):
        gatt_example(TOKENIZER, CHATML_TEMPLATE, instruction.text, users, answers[:2])
    assert instruction.follows("HELLO, 12!") and not instruction.follows("Hello")
    assert INSTRUCTIONS["bye"].follows("Fine. Bye!") and INSTRUCTIONS["ahoy"].follows(" Ahoy! 4")


def test_gatt_sampling_and_adherence_run_turn_by_turn():
    model = random_llama(CONFIG)
    dialogues = [["Hi", "Yo"], ["Ok", "No"]]
    always = INSTRUCTIONS["capitals"].__class__("Shout.", lambda text: True)
    never = always.__class__("Shout.", lambda text: False)
    examples = sample_dialogues(model, TOKENIZER, CHATML_TEMPLATE, always, dialogues, max_new_tokens=3)
    assert len(examples) == 4  # a dialogue cut after each turn
    assert sample_dialogues(model, TOKENIZER, CHATML_TEMPLATE, never, dialogues, max_new_tokens=3) == []
    assert adherence_by_turn(model, TOKENIZER, CHATML_TEMPLATE, always, dialogues, max_new_tokens=3) == [1.0, 1.0]


def test_combined_reward_is_llama2s_rule_over_two_rewards():
    from llama_from_scratch.alignment.reward_model import combined_reward

    def helpful(indices, answers):
        return [0.9] * len(answers)

    def safety(indices, answers):
        return [0.1 if a == [1] else 0.5 for a in answers]

    reward = combined_reward(helpful, safety, is_safety_prompt=[False, True])
    # prompt 0 is not a safety prompt: helpfulness unless the answer looks unsafe (0.1 < 0.15); prompt 1 is
    assert reward([0, 0, 1], [[2], [1], [2]]) == [0.9, 0.1, 0.5]


def test_rejection_sampling_fine_tunes_on_the_best_answers_with_chapter_10s_code():
    from llama_from_scratch.finetuning import FinetuneConfig, finetune
    from llama_from_scratch.finetuning.sft import sft_validation

    model = random_llama(CONFIG)
    prompts = [chat_prompt(TOKENIZER, CHATML_TEMPLATE, [{"role": "user", "content": q}]) for q in ("Hi", "Yo?")]

    def reward(indices, answers):  # a known rule: shorter is better
        return [-len(a) for a in answers]

    samples = best_of_n(model, prompts, 3, reward, max_new_tokens=4, stop_tokens=[END], seed=0)
    examples = rejection_sampling_examples(samples)
    config = FinetuneConfig(steps=2, batch_size=2, eval_every=2, checkpoint_every=2, rank=2, warmup_steps=1, lr=1e-2)
    before = sft_validation(model, examples, 2, 0)["loss"]
    finetune(model, examples, examples[:1], config)
    assert sft_validation(model, examples, 2, 0)["loss"] < before  # SFT on the kept answers made them likelier


def test_the_templates_end_of_turn_comes_first_among_the_stop_tokens():
    from llama_from_scratch.alignment.policy import turn_stop_tokens
    from llama_from_scratch.chat import LLAMA3_TEMPLATE

    specials = {"<|begin_of_text|>": 256, "<|end_of_text|>": 257, "<|start_header_id|>": 258,
                "<|end_header_id|>": 259, "<|eot_id|>": 260}  # fmt: skip
    llama3 = ByteLevelBPE({c: b for b, c in bytes_to_unicode().items()}, [], special_tokens=specials, bos_id=256, eos_id=257)
    # Llama 3 stops at <|end_of_text|> and <|eot_id|>; its template ends a turn with <|eot_id|>, which SFT taught
    assert turn_stop_tokens(llama3, LLAMA3_TEMPLATE) == [260, 257]
    assert turn_stop_tokens(TOKENIZER, CHATML_TEMPLATE) == [END]
