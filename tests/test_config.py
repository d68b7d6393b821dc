import pytest

from llama_from_scratch import PRESETS, LlamaConfig, count_parameters, ffn_hidden_dim

PUBLISHED_PARAMETERS = {
    "llama-7b": 6.74e9,
    "llama-13b": 13.02e9,
    "llama-33b": 32.53e9,
    "llama-65b": 65.29e9,
    "llama2-7b": 6.74e9,
    "llama2-13b": 13.02e9,
    "llama2-70b": 68.98e9,
    # Llama 3 (Meta, 2024): exact published counts; 3.2 ties its embeddings
    "llama3-8b": 8_030_261_248,
    "llama3-70b": 70_553_706_496,
    "llama3.1-8b": 8_030_261_248,
    "llama3.1-70b": 70_553_706_496,
    "llama3.1-405b": 405_853_388_800,
    "llama3.2-1b": 1_235_814_400,
    "llama3.2-3b": 3_212_749_824,
    "smollm2-135m": 134.5e6,
}


@pytest.mark.parametrize("name", PUBLISHED_PARAMETERS)
def test_preset_parameter_counts_match_published_sizes(name):
    count = count_parameters(PRESETS[name])  # on the meta device: no memory used
    # Llama 3's exact counts must match to the parameter; the older papers round theirs (6.74e9, 134.5e6), which
    # puts the true count within half a unit of the last digit they give.
    published = PUBLISHED_PARAMETERS[name]
    if isinstance(published, int):
        assert count == published
    else:
        mantissa, exponent = f"{published:e}".split("e")  # 6.74e9 -> '6.740000', '+09'
        digits = len(mantissa.replace(".", "").rstrip("0"))  # 3 significant digits
        assert abs(count - published) <= 0.5 * 10 ** (int(exponent) - digits + 1), count


def test_every_preset_is_checked_or_a_teaching_model():
    assert set(PRESETS) - set(PUBLISHED_PARAMETERS) == {"tiny", "small"}


@pytest.mark.parametrize(
    ("dim", "multiple_of", "multiplier", "expected"),
    [
        (4096, 256, None, 11008),  # 7B
        (5120, 256, None, 13824),  # 13B
        (6656, 256, None, 17920),  # 33B
        (8192, 256, None, 22016),  # 65B
        (8192, 4096, 1.3, 28672),  # Llama 2 70B
    ],
)
def test_ffn_hidden_dim_follows_metas_rule(dim, multiple_of, multiplier, expected):
    assert ffn_hidden_dim(dim, multiple_of, multiplier) == expected


def test_presets_hidden_dims_and_head_dims():
    assert PRESETS["llama2-70b"].hidden_dim == 28672
    assert PRESETS["llama2-70b"].n_rep == 8
    assert PRESETS["smollm2-135m"].head_dim == 64
    assert PRESETS["llama-33b"].head_dim == 128


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dim": 100, "n_heads": 3}, "dim"),
        ({"n_heads": 8, "n_kv_heads": 3}, "n_heads"),
        ({"dim": 0}, "dim"),
        ({"n_layers": -1}, "n_layers"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"n_kv_heads": 0}, "n_kv_heads"),
        ({"max_seq_len": 0}, "max_seq_len"),
        ({"hidden_dim": 0}, "hidden_dim"),
        ({"dim": 64.0}, "dim"),
        ({"head_dim": 7}, "head_dim"),
        ({"norm_eps": 0.0}, "norm_eps"),
        ({"rope_theta": -1.0}, "rope_theta"),
        ({"ffn_dim_multiplier": -1.0}, "ffn_dim_multiplier"),
    ],
)
def test_invalid_config_names_the_field(changes, field):
    base = {"dim": 64, "n_layers": 2, "n_heads": 4, "vocab_size": 32}
    with pytest.raises(ValueError, match=field):
        LlamaConfig(**{**base, **changes})


def test_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match="llama2-7b"):
        LlamaConfig.from_preset("llama-8b")


def test_from_preset_with_changes_is_validated():
    assert LlamaConfig.from_preset("tiny", vocab_size=300).vocab_size == 300
    with pytest.raises(ValueError, match="n_kv_heads"):
        LlamaConfig.from_preset("tiny", n_kv_heads=0)


def test_replace_derives_the_sizes_that_follow_their_rules_again():
    smaller = LlamaConfig.from_preset("small", dim=128)
    assert (smaller.hidden_dim, smaller.head_dim) == (ffn_hidden_dim(128, 64, None), 32)
    smol = LlamaConfig.from_preset("smollm2-135m", n_layers=2)
    assert smol.hidden_dim == 1536  # not Meta's rule: an explicit size stays
    assert LlamaConfig.from_preset("small").replace(dim=128, hidden_dim=300).hidden_dim == 300
