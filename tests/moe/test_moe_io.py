"""Adapter save / load: exact round trip (tiny LLaMA and real SmolLM2), file layout, and
strict, explanatory errors that leave the backbone untouched."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import input_ids, linear_names, random_allocation, randomize_adapter, tiny_llama
from safetensors.torch import load_file, save_file

from guilomo.allocation import Allocation, AllocationError, ModuleAllocation
from guilomo.moe import LoraMoEConfig, adapter_modules, inject_adapter, load_adapter, save_adapter
from guilomo.moe.card import CARD_FILE
from guilomo.moe.inject import CONTEXT_ATTR
from guilomo.moe.io import CONFIG_FILE, FORMAT, PEFT_TYPE, WEIGHTS_FILE


def adapted(seed=0, config=None, model=None, alloc_seed=1):
    model = model if model is not None else tiny_llama()
    alloc = random_allocation(linear_names(model), seed=alloc_seed, backbone="tiny", num_layers=2)
    config = config or LoraMoEConfig(scaling="last_expert", alpha=12.0, dropout=0.1)
    inject_adapter(model, alloc, config)
    randomize_adapter(model, seed=seed)
    return model, alloc, config


def saved(tmp_path, **kw):
    model, alloc, config = adapted(**kw)
    save_adapter(model, tmp_path / "adapter", alloc, config)
    return model, alloc, config, tmp_path / "adapter"


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def untouched(model) -> bool:
    return not adapter_modules(model) and not hasattr(model, CONTEXT_ATTR)


# -- round trip -----------------------------------------------------------------------------
def test_round_trip_is_exact(tmp_path):
    model, alloc, config, path = saved(tmp_path)
    fresh = load_adapter(tiny_llama(), path)
    ids = input_ids(3, 9)
    assert torch.equal(logits(fresh, ids), logits(model, ids))
    for name, m in adapter_modules(model).items():
        n = adapter_modules(fresh)[name]
        assert n.ranks == m.ranks and n.top_k == m.top_k
        assert torch.equal(n.lora_A, m.lora_A) and torch.equal(n.lora_B, m.lora_B)
        assert (n.router is None) == (m.router is None)
        if m.router is not None:
            assert torch.equal(n.router, m.router)
        assert torch.equal(n.rank_scale, m.rank_scale)  # last_expert scaling came back
    model.train(), fresh.train()  # dropout 0.1 restored too: same RNG, same output
    torch.manual_seed(0)
    a = model(input_ids=ids).logits
    torch.manual_seed(0)
    assert torch.equal(fresh(input_ids=ids).logits, a)


def test_files_on_disk(tmp_path):
    model, alloc, config, path = saved(tmp_path)
    files = sorted(p.name for p in path.iterdir())
    assert files == [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]  # no temp files
    meta = json.loads((path / CONFIG_FILE).read_text())
    assert meta["format"] == FORMAT and meta["base_model"] == "tiny"
    assert meta["peft_type"] == PEFT_TYPE != "LORA"
    assert meta["lora"] == config.to_dict() and meta["allocation"] == alloc.to_dict()
    tensors = load_file(str(path / WEIGHTS_FILE))
    expected = {}
    for name, spec in alloc.modules.items():
        lin = tiny_llama().get_submodule(name)
        for i, r in enumerate(spec.ranks):
            expected[f"{name}.experts.{i}.lora_A"] = (r, lin.in_features)
            expected[f"{name}.experts.{i}.lora_B"] = (lin.out_features, r)
        if spec.experts > 1:
            expected[f"{name}.router"] = (spec.experts, lin.in_features)
    assert {k: tuple(v.shape) for k, v in tensors.items()} == expected
    m = adapter_modules(model)[name]  # the last module: expert i is rows i of lora_A
    start = sum(spec.ranks[:-1])
    assert torch.equal(tensors[f"{name}.experts.{spec.experts - 1}.lora_A"], m.lora_A[start:])


def test_round_trip_bf16(tmp_path):
    model, alloc, config = adapted(config=LoraMoEConfig())
    model.to(torch.bfloat16)
    save_adapter(model, tmp_path, alloc, config)
    assert (
        load_file(str(tmp_path / WEIGHTS_FILE))[
            f"{next(iter(alloc.modules))}.experts.0.lora_A"
        ].dtype
        == torch.bfloat16
    )
    fresh = load_adapter(tiny_llama().to(torch.bfloat16), tmp_path)
    ids = input_ids()
    assert torch.equal(logits(fresh, ids), logits(model, ids))


def test_save_overwrites_atomically(tmp_path):
    model, alloc, config, path = saved(tmp_path)
    randomize_adapter(model, seed=5)
    save_adapter(model, path, alloc, config)
    fresh = load_adapter(tiny_llama(), path)
    ids = input_ids()
    assert torch.equal(logits(fresh, ids), logits(model, ids))
    assert sorted(p.name for p in path.iterdir()) == [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]


@pytest.fixture(scope="module")
def smollm2_2_layers():
    from guilomo.backbone import load_backbone

    def load():
        return load_backbone(
            "HuggingFaceTB/SmolLM2-135M-Instruct", source="smollm2_gguf", num_layers=2
        )

    return load


def test_round_trip_smollm2(tmp_path, smollm2_2_layers):
    model, tok = smollm2_2_layers()
    names = linear_names(model)
    assert len(names) == 14
    alloc = random_allocation(names, seed=4, backbone="smollm2_135m", num_layers=2)
    config = LoraMoEConfig()
    inject_adapter(model, alloc, config)
    randomize_adapter(model, seed=4, std=0.05)
    save_adapter(model, tmp_path, alloc, config)
    fresh, _ = smollm2_2_layers()
    base = logits(fresh, tok("The capital of France is", return_tensors="pt").input_ids)
    load_adapter(fresh, tmp_path)
    ids = tok(["The capital of France is", "Hello"], return_tensors="pt", padding=True)
    a = fresh(**ids).logits.detach()
    assert torch.equal(a, model(**ids).logits.detach())
    assert not torch.allclose(a[0, : base.shape[1]], base[0])  # the adapter is really there


# -- strict errors --------------------------------------------------------------------------
def edit_config(path, fn):
    meta = json.loads((path / CONFIG_FILE).read_text())
    fn(meta)
    (path / CONFIG_FILE).write_text(json.dumps(meta))


def test_wrong_allocation_shapes(tmp_path):
    _, alloc, _, path = saved(tmp_path)
    name = next(n for n, m in alloc.modules.items() if m.ranks[0] != 8)
    r0 = alloc.modules[name].ranks[0]

    def change_rank(meta):
        meta["allocation"]["modules"][name]["ranks"][0] = 8

    edit_config(path, change_rank)
    model = tiny_llama()
    with pytest.raises(AllocationError) as e:
        load_adapter(model, path)
    msg = str(e.value)
    assert "wrong shape" in msg and f"{name}.experts.0.lora_A ({r0}, " in msg
    assert "model needs (8, " in msg and "another allocation or backbone" in msg
    assert untouched(model)  # nothing was injected


def test_wrong_allocation_expert_count(tmp_path):
    _, alloc, _, path = saved(tmp_path)
    name = linear_names(tiny_llama())[0]
    n = alloc.modules[name].experts

    def add_expert(meta):
        meta["allocation"]["modules"][name] = {"experts": n + 1, "ranks": [2] * (n + 1)}

    edit_config(path, add_expert)
    model = tiny_llama()
    with pytest.raises(AllocationError, match=rf"missing: \[.*'{name}\.experts\.{n}\.lora_A'"):
        load_adapter(model, path)
    assert untouched(model)


def test_missing_and_unexpected_keys(tmp_path):
    _, alloc, _, path = saved(tmp_path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    gone = sorted(tensors)[5]
    del tensors[gone]
    save_file(tensors, str(path / WEIGHTS_FILE))
    model = tiny_llama()
    with pytest.raises(AllocationError, match=rf"missing: \['{gone}'\]"):
        load_adapter(model, path)
    assert untouched(model)
    tensors["model.layers.0.self_attn.q_proj.extra"] = torch.zeros(1)
    tensors[gone] = torch.zeros(1)
    save_file(tensors, str(path / WEIGHTS_FILE))
    with pytest.raises(
        AllocationError, match=r"unexpected: \['model.layers.0.self_attn.q_proj.extra'\]"
    ):
        load_adapter(model, path)
    assert untouched(model)


def test_load_adapter_weights_checks_the_injected_model(tmp_path):
    from guilomo.moe.io import load_adapter_weights

    model, *_, path = saved(tmp_path)
    tensors = load_file(str(path / WEIGHTS_FILE))
    key = next(k for k in tensors if k.endswith("lora_B"))
    tensors[key] = tensors[key][:, :0]
    with pytest.raises(AllocationError, match=rf"wrong shape: \['{key} "):
        load_adapter_weights(model, tensors)


def test_other_backbone(tmp_path):
    *_, path = saved(tmp_path)
    model = tiny_llama()
    model.model.layers = model.model.layers[:1]  # a 1-layer backbone
    with pytest.raises(AllocationError, match="not in this model.*made for backbone 'tiny'"):
        load_adapter(model, path)
    assert untouched(model)


def test_file_errors(tmp_path):
    *_, path = saved(tmp_path)
    model = tiny_llama()
    with pytest.raises(FileNotFoundError, match="adapter_config.json not found"):
        load_adapter(model, tmp_path / "nowhere")
    w = (path / WEIGHTS_FILE).read_bytes()
    (path / WEIGHTS_FILE).write_bytes(w[: len(w) // 2])
    with pytest.raises(AllocationError, match="corrupt or truncated"):
        load_adapter(model, path)
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="adapter_model.safetensors not found"):
        load_adapter(model, path)
    c = (path / CONFIG_FILE).read_text()
    (path / CONFIG_FILE).write_text(c[:-20])
    with pytest.raises(AllocationError, match="is corrupt"):
        load_adapter(model, path)
    assert untouched(model)


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda m: m.update(format="guilomo.adapter/0"), "unsupported format 'guilomo.adapter/0'"),
        (lambda m: m.pop("allocation"), r"lacks \['allocation'\]"),
        (lambda m: m["lora"].update(scaling="bogus"), "invalid 'lora' settings"),
        (lambda m: m["lora"].update(new_knob=1), "invalid 'lora' settings"),
        (lambda m: m["allocation"].update(modules={}), "allocation has no modules"),
    ],
)
def test_bad_config(tmp_path, edit, match):
    *_, path = saved(tmp_path)
    edit_config(path, edit)
    model = tiny_llama()
    with pytest.raises(AllocationError, match=match):
        load_adapter(model, path)
    assert untouched(model)


def test_load_twice_is_refused(tmp_path):
    *_, path = saved(tmp_path)
    model = load_adapter(tiny_llama(), path)
    with pytest.raises(ValueError, match="already has a guilomo adapter"):
        load_adapter(model, path)


def test_single_expert_module_has_no_router(tmp_path):
    model = tiny_llama()
    name = linear_names(model)[3]
    alloc = Allocation({name: ModuleAllocation((5,))}, top_k=2)
    inject_adapter(model, alloc)
    save_adapter(model, tmp_path, alloc, LoraMoEConfig())
    assert sorted(load_file(str(tmp_path / WEIGHTS_FILE))) == [
        f"{name}.experts.0.lora_A",
        f"{name}.experts.0.lora_B",
    ]


def test_save_refuses_an_allocation_that_does_not_describe_the_adapter(tmp_path):
    model, alloc, config = adapted()
    other = random_allocation(linear_names(tiny_llama()), seed=99)
    with pytest.raises(AllocationError, match="does not match the allocation to save"):
        save_adapter(model, tmp_path / "a", other, config)
    with pytest.raises(AllocationError, match="no guilomo adapter"):
        save_adapter(tiny_llama(), tmp_path / "b", alloc, config)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
