"""Fine-tuning: LoRA (exact at step 0, merging, what trains), PEFT-layout adapters, SFT loss masks, DPO, the CLI."""

import copy
import dataclasses
import gc
import importlib.util
import io
import json
import math

import pytest
import torch
import torch.nn.functional as F

from helpers import assert_same_logits, float32_rounding, needs_corpus, needs_transformers, random_llama
from llama_from_scratch import FormatError, LlamaConfig, train_bpe
from llama_from_scratch.chat import CHATML_TEMPLATE, LLAMA2_TEMPLATE, render_chat
from llama_from_scratch.finetuning import (
    FinetuneConfig,
    add_lora,
    dpo_loss,
    finetune,
    load_adapter,
    merge_lora,
    reward_margins,
    save_adapter,
    sequence_logprobs,
    tokenize_conversation,
)
from llama_from_scratch.finetuning.lora import LORA_TARGETS, lora_layers
from llama_from_scratch.finetuning.sft import IGNORE_INDEX, Example, pad_batch, sft_loss
from llama_from_scratch.tokenization.chat import chat_prompt, encode_chat
from llama_from_scratch.training.train import TrainConfig, configure_optimizer

needs_peft = pytest.mark.skipif(
    importlib.util.find_spec("peft") is None,
    reason="checks that PEFT itself reads our adapters: needs peft (pip install peft)",
)

# Grouped-query attention (4 query heads, 2 key-value heads): the q and k row permutations differ.
CONFIG = LlamaConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=64, max_seq_len=128)
TEXT = "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n" * 20


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe(TEXT + "Hamlet Macbeth Othello [INST] <<SYS>> []<>/|_", vocab_size=300)


def tokens(seed=0, batch=2, seq=12):
    return torch.randint(0, CONFIG.vocab_size, (batch, seq), generator=torch.Generator().manual_seed(seed))


def randomize_adapters(model, seed=1):
    """Non-zero adapters (B starts at zero), of the size a trained adapter has relative to the weights."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in lora_layers(model).values():
            layer.lora_B.copy_(0.1 * torch.randn(layer.lora_B.shape, generator=generator))


def test_zero_initialised_lora_is_the_base_model():
    model = random_llama(CONFIG)
    x = tokens()
    with torch.no_grad():
        before = model(x)
    trainable = add_lora(model, rank=4, alpha=8)
    layers = lora_layers(model)
    assert len(layers) == CONFIG.n_layers * len(LORA_TARGETS)
    assert trainable == sum(4 * (layer.in_features + layer.out_features) for layer in layers.values())
    with torch.no_grad():
        after = model(x)
    # B = 0, so the low-rank path adds exact zeros: x + 0.0 == x in floating point, bit for bit
    assert torch.equal(before, after)


def test_merged_and_unmerged_adapters_agree():
    model = random_llama(CONFIG)
    add_lora(model, rank=4, alpha=8)
    randomize_adapters(model)
    x = tokens()
    with torch.no_grad():
        unmerged = model(x)
    # both sides compute W x + B (A x) in float32, in two orders: each within float32 rounding of the exact value
    rounding = float32_rounding(model, x)
    merge_lora(model)
    assert not lora_layers(model) and isinstance(model.layers[0].attention.wq, torch.nn.Linear)
    with torch.no_grad():
        merged = model(x)
    assert_same_logits(merged, unmerged, rounding)


def test_only_the_adapters_train():
    model = random_llama(CONFIG)
    add_lora(model, rank=4, alpha=8, targets=("wq", "wv"))
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    adapters = {name for name, p in model.named_parameters() if p.requires_grad}
    assert adapters and all(name.endswith(("lora_A", "lora_B")) for name in adapters)
    assert all(".wq." in name or ".wv." in name for name in adapters)
    optimizer = configure_optimizer(model, TrainConfig())
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert held == {id(p) for name, p in model.named_parameters() if name in adapters}
    x = tokens()
    model.loss(x[:, :-1], x[:, 1:]).backward()
    for name, p in model.named_parameters():
        assert (p.grad is not None) == (name in adapters), name
    # at step 0 B = 0, so only B's gradient is non-zero (A's passes through B); A moves from the next step on
    assert all(model.get_parameter(name).grad.abs().sum() > 0 for name in adapters if name.endswith("lora_B"))
    optimizer.step()
    for name, before in frozen.items():
        assert torch.equal(model.get_parameter(name), before), f"{name} changed"


def test_lora_refuses_bad_settings():
    model = random_llama(CONFIG)
    with pytest.raises(ValueError, match="targets"):
        add_lora(model, targets=("q_proj",))
    with pytest.raises(ValueError, match="rank"):
        add_lora(model, rank=0)
    add_lora(model)
    with pytest.raises(ValueError, match="already has LoRA"):
        add_lora(model)


def test_masked_labels_contribute_nothing(tokenizer):
    messages = [{"role": "user", "content": "To be?"}, {"role": "assistant", "content": "Or not to be."}]
    example = tokenize_conversation(tokenizer, LLAMA2_TEMPLATE, messages)
    prompt = encode_chat(tokenizer, render_chat(LLAMA2_TEMPLATE, messages[:1], bos_token="<s>", eos_token="</s>"))
    # the prompt is exactly what a chat would feed the model; only the answer and its end marker are targets
    assert example.tokens[: len(prompt)] == prompt
    assert example.labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)
    answer = [t for t in example.labels if t != IGNORE_INDEX]
    assert answer[-1] == tokenizer.eos_id and tokenizer.decode(answer[:-1]).strip() == "Or not to be."

    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, vocab_size=tokenizer.vocab_size, hidden_dim=64, max_seq_len=128)
    model = random_llama(config).double()
    other = tokenize_conversation(
        tokenizer, LLAMA2_TEMPLATE, messages[:1] + [{"role": "assistant", "content": "Whether 'tis nobler"}]
    )
    inputs, targets = pad_batch([example, other])
    kept = targets != IGNORE_INDEX
    loss = model.loss(inputs, targets)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    # the same loss from the kept positions alone, by another code path; in float64 the two agree to ~1e-15,
    # while a masked position that leaked in would move the loss by ~1e-1
    reference = F.cross_entropy(model(inputs)[kept], targets[kept])
    reference_grads = torch.autograd.grad(reference, list(model.parameters()))
    assert torch.allclose(loss, reference, rtol=1e-10, atol=0)
    assert torch.allclose(sft_loss(model, inputs, targets), reference, rtol=1e-10, atol=0)  # the head on kept rows only
    for got, want in zip(grads, reference_grads):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-12)


def test_right_padding_leaves_each_sequence_as_it_was():
    model = random_llama(CONFIG)
    from llama_from_scratch.finetuning.sft import Example

    short, long = Example(list(range(5, 12)), list(range(5, 12))), Example(list(range(20, 40)), list(range(20, 40)))
    inputs, targets = pad_batch([short, long], pad_id=0)
    with torch.no_grad():
        batched = model(inputs)[0, : len(short) - 1]
        alone = model(torch.tensor([short.tokens[:-1]]))[0]
    assert (targets[0, len(short) - 1 :] == IGNORE_INDEX).all()
    # causal attention: a real token never sees the padding after it; only batch-shaped kernels' rounding differs
    assert_same_logits(batched, alone, float32_rounding(model, torch.tensor([short.tokens[:-1]])))


def test_llama2_chat_format():
    messages = [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Who is Hamlet? "},
        {"role": "assistant", "content": "A prince."},
        {"role": "user", "content": "Of?"},
    ]
    text = render_chat(LLAMA2_TEMPLATE, messages, bos_token="<s>", eos_token="</s>")
    # Meta's chat_completion: the system prompt inside the first [INST] between <<SYS>> markers, contents stripped,
    # every answer followed by a space and EOS, every turn started by BOS
    assert text == (
        "<s>[INST] <<SYS>>\nAnswer briefly.\n<</SYS>>\n\nWho is Hamlet? [/INST] A prince. </s><s>[INST] Of? [/INST]"
    )
    alone = render_chat(LLAMA2_TEMPLATE, messages[1:2], bos_token="<s>", eos_token="</s>")
    assert alone == "<s>[INST] Who is Hamlet? [/INST]"


def test_llama2_encoding_matches_meta_turn_by_turn(tokenizer):
    messages = [
        {"role": "user", "content": "To be?"},
        {"role": "assistant", "content": "Or not."},
        {"role": "user", "content": "Why?"},
    ]
    ids = encode_chat(tokenizer, render_chat(LLAMA2_TEMPLATE, messages, bos_token="<s>", eos_token="</s>"))
    # Meta encodes each (question, answer) pair as bos + text + eos, and the last question as bos + text
    expected = tokenizer.encode("[INST] To be? [/INST] Or not. ", bos=True, eos=True) + tokenizer.encode(
        "[INST] Why? [/INST]", bos=True
    )
    assert ids == expected


def test_chatml_labels_end_with_the_end_of_turn():
    from llama_from_scratch.tokenization.byte_bpe import ByteLevelBPE, bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}  # one token per byte, no merges
    specials = {"<|im_start|>": 256, "<|im_end|>": 257}
    byte_level = ByteLevelBPE(vocab, [], special_tokens=specials, bos_id=256, eos_id=257)
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]
    example = tokenize_conversation(byte_level, CHATML_TEMPLATE, messages)
    labelled = [t for t in example.labels if t != IGNORE_INDEX]
    assert byte_level.decode(labelled) == "Yo<|im_end|>"  # the newline the template adds after it carries no loss
    assert example.tokens[-1] != IGNORE_INDEX and example.labels[-1] == IGNORE_INDEX


def test_dpo_loss_is_its_formula():
    generator = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (torch.randn(6, dtype=torch.float64, generator=generator) * 5 for _ in range(4))
    beta = 0.3
    terms = zip(pc.tolist(), pr.tolist(), rc.tolist(), rr.tolist())
    by_hand = sum(-math.log(1 / (1 + math.exp(-beta * ((a - c) - (b - d))))) for a, b, c, d in terms) / 6
    # float64 throughout; softplus and the hand-written log-sigmoid differ by rounding only (~1e-16 relative)
    assert dpo_loss(reward_margins(pc, pr, rc, rr, beta)).item() == pytest.approx(by_hand, rel=1e-12)
    inputs = tuple(t.clone().requires_grad_(True) for t in (pc, pr, rc, rr))
    assert torch.autograd.gradcheck(lambda *t: dpo_loss(reward_margins(*t, beta=beta)), inputs)


def test_sequence_logprobs_sums_the_labelled_tokens():
    model = random_llama(CONFIG).double()
    x = tokens(batch=3, seq=10)
    labels = x.roll(-1, dims=1)
    labels[:, :4] = IGNORE_INDEX  # the prompt
    labels[1, 7:] = IGNORE_INDEX  # a shorter, padded answer
    got = sequence_logprobs(model, x, labels)
    log_probs = torch.log_softmax(model(x), dim=-1)
    expected = torch.stack(
        [sum(log_probs[b, t, labels[b, t]] for t in range(10) if labels[b, t] != IGNORE_INDEX) for b in range(3)]
    )
    assert torch.allclose(got, expected, rtol=1e-12, atol=0)  # float64, two code paths


def test_dpo_nll_term_is_the_chosen_answers_mean_token_nll():
    from llama_from_scratch.finetuning.dpo import dpo_batch_loss

    model = random_llama(CONFIG).double()
    x = tokens(batch=4, seq=10)  # rows 0-1 chosen, rows 2-3 rejected
    labels = x.roll(-1, dims=1)
    labels[:, :4] = IGNORE_INDEX
    labels[1, 8:] = IGNORE_INDEX  # chosen answers of 6 and 4 tokens
    reference = sequence_logprobs(model, x, labels) - 0.5
    plain = dpo_batch_loss(model, x, labels, reference, beta=0.2)
    with_nll = dpo_batch_loss(model, x, labels, reference, beta=0.2, nll_weight=0.7)
    logps = sequence_logprobs(model, x, labels)
    nll = -(logps[0] / 6 + logps[1] / 4) / 2
    assert torch.allclose(with_nll, plain + 0.7 * nll, rtol=1e-12, atol=0)  # float64, the same terms summed
    with pytest.raises(ValueError, match="nll_weight"):
        FinetuneConfig(objective="dpo", nll_weight=-1.0)


def test_adapter_round_trip(tmp_path):
    model = random_llama(CONFIG)
    add_lora(model, rank=4, alpha=8, targets=("wq", "wk", "w2"))
    randomize_adapters(model)
    save_adapter(model, tmp_path / "adapter")
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4
    assert config["target_modules"] == ["q_proj", "k_proj", "down_proj"]
    other = load_adapter(random_llama(CONFIG), tmp_path / "adapter")
    for name, layer in lora_layers(model).items():
        loaded = lora_layers(other)[name]
        # the q/k row permutation out and back is a permutation: exact
        assert torch.equal(layer.lora_A, loaded.lora_A) and torch.equal(layer.lora_B, loaded.lora_B), name
    x = tokens()
    with torch.no_grad():
        assert torch.equal(model(x), other(x))


def test_adapter_of_another_model_is_refused(tmp_path):
    model = random_llama(CONFIG)
    add_lora(model, rank=4)
    save_adapter(model, tmp_path / "adapter")
    wider = random_llama(LlamaConfig(dim=48, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=64))
    with pytest.raises(FormatError, match=r"tensor 'base_model\.model\.model\.layers\.0\..*' has shape"):
        load_adapter(wider, tmp_path / "adapter")
    deeper = random_llama(LlamaConfig(dim=32, n_layers=3, n_heads=4, n_kv_heads=2, vocab_size=300, hidden_dim=64))
    with pytest.raises(FormatError, match="missing .* the first 'base_model.model.model.layers.2"):
        load_adapter(deeper, tmp_path / "adapter")


@needs_transformers
@needs_peft
@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' deprecation notices seen through peft
def test_peft_reads_our_adapters_and_we_read_peft_s(tmp_path):
    import peft

    from llama_from_scratch.checkpoints.hf import to_transformers

    model = random_llama(CONFIG)
    hf = to_transformers(model)  # the base model, before any adapter
    add_lora(model, rank=4, alpha=8)
    randomize_adapters(model)
    save_adapter(model, tmp_path / "ours")
    x = tokens()
    rounding = float32_rounding(model, x)
    with torch.no_grad():
        ours = model(x)
        theirs = peft.PeftModel.from_pretrained(copy.deepcopy(hf), tmp_path / "ours").eval()(x).logits
    # two float32 implementations of one function (other kernels, RoPE layouts): within float32 rounding
    assert_same_logits(theirs, ours, rounding)

    settings = peft.LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj", "up_proj"])
    peft_model = peft.get_peft_model(copy.deepcopy(hf), settings)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    peft_model.save_pretrained(tmp_path / "theirs")
    with torch.no_grad():
        expected = peft_model.eval()(x).logits
        loaded = load_adapter(random_llama(CONFIG), tmp_path / "theirs")
        assert {layer.rank for layer in lora_layers(loaded).values()} == {2}
        assert_same_logits(loaded(x), expected, float32_rounding(loaded, x))


def test_finetune_resumes_exactly(tmp_path, tokenizer):
    """SFT with LoRA: 4 steps at once equal 2 steps, a stop, and 2 more (pure batches, saved optimizer state)."""
    from llama_from_scratch.finetuning.sft import tokenize_dataset

    conversations = [
        [{"role": "user", "content": f"Line {i}?"}, {"role": "assistant", "content": "To be" if i % 2 else "Or not"}]
        for i in range(12)
    ]
    examples = tokenize_dataset(conversations, tokenizer, CHATML_TEMPLATE, tmp_path / "cache")
    assert tokenize_dataset(conversations, tokenizer, CHATML_TEMPLATE, tmp_path / "cache") == examples  # from the cache
    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, vocab_size=tokenizer.vocab_size, hidden_dim=64, max_seq_len=128)
    settings = dict(steps=4, batch_size=3, warmup_steps=1, eval_every=2, checkpoint_every=2, rank=2, lr=1e-2)
    train, val = examples[:10], examples[10:]
    finetune(random_llama(config), train, val, FinetuneConfig(**settings), tmp_path / "once")
    finetune(random_llama(config), train, val, FinetuneConfig(**{**settings, "steps": 2}), tmp_path / "twice")
    finetune(random_llama(config), train, val, FinetuneConfig(**settings), tmp_path / "twice", resume=True)
    from safetensors.torch import load_file

    once = load_file(tmp_path / "once" / "step-0000004" / "adapter" / "adapter_model.safetensors")
    twice = load_file(tmp_path / "twice" / "step-0000004" / "adapter" / "adapter_model.safetensors")
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)
    with pytest.raises(ValueError, match="rank: 2 -> 3"):
        changed = FinetuneConfig(**{**settings, "steps": 6, "rank": 3})
        finetune(random_llama(config), train, val, changed, tmp_path / "twice", resume=True)


def test_cli_finetune_resume_and_chat_with_the_adapter(tmp_path, tokenizer, monkeypatch, capsys):
    from llama_from_scratch.checkpoints import save_checkpoint
    from llama_from_scratch.cli import main

    config = LlamaConfig(dim=32, n_layers=2, n_heads=4, vocab_size=tokenizer.vocab_size, hidden_dim=64, max_seq_len=256)
    save_checkpoint(random_llama(config), tokenizer, tmp_path / "base", chat_template=CHATML_TEMPLATE)
    question = [{"role": "user", "content": "Who?"}]
    lines = [{"messages": question, "chosen": "Hamlet", "rejected": "Macbeth"}] * 10
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    conversations = [{"messages": line["messages"] + [{"role": "assistant", "content": "Hamlet"}]} for line in lines]
    (tmp_path / "sft.jsonl").write_text("\n".join(json.dumps(line) for line in conversations))
    common = ["finetune", "--base", str(tmp_path / "base"), "--batch-size", "2", "--eval-every", "2"]
    common += ["--data-cache", str(tmp_path / "cache")]
    out = str(tmp_path / "run")
    assert main([*common, "--data", str(tmp_path / "sft.jsonl"), "--out", out, "--steps", "2"]) == 0
    assert main([*common, "--data", str(tmp_path / "sft.jsonl"), "--out", out, "--steps", "3", "--resume"]) == 0
    assert (tmp_path / "run" / "step-0000003" / "adapter" / "adapter_config.json").exists()
    # DPO on top of the SFT fine-tune (its adapter merged into the base, which is then the reference)
    assert main([*common, "--data", str(tmp_path / "pairs.jsonl"), "--objective", "dpo", "--method", "full",
                 "--adapter", out, "--out", str(tmp_path / "dpo"), "--steps", "2"]) == 0
    assert "val preference_accuracy" in capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", io.StringIO("Who?\n"))
    assert main(["chat", "--checkpoint", str(tmp_path / "base"), "--adapter", out, "--max-new-tokens", "3"]) == 0
    monkeypatch.setattr("sys.stdin", io.StringIO("Who?\n"))  # a full fine-tune's checkpoint is a whole chat model
    assert main(["chat", "--checkpoint", str(tmp_path / "dpo"), "--max-new-tokens", "3"]) == 0
    assert main([*common, "--data", str(tmp_path / "sft.jsonl"), "--out", out, "--steps", "3"]) == 1
    assert "already holds a run" in capsys.readouterr().err
    (tmp_path / "bad.jsonl").write_text('{"messages": [{"role": "user", "content": "hi"}]}\n')
    assert main([*common, "--data", str(tmp_path / "bad.jsonl"), "--out", str(tmp_path / "bad")]) == 1
    assert "bad.jsonl:1: the last message must be the assistant's" in capsys.readouterr().err


def test_qlora_wraps_a_quantized_base():
    from llama_from_scratch.quantization.swap import quantize

    model = quantize(random_llama(CONFIG), "int8")
    x = tokens()
    with torch.no_grad():
        before = model(x)
    add_lora(model, rank=4, targets=("wq", "w2"))
    assert {type(layer.base).__name__ for layer in lora_layers(model).values()} == {"Int8Linear"}
    with torch.no_grad():
        assert torch.equal(model(x), before)  # B = 0: exactly the quantized model
    randomize_adapters(model)
    x = tokens()
    with torch.no_grad():
        unmerged = model(x)
    rounding = float32_rounding(model, x)
    merge_lora(model)  # dequantized weight + ΔW, as plain float32 layers
    with torch.no_grad():
        assert_same_logits(model(x), unmerged, rounding)


@needs_corpus
def test_play_task_holds_out_the_end_of_every_play():
    from llama_from_scratch.finetuning import tasks

    task = tasks.play_task()
    assert len(task.titles) == len(tasks.TASK_PLAYS) == 10 and "Hamlet" in task.titles
    train_passages = {q.passage for q in task.train}
    assert not any(q.passage in train_passages for q in task.test)  # no held-out passage is trained on
    for play in tasks.TASK_PLAYS:
        n_train = sum(q.play == play for q in task.train)
        n_test = sum(q.play == play for q in task.test)
        assert n_test == pytest.approx(0.25 * n_train, abs=1)  # the last fifth of each play
    assert tasks.play_task() == task  # deterministic
    pairs = tasks.preference_data(task, task.train[:50])
    genre = {title: task.genres[play] for title, play in zip(task.titles, task.genres)}
    for pair, q in zip(pairs, task.train[:50]):
        assert pair["chosen"] == q.title != pair["rejected"]
        assert genre[pair["rejected"]] == genre[q.title] or sum(g == genre[q.title] for g in genre.values()) == 1
    assert tasks.normalize("  the tempest.\nmore") == tasks.normalize("The Tempest")
    assert tasks.normalize("A Midsummer Night\u2019s Dream") == tasks.normalize("A Midsummer Night's Dream")
    few = tasks.few_shot_examples(task, 3)
    assert len({q.play for q in few}) == 3 and all(q in task.train for q in few)


def test_resume_refuses_another_base_or_other_data(tmp_path, tokenizer):
    """A LoRA checkpoint holds adapters only: resuming it onto other weights or data is an error naming both."""
    from llama_from_scratch.finetuning.finetune import IDENTITY_FILE
    from llama_from_scratch.finetuning.sft import tokenize_dataset

    conversations = [
        [{"role": "user", "content": f"Line {i}?"}, {"role": "assistant", "content": "To be" if i % 2 else "Or not"}]
        for i in range(8)
    ]
    examples = tokenize_dataset(conversations, tokenizer, CHATML_TEMPLATE)
    config = LlamaConfig(dim=32, n_layers=1, n_heads=4, vocab_size=tokenizer.vocab_size, hidden_dim=64, max_seq_len=128)
    settings = dict(steps=1, batch_size=2, warmup_steps=0, eval_every=1, checkpoint_every=1, rank=2)
    train, val = examples[:6], examples[6:]
    finetune(random_llama(config, seed=0), train, val, FinetuneConfig(**settings), tmp_path, base="model A")
    assert json.loads((tmp_path / "step-0000001" / IDENTITY_FILE).read_text())["base"] == "model A"
    more = FinetuneConfig(**{**settings, "steps": 2})
    other = random_llama(config, seed=0)
    with torch.no_grad():
        other.layers[0].attention.wq.weight[0, 0] += 1e-3  # one weight differs
    with pytest.raises(ValueError, match="different base model.*model A.*now: model B"):
        finetune(other, train, val, more, tmp_path, resume=True, base="model B")
    with pytest.raises(ValueError, match="different training data"):
        finetune(random_llama(config, seed=0), train[::-1], val, more, tmp_path, resume=True)
    finetune(random_llama(config, seed=0), train, val, more, tmp_path, resume=True)  # the same base and data: fine
    (tmp_path / "step-0000002" / IDENTITY_FILE).unlink()
    with pytest.raises(FormatError, match="cannot tell which base"):
        finetune(random_llama(config, seed=0), train, val, FinetuneConfig(**{**settings, "steps": 3}), tmp_path, True)


def test_a_frozen_output_head_gets_no_weight_gradient_computed():
    """Under LoRA the head is frozen: the fused loss skips its weight gradient, a third of its matrix work,
    and the hidden states' gradient is the same computation either way (so exactly equal)."""
    from torch.utils.flop_counter import FlopCounterMode

    from llama_from_scratch.cross_entropy import linear_cross_entropy

    generator = torch.Generator().manual_seed(0)
    rows, dim, vocab = 6, 8, 50
    weight = torch.randn(vocab, dim, generator=generator)
    targets = torch.randint(0, vocab, (rows,), generator=generator)
    flops, grads = {}, {}
    for trained in (False, True):
        hidden = torch.randn(rows, dim, generator=torch.Generator().manual_seed(1), requires_grad=True)
        w = weight.clone().requires_grad_(trained)
        with FlopCounterMode(display=False) as counter:
            linear_cross_entropy(hidden, w, targets, chunk_size=4).backward()
        flops[trained], grads[trained] = counter.get_total_flops(), hidden.grad
        assert (w.grad is not None) == trained
    matmul = 2 * rows * dim * vocab  # one (rows, dim) x (dim, vocab) product
    assert flops == {False: 2 * matmul, True: 3 * matmul}  # logits and d/d hidden; plus d/d weight if trained
    assert torch.equal(grads[False], grads[True])


# Unusual sizes, so that no other test's tensor has the shape of one of this model's weights (weight_copies).
DPO_CONFIG = LlamaConfig(dim=24, n_layers=2, n_heads=3, n_kv_heads=1, vocab_size=301, hidden_dim=40, max_seq_len=32)


def random_pairs(n, seed=0):
    """``n`` (chosen, rejected) examples of random tokens: a prompt without labels, then a short answer."""
    generator = torch.Generator().manual_seed(seed)

    def example(length, answer):
        tokens = torch.randint(0, DPO_CONFIG.vocab_size, (length,), generator=generator).tolist()
        return Example(tokens, [IGNORE_INDEX] * (length - answer) + tokens[length - answer :])

    return [(example(10, 3), example(9 + i % 2, 2)) for i in range(n)]


def weight_shaped_tensors(model) -> list[torch.Tensor]:
    """The live plain tensors and parameters shaped like one of ``model``'s weight matrices (torch.compile
    leaves fake tensors of symbolic shapes behind: those are not counted)."""
    gc.collect()
    shapes = {p.shape for p in model.parameters() if p.ndim == 2}
    return [t for t in gc.get_objects() if type(t) in (torch.Tensor, torch.nn.Parameter) and not t.is_meta and t.shape in shapes]


def weight_copies(model, alive_before: set[int]) -> list[torch.Tensor]:
    """Tensors made since ``alive_before`` (ids of :func:`weight_shaped_tensors` then) that hold one of
    ``model``'s weight matrices in another storage: copies. Tensors another test left alive are not counted."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weights = [p for p in model.parameters() if p.ndim == 2]
    return [
        t for t in weight_shaped_tensors(model)
        if id(t) not in alive_before and t.untyped_storage().data_ptr() not in own
        and any(t.shape == w.shape and torch.equal(t.detach(), w.detach()) for w in weights)
    ]


def test_dpo_reference_is_the_base_model_with_its_adapters_off():
    from llama_from_scratch.finetuning.dpo import pair_logprobs, reference_logprobs

    pairs = random_pairs(5)
    model = random_llama(DPO_CONFIG).double()
    base = pair_logprobs(model, pairs, batch_size=2)
    add_lora(model, rank=2, alpha=4, dropout=0.1)
    randomize_adapters(model)  # a policy that has moved away from its base
    assert not torch.equal(pair_logprobs(model, pairs, batch_size=2), base)
    # Adapters off, every LoRALinear computes base(x): the same operations on the same numbers as the
    # untouched model, so the same bits, not merely close ones.
    assert torch.equal(reference_logprobs(model, pairs, batch_size=2), base)
    assert all(layer.enabled for layer in lora_layers(model).values())  # switched back on afterwards


@pytest.mark.parametrize("method", ["lora", "full"])
def test_dpo_reference_needs_no_second_copy_of_the_model(monkeypatch, method):
    """finetune's DPO reference: the policy model itself (LoRA: adapters off; full: before the first step),
    its log-probabilities those of the untouched base, and no copy of a weight alive meanwhile."""
    from llama_from_scratch.finetuning import dpo

    seen, logps = [], []
    original = dpo.pair_logprobs

    def spy(model, pairs, batch_size, pad_id):  # reference_logprobs's pass over the pairs
        adapters_on = [layer.enabled for layer in lora_layers(model).values()]
        seen.append((id(model), adapters_on, len(weight_copies(model, alive_before))))
        logps.append(original(model, pairs, batch_size, pad_id))
        return logps[-1]

    monkeypatch.setattr(dpo, "pair_logprobs", spy)
    train_pairs, val_pairs = random_pairs(6, seed=1), random_pairs(2, seed=2)
    config = FinetuneConfig(steps=2, batch_size=2, warmup_steps=0, eval_every=2, checkpoint_every=10, rank=2,
                            method=method, objective="dpo")
    policy = random_llama(DPO_CONFIG)
    alive_before = {id(t) for t in weight_shaped_tensors(policy)}
    finetune(policy, train_pairs, val_pairs, config)
    adapters = [False] * len(LORA_TARGETS) * DPO_CONFIG.n_layers if method == "lora" else []
    # the reference first: training pairs, then validation pairs (the calls after them are the policy's validation)
    assert seen[:2] == [(id(policy), adapters, 0)] * 2
    monkeypatch.undo()
    del policy  # the untouched base is rebuilt from its seed only now: no copy of it lived during the run
    base = random_llama(DPO_CONFIG)
    for pairs, reference in zip((train_pairs, val_pairs), logps):  # same batches, same weights: the same bits
        assert torch.equal(dpo.pair_logprobs(base, pairs, config.batch_size, 0), reference)


def test_dpo_validating_on_its_training_pairs_computes_their_reference_once(monkeypatch):
    """A demonstration run measured on the pairs it trains on (chapter 10's) needs their reference log-probabilities
    once: one pass over the pairs for the reference, one for the validation at the end, not a third."""
    from llama_from_scratch.finetuning import dpo

    calls = []
    original = dpo.pair_logprobs
    monkeypatch.setattr(dpo, "pair_logprobs", lambda *args: calls.append(1) or original(*args))
    pairs = random_pairs(4, seed=3)
    config = FinetuneConfig(steps=1, batch_size=2, warmup_steps=0, eval_every=1, checkpoint_every=10, rank=2,
                            objective="dpo")
    history = finetune(random_llama(DPO_CONFIG), pairs, pairs, config)
    assert len(calls) == 2 and "val_loss" in history[-1]


def test_batched_answers_are_the_single_answers(tokenizer):
    """tasks.answers (one batch, prompts left-padded) gives tasks.answer's greedy replies: in float64 the padding's
    rounding is far below any gap between the two best logits of a random model."""
    from llama_from_scratch.finetuning import tasks

    model = random_llama(CONFIG).double()
    conversations = [[{"role": "user", "content": text}] for text in ("To be", "Whether 'tis nobler in the mind", "or")]
    single = [tasks.answer(model, tokenizer, CHATML_TEMPLATE, c, max_new_tokens=6) for c in conversations]
    assert tasks.answers(model, tokenizer, CHATML_TEMPLATE, conversations, max_new_tokens=6) == single
    assert len({len(chat_prompt(tokenizer, CHATML_TEMPLATE, c)) for c in conversations}) == 3  # padding is used


def test_own_mistakes_rejects_the_models_own_greedy_answer(tokenizer):
    """On-policy pairs: each wrong question's rejected side is the model's greedy reply (tasks.answer, one at a
    time), never the chosen title; a question the model answers right gives no pair; the same pairs every time.
    float64, as the test above: a batch of 2 then 1, or of 3, gives the one-at-a-time replies exactly."""
    from llama_from_scratch.finetuning import tasks

    model = random_llama(dataclasses.replace(CONFIG, max_seq_len=256)).double().train()  # the question's ~160 tokens
    task = tasks.PlayTask(("Hamlet", "Macbeth"), [], [], {"hamlet": "tragedies", "macbeth": "tragedies"})
    items = [tasks.PlayQuestion(text, "hamlet", "Hamlet") for text in ("To be", "or not", "Whether 'tis")]
    replies = [tasks.answer(model, tokenizer, CHATML_TEMPLATE, tasks.messages(task, q)) for q in items]
    assert all(tasks.normalize(r) != "hamlet" for r in replies)  # a random model does not say the title
    items[1] = tasks.PlayQuestion(items[1].passage, "macbeth", replies[1].upper() + ".")  # answered right
    pairs = tasks.own_mistakes(model, tokenizer, CHATML_TEMPLATE, task, items, batch_size=2)
    assert pairs == [{"messages": tasks.messages(task, items[i]), "chosen": "Hamlet", "rejected": replies[i]}
                     for i in (0, 2)]
    assert model.training  # put back as it was
    assert tasks.own_mistakes(model, tokenizer, CHATML_TEMPLATE, task, items, batch_size=3) == pairs


def test_cli_own_mistakes_only_for_dpo_on_the_plays_task(capsys):
    from llama_from_scratch.cli import main

    for objective, data in (("sft", "plays"), ("dpo", "pairs.jsonl")):
        assert main(["finetune", "--base", "nowhere", "--out", "nowhere", "--objective", objective,
                     "--data", data, "--pairs", "own-mistakes"]) == 1
        assert f"--pairs own-mistakes needs --objective dpo and --data plays, got --objective {objective}" in (
            capsys.readouterr().err)


def test_preference_metrics_of_the_reference_itself():
    """Policy = reference: every log-ratio and margin is 0, so the DPO loss is ln 2; the preference accuracy
    is how often the reference already prefers the chosen answer."""
    from llama_from_scratch.finetuning.dpo import preference_metrics

    logps = torch.tensor([[-1.0, -2.0], [-3.0, -1.0], [-0.5, -4.0], [-2.0, -2.5]], dtype=torch.float64)
    same = preference_metrics(logps, logps, beta=0.1)
    assert same["loss"] == pytest.approx(math.log(2), abs=1e-15)  # float64 softplus(0): exact to rounding
    assert same["reward_margin"] == same["chosen_log_ratio"] == same["rejected_log_ratio"] == 0.0
    assert same["preference_accuracy"] == 0.75 and same["reward_accuracy"] == 0.0
    moved = preference_metrics(logps + torch.tensor([0.5, -0.5], dtype=torch.float64), logps, beta=0.1)
    assert moved["chosen_log_ratio"] == 0.5 and moved["rejected_log_ratio"] == -0.5
    assert moved["reward_margin"] == pytest.approx(0.1, abs=1e-15) and moved["reward_accuracy"] == 1.0


def test_cli_finetune_accepts_every_chat_template():
    from llama_from_scratch.chat import CHAT_TEMPLATES
    from llama_from_scratch.cli import parser

    for name in CHAT_TEMPLATES:
        args = parser().parse_args(["finetune", "--base", "b", "--out", "o", "--template", name])
        assert args.template == name


def test_finetune_config_owns_the_defaults_of_a_run():
    """The learning rate follows the method, the floor the rate; the template and pad id follow the checkpoint."""
    from types import SimpleNamespace

    from llama_from_scratch.chat import CHAT_TEMPLATES
    from llama_from_scratch.finetuning.finetune import LEARNING_RATES
    from llama_from_scratch.finetuning.sft import padding_id

    for method in ("lora", "full"):
        config = FinetuneConfig(method=method)
        assert config.lr == LEARNING_RATES[method] and config.min_lr == config.lr * 0.1
    assert LEARNING_RATES["full"] < LEARNING_RATES["lora"]  # every weight moves: gently
    assert FinetuneConfig(lr=2e-3).min_lr == 2e-3 * 0.1
    assert FinetuneConfig().chat_template(None) == CHAT_TEMPLATES["chatml"]
    assert FinetuneConfig().chat_template("{{ own }}") == "{{ own }}"
    assert FinetuneConfig(template="llama2").chat_template("{{ own }}") == LLAMA2_TEMPLATE
    with pytest.raises(ValueError, match="FinetuneConfig.template must be one of"):
        FinetuneConfig(template="alpaca")
    assert padding_id(SimpleNamespace(pad_id=None, eos_id=2)) == 2
    assert padding_id(SimpleNamespace(pad_id=0, eos_id=2)) == 0
    assert padding_id(SimpleNamespace(pad_id=None, eos_id=None)) == 0


def test_fine_tuning_batches_split_across_processes_as_pretraining_windows_do():
    from llama_from_scratch.finetuning.sft import sample_indices

    whole = sample_indices(50, step=3, batch_size=4, seed=5)
    halves = [sample_indices(50, step=3, batch_size=2, seed=5, rank=r, world_size=2) for r in (0, 1)]
    assert halves[0] + halves[1] == whole


def test_finetune_without_a_folder_cannot_resume(tokenizer):
    example = tokenize_conversation(tokenizer, CHATML_TEMPLATE, [{"role": "user", "content": "Who?"},
                                                                 {"role": "assistant", "content": "Hamlet"}])
    with pytest.raises(ValueError, match="resume and overwrite need out_dir"):
        finetune(random_llama(CONFIG), [example], [example], FinetuneConfig(steps=1), resume=True)


@needs_corpus
def test_play_task_passages_respect_max_chars():
    from llama_from_scratch.finetuning import tasks

    task = tasks.play_task(train_per_play=5, test_per_play=5, max_chars=250)
    assert all(len(q.passage) <= 250 for q in task.train + task.test) and len(task.test) == 50
