"""Property-based: random and corrupted allocation files and adapter folders, fed to the
loaders, are either accepted and valid, or rejected with the project's own error
(AllocationError); never a raw traceback, never a silently dropped module, and a
rejected adapter leaves the backbone untouched.

Deterministic (``derandomize``) so CI is stable; raise ``max_examples`` locally to search
harder."""

import json
import tempfile
from pathlib import Path

import pytest
import torch
from helpers import linear_names, random_allocation, randomize_adapter, tiny_llama
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from guilomo.allocation import Allocation, AllocationError
from guilomo.moe import LoraMoEConfig, adapter_modules, inject_adapter, load_adapter, save_adapter
from guilomo.moe.io import CONFIG_FILE, WEIGHTS_FILE, adapter_state_dict

NAMES = linear_names(tiny_llama())[:6]
SETTINGS = settings(
    max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 10),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.lists(st.integers(-1, 9), max_size=4),
)
ranks = st.lists(st.one_of(st.integers(-1, 9), junk), min_size=0, max_size=5)
valid_module = st.lists(st.integers(1, 8), min_size=1, max_size=4).flatmap(
    lambda r: st.fixed_dictionaries(
        {"ranks": st.just(r)},
        optional={"experts": st.just(len(r)), "top_k": st.integers(1, len(r))},
    )
)
module = st.one_of(
    valid_module,
    valid_module,  # (twice: half the modules are valid, so whole files often are)
    junk,
    st.fixed_dictionaries(
        {"ranks": ranks},
        optional={
            "experts": st.one_of(st.integers(0, 6), junk),
            "top_k": st.one_of(st.integers(0, 4), junk),
        },
    ),
)
meta = st.one_of(
    st.none(),
    junk,
    st.fixed_dictionaries(
        {},
        optional={
            "num_layers": st.one_of(st.integers(-1, 4), junk),
            "backbone": st.one_of(st.text(max_size=3), junk),
        },
    ),
)
mapping = st.dictionaries(st.sampled_from(NAMES), module, min_size=1, max_size=4)
random_document = st.fixed_dictionaries(
    {"modules": st.one_of(mapping, mapping, mapping, junk)},
    optional={
        "top_k": st.one_of(st.integers(0, 4), junk),
        "format": st.sampled_from(["guilomo.allocation/1"] * 3 + ["x"]),
        "meta": meta,
    },
)
valid_document = st.fixed_dictionaries(
    {"modules": st.dictionaries(st.sampled_from(NAMES), valid_module, min_size=1, max_size=4)},
    optional={
        "top_k": st.integers(1, 2),
        "meta": st.fixed_dictionaries({}, optional={"num_layers": st.integers(1, 4)}),
    },
)
document = st.one_of(valid_document, random_document)


def _check_loaded(alloc: Allocation, data: dict) -> None:
    """An accepted allocation is valid and holds exactly the file's modules and ranks."""
    assert set(alloc.modules) == set(data["modules"])  # nothing silently dropped
    for name, spec in data["modules"].items():
        m = alloc.modules[name]
        assert list(m.ranks) == spec["ranks"] and all(type(r) is int and r >= 1 for r in m.ranks)
        assert m.experts == spec.get("experts", len(spec["ranks"]))
        assert 1 <= alloc.top_k_of(name) <= m.experts
    assert type(alloc.top_k) is int and alloc.top_k >= 1


def _load_text(text: str):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "allocation.json"
        path.write_text(text)
        return Allocation.load(path)


@SETTINGS
@given(document)
def test_random_allocation_documents(data):
    try:
        alloc = _load_text(json.dumps(data))
    except AllocationError:
        event("rejected")
        return
    event("accepted")
    _check_loaded(alloc, data)


@SETTINGS
@given(valid_document)
def test_valid_allocation_documents_are_accepted(data):
    # the property above also holds for a loader that rejects everything: this one does not
    _check_loaded(_load_text(json.dumps(data)), data)


@SETTINGS
@given(st.integers(0, 10**6), st.integers(0, 255), st.sampled_from(["cut", "flip", "duplicate"]))
def test_corrupted_allocation_files(seed, byte, how):
    good = random_allocation(
        NAMES, seed=seed % 97, max_experts=4, max_rank=4, backbone="tiny", num_layers=2
    )
    text = json.dumps(good.to_dict(), indent=1)
    if how == "cut":
        text = text[: seed % len(text)]
    elif how == "flip":
        i = seed % len(text)
        text = text[:i] + chr(byte) + text[i + 1 :]
    else:  # the same module listed twice: must not be a silent "last one wins"
        first = f'"{NAMES[0]}": {json.dumps(good.to_dict()["modules"][NAMES[0]])}'
        text = text.replace('"modules": {', '"modules": {' + first + ", ", 1)
    try:
        alloc = _load_text(text)
    except AllocationError:
        event(f"{how}: rejected")
        return
    event(f"{how}: accepted")
    assert how != "duplicate"
    _check_loaded(alloc, json.loads(text))


def test_an_untouched_file_is_accepted():
    good = random_allocation(NAMES, seed=3, max_experts=4, max_rank=4, backbone="tiny")
    _check_loaded(_load_text(json.dumps(good.to_dict())), good.to_dict())


# -- adapter folders ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory):
    model = tiny_llama()
    alloc = random_allocation(NAMES, seed=3, max_experts=3, max_rank=3)
    inject_adapter(model, alloc, LoraMoEConfig())
    randomize_adapter(model)
    return save_adapter(model, tmp_path_factory.mktemp("a") / "adapter", alloc, LoraMoEConfig())


def _mutate_json(node, path: list[int], value):
    """Replace the value found by walking ``path`` (indices into keys/items) with ``value``."""
    if not path or not isinstance(node, (dict, list)) or not node:
        return value
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    k = keys[path[0] % len(keys)]
    node[k] = _mutate_json(node[k], path[1:], value)
    return node


tensor_edits = st.sampled_from(["drop", "extra", "int", "half", "nan", "inf", "shape", "none"])


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(
    st.lists(st.integers(0, 50), min_size=1, max_size=5),
    junk,
    tensor_edits,
    st.integers(0, 10**6),
    st.sampled_from(["config", "tensors", "cut", "binary"]),
)
def test_corrupted_adapter_folders(adapter_dir, path, value, edit, seed, what):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        config = json.loads((adapter_dir / CONFIG_FILE).read_text())
        tensors = load_file(str(adapter_dir / WEIGHTS_FILE))
        weights_bytes = None
        if what == "config":
            config = _mutate_json(config, path, value)
        elif what == "tensors":
            key = sorted(tensors)[seed % len(tensors)]
            t = tensors[key]
            if edit == "drop":
                del tensors[key]
            elif edit == "extra":
                tensors[key + ".x"] = t.clone()
            elif edit == "int":
                tensors[key] = t.round().to(torch.int64)
            elif edit == "half":
                tensors[key] = t.half()
            elif edit in ("nan", "inf"):
                tensors[key] = t.flatten().index_fill(0, torch.tensor([0]), float(edit)).view_as(t)
            elif edit == "shape":
                tensors[key] = t[:-1] if t.shape[0] > 1 else torch.cat([t, t])
        if what == "cut":
            raw = (adapter_dir / WEIGHTS_FILE).read_bytes()
            weights_bytes = raw[: seed % len(raw)]
        text = json.dumps(config)
        if what == "binary":
            text = None
            (folder / CONFIG_FILE).write_bytes(bytes([seed % 256, 0xFF, 0xFE, 0x00]) * 8)
        if text is not None:
            (folder / CONFIG_FILE).write_text(text)
        if weights_bytes is not None:
            (folder / WEIGHTS_FILE).write_bytes(weights_bytes)
        else:
            save_file(tensors, str(folder / WEIGHTS_FILE))

        model = tiny_llama()
        try:
            load_adapter(model, folder)
        except AllocationError:
            assert not adapter_modules(model)  # rejected: the backbone is left as it was
            assert not any("lora" in n for n, _ in model.named_parameters())
            event(f"{what}: rejected")
            return
        event(f"{what}/{edit}: accepted")
        # accepted: every saved module is in the model, with exactly the saved tensors
        alloc = Allocation.from_dict(config["allocation"])
        assert set(adapter_modules(model)) == set(alloc.modules)
        loaded = adapter_state_dict(model)
        assert loaded.keys() == tensors.keys()
        for k, t in tensors.items():
            assert loaded[k].dtype == torch.float32 and torch.equal(loaded[k], t.float()), k
            assert torch.isfinite(loaded[k]).all()
