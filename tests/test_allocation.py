"""Allocation: JSON round trip, validation messages, atomic save, parameter counts."""

from __future__ import annotations

import json
import os

import pytest
from helpers import TARGETS, linear_names, random_allocation, tiny_llama

import guilomo.utils.io as gio
from guilomo.allocation import FORMAT, Allocation, AllocationError, ModuleAllocation, uniform
from guilomo.moe import LoraMoEConfig, find_targets, inject_adapter, module_shapes
from guilomo.moe.inject import trainable_parameters

Q = "model.layers.0.self_attn.q_proj"
V = "model.layers.1.self_attn.v_proj"


def small() -> Allocation:
    return Allocation(
        {Q: ModuleAllocation((8, 4, 2)), V: ModuleAllocation((3,), top_k=1)},
        top_k=2,
        meta={"backbone": "tiny", "num_layers": 2, "task": "unit"},
    )


def write_json(path, data) -> None:
    path.write_text(json.dumps(data))


# -- round trip -----------------------------------------------------------------------------
def test_round_trip(tmp_path):
    a = small()
    p = a.save(tmp_path / "sub" / "allocation.json")
    b = Allocation.load(p)
    assert b.modules == a.modules and b.top_k == a.top_k and b.meta == a.meta
    assert b.modules[Q].ranks == (8, 4, 2) and b.modules[V].top_k == 1
    raw = json.loads(p.read_text())
    assert raw["format"] == FORMAT
    assert raw["modules"][Q] == {"experts": 3, "ranks": [8, 4, 2]}
    assert raw["modules"][V] == {"experts": 1, "ranks": [3], "top_k": 1}
    assert b.top_k_of(Q) == 2 and b.top_k_of(V) == 1
    assert b.total_experts == 4 and b.total_rank == 17


def test_round_trip_random(tmp_path):
    a = random_allocation([f"m.layers.{i}.proj" for i in range(20)], seed=3, backbone="x")
    b = Allocation.load(a.save(tmp_path / "a.json"))
    assert b.to_dict() == a.to_dict()


def test_top_k_clamped_to_experts():
    a = Allocation({Q: ModuleAllocation((4,))}, top_k=2)
    assert a.top_k_of(Q) == 1


# -- validation -----------------------------------------------------------------------------
def test_unknown_module_named_with_a_fix():
    a = small()
    with pytest.raises(AllocationError) as e:
        a.check_modules([Q, "model.layers.0.self_attn.k_proj"])
    msg = str(e.value)
    assert V in msg and "not in this model" in msg and "'tiny'" in msg
    a.check_modules([Q, V, "other"])  # a superset is fine


def test_top_k_greater_than_experts():
    with pytest.raises(
        AllocationError, match=r"top_k=3 is greater than the number of experts \(2\)"
    ):
        Allocation.from_dict({"modules": {Q: {"experts": 2, "ranks": [4, 4], "top_k": 3}}})
    with pytest.raises(AllocationError, match="top_k=3 is greater than the number of experts"):
        ModuleAllocation((4, 4), top_k=3)


@pytest.mark.parametrize("ranks", [[4, 0], [-1], [0]])
def test_rank_below_one(ranks):
    with pytest.raises(AllocationError, match=f"module '{Q}'.*every rank must be >= 1"):
        Allocation.from_dict({"modules": {Q: {"experts": len(ranks), "ranks": ranks}}})
    with pytest.raises(AllocationError, match="every rank must be >= 1"):
        ModuleAllocation(tuple(ranks))


def test_ragged_experts_vs_ranks():
    with pytest.raises(AllocationError, match=r"'experts' is 3 but 'ranks' lists 2 ranks"):
        Allocation.from_dict({"modules": {Q: {"experts": 3, "ranks": [4, 4]}}})


@pytest.mark.parametrize("ranks", [[4, 2.5], [4, "8"], [True, 4], "48", None])
def test_non_int_ranks(ranks):
    with pytest.raises(AllocationError, match="'ranks' must be a list of integers"):
        Allocation.from_dict({"modules": {Q: {"experts": 2, "ranks": ranks}}})


@pytest.mark.parametrize("ranks", [(4, 2.5), (4, "8"), (True, 4), (4.0,)])
def test_non_int_ranks_direct(ranks):
    # a float rank must not be silently truncated to an int
    with pytest.raises(AllocationError, match="integer"):
        ModuleAllocation(ranks)


def test_module_spec_not_a_mapping():
    with pytest.raises(AllocationError, match=f"module '{Q}': expected"):
        Allocation.from_dict({"modules": {Q: [4, 4]}})


@pytest.mark.parametrize(
    "data, match",
    [
        ({"modules": {}}, "allocation has no modules"),
        ({}, "JSON object with a 'modules' mapping"),
        ([1, 2], "JSON object with a 'modules' mapping"),
        ({"modules": [1]}, "'modules' must map module paths"),
        ({"modules": {Q: {"ranks": [4]}}, "top_k": 0}, "top_k must be >= 1"),
        ({"modules": {Q: {"ranks": [4]}}, "top_k": "2"}, "top_k must be an integer"),
        ({"modules": {Q: {"ranks": [4], "top_k": 1.5}}}, "top_k must be an integer"),
        ({"modules": {Q: {"ranks": [4]}}, "meta": [1]}, "'meta' must be a JSON object"),
    ],
)
def test_malformed_documents(data, match):
    with pytest.raises(AllocationError, match=match):
        Allocation.from_dict(data)


def test_empty_modules_direct():
    with pytest.raises(AllocationError, match="no modules"):
        Allocation({})
    with pytest.raises(AllocationError, match="at least one expert"):
        ModuleAllocation(())


def test_wrong_format_tag(tmp_path):
    p = tmp_path / "a.json"
    data = small().to_dict()
    data["format"] = "guilomo.allocation/999"
    write_json(p, data)
    with pytest.raises(
        AllocationError, match=r"a\.json: unsupported allocation format 'guilomo\.allocation/999'"
    ):
        Allocation.load(p)


def test_missing_file(tmp_path):
    with pytest.raises(AllocationError, match="not found.*search.py"):
        Allocation.load(tmp_path / "nope.json")


def test_truncated_json(tmp_path):
    p = small().save(tmp_path / "a.json")
    text = p.read_text()
    p.write_text(text[: len(text) // 2])
    with pytest.raises(AllocationError, match="not valid JSON.*truncated or corrupt"):
        Allocation.load(p)


def test_binary_garbage(tmp_path):
    p = tmp_path / "a.json"
    p.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00garbage")
    with pytest.raises(AllocationError, match="truncated or corrupt"):
        Allocation.load(p)


def test_load_error_names_file_and_module(tmp_path):
    p = tmp_path / "bad.json"
    write_json(p, {"format": FORMAT, "modules": {Q: {"experts": 2, "ranks": [4]}}})
    with pytest.raises(AllocationError, match=rf"bad\.json: module '{Q}': 'experts' is 2"):
        Allocation.load(p)


def test_other_backbone():
    a = small()
    a.check_backbone("tiny", 2)
    a.check_backbone(None)
    with pytest.raises(AllocationError, match="made for backbone 'tiny', not 'smollm2_135m'"):
        a.check_backbone("smollm2_135m")
    with pytest.raises(AllocationError, match="made for 2 layers but the backbone has 30"):
        a.check_backbone("tiny", 30)


# -- atomic write ---------------------------------------------------------------------------
def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    p = small().save(tmp_path / "allocation.json")
    before = p.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(gio.os, "fsync", disk_full)  # fails after the bytes were written
    new = Allocation({Q: ModuleAllocation((1,))}, top_k=1)
    with pytest.raises(OSError, match="No space left"):
        new.save(p)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["allocation.json"]  # no temp file left behind
    assert Allocation.load(p).modules == small().modules


def test_atomic_save_failing_rename(tmp_path, monkeypatch):
    p = small().save(tmp_path / "allocation.json")
    before = p.read_bytes()

    def broken(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(gio.os, "replace", broken)
    with pytest.raises(OSError, match="rename failed"):
        Allocation({Q: ModuleAllocation((2,))}).save(p)
    assert p.read_bytes() == before
    assert os.listdir(tmp_path) == ["allocation.json"]


# -- trainable parameter counts -------------------------------------------------------------
def test_params_by_hand():
    # q_proj 64 -> 64: experts 8,4,2 -> A+B = 14*(64+64) = 1792, router 3*64 = 192
    # v_proj 64 -> 32: one expert of rank 3 -> 3*(64+32) = 288, no router
    shapes = {Q: (64, 64), V: (64, 32)}
    assert small().trainable_params(shapes) == 1792 + 192 + 288
    assert small().trainable_params(shapes, router=False) == 1792 + 288
    assert ModuleAllocation((8, 4, 2)).params(64, 64) == 1984
    with pytest.raises(AllocationError, match="not in this model"):
        small().trainable_params({Q: (64, 64)})


def test_params_match_injected_model():
    model = tiny_llama()
    names = linear_names(model)
    alloc = random_allocation(names, seed=5)
    shapes = module_shapes(find_targets(model, TARGETS))
    expected = 0
    for n in names:  # hand count: sum r_i (d_in + d_out) + N d_in when N > 1
        d_in, d_out = shapes[n]
        ranks = alloc.modules[n].ranks
        expected += sum(ranks) * (d_in + d_out) + (len(ranks) * d_in if len(ranks) > 1 else 0)
    assert alloc.trainable_params(shapes) == expected
    inject_adapter(model, alloc, LoraMoEConfig())
    assert trainable_parameters(model) == expected


def test_uniform():
    a = uniform([Q, V], experts=1, rank=4, top_k=2, backbone="b")
    assert a.top_k == 1 and a.modules[Q].ranks == (4,) and a.meta == {"backbone": "b"}
    with pytest.raises(AllocationError, match=">= 1"):
        uniform([Q], experts=0, rank=4)


def test_atomic_write_gives_usual_permissions(tmp_path):
    import os

    from guilomo.utils.io import atomic_write_text

    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert (path.stat().st_mode & 0o777) == 0o644


def test_load_allocation_is_the_one_checked_loader(tmp_path):
    """allocation=file: one loader, one set of checks (backbone, depth, modules, budget)."""
    from guilomo.allocation import load_allocation
    from guilomo.budget import Budget, BudgetError

    model = tiny_llama()
    targets = find_targets(model, TARGETS)
    names = sorted(targets)
    alloc = uniform(names[:4], 2, 4, backbone="tiny_llama", num_layers=2)
    path = alloc.save(tmp_path / "allocation.json")
    loaded = load_allocation(targets, path, "tiny_llama", 2, Budget("rank", 32))
    assert loaded.to_dict() == alloc.to_dict()  # a subset of the targets is allowed
    with pytest.raises(AllocationError, match="backbone"):
        load_allocation(targets, path, "smollm2_135m", 2)
    with pytest.raises(AllocationError, match="layers"):
        load_allocation(targets, path, "tiny_llama", 30)
    with pytest.raises(AllocationError, match="not in this model"):
        load_allocation({n: targets[n] for n in names[4:]}, path, "tiny_llama", 2)
    with pytest.raises(BudgetError):
        load_allocation(targets, path, "tiny_llama", 2, Budget("rank", 31))
    shapes = module_shapes(targets)  # shapes work as targets too
    assert load_allocation(shapes, path, budget=Budget("rank", 32)).total_rank == 32
