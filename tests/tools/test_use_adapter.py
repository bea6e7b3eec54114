"""Using a trained adapter: one-call loading, generate, peft export, merge, collapse, model
card and Hub upload, on the tiny backbone. References are independent: peft's own forward
and merge, transformers' own loading of the merged folder, the LoRA-MoE forward itself."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest
import torch
from helpers import TASK, TINY, base, linear_names, make, mixed, single
from huggingface_hub import ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from guilomo import from_pretrained
from guilomo.allocation import Allocation, AllocationError
from guilomo.data.prompts import render_prompts
from guilomo.data.templates import get_template
from guilomo.eval.collapse import collapse_measured
from guilomo.hub import push_to_hub, upload_files
from guilomo.moe import LoraMoEConfig, adapter_modules, inject_adapter, load_adapter, save_adapter
from guilomo.moe.collapse import collapse, constant_gates
from guilomo.moe.io import CONFIG_FILE, PEFT_TYPE, WEIGHTS_FILE, save_model_card
from guilomo.moe.merge import merge_model
from guilomo.moe.peft_export import export_peft
from guilomo.moe.provenance import OVERRIDE, BaseMismatchError, backbone_record
from guilomo.tools.export_peft import main as export_main
from guilomo.tools.generate import main as generate_main
from guilomo.tools.merge import main as merge_main
from guilomo.tools.push import main as push_main

TOL = dict(atol=1e-5, rtol=0)


def config_of(path) -> dict:
    return json.loads((path / CONFIG_FILE).read_text())


def allocation_of(path) -> Allocation:
    return Allocation.from_dict(config_of(path)["allocation"])


def batch(tok, texts=("What is AI?", "Tell me a joke about cats")):
    return dict(tok(list(texts), return_tensors="pt", padding=True))


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(scope="module")
def mixed_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "adapter"
    model, tok = make(path)
    tok.padding_side = "left"
    return path, model, tok


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("single") / "adapter"
    model, tok = make(path, kind=single)
    tok.padding_side = "left"
    return path, model, tok


# -- 1. one-call loading ---------------------------------------------------------------------
def test_from_pretrained_gives_the_trained_model(mixed_dir):
    path, ours, tok = mixed_dir
    model, tokenizer = from_pretrained(path)
    assert not model.training and tokenizer.padding_side == "left"
    x = batch(tokenizer)
    assert torch.equal(logits(model, x), logits(ours, x))
    assert not torch.allclose(logits(model, x), logits(base()[0], x))  # the adapter is there
    out = model.generate(**x, max_new_tokens=4, do_sample=False)
    ref = ours.generate(**x, max_new_tokens=4, do_sample=False)
    assert out.shape[1] == x["input_ids"].shape[1] + 4 and torch.equal(out, ref)


def test_config_records_method_base_and_checksum(mixed_dir):
    path, *_ = mixed_dir
    meta = config_of(path)
    assert meta["peft_type"] == PEFT_TYPE == "GUILOMO_LORA_MOE"
    bb = meta["backbone"]
    assert bb["loader"] == TINY and bb["weights"] == {"random_init": True}
    assert meta["lora"]["alpha"] == 12.0 and meta["lora"]["scaling"] == "per_expert"
    # the documented checksum rule, re-implemented here on a fresh backbone
    h = hashlib.sha256()
    for name, t in sorted(base()[0].state_dict().items()):
        flat = t.reshape(-1)
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
        h.update(flat[:: max(1, flat.numel() // 1024)][:1024].float().numpy().tobytes())
    assert bb["checksum"] == "sha256:" + h.hexdigest()


def test_smollm2_record_names_the_hub_id_and_the_gguf():
    loader = {
        "_target_": "guilomo.backbone.load_backbone",
        "name": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "source": "smollm2_gguf",
        "cache_dir": "/somewhere",  # machine-local: not recorded
        "num_layers": 8,
    }
    record = backbone_record(loader, "smollm2_135m")
    assert record["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert record["loader"] == {
        "name": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "source": "smollm2_gguf",
        "num_layers": 8,
    }
    assert record["weights"]["gguf_file"] == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert record["weights"]["quantization"] == "Q4_1"


def test_other_base_weights_are_refused_unless_allowed(mixed_dir, caplog):
    path, *_ = mixed_dir
    other = {"tiny": {"seed": 1}}
    with pytest.raises(BaseMismatchError) as e:
        from_pretrained(path, backbone=other)
    assert OVERRIDE in str(e.value) and "tiny-llama from a seeded random init" in str(e.value)
    fresh = base(seed=1)[0]
    with pytest.raises(BaseMismatchError):
        load_adapter(fresh, path)
    assert not adapter_modules(fresh)  # refused before anything was injected
    with caplog.at_level(logging.WARNING):
        model, _ = from_pretrained(path, backbone=other, allow_base_mismatch=True)
    assert adapter_modules(model) and "loading anyway" in caplog.text


def test_missing_files(mixed_dir, tmp_path):
    path, *_ = mixed_dir
    for gone in (WEIGHTS_FILE, CONFIG_FILE):
        folder = tmp_path / gone
        folder.mkdir()
        for f in (CONFIG_FILE, WEIGHTS_FILE):
            if f != gone:
                (folder / f).write_bytes((path / f).read_bytes())
        with pytest.raises(FileNotFoundError, match=f"{gone} not found"):
            from_pretrained(folder)
    with pytest.raises(FileNotFoundError, match="allow_network=True"):
        from_pretrained("someone/not-a-folder")


def copy_with(path, tmp_path, edit):
    folder = tmp_path / "edited"
    folder.mkdir()
    (folder / WEIGHTS_FILE).write_bytes((path / WEIGHTS_FILE).read_bytes())
    meta = config_of(path)
    edit(meta)
    (folder / CONFIG_FILE).write_text(json.dumps(meta))
    return folder


@pytest.mark.parametrize(
    "edit, match",
    [
        (
            lambda m: m["lora"].update(alpha=32.0),
            r"edited after the weights were saved: \['alpha'\]",
        ),
        (lambda m: m["lora"].update(scaling="last_expert"), r"\['scaling'\]"),
        (lambda m: m["backbone"].update(checksum="sha256:00"), r"\['base_checksum'\]"),
        (lambda m: m.update(peft_type="LORA"), "peft_type is 'LORA'"),
        (lambda m: m["allocation"].update(top_k=1), r"\['top_k'"),
    ],
)
def test_tampered_config_is_refused(mixed_dir, tmp_path, edit, match):
    path, *_ = mixed_dir
    folder = copy_with(path, tmp_path, edit)
    model = base()[0]
    with pytest.raises(AllocationError, match=match):
        load_adapter(model, folder)
    assert not adapter_modules(model)


def test_format_1_folder_still_loads(mixed_dir, tmp_path):
    path, ours, tok = mixed_dir
    folder = copy_with(
        path, tmp_path, lambda m: [m.pop(k) for k in ("peft_type", "backbone", "task")]
    )
    meta = json.loads((folder / CONFIG_FILE).read_text())
    (folder / CONFIG_FILE).write_text(json.dumps({**meta, "format": "guilomo.adapter/1"}))
    save_file(load_file(str(path / WEIGHTS_FILE)), str(folder / WEIGHTS_FILE))  # no record
    with pytest.raises(AllocationError, match="does not record how to load its backbone"):
        from_pretrained(folder)
    model, _ = from_pretrained(folder, backbone=TINY)
    x = batch(tok)
    assert torch.equal(logits(model, x), logits(ours, x))


def test_from_a_hub_id_downloads_only_when_allowed(mixed_dir, monkeypatch):
    path, ours, tok = mixed_dir
    calls = []
    monkeypatch.setattr("guilomo.hub.snapshot_download", lambda **kw: calls.append(kw) or str(path))
    with pytest.raises(FileNotFoundError, match="allow_network=True"):
        from_pretrained("user/guilomo-demo")
    model, _ = from_pretrained("user/guilomo-demo", allow_network=True, revision="v1")
    assert calls == [{"repo_id": "user/guilomo-demo", "revision": "v1"}]
    x = batch(tok)
    assert torch.equal(logits(model, x), logits(ours, x))


# -- 2. generate -----------------------------------------------------------------------------
def test_render_prompts_uses_the_task_template(mixed_dir):
    *_, tok = mixed_dir
    alpaca = get_template("alpaca")
    [p] = render_prompts(["What is AI?"], TASK)
    assert p.startswith("Below is an instruction") and "### Input:\nWhat is AI?" in p
    assert "### Instruction:\nWhich topic is it?" in p
    assert render_prompts(["x"], None) == ["x"]  # auto, no recorded task: as typed
    assert render_prompts(["x"], TASK, "none") == ["x"]
    [q] = render_prompts(["Add 2 and 3"], {"template": "alpaca", "instruction": None})
    assert q == alpaca.no_input.format(instruction="Add 2 and 3")
    assert render_prompts(["hi"], TASK, "plain", instruction="Say") == ["Say\nhi\nAnswer: "]
    [c] = render_prompts(["hi"], TASK, "chat", tokenizer=tok)
    assert "hi" in c and c != "hi"
    with pytest.raises(ValueError, match="not one of"):
        render_prompts(["x"], TASK, "bogus")


def test_generate_command(mixed_dir, tmp_path, capsys):
    path, ours, tok = mixed_dir
    rows = generate_main([f"adapter={path}", "prompt=What is AI?", "max_new_tokens=5"])
    [row] = rows
    assert row["prompt"] == "What is AI?" and "### Input:\nWhat is AI?" in row["input"]
    ids = tok([row["input"]], return_tensors="pt")
    ref = ours.generate(**ids, max_new_tokens=5, do_sample=False)
    assert row["output"] == tok.decode(ref[0, ids.input_ids.shape[1] :], skip_special_tokens=True)
    assert "### What is AI?" in capsys.readouterr().out
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\n\ntwo\nthree\n")
    out = tmp_path / "gen.jsonl"
    args = [f"adapter={path}", f"prompts_file={prompts}", "template=none", f"out={out}"]
    rows = generate_main([*args, "max_new_tokens=2", "batch_size=2"])
    saved = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert [r["prompt"] for r in saved] == ["one", "two", "three"] and saved == rows
    assert all(r["input"] == r["prompt"] for r in rows)
    with pytest.raises(SystemExit, match="unknown key 'promt'"):
        generate_main([f"adapter={path}", "promt=x"])


# -- 3. peft export --------------------------------------------------------------------------
@pytest.mark.parametrize("uniform_rank", [False, True])
def test_peft_export_equals_ours_and_merges(single_dir, tmp_path, uniform_rank):
    from peft import PeftConfig, PeftModel

    path, ours, tok = single_dir
    meta = config_of(path)
    report = export_peft(ours, meta, tmp_path / "peft", tok, uniform_rank=uniform_rank)
    assert report["exported"] == 14 and report["left_out"] == 0
    cfg = PeftConfig.from_pretrained(str(tmp_path / "peft"))
    assert cfg.peft_type == "LORA" and cfg.r == 4 and cfg.lora_alpha == 12.0
    assert bool(cfg.rank_pattern) != uniform_rank
    theirs = PeftModel.from_pretrained(base()[0], str(tmp_path / "peft")).eval()
    for name, m in adapter_modules(ours).items():  # peft's own scale is ours
        p = theirs.base_model.model.get_submodule(name)
        r = 4 if uniform_rank else m.ranks[0]
        assert p.r["default"] == r and p.scaling["default"] == pytest.approx(12.0 / r)
    x = batch(tok)
    lo = logits(ours, x)
    torch.testing.assert_close(logits(theirs, x), lo, **TOL)
    merged = theirs.merge_and_unload()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged, x), lo, **TOL)


def test_peft_export_of_a_mixed_allocation(mixed_dir, tmp_path):
    from peft import PeftModel

    path, ours, tok = mixed_dir
    meta = config_of(path)
    with pytest.raises(ValueError, match="only_single=true"):
        export_peft(ours, meta, tmp_path / "no", tok)
    report = export_peft(ours, meta, tmp_path / "peft", tok, only_single=True)
    layers = adapter_modules(ours)
    multi = sorted(n for n, m in layers.items() if m.num_experts > 1)
    assert report["left_out_modules"] == multi and report["exported"] == len(layers) - len(multi)
    theirs = PeftModel.from_pretrained(base()[0], str(tmp_path / "peft")).eval()
    ref, _ = from_pretrained(path)  # ours without the N-expert modules' delta
    for n in multi:
        adapter_modules(ref)[n].lora_B.data.zero_()
    x = batch(tok)
    torch.testing.assert_close(logits(theirs, x), logits(ref, x), **TOL)


def test_peft_and_guilomo_folders_are_not_confused(mixed_dir, single_dir, tmp_path):
    from peft import PeftModel

    path, ours, tok = single_dir
    export_peft(ours, config_of(path), tmp_path / "peft")
    with pytest.raises(AllocationError, match="is a peft LORA adapter.*PeftModel.from_pretrained"):
        from_pretrained(tmp_path / "peft")
    with pytest.raises(KeyError, match=PEFT_TYPE):  # peft refuses our method type
        PeftModel.from_pretrained(base()[0], str(mixed_dir[0]))


# -- 4. merge and collapse -------------------------------------------------------------------
def test_merge_folds_one_expert_modules_exactly(mixed_dir, tmp_path):
    path, ours, tok = mixed_dir
    model, tokenizer = from_pretrained(path)
    alloc = allocation_of(path)
    report = merge_model(model, tokenizer, alloc, config_of(path), tmp_path / "merged")
    multi = sorted(n for n, m in alloc.modules.items() if m.experts > 1)
    assert report["kept_modules"] == multi and report["merged"] == len(alloc.modules) - len(multi)
    x = batch(tok)
    plain = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged")).eval()
    ref, _ = from_pretrained(path)
    for n in multi:
        adapter_modules(ref)[n].lora_B.data.zero_()
    torch.testing.assert_close(logits(plain, x), logits(ref, x), **TOL)  # one-expert: exact
    full, _ = from_pretrained(tmp_path / "merged" / "adapter")  # + the kept LoRA-MoE
    torch.testing.assert_close(logits(full, x), logits(ours, x), **TOL)
    assert ModelCard.load(tmp_path / "merged" / "README.md").data.library_name == "transformers"


def test_collapse_is_exact_for_constant_gates_and_measured_otherwise(tmp_path, capsys):
    # a zero router with top_k = N gives every expert 1/N on every token: constant gates
    model, tok = make(tmp_path / "c", top_k_all=True, zero_router=True)
    alloc = allocation_of(tmp_path / "c")
    x = batch(tok)
    before = logits(model, x)
    new = collapse(model, alloc, constant_gates(model))
    assert all(m.num_experts == 1 for m in adapter_modules(model).values())
    assert {n: m.ranks for n, m in new.modules.items()} == {
        n: (m.total_rank,) for n, m in alloc.modules.items()
    }
    torch.testing.assert_close(logits(model, x), before, **TOL)
    # a real router: mean gates are an approximation, and the difference is reported
    path = tmp_path / "m"
    make(path)
    model, tok = from_pretrained(path)
    alloc = allocation_of(path)
    prompts = ["What is AI?", "Hello there", "Name a colour", "Who are you?"]
    _, report = collapse_measured(model, alloc, "mean", tok, prompts)
    assert report["held_out_prompts"] == 2 and report["max_abs"] > 1e-4
    assert 0 <= report["top1_agree"] <= 1 and "max |diff|" in capsys.readouterr().out


def test_merge_command_with_collapse(mixed_dir, tmp_path, capsys):
    path, ours, tok = mixed_dir
    prompts = tmp_path / "p.txt"
    prompts.write_text("What is AI?\nHello\nName a colour\nWho are you?\n")
    out = tmp_path / "merged"
    report = merge_main(
        [f"adapter={path}", f"out={out}", "collapse=mean", f"prompts_file={prompts}"]
    )
    assert report["kept"] == 0 and not (out / "adapter").exists()
    assert "collapsed" in capsys.readouterr().out
    # the merged folder computes what the collapsed LoRA-MoE computes
    ref, _ = from_pretrained(path)
    alloc = allocation_of(path)
    texts = render_prompts(prompts.read_text().split("\n")[:4], TASK)
    collapse_measured(ref, alloc, "mean", tok, texts)
    x = batch(tok)
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    torch.testing.assert_close(logits(plain, x), logits(ref, x), **TOL)
    with pytest.raises(SystemExit, match="needs prompts_file"):
        merge_main([f"adapter={path}", f"out={tmp_path / 'x'}", "collapse=mean"])


def test_export_command_refuses_n_experts_and_collapses_on_request(mixed_dir, tmp_path):
    path, *_ = mixed_dir
    with pytest.raises(ValueError, match="more than one expert"):
        export_main([f"adapter={path}", f"out={tmp_path / 'a'}"])
    prompts = tmp_path / "p.txt"
    prompts.write_text("a\nb\nc\nd\n")
    report = export_main(
        [f"adapter={path}", f"out={tmp_path / 'b'}", "collapse=constant", f"prompts_file={prompts}"]
    )
    assert report["left_out"] == 0 and report["exported"] == 14


# -- 5. model card and upload ----------------------------------------------------------------
def test_model_card(tmp_path):
    model, tok = base()
    alloc = Allocation(mixed(linear_names(model)), top_k=2, meta={"backbone": "smollm2_135m"})
    inject_adapter(model, alloc, LoraMoEConfig())
    record = backbone_record(
        {"name": "HuggingFaceTB/SmolLM2-135M-Instruct", "source": "smollm2_gguf"}, "smollm2_135m"
    )
    path = save_adapter(model, tmp_path / "a", alloc, LoraMoEConfig(), backbone=record, task=TASK)
    save_model_card(path, {"accuracy": 0.84166, "n": 120, "invalid": 0})
    card = ModelCard.load(path / "README.md")
    assert card.data.library_name == "guilomo"
    assert card.data.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert {"guilomo", "lora-moe", "chatterbot_topic"} <= set(card.data.tags)
    assert alloc.summary() in card.text and "accuracy 0.8417" in card.text
    assert "120 examples" in card.text and "guilomo.from_pretrained(" in card.text
    assert "model.generate(" in card.text and "SmolLM2-135M-Instruct.Q4_1.gguf" in card.text


class FakeApi:
    def __init__(self):
        self.calls = []

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def upload_folder(self, **kw):
        self.calls.append(("upload_folder", kw))
        return type("Info", (), {"commit_url": "https://hf.co/x/commit/1"})()


def test_push_to_hub_uploads_the_checked_folder(mixed_dir, tmp_path):
    path, *_ = mixed_dir
    folder = tmp_path / "a"
    folder.mkdir()
    for p in path.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / ".adapter_model.safetensors.x.tmp").write_text("partial")
    (folder / "last.ckpt").write_text("checkpoint")
    files = upload_files(folder)
    assert {"README.md", CONFIG_FILE, WEIGHTS_FILE, "tokenizer.json"} <= set(files)
    assert not any(f.endswith((".tmp", ".ckpt")) for f in files)
    api = FakeApi()
    url = push_to_hub(folder, "me/demo", private=True, api=api)
    assert url == "https://hf.co/x/commit/1"
    assert api.calls[0] == (
        "create_repo",
        "me/demo",
        {"private": True, "exist_ok": True, "repo_type": "model"},
    )
    assert api.calls[1][1]["allow_patterns"] == files and api.calls[1][1]["repo_id"] == "me/demo"
    assert push_main([f"folder={folder}", "dry_run=true"]) == files  # lists, uploads nothing
    (folder / "README.md").unlink()
    with pytest.raises(ValueError, match="no README.md"):
        upload_files(folder)
