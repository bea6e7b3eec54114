"""Search diagnostics on hand-made GSV trajectories (flips, distance from step 0, the
not-converged and did-not-move warnings, checkpoint round trip), on a real search model
(the read-out rule is readout's), and end to end: ``search.py backbone=tiny_llama
debug=fast`` writes ``meta.diagnostics`` that a recomputation from the initial GSVs
confirms."""

import io
import math
import warnings
from types import SimpleNamespace

import pytest
import torch
from compose import compose_cfg
from helpers import base, linear_names, tiny_llama

from guilomo.allocation import Allocation
from guilomo.moe import find_targets
from guilomo.search import SearchModule, SearchSettings, inject_search_adapter
from guilomo.search.diagnostics import (
    DIAGNOSTICS_KEY,
    SearchDiagnostics,
    SearchWarning,
    report_lines,
    report_warnings,
    selection_of,
)
from guilomo.search.layer import search_layers
from guilomo.search.readout import collect_gsvs, read_allocation
from guilomo.search.run import run_search

N, R = 4, 4


def module(experts: int, ranks: list[int]) -> SimpleNamespace:
    """GSV logits whose read-out is ``experts`` experts with ``ranks`` (all n_max experts)."""
    g_e = torch.full((N,), -1.0)
    g_e[experts - 1] = 1.0
    g_r = torch.full((N, R), -1.0)
    g_r[torch.arange(N), torch.tensor(ranks) - 1] = 1.0
    return SimpleNamespace(gsv_expert=g_e, gsv_rank=g_r)


def state(*mods: tuple[int, list[int]]):
    return selection_of(module(e, r) for e, r in mods)


# M = 3 modules; step "init" is the read-out of the initial GSVs
INIT = state((2, [1, 2, 3, 4]), (3, [4, 4, 4, 4]), (4, [2, 2, 2, 2]))
TRAJECTORY = [
    INIT,  # step 0: the outer step moved nothing
    state((3, [1, 2, 3, 4]), (3, [4, 4, 4, 4]), (4, [2, 2, 2, 2])),  # 1: m0 2 -> 3 experts
    state((3, [1, 2, 3, 4]), (3, [1, 4, 4, 4]), (4, [2, 2, 2, 4])),  # 2: two kept ranks move
    state((3, [1, 2, 3, 4]), (3, [1, 4, 4, 4]), (2, [2, 2, 2, 2])),  # 3: m2 4 -> 2; a dropped rank
    state((3, [1, 2, 3, 4]), (3, [1, 4, 4, 4]), (2, [2, 2, 2, 2])),  # 4: nothing
]


def run(trajectory, tracker=None, first=0, init=INIT, **kw):
    tracker = tracker or SearchDiagnostics(**kw)
    if not tracker.started:
        tracker.start(init)
    return tracker, [tracker.update(s, first + t) for t, s in enumerate(trajectory)]


def test_flips_distances_and_windows_match_hand_computed_values():
    tracker, metrics = run(TRAJECTORY, window=2)
    # flips per step: expert (0, 1, 0, 1, 0), rank over the kept experts (0, 0, 2, 0, 0);
    # step 3's rank change is of m2's expert 3, dropped at step 3: not a flip
    window = [(m["diag/expert_flips"], m["diag/rank_flips"]) for m in metrics]
    assert window == [(0, 0), (1, 0), (0, 2), (1, 2), (0, 0)]  # windows {0,1} {2,3} {4}
    assert [m["diag/expert_flips_total"] for m in metrics] == [0, 1, 1, 2, 2]
    assert [m["diag/rank_flips_total"] for m in metrics] == [0, 0, 2, 2, 2]
    assert tracker.last_flip == [3, 2]
    # step 2: experts (3, 3, 4) vs (2, 3, 4); kept 3 + 3 + 4 = 10, changed m1[0] (by 3), m2[3] (by 2)
    m2 = metrics[2]
    assert m2["diag/experts_changed"] == pytest.approx(1 / 3)
    assert m2["diag/experts_abs_change"] == pytest.approx(1 / 3)
    assert m2["diag/ranks_changed"] == pytest.approx(2 / 10)
    assert m2["diag/ranks_abs_change"] == pytest.approx(5 / 10)
    # step 4: experts (3, 3, 2) vs (2, 3, 4); kept 3 + 3 + 2 = 8, changed m1[0] (by 3)
    m4 = metrics[4]
    assert m4["diag/experts_changed"] == pytest.approx(2 / 3)
    assert m4["diag/experts_abs_change"] == pytest.approx(3 / 3)
    assert m4["diag/ranks_changed"] == pytest.approx(1 / 8)
    assert m4["diag/ranks_abs_change"] == pytest.approx(3 / 8)
    # margins: sigmoid(1) - sigmoid(-1) for every GSV
    gap = float(torch.sigmoid(torch.tensor(1.0)) - torch.sigmoid(torch.tensor(-1.0)))
    assert m4["gsv/expert_margin"] == pytest.approx(gap)
    assert m4["gsv/rank_margin"] == pytest.approx(gap)

    report = tracker.report()
    assert report["steps"] == 5 and report["tail_steps"] == 1
    assert report["initial"]["experts"] == 9 and report["initial"]["total_rank"] == 3 + 12 + 8
    assert report["final"]["experts"] == 8 and report["final"]["total_rank"] == 6 + 9 + 4
    assert report["expert_flips"] == 2 and report["rank_flips"] == 2
    assert report["last_expert_flip"] == 3 and report["last_rank_flip"] == 2
    assert report["experts_changed"] == pytest.approx(2 / 3)
    assert report["ranks_abs_change"] == pytest.approx(3 / 8)
    assert report["converged"] and not report["unchanged"]
    assert report["initial_readout"] == [[1, 2], [4, 4, 4], [2, 2, 2, 2]]
    assert report_warnings(report) == []


@pytest.mark.parametrize(
    "steps, flip_at, converged",
    [(20, 17, True), (20, 18, False), (20, 19, False), (25, 21, True), (25, 22, False)]
    + [(30, 26, True), (30, 27, False)],  # tails: 2 of 20, ceil(2.5) = 3 of 25, 3 of 30
)
def test_not_converged_exactly_when_a_flip_is_in_the_last_ten_percent(steps, flip_at, converged):
    moved = state((3, [1, 2, 3, 4]), (3, [4, 4, 4, 4]), (4, [2, 2, 2, 2]))
    trajectory = [INIT if t < flip_at else moved for t in range(steps)]
    tracker, _ = run(trajectory)
    report = tracker.report()
    assert report["tail_steps"] == {20: 2, 25: 3, 30: 3}[steps]
    assert report["converged"] is converged
    assert report["tail_expert_flips"] == (0 if converged else 1)
    warned = [w for w in report_warnings(report) if w.startswith("not converged")]
    assert len(warned) == (0 if converged else 1)
    lines = report_lines(report)
    assert lines[-1 if converged else -2].endswith("converged: yes" if converged else "no")
    assert any("WARNING: not converged" in ln for ln in lines) is not converged


def test_a_rank_flip_alone_in_the_tail_is_not_converged():
    moved = state((2, [2, 2, 3, 4]), (3, [4, 4, 4, 4]), (4, [2, 2, 2, 2]))
    tracker, _ = run([INIT] * 9 + [moved])
    report = tracker.report()
    assert report["tail_rank_flips"] == 1 and report["tail_expert_flips"] == 0
    assert not report["converged"]


def test_unchanged_is_the_exact_read_out_of_step_zero():
    away = state((3, [1, 2, 3, 4]), (3, [4, 4, 4, 4]), (4, [2, 2, 2, 2]))
    dropped_rank_moved = state((2, [1, 2, 1, 1]), (3, [4, 4, 4, 1]), (4, [2, 2, 2, 2]))
    tracker, _ = run([INIT, away, INIT, dropped_rank_moved])
    report = tracker.report()
    # it moved and came back; only the ranks of dropped experts differ: unchanged
    assert report["unchanged"] and report["expert_flips"] == 2 and report["rank_flips"] == 0
    assert report["experts_changed"] == 0 and report["ranks_changed"] == 0
    (warning,) = report_warnings(report)
    assert warning.startswith("the search did not move")
    assert "before budget fitting" in warning and "WARNING: the search did not move" in "".join(
        report_lines(report)
    )
    one_rank = state((2, [1, 3, 3, 4]), (3, [4, 4, 4, 4]), (4, [2, 2, 2, 2]))
    tracker, _ = run([INIT, one_rank])
    assert not tracker.report()["unchanged"]


def test_state_dict_round_trip_continues_identically():
    g = torch.Generator().manual_seed(0)

    def random_state():
        return selection_of(
            SimpleNamespace(
                gsv_expert=torch.randn(N, generator=g), gsv_rank=torch.randn(N, R, generator=g)
            )
            for _ in range(5)
        )

    init, trajectory = random_state(), [random_state() for _ in range(40)]
    full, full_metrics = run(trajectory, init=init, window=3, history_len=4)
    first, _ = run(trajectory[:23], init=init, window=3, history_len=4)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = SearchDiagnostics(window=3, history_len=4)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    _, rest = run(trajectory[23:], tracker=resumed, first=23)
    assert rest == full_metrics[23:]
    assert resumed.report() == full.report()
    assert full.report()["rank_flips"] > 0 and full.report()["expert_flips"] > 0
    # the history stays short and evenly spaced, its records are the metrics of their step
    history = full.report()["history"]
    assert 2 <= len(history) <= 4
    every = full.history_every
    assert every > 3 and all((h["step"] + 1) % every == 0 for h in history)
    for h in history:
        m = full_metrics[h["step"]]
        assert h["rank_flips_total"] == m["diag/rank_flips_total"]
        assert h["ranks_changed"] == pytest.approx(m["diag/ranks_changed"], abs=1e-6)


def test_selection_follows_the_readout_rule_on_a_search_model():
    model = tiny_llama()
    inject_search_adapter(model, linear_names(model), SearchSettings(n_max=5, r_max=3), seed=3)
    with torch.no_grad():  # spread the expert argmax over 0..4 (0 and 1 both read 2)
        for i, m in enumerate(search_layers(model).values()):
            m.gsv_expert[i % 5] += 2.0
    sel = selection_of(search_layers(model).values())
    read = read_allocation(collect_gsvs(model))
    assert sel.module_ranks() == [list(m.ranks) for m in read.modules.values()]
    assert sel.total_experts == read.total_experts and sel.total_rank == read.total_rank
    assert {len(r) for r in sel.module_ranks()} == {2, 3, 4, 5}


def test_search_module_logs_the_diagnostics_to_its_loggers(tmp_path):
    import csv

    import lightning as L
    from lightning.pytorch.loggers import CSVLogger
    from test_search_module import loader

    model = tiny_llama()
    inject_search_adapter(model, linear_names(model), SearchSettings(n_max=4, r_max=4), seed=1)
    initial = selection_of(search_layers(model).values()).module_ranks()
    settings = SearchSettings(n_max=4, r_max=4, outer=dict(lr=0.3))  # large: GSVs flip
    module = SearchModule(model, settings, val_dataloader=loader(2, offset=50))
    trainer = L.Trainer(
        logger=CSVLogger(tmp_path, name="", version=""),
        log_every_n_steps=2,
        max_steps=6,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, train_dataloaders=loader(6))
    tracker = module.diagnostics
    assert tracker.window == 2 and tracker.steps == 6
    assert tracker.report()["initial_readout"] == dict(zip(module._names, initial, strict=True))
    rows = [r for r in csv.DictReader((tmp_path / "metrics.csv").open()) if r["diag/expert_flips"]]
    assert [int(r["step"]) for r in rows] == [1, 3, 5]  # logged after steps 1, 3, 5
    names = [
        *(f"diag/{k}" for k in ("experts_changed", "ranks_changed", "experts_abs_change")),
        *(f"diag/{k}" for k in ("ranks_abs_change", "expert_flips", "rank_flips")),
        *("diag/expert_flips_total", "diag/rank_flips_total", "gsv/expert_margin"),
        "gsv/rank_margin",
    ]
    assert set(tracker.metrics()) == set(names) and all(n in rows[0] for n in names)
    # each logged window is the sum of its two steps: the windows add up to the totals
    for kind in ("expert", "rank"):
        windows = sum(float(r[f"diag/{kind}_flips"]) for r in rows)
        assert windows == float(rows[-1][f"diag/{kind}_flips_total"])
        assert windows == tracker.report()[f"{kind}_flips"]
    assert tracker.report()["rank_flips"] > 0  # the windows above are not all zero


def test_search_module_checkpoint_carries_the_diagnostics():
    model = tiny_llama()
    inject_search_adapter(model, linear_names(model), SearchSettings(n_max=4, r_max=4))
    module = SearchModule(model, SearchSettings(n_max=4, r_max=4))
    module.diagnostics.start(module.selection())
    module.diagnostics.update(module.selection(), 0)
    checkpoint = {"state_dict": {}}
    module.on_save_checkpoint(checkpoint)
    other = SearchModule(model, SearchSettings(n_max=4, r_max=4))
    other.on_load_checkpoint(checkpoint)
    assert other.diagnostics.report() == module.diagnostics.report()
    with pytest.warns(SearchWarning, match="no search diagnostics"):
        SearchModule(model, SearchSettings(n_max=4, r_max=4)).on_load_checkpoint({})
    assert DIAGNOSTICS_KEY in checkpoint


def test_search_run_writes_diagnostics_that_the_initial_gsvs_confirm(tmp_path, capsys):
    cfg = compose_cfg("search", ["backbone=tiny_llama", "debug=fast"], tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = run_search(cfg)
    written = Allocation.load(path)
    diag = written.meta["diagnostics"]
    expected_keys = {
        "compared", "steps", "start_step", "initial", "final", "experts_changed",
        "ranks_changed", "experts_abs_change", "ranks_abs_change", "expert_flips",
        "rank_flips", "last_expert_flip", "last_rank_flip", "tail_fraction", "tail_steps",
        "tail_expert_flips", "tail_rank_flips", "unchanged", "converged", "initial_readout",
        "history",
        # the credit meter's report: per-module signal-to-noise and its summary
        "credit_snr", "credit_steps", "credit/expert_snr", "credit/rank_snr",
        "credit/expert_snr_mean", "credit/rank_snr_mean",
        "credit/expert_noise_share", "credit/rank_noise_share",
    }  # fmt: skip
    assert set(diag) == expected_keys  # no budget: no budget_control entry
    assert len(diag["credit_snr"]) == len(written.modules) and diag["credit_steps"] > 0
    for kind in ("expert", "rank"):  # the summary: median and mean of the per-module SNRs
        per = sorted(m[kind] for m in diag["credit_snr"].values())
        half = len(per) // 2
        median = per[half] if len(per) % 2 else (per[half - 1] + per[half]) / 2
        assert diag[f"credit/{kind}_snr"] == pytest.approx(median)
        assert diag[f"credit/{kind}_snr_mean"] == pytest.approx(sum(per) / len(per))
        noise = sum(v < 1 for v in per) / len(per)
        assert diag[f"credit/{kind}_noise_share"] == pytest.approx(noise)
    steps = int(cfg.trainer.max_steps)
    assert diag["steps"] == steps == written.meta["steps"] and diag["start_step"] == 0
    assert diag["tail_steps"] == math.ceil(0.1 * steps)

    # recompute the step-0 read-out from the seeded initial GSVs
    model, _ = base()  # the backbone search.py loaded
    names = list(find_targets(model, list(cfg.backbone.target_modules)))
    s = cfg.search
    inject_search_adapter(model, names, SearchSettings(n_max=s.n_max, r_max=s.r_max), seed=cfg.seed)
    gsvs = collect_gsvs(model)
    initial = read_allocation(gsvs)
    assert diag["initial_readout"] == {n: list(m.ranks) for n, m in initial.modules.items()}
    assert diag["initial"]["experts"] == initial.total_experts
    assert diag["initial"]["total_rank"] == initial.total_rank
    # no budget: the written allocation is the final GSV read-out
    assert cfg.budget.kind == "none"
    assert diag["final"]["experts"] == written.total_experts == written.meta["read_out"]["experts"]
    assert diag["final"]["total_rank"] == written.total_rank
    kept = changed = moved = 0
    for n, m in written.modules.items():
        step0 = (gsvs[n].rank.argmax(-1) + 1).tolist()  # every expert's initial rank
        for i, r in enumerate(m.ranks):
            kept, changed, moved = kept + 1, changed + (r != step0[i]), moved + abs(r - step0[i])
    e_final = [m.experts for m in written.modules.values()]
    e_init = [m.experts for m in initial.modules.values()]
    diff = [abs(a - b) for a, b in zip(e_final, e_init, strict=True)]
    assert diag["experts_changed"] == pytest.approx(sum(d > 0 for d in diff) / len(diff))
    assert diag["experts_abs_change"] == pytest.approx(sum(diff) / len(diff))
    assert diag["ranks_changed"] == pytest.approx(changed / kept)
    assert diag["ranks_abs_change"] == pytest.approx(moved / kept)
    unchanged = {n: list(m.ranks) for n, m in written.modules.items()} == diag["initial_readout"]
    assert diag["unchanged"] is unchanged
    assert diag["converged"] is (diag["tail_expert_flips"] + diag["tail_rank_flips"] == 0)
    assert [h["step"] for h in diag["history"]] == list(range(steps))  # log_every_n_steps=1

    # the printed report and the warnings say the same
    out = capsys.readouterr().out
    assert f"search diagnostics after {steps} steps" in out
    assert f"experts {initial.total_experts} -> {written.total_experts}" in out
    ours = [str(w.message) for w in caught if issubclass(w.category, SearchWarning)]
    assert ours == report_warnings(diag)
    assert any(w.startswith("the search did not move") for w in ours) is unchanged


def test_report_lines_say_what_the_credit_and_the_budget_did():
    moved = state((3, [1, 2, 3, 4]), (3, [4, 4, 4, 4]), (4, [2, 2, 2, 2]))
    tracker, _ = run([INIT] + [moved] * 9)  # moved early, then settled: no warning
    report = {
        **tracker.report(),
        "credit/expert_snr": 0.5,
        "credit/expert_snr_mean": 0.8,
        "credit/expert_noise_share": 0.75,
        "credit/rank_snr": 2.0,
        "credit/rank_snr_mean": 1.5,
        "credit/rank_noise_share": 0.25,
        "budget_control": {"spent": 1234.0, "price": 0.01},
    }
    fit = {
        "mode": "lagrangian",
        "fill": "spend",
        "removed_expert_units": 1,
        "removed_rank_units": 2,
        "added_expert_units": 3,
        "added_rank_units": 4,
        "scaled": {"mode": "rank", "before": 1500, "after": 1999},
    }
    lines = report_lines(report, {"kind": "params", "value": 2000, "spent": 1999, "fit": fit})
    assert lines[-3].endswith(
        "median over modules: experts 0.50 (mean 0.80, 75.0% of modules noise), "
        "ranks 2.00 (mean 1.50, 25.0% of modules noise)"
    )
    # a report written before the median was logged has one value per kind
    old = {k: v for k, v in report.items() if not k.endswith("_snr_mean")}
    line = next(x for x in report_lines(old, None) if "signal-to-noise" in x)
    assert line.endswith(
        "experts 0.50 (75.0% of modules noise), ranks 2.00 (25.0% of modules noise)"
    )
    assert lines[-2] == (
        "  budget params 2,000 inside the search: read-out spends 1,234 (price 0.01), trim "
        "removed 1 expert / 2 rank units, fill (spend) added 3 / 4, then grown in proportion from "
        "1,500; the allocation spends 1,999"
    )
    assert lines[-1].endswith("converged: yes")
    posthoc = report_lines(report, {"kind": "rank", "value": 9, "spent": 9, "fit": {}})
    assert "rank 9 fitted after the search: removed 0 expert / 0 rank units" in posthoc[-2]
    assert report_lines(tracker.report())[-1].endswith("converged: yes")  # no credit, no budget
