"""Checkpoints: the hand-written safetensors format, config.json layouts, model folders.

Round trips must give bit-identical logits; fp16/bf16 files (ours and the `safetensors`
package's) must decode to the exact rounded values; every bad input must fail with one line
naming the problem; and a failed write must leave the old file untouched.
"""
import json
from functools import partial

import numpy as np
import pytest

from mini_llm import checkpoint, safetensors_file
from mini_llm.checkpoint import CheckpointError
from mini_llm.model.transformer import MiniTransformer, TransformerConfig
from tests.errors import one_line_error


def tiny_config(**overrides):
    base = dict(vocab_size=40, hidden_size=16, num_layers=2, num_heads=4, num_kv_heads=4,
                intermediate_size=24, max_seq_length=16)
    return TransformerConfig(**{**base, **overrides})


def token_ids():
    return np.random.default_rng(0).integers(0, 40, size=(2, 9))


def saved_model(directory, dtype=np.float32, **overrides):
    model = MiniTransformer(tiny_config(**overrides), seed=1, dtype=dtype)
    model.save_pretrained(directory)
    return model


# call fn, expect a CheckpointError whose one-line message names every needle
checkpoint_error = partial(one_line_error, error=CheckpointError)


# ---------------------------------------------------------------------------------------------
# Model round trips

CONFIGS = {
    "untied": dict(),
    "tied": dict(tie_word_embeddings=True),
    "gqa_window": dict(num_kv_heads=2, sliding_window=3, rope_theta=5000.0, norm_eps=1e-6),
    "head_dim": dict(num_kv_heads=1, head_dim=8),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CONFIGS)
def test_round_trip_gives_identical_logits(case, dtype, tmp_path):
    model = saved_model(tmp_path, dtype, **CONFIGS[case])
    loaded = MiniTransformer.from_pretrained(tmp_path, dtype=dtype)
    assert loaded.config == model.config
    assert set(loaded.params) == set(model.params)
    for name, p in model.params.items():
        assert loaded.params[name].dtype == dtype
        np.testing.assert_array_equal(loaded.params[name], p, err_msg=name)
    np.testing.assert_array_equal(loaded.forward(token_ids()), model.forward(token_ids()))
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["torch_dtype"] == np.dtype(dtype).name
    assert ("lm_head.weight" in safetensors_file.read_safetensors(tmp_path / "model.safetensors")) \
        == (case != "tied")


@pytest.mark.parametrize("stored", ["float16", "bfloat16"])
def test_half_precision_files_load_as_the_rounded_weights(stored, tmp_path):
    model = saved_model(tmp_path, num_kv_heads=2)
    safetensors_file.write_safetensors(tmp_path / "model.safetensors", model.params, dtype=stored)
    loaded = MiniTransformer.from_pretrained(tmp_path)
    for name, p in model.params.items():
        if stored == "float16":
            rounded = p.astype(np.float16).astype(np.float32)
        else:
            rounded = safetensors_file.bfloat16_bits_to_float32(safetensors_file.float32_to_bfloat16_bits(p))
        np.testing.assert_array_equal(loaded.params[name], rounded, err_msg=name)
        assert np.max(np.abs(loaded.params[name] - p)) <= np.max(np.abs(p)) * 2.0 ** -8


def test_sharded_checkpoint(tmp_path):
    model = saved_model(tmp_path, num_kv_heads=2)
    (tmp_path / "model.safetensors").unlink()
    names = list(model.params)
    shards = {"model-00001-of-00002.safetensors": names[:7],
              "model-00002-of-00002.safetensors": names[7:]}
    for shard, shard_names in shards.items():
        safetensors_file.write_safetensors(tmp_path / shard, {n: model.params[n] for n in shard_names},
                                     metadata={"format": "pt"})
    weight_map = {n: shard for shard, shard_names in shards.items() for n in shard_names}
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    loaded = MiniTransformer.from_pretrained(tmp_path)
    np.testing.assert_array_equal(loaded.forward(token_ids()), model.forward(token_ids()))


def test_tied_file_with_lm_head_equal_to_embedding_is_accepted(tmp_path):
    model = saved_model(tmp_path, tie_word_embeddings=True)
    tensors = dict(model.params, **{"lm_head.weight": model.params["model.embed_tokens.weight"],
                                    "model.rotary_emb.inv_freq": np.ones(2, np.float32)})
    safetensors_file.write_safetensors(tmp_path / "model.safetensors", tensors)
    loaded = MiniTransformer.from_pretrained(tmp_path)
    assert "lm_head.weight" not in loaded.params
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    safetensors_file.write_safetensors(tmp_path / "model.safetensors", tensors)
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), "lm_head.weight differs",
                     "tie_word_embeddings")


# ---------------------------------------------------------------------------------------------
# The safetensors format itself


def test_bfloat16_rounds_to_nearest_even():
    x = np.array([1.0, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, 1 + 2.0 ** -8 + 2.0 ** -20, -2.5,
                  np.inf, -np.inf, np.finfo(np.float32).max], dtype=np.float32)
    # 1+2^-8 is halfway between 0x3F80 and 0x3F81: ties go to the even 0x3F80;
    # 1+3*2^-8 is halfway between 0x3F81 and 0x3F82: even is 0x3F82; just above half rounds up;
    # float32 max rounds up past the largest bfloat16, to inf.
    expected = [0x3F80, 0x3F80, 0x3F82, 0x3F81, 0xC020, 0x7F80, 0xFF80, 0x7F80]
    assert safetensors_file.float32_to_bfloat16_bits(x).tolist() == expected
    nan = safetensors_file.float32_to_bfloat16_bits(np.array([np.nan], np.float32))
    assert np.isnan(safetensors_file.bfloat16_bits_to_float32(nan)).all()


def test_every_dtype_round_trips_with_metadata(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"f64": rng.normal(size=(3, 2)), "f32": rng.normal(size=5).astype(np.float32),
               "f16": rng.normal(size=(2, 2)).astype(np.float16),
               "i64": np.arange(6, dtype=np.int64).reshape(2, 3) - 3,
               "i32": np.array([7, -1], np.int32), "scalar": np.float32(2.5).reshape(()),
               "empty": np.zeros((0, 4), np.float32)}
    path = tmp_path / "t.safetensors"
    safetensors_file.write_safetensors(path, tensors, metadata={"note": "hi"})
    raw = path.read_bytes()
    assert (8 + int.from_bytes(raw[:8], "little")) % 8 == 0      # data starts 8-aligned
    back = safetensors_file.read_safetensors(path)
    assert safetensors_file.read_metadata(path) == {"note": "hi"}
    for name, array in tensors.items():
        assert back[name].dtype == array.dtype and back[name].shape == array.shape
        np.testing.assert_array_equal(back[name], array)
    as64 = safetensors_file.read_safetensors(path, dtype=np.float64)
    assert as64["f16"].dtype == np.float64 and as64["i64"].dtype == np.int64


def test_files_are_interchangeable_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    rng = np.random.default_rng(0)
    tensors = {"a": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=7),
               "c": rng.normal(size=(2, 3)).astype(np.float16), "d": np.arange(5, dtype=np.int64)}
    st.save_file(tensors, str(tmp_path / "theirs.safetensors"), metadata={"format": "pt"})
    ours = safetensors_file.read_safetensors(tmp_path / "theirs.safetensors")
    safetensors_file.write_safetensors(tmp_path / "ours.safetensors", tensors)
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))
    for name, array in tensors.items():
        np.testing.assert_array_equal(ours[name], array)
        np.testing.assert_array_equal(theirs[name], array)
        assert ours[name].dtype == theirs[name].dtype == array.dtype


def test_bfloat16_agrees_with_torch_and_safetensors(tmp_path):
    torch = pytest.importorskip("torch")
    st = pytest.importorskip("safetensors.torch")
    x = np.random.default_rng(0).normal(size=(64, 33)).astype(np.float32)
    x[0, :4] = [1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8, np.inf, -0.0]
    torch_bf16 = torch.from_numpy(x).to(torch.bfloat16)
    st.save_file({"w": torch_bf16}, str(tmp_path / "theirs.safetensors"))
    read = safetensors_file.read_safetensors(tmp_path / "theirs.safetensors")["w"]
    np.testing.assert_array_equal(read, torch_bf16.float().numpy())
    safetensors_file.write_safetensors(tmp_path / "ours.safetensors", {"w": x}, dtype="bfloat16")
    theirs = st.load_file(str(tmp_path / "ours.safetensors"))["w"]
    assert theirs.dtype == torch.bfloat16
    assert torch.equal(theirs.view(torch.int16), torch_bf16.view(torch.int16))


# ---------------------------------------------------------------------------------------------
# config.json layouts

LLAMA2_PUBLISHED = {   # the shape of meta-llama/Llama-2-7b-hf's config.json (transformers 4.x)
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2,
    "hidden_act": "silu", "hidden_size": 4096, "initializer_range": 0.02,
    "intermediate_size": 11008, "max_position_embeddings": 4096, "model_type": "llama",
    "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None,
    "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.31.0",
    "use_cache": True, "vocab_size": 32000}

MISTRAL_TRANSFORMERS5 = {   # transformers 5: rope_parameters, dtype, explicit head_dim
    "architectures": ["MistralForCausalLM"], "attention_dropout": 0.0, "dtype": "bfloat16",
    "head_dim": 128, "hidden_act": "silu", "hidden_size": 5120, "intermediate_size": 14336,
    "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
    "num_hidden_layers": 40, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
    "rope_parameters": {"rope_theta": 1000000.0, "rope_type": "default"},
    "sliding_window": None, "tie_word_embeddings": False, "vocab_size": 131072}


def test_published_llama_config():
    config = checkpoint.config_from_hf(LLAMA2_PUBLISHED)
    assert config == TransformerConfig(vocab_size=32000, hidden_size=4096, num_layers=32,
                                       num_heads=32, num_kv_heads=32, intermediate_size=11008,
                                       max_seq_length=4096, sliding_window=None,
                                       rope_theta=10000.0, norm_eps=1e-5,
                                       tie_word_embeddings=False, head_dim=None)


def test_transformers5_mistral_config():
    config = checkpoint.config_from_hf(MISTRAL_TRANSFORMERS5)
    assert (config.head_dim, config.hidden_size) == (128, 5120)
    assert (config.rope_theta, config.sliding_window, config.num_kv_heads) == (1e6, None, 8)
    windowed = dict(MISTRAL_TRANSFORMERS5, sliding_window=4096, head_dim=160)
    assert checkpoint.config_from_hf(windowed).sliding_window == 4096
    assert checkpoint.config_from_hf(windowed).head_dim == 160        # 5120 / 32: the default


@pytest.mark.parametrize("case", CONFIGS)
def test_config_round_trip(case):
    config = tiny_config(**CONFIGS[case])
    assert checkpoint.config_from_hf(checkpoint.config_to_hf(config)) == config


@pytest.mark.parametrize("change, needles", [
    ({"model_type": "gpt2"}, ["model_type 'gpt2'", "llama and mistral"]),
    ({"rope_scaling": {"factor": 8.0, "rope_type": "dynamic"}}, ["rope_scaling", "'dynamic'"]),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, ["rope_parameters", "'yarn'"]),
    ({"mlp_bias": True}, ["mlp_bias"]),
    ({"attention_bias": True}, ["attention_bias"]),
    ({"num_key_value_heads": 5}, ["num_kv_heads=5"]),
    ({"minillm_version": 99}, ["minillm_version 99"]),
])
def test_unsupported_configs_are_refused(change, needles):
    checkpoint_error(lambda: checkpoint.config_from_hf(dict(LLAMA2_PUBLISHED, **change),
                                                       source="x/config.json"),
                     "x/config.json", *needles)


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the problem


def test_missing_directory_config_and_weights(tmp_path):
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path / "nope"), "nope", "does not exist")
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), "no config.json")
    (tmp_path / "config.json").write_text(json.dumps(checkpoint.config_to_hf(tiny_config())))
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), "no model.safetensors")
    (tmp_path / "config.json").write_text("{not json")
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), "config.json", "not valid JSON")


def test_missing_mis_shaped_and_unexpected_tensors(tmp_path):
    model = saved_model(tmp_path)
    path = tmp_path / "model.safetensors"
    name = "model.layers.1.mlp.up_proj.weight"
    safetensors_file.write_safetensors(path, {n: p for n, p in model.params.items() if n != name})
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), path, name, "missing")
    safetensors_file.write_safetensors(path, dict(model.params, **{name: np.zeros((24, 15))}))
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), path, name, "(24, 15)", "(24, 16)")
    safetensors_file.write_safetensors(path, dict(model.params, **{"model.layers.0.mlp.bias": np.ones(3)}))
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), "unexpected tensor",
                     "model.layers.0.mlp.bias")


def test_truncated_and_corrupt_files(tmp_path):
    saved_model(tmp_path)
    path = tmp_path / "model.safetensors"
    good = path.read_bytes()
    path.write_bytes(good[:len(good) // 2])
    checkpoint_error(lambda: checkpoint.load_pretrained(tmp_path), path, "outside", "truncated")
    path.write_bytes(good[:40])
    checkpoint_error(lambda: safetensors_file.read_safetensors(path), path, "header length", "beyond")
    path.write_bytes(good[:5])
    checkpoint_error(lambda: safetensors_file.read_safetensors(path), path, "too short")
    n = int.from_bytes(good[:8], "little")
    path.write_bytes(good[:8] + b"{" + b"x" * (n - 1) + good[8 + n:])
    checkpoint_error(lambda: safetensors_file.read_safetensors(path), path, "corrupt safetensors header")
    header = json.dumps({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header + bytes(8))
    checkpoint_error(lambda: safetensors_file.read_safetensors(path), path, "dtype C64")
    checkpoint_error(lambda: safetensors_file.read_safetensors(tmp_path / "absent.safetensors"),
                     "absent.safetensors", "cannot open")


def test_unstorable_input_is_refused(tmp_path):
    path = tmp_path / "t.safetensors"
    checkpoint_error(lambda: safetensors_file.write_safetensors(path, {"w": np.ones(2)}, dtype="int8"),
                     "int8")
    checkpoint_error(lambda: safetensors_file.write_safetensors(path, {"w": np.ones(2, np.complex64)}),
                     "complex64")
    checkpoint_error(lambda: safetensors_file.write_safetensors(path, {"w": np.ones(2)},
                                                          metadata={"step": 3}), "'step'")
    assert not path.exists()


# ---------------------------------------------------------------------------------------------
# Atomic writes and training state


def test_failed_write_leaves_the_old_file_intact(tmp_path, monkeypatch):
    saved_model(tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    real_encode, calls = safetensors_file._encode, []

    def encode_then_fail(array, code):          # fails after some bytes are already written
        calls.append(code)
        if len(calls) == 3:
            raise OSError("disk full")
        return real_encode(array, code)

    monkeypatch.setattr(safetensors_file, "_encode", encode_then_fail)
    with pytest.raises(OSError, match="disk full"):
        MiniTransformer(tiny_config(), seed=2).save_pretrained(tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before   # and no temp files
    calls.clear()
    with pytest.raises(OSError):
        safetensors_file.write_safetensors(tmp_path / "new.safetensors",
                                     {str(i): np.ones(2) for i in range(4)})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before)


def test_training_state_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    state = {"m.model.norm.weight": rng.normal(size=4).astype(np.float32),
             "v.model.norm.weight": rng.normal(size=4).astype(np.float64),
             "step": np.array(12, np.int64)}
    meta = {"step": 12, "rng": rng.bit_generator.state, "lr": 3e-4, "note": "résumé"}
    expected_next = np.random.default_rng(5)
    expected_next.bit_generator.state = rng.bit_generator.state
    path = tmp_path / "train_state.safetensors"
    checkpoint.save_training_state(path, state, meta)
    loaded, loaded_meta = checkpoint.load_training_state(path)
    for name, array in state.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)
    assert loaded_meta == meta
    resumed = np.random.default_rng()
    resumed.bit_generator.state = loaded_meta["rng"]
    np.testing.assert_array_equal(resumed.normal(size=3), expected_next.normal(size=3))
    checkpoint_error(lambda: checkpoint.save_training_state(path, state, {"x": object()}),
                     "not JSON-serialisable")
    saved_model(tmp_path)
    checkpoint_error(lambda: checkpoint.load_training_state(tmp_path / "model.safetensors"),
                     "not a MiniLLM training state")
