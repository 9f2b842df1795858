"""Latency budgets: the measured latency model, its cache, the searches under it, and ``speedup`` in the callbacks."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch

from lit_prune.core.flops import FlopsBudget
from lit_prune.core.hardware import hardware_summary
from lit_prune.core.latency_model import (
    LatencyBudget,
    LatencyShape,
    LatencyTable,
    fit_curve,
    least_squares_knots,
    model_signature,
)
from lit_prune.core.latency_tables import (
    calibration,
    load_or_measure,
    measure_table,
    relative_medians,
    table_path,
    table_variants,
)
from lit_prune.core.masks import PruningMasks
from lit_prune.methods import KPruneCallback, KwonCallback
from lit_prune.methods.gpruner.ppo import BudgetProjection
from lit_prune.methods.kprune.search import decided_counts, search_sublayer
from lit_prune.prune.search import search_masks
from lit_prune.report import read_report
from tests.conftest import tiny_config, tiny_model
from tests.test_pruning_callbacks import UserData, UserModule

L_, H, D_H, F = 2, 4, 8, 48


def synthetic_table(attention=None, ffn=None, fixed=2.0, model=None) -> LatencyTable:
    """A table of the tiny BERT's shape with known numbers: by default 1 ms per head and 0.1 ms per neuron."""
    attention = attention if attention is not None else [float(h) for h in range(H + 1)]
    ffn_counts = [0, 1, 12, 24, 36, 48]
    ffn = ffn if ffn is not None else [0.1 * n for n in ffn_counts]
    dense = fixed + L_ * (attention[-1] + ffn[-1])
    return LatencyTable(shape=LatencyShape(2, 8, 1), model=model or model_signature(tiny_model("bert")),
                        hardware=hardware_summary("cpu") | {"threads": 1}, fixed_ms=fixed, dense_ms=dense,
                        attention_counts=list(range(H + 1)), attention_ms=attention, ffn_counts=ffn_counts,
                        ffn_ms=ffn, width_sizes=[1, 2, 4, 8], width_ms=[1.0, 2.0, 3.0, 4.0])


# ------------------------------------------------------------------------------------------------ the model
def test_fit_curve_is_zero_at_zero_and_never_decreases():
    assert fit_curve([0, 1, 2, 3, 4], [0.0, 5.0, 3.0, 7.0, 6.0]) == [0.0, 4.0, 4.0, 6.5, 6.5]
    assert fit_curve([0, 1, 2], [0.0, -1.0, 2.0]) == [0.0, 0.0, 2.0]  # noise below nothing kept: clipped at 0
    with pytest.raises(ValueError, match="ascending distinct counts starting at 0"):
        fit_curve([1, 2], [0.0, 1.0])


def test_least_squares_knots_recover_a_piecewise_linear_curve_and_average_noise():
    xs = list(range(1, 13))
    line = [2.0 + 3.0 * x if x <= 6 else 20.0 + 1.0 * (x - 6) for x in xs]  # bends at 6
    assert least_squares_knots(xs, line, [1, 6, 12]) == pytest.approx([5.0, 20.0, 26.0])
    # alternating noise of +-1 around the line: the fit stays within a third of it at the knots
    noisy = [y + (1.0 if x % 2 else -1.0) for x, y in zip(xs, line)]
    assert least_squares_knots(xs, noisy, [1, 6, 12]) == pytest.approx([5.0, 20.0, 26.0], abs=0.34)
    # a value imposed at a knot: the others fit around it
    assert least_squares_knots([0, 1, 2], [0.0, 2.0, 4.0], [0, 2], fixed={0: 0.0}) == pytest.approx([0.0, 4.0])
    assert least_squares_knots([3, 3, 3], [1.0, 2.0, 6.0], [3]) == pytest.approx([3.0])  # one knot: the mean
    with pytest.raises(ValueError, match=r"knots=\[2, 12\]: expected ascending distinct values spanning 1..12"):
        least_squares_knots(xs, line, [2, 12])


def test_fit_curve_with_knots_fits_every_count_from_several_timings():
    counts = [0, 1, 2, 3, 4, 5, 6, 7, 8]
    measured = [0.0] + [1.0 + n + (0.5 if n % 2 else -0.5) for n in counts[1:]]  # a line with +-0.5 of noise
    fitted = fit_curve(counts, measured, knots=[1, 4, 8])
    assert fitted[0] == 0.0 and all(b >= a for a, b in zip(fitted, fitted[1:]))
    assert max(abs(f - (1.0 + n)) for n, f in zip(counts[1:], fitted[1:])) < 0.3  # the raw values are 0.5 off
    assert fit_curve(counts, measured, knots=counts[1:]) == fit_curve(counts, measured)  # every count: as measured
    with pytest.raises(ValueError, match="knots=\\[1, 5, 9\\]: expected counts among"):
        fit_curve(counts, measured, knots=[1, 5, 9])


def test_relative_medians_cancel_a_machine_that_slows_down_for_some_rounds():
    # two variants at 10 and 5 ms; rounds 1-3 of 5 ran 60% slower for everything (another job on the machine)
    slow = [1.0, 1.6, 1.6, 1.6, 1.0]
    times = {"dense": [10.0 * s for s in slow], "half": [5.0 * s for s in slow]}
    times["half"][0] = 5.0 * 1.6  # and one variant alone was disturbed once
    medians = relative_medians(times, "dense")
    assert medians["dense"] == pytest.approx(16.0) and medians["half"] / medians["dense"] == pytest.approx(0.5)


def test_the_calibration_maps_the_layers_sum_to_the_whole_models_time():
    """Whole models that take 90% of their layers' summed time (plus noise) give a calibration through the origin
    with that slope, whatever the noise on single points."""
    table = synthetic_table()
    _, whole = table_variants(tiny_model("bert"))
    points, noise = [], [0.3, -0.3, 0.2, -0.2, 0.1, -0.1, 0.0]
    for k, jitter in zip(range(1, 8), noise):
        masks = whole[f"eighths={k}"]
        points.append((masks, table.fixed_ms + 0.9 * table.layers_sum(masks.head.sum(1), masks.ffn.sum(1)) + jitter))
    dense_sum = L_ * (table.attention_ms[-1] + table.ffn_ms[-1])
    table.dense_ms = table.fixed_ms + 0.9 * dense_sum
    knots, values = calibration(table, points)
    assert knots[0] == 0 and knots[-1] == dense_sum and len(knots) == 3 and values[0] == 0
    assert [v / k for k, v in zip(knots[1:], values[1:])] == pytest.approx([0.9, 0.9], abs=0.01)


def test_predictions_interpolate_the_ffn_and_add_the_layers():
    table = synthetic_table(ffn=[0.0, 1.0, 2.0, 4.0, 6.0, 8.0])
    assert table.ffn(1) == 1.0 and table.ffn(6) == pytest.approx(1 + 5 / 11) and table.ffn(30) == pytest.approx(5.0)
    structure = [{"heads": [[8, 8]] * 3, "ffn": 30}, {"heads": [], "ffn": 0}]
    assert table.predict(structure) == pytest.approx(2.0 + 3.0 + 5.0)
    assert table.predict_counts([3, 0], [30, 0]) == pytest.approx(10.0)
    # heads with fewer dims: the padded width's time over the whole heads' (4 dims of 8: 3.0 / 4.0)
    assert table.predict([{"heads": [[4, 4]] * 2, "ffn": 0}, {"heads": [], "ffn": 0}]) == pytest.approx(2.0 + 2 * 0.75)
    assert table.max_speedup == pytest.approx(table.dense_ms / 2.0)


def test_a_table_round_trips_through_json():
    table = synthetic_table()
    again = LatencyTable.from_dict(json.loads(json.dumps(table.to_dict())))
    assert again.to_dict() == table.to_dict()
    with pytest.raises(ValueError, match="not a lit_prune.LatencyTable version 3 table"):
        LatencyTable.from_dict({"format": "something else"})


@pytest.mark.parametrize("speedup, message", [
    (0.5, r"speedup=0.5: expected a number >= 1"),
    (float("nan"), r"speedup=nan: expected a number >= 1"),
    (100.0, r"speedup=100 is beyond what removing every head and neuron allows .* at most 9.80x \(the dense model "
            r"takes 19.6 ms"),
])
def test_impossible_speedups_are_refused_with_the_maximum(speedup, message):
    with pytest.raises(ValueError, match=message):
        LatencyBudget(synthetic_table(), speedup)  # dense 2 + 2·(4 + 4.8) = 19.6 ms, nothing kept 2 ms: 9.8x


def test_the_maximum_in_the_message_is_the_tables():
    table = synthetic_table(fixed=1.0)  # dense 18.6 ms: at most 18.6x
    with pytest.raises(ValueError, match=r"at most 18.60x"):
        LatencyBudget(table, 20.0)
    assert LatencyBudget(table, 18.6).max_ms == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------ the searches
def test_kwon_search_under_a_linear_table_equals_the_flops_search():
    """With per-unit costs proportional to the FLOPs', the latency search is the FLOPs search."""
    model = tiny_model("bert")
    flops = FlopsBudget.for_model(model, 8, 0.5)
    head_cost, neuron_cost = (float(c) for c in flops.unit_costs)
    scale = 1e-3
    table = synthetic_table(attention=[h * head_cost * scale for h in range(H + 1)],
                            ffn=[n * neuron_cost * scale for n in [0, 1, 12, 24, 36, 48]], fixed=1.0)
    # the same time for the layers; any neuron count (no rounding to multiples, which FLOPs budgets do not do)
    latency = LatencyBudget(table, 1 / (0.5 + (1 - 0.5) * 1.0 / table.dense_ms), neuron_multiple=1)
    generator = torch.Generator().manual_seed(0)
    heads, neurons = torch.rand(L_, H, generator=generator), torch.rand(L_, F, generator=generator)
    assert search_masks(heads, neurons, latency) == search_masks(heads, neurons, flops)


def test_kwon_search_under_a_nonlinear_table_fits_and_leaves_no_room():
    # the first head of a layer costs 3 ms, each further one 0.5; the first neuron 1 ms, then 0.05
    table = synthetic_table(attention=[0.0, 3.0, 3.5, 4.0, 4.5], ffn=[0.0, 1.0, 1.55, 2.15, 2.75, 3.35])
    generator = torch.Generator().manual_seed(1)
    heads, neurons = torch.rand(L_, H, generator=generator), torch.rand(L_, F, generator=generator)
    budget = LatencyBudget(table, 2.0, neuron_multiple=1)
    masks = search_masks(heads, neurons, budget)
    assert budget.fits(masks)
    predicted = table.predict(masks.structure())
    assert predicted <= budget.max_ms and predicted > budget.max_ms - 1.0  # the next neuron would not fit
    # by default every layer keeps a multiple of 16 neurons (or all 48), its most important ones, within the budget
    aligned = LatencyBudget(table, 2.0)
    masks = search_masks(heads, neurons, aligned)
    counts = masks.ffn.sum(1).long().tolist()
    assert aligned.fits(masks) and all(c % 16 == 0 for c in counts) and sum(counts) > 0
    for layer, count in enumerate(counts):
        kept = neurons[layer][masks.ffn[layer] != 0]
        pruned = neurons[layer][masks.ffn[layer] == 0]
        assert count == 0 or count == F or float(kept.min()) >= float(pruned.max())


def test_kprune_search_under_a_latency_budget_counts_the_decided_layers():
    table = synthetic_table()
    budget = LatencyBudget(table, 2.0)  # 9.8 ms: 7.8 ms for the layers
    masks = PruningMasks.ones(L_, H, D_H, F)
    masks.head[0, 2:] = 0  # layer 0's attention decided: 2 heads (2 ms)
    decided = decided_counts(masks, 1)
    assert decided[0].tolist() == [2, 0] and decided[1].tolist() == [0, 0]
    heads, neurons = torch.zeros(L_, H), torch.zeros(L_, F)
    neurons[0] = torch.linspace(2, 1, F)  # layer 0's neurons first, then layer 1's heads
    heads[1] = 0.5
    kept = search_sublayer(heads, neurons, 1, budget.fits_counts, decided)
    # 5.8 ms left: all 48 neurons of layer 0 (4.8 ms), then one head of layer 1 (1 ms)
    assert int(kept.sum()) == 48
    masks.ffn[0] = kept.float()
    assert table.predict_counts([2, 1], [48, 0]) <= budget.max_ms < table.predict_counts([2, 2], [48, 0])
    # 4 ms left fit 40 neurons: rounded down to 32, the best ones (the rest goes to the sublayers above)
    tighter = LatencyBudget(table, table.dense_ms / (table.fixed_ms + 2.0 + 4.0))
    kept = search_sublayer(heads, neurons, 1, tighter.fits_counts, decided, tighter.neuron_multiple)
    assert kept.tolist() == [True] * 32 + [False] * 16


def test_gpruner_projection_under_a_latency_budget_fits():
    table = synthetic_table(attention=[0.0, 3.0, 3.5, 4.0, 4.5])
    budget = LatencyBudget(table, 2.5)
    generator = torch.Generator().manual_seed(2)
    project = BudgetProjection(budget, torch.rand(L_ * H, generator=generator), torch.rand(L_ * F, generator=generator))
    for _ in range(5):
        masks = project(torch.rand(L_ * H, generator=generator) > 0.2, torch.rand(L_ * F, generator=generator) > 0.2)
        assert budget.fits(masks)


# ------------------------------------------------------------------------------------------------ measuring
def test_a_table_is_measured_for_a_rotary_gated_encoder(tmp_path):
    """ModernBERT: its heads keep their query/key dims (rotary), so the width variants narrow the value dims only;
    the table is measured and predicts the dense model."""
    model = tiny_model("modernbert")
    table, notes = load_or_measure(model, LatencyShape.of(model, 16, 48, threads=1), tmp_path, warmup=1, repeats=5)
    assert notes[-1].startswith("latency table measured in")
    assert table.width_sizes == [1, 2, 4, 8] and table.dense_ms > table.fixed_ms > 0
    assert all(b >= a for a, b in zip(table.ffn_ms, table.ffn_ms[1:]))


def parameter_clock(variants, inputs, warmup, repeats, seed=0, progress=None):
    """A stand-in for ``time_rounds`` with no timing noise: each variant takes 0.2 ms plus 0.1 us per parameter, and
    the whole machine is 1.5x slower in round 1 (which the per-round ratios to the dense model cancel)."""
    return {name: [(0.2 + 1e-4 * sum(p.numel() for p in variant.parameters())) * (1.5 if round_ == 1 else 1.0)
                   for round_ in range(repeats)] for name, variant in variants.items()}


def test_measured_table_is_fitted_and_cached(tmp_path, monkeypatch):
    """The fit and the cache, on timings with no noise (the tiny model's one-layer differences are a few
    microseconds, within a loaded machine's noise: the tables measured for real are tested at larger shapes)."""
    monkeypatch.setattr("lit_prune.core.latency_tables.time_rounds", parameter_clock)
    model = tiny_model("bert")
    shape = LatencyShape.of(model, 4, 16, threads=1)
    table, notes = load_or_measure(model, shape, tmp_path, warmup=1, repeats=3)
    assert notes[-1].startswith("latency table measured in") and "saved to" in notes[-1]
    assert table.attention_ms[0] == 0 and table.ffn_ms[0] == 0
    assert all(b >= a for a, b in zip(table.attention_ms, table.attention_ms[1:]))
    assert all(b >= a for a, b in zip(table.ffn_ms, table.ffn_ms[1:]))
    assert table.ffn_counts == [0, 1, 3, 6, 9, 12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45, 48]
    assert table.dense_ms > table.fixed_ms > 0
    # calibrated on whole models: the dense one's point is the last (exact unless noise made the fit pool it), and
    # nothing kept is the fixed time
    assert table.predict_counts([H] * L_, [F] * L_) == pytest.approx(table.fixed_ms + table.calibration_ms[-1])
    assert table.measured["dense"] == pytest.approx(table.dense_ms, abs=1e-4)
    assert table.predict_counts([0] * L_, [0] * L_) == pytest.approx(table.fixed_ms)
    assert table.calibration_sum[0] == 0 and all(b > a for a, b in zip(table.calibration_sum,
                                                                        table.calibration_sum[1:]))
    assert all(b >= a for a, b in zip(table.calibration_ms, table.calibration_ms[1:]))
    assert set(table.validation) == {"held_out_measured_ms", "held_out_predicted_ms", "relative_error"}
    # costs linear in the units kept are predicted exactly, and the slow round is cancelled
    assert table.validation["relative_error"] == pytest.approx(0, abs=1e-9)
    assert table.dense_ms == pytest.approx(0.2 + 1e-4 * sum(p.numel() for p in model.parameters()), abs=1e-4)
    again, notes = load_or_measure(model, shape, tmp_path)
    assert notes == [f"latency table reused from {table_path(tmp_path, model, shape)} (measured in "
                     f"{table.seconds:.0f} s on {notes[0].split(' on ', 1)[1].split(', batch')[0]}, {shape.label()})"]
    assert again.to_dict() == table.to_dict()
    # a table of the same model and shape from another machine is never used, and is named
    other = table.to_dict()
    other["hardware"] = {**other["hardware"], "cpu_model": "Another CPU", "cpu_count": 96}
    foreign = tmp_path / (table_path(tmp_path, model, shape).name.rsplit("-", 1)[0] + "-0123456789ab.json")
    foreign.write_text(json.dumps(other))
    _, notes = load_or_measure(model, shape, tmp_path)
    assert any(note.startswith(f"latency table {foreign} ignored: measured on CPU: Another CPU (96 cores)")
               for note in notes)
    assert notes[-1].startswith("latency table reused")


def test_timings_that_show_no_unit_cost_are_refused_with_the_numbers(monkeypatch):
    def flat_layers(variants, *args, **kwargs):  # every one-layer model as fast as the empty one
        times = parameter_clock(variants, *args, **kwargs)
        return {name: [0.5] * len(t) if name.split("=")[0] in ("heads", "neurons", "width") else t
                for name, t in times.items()}

    monkeypatch.setattr("lit_prune.core.latency_tables.time_rounds", flat_layers)
    with pytest.raises(RuntimeError, match=r"one layer with all its heads and neurons \(\+0\.0000 ms and \+0\.0000 ms "
                                           r"over the empty layer's 0\.500 ms\) is not measurably slower.*more repeats"):
        measure_table(tiny_model("bert"), LatencyShape(4, 16, 1))


def test_a_compacted_model_or_a_shape_elsewhere_is_refused():
    model = tiny_model("bert")
    with pytest.raises(ValueError, match=r"the model is on cpu in float32; move it there first"):
        measure_table(model, LatencyShape(2, 8, 1, dtype="bfloat16"))


# ------------------------------------------------------------------------------------------------ callbacks
class WiderModule(UserModule):
    """The user's module with a wider tiny encoder, so that its layers, not fixed costs, dominate its time and a
    speedup of 1.15 is reachable on a busy machine."""

    def __init__(self) -> None:
        super().__init__()
        from transformers import AutoModelForSequenceClassification

        torch.manual_seed(0)
        self.encoder = AutoModelForSequenceClassification.from_config(
            tiny_config("roberta", num_labels=2, hidden_size=128, intermediate_size=512))


def fit(callback, max_steps: int = 2):
    module = WiderModule()
    trainer = L.Trainer(max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", devices=1, callbacks=[callback])
    trainer.fit(module, UserData())
    return trainer, module


@pytest.mark.parametrize("callback_class", [KwonCallback, KPruneCallback])
def test_a_speedup_budget_prunes_to_the_tables_prediction_and_reports_the_measurement(callback_class, tmp_path):
    sample = {"num_samples": 32} if callback_class is KwonCallback else {"num_samples": 32, "num_tokens": None}
    callback = callback_class(speedup=1.15, evaluate=False, latency_batch_size=16, latency_seq_len=48,
                              latency_threads=1, latency_cache=str(tmp_path / "tables"), latency_repeats=3,
                              calibration_batch_size=8, output_dir=str(tmp_path), **sample)
    fit(callback)
    report = read_report(tmp_path)
    budget = report["latency"]["budget"]
    assert budget["requested_speedup"] == 1.15
    assert budget["predicted_speedup"] >= 1.15 * (1 - 1e-9)  # the search kept the prediction within the budget
    assert budget["measured"]["asked"]["batch_size"] == 16 and budget["measured"]["batch_1"]["batch_size"] == 1
    assert budget["measured_speedup"] > 0 and budget["table"]["shape"]["seq_len"] == 48
    assert report["settings"]["speedup"] == 1.15 and report["settings"]["flops_kept"] is None
    assert report["flops"]["target"] is None
    assert len(list((tmp_path / "tables").glob("*.json"))) == 1


def test_an_impossible_speedup_stops_before_training(tmp_path):
    callback = KPruneCallback(speedup=1000.0, num_samples=16, num_tokens=None, evaluate=False, latency_batch_size=4,
                              latency_seq_len=8, latency_threads=1, latency_cache=str(tmp_path),
                              output_dir=str(tmp_path))
    trainer = L.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        accelerator="cpu", devices=1, callbacks=[callback])
    with pytest.raises(ValueError, match=r"speedup=1000 is beyond what removing every head and neuron allows .* at "
                                         r"most \d+\.\d\dx"):
        trainer.fit(WiderModule(), UserData())
    assert trainer.global_step == 0 and not (tmp_path / "pruning_report.json").exists()


@pytest.mark.parametrize("settings, message", [
    ({"flops_kept": 0.5, "speedup": 2.0}, r"flops_kept=0.5 and speedup=2.0: give one budget, not both"),
    ({"speedup": 0.8}, r"speedup=0.8: expected a number >= 1"),
    ({"speedup": 2.0, "latency_batch_size": 0}, r"latency_batch_size=0 with speedup=2.0: a latency budget is "
                                                r"measured at a batch size >= 1"),
    ({"speedup": 2.0, "latency_seq_len": 0}, r"latency_seq_len=0: expected an integer >= 1 or None"),
])
def test_bad_latency_settings_fail_at_construction(settings, message):
    with pytest.raises(ValueError, match=message):
        KwonCallback(**settings).raise_problems(KwonCallback(**settings).problems)


# ------------------------------------------------------------------------------------------------ GRAIN
def test_grain_selection_under_a_latency_fraction_removes_the_least_important_first():
    from lit_prune.methods.grain.layout import GrainLayout
    from lit_prune.methods.grain.selection import select_units_by

    model = tiny_model("bert")
    layout = GrainLayout.from_model(model)
    table = synthetic_table()
    generator = torch.Generator().manual_seed(3)
    scores = {"qk": torch.rand(L_, H, D_H, generator=generator), "vo": torch.rand(L_, H, D_H, generator=generator),
              "ffn": torch.rand(L_, F, generator=generator)}
    fraction = lambda masks: table.predict(masks.structure()) / table.dense_ms
    masks = select_units_by(scores, layout.masks(), layout, 0.6, fraction)
    assert fraction(masks) <= 0.6
    # the removed neurons are the least important of all (removed query/value dims may also go with their head)
    lowest_kept = min(float(scores[name][getattr(masks, name) != 0].min()) for name in ("qk", "vo", "ffn"))
    assert float(scores["ffn"][masks.ffn == 0].max()) <= lowest_kept
    assert select_units_by(scores, masks, layout, 0.6, fraction) == masks  # already within: nothing more goes


def test_grain_with_a_speedup_schedules_the_latency_model(tmp_path):
    from lit_prune.methods import GrainCallback

    callback = GrainCallback(speedup=1.15, start=0.0, end=0.5, evaluate=False, importance_from="teacher",
                             latency_batch_size=16, latency_seq_len=48, latency_threads=1, latency_repeats=3,
                             latency_cache=str(tmp_path / "tables"), output_dir=str(tmp_path))
    fit(callback, max_steps=6)
    report = read_report(tmp_path)
    assert report["settings"]["speedup"] == 1.15 and report["settings"]["params_kept"] is None
    history = report["schedule"]["history"]
    assert history[-1]["density"] == pytest.approx(1 / 1.15) and history[-1]["latency_kept"] <= 1 / 1.15 + 1e-9
    assert all(entry["latency_kept"] <= entry["density"] + 1e-9 for entry in history)
    assert report["latency"]["budget"]["predicted_speedup"] >= 1.15 * (1 - 1e-9)
    with pytest.raises(ValueError, match=r"params_kept=0.2 and speedup=2.0: give one budget, not both"):
        GrainCallback(params_kept=0.2, speedup=2.0)


def test_a_cpu_table_never_serves_a_gpu_run():
    """The hardware key holds the device kind and the GPU: a table measured on the CPU has another file name (and
    would be named as ignored) for a run on a GPU."""
    from lit_prune.core.hardware import hardware_key

    cpu = hardware_summary("cpu") | {"threads": 2}
    gpu = {**cpu, "device": "cuda:0", "gpu": "NVIDIA H100 80GB HBM3"}
    assert hardware_key(cpu) != hardware_key(gpu)
    assert hardware_key(cpu) != hardware_key({**cpu, "threads": 1})  # nor does another thread count


# ------------------------------------------------------------------------------------------------ the study
def test_the_study_interpolates_the_flops_budgets_at_the_latency_runs_speedup(tmp_path):
    from benchmarks.studies.latency_budget import flops_comparison, markdown, plot

    def fake(part, task, budget, measured, score, requested=None, error=None):
        return {"part": part, "method": "kprune", "task": task, "budget": budget, "main_metric": "f1",
                "dense_score": 0.85, "score": score, "flops_kept": 0.4, "requested": requested, "predicted": requested,
                "report_measured": measured, "measured": {"speedup": measured, "seq_len": 128}, "error": error,
                "table": requested and {"shape": {"batch_size": 32, "seq_len": 128, "threads": 2, "dtype": "float32"},
                                        "seconds": 31.3, "version": 3}}

    rows = [fake("flops", "mrpc", {"speedup": 2.0}, 2.1, 0.84, requested=2.0, error=0.05),
            fake("flops", "mrpc", {"flops_kept": 0.5}, 1.5, 0.845),
            fake("flops", "mrpc", {"flops_kept": 0.3}, 2.5, 0.80),
            fake("speedups", "mrpc", {"speedup": 3.0}, 2.85, 0.79, requested=3.0, error=-0.05)]
    [comparison] = flops_comparison(rows)
    assert comparison["flops_score"] == pytest.approx(0.845 + (0.80 - 0.845) * 0.6)
    assert comparison["difference"] == pytest.approx(0.84 - 0.818)
    text = markdown(rows)
    assert "| kprune | mrpc | 3x | 3.00x | 2.85x (s=128) | -5.0% | yes | 2.85x |" in text
    assert "Mean difference (latency − FLOPs): +0.0220." in text
    assert "| batch 32 × 128 tokens, 2 thread(s), float32 | 3 | 31 s | 2 |" in text  # built once, used by both runs
    assert plot(rows, tmp_path / "plot.png").stat().st_size > 1000


def test_the_study_times_only_what_is_pruned_when_asked(tmp_path, monkeypatch, capsys):
    from benchmarks.studies import latency_budget as study

    monkeypatch.setattr(study, "RUNS", tmp_path)
    monkeypatch.setattr(study, "teacher_of", lambda task: (tmp_path / "teacher", None))
    monkeypatch.setattr(study, "prune", lambda *args: pytest.fail("--no-prune must not prune"))
    rows = {}
    study.run_part("batch1", ["kprune"], ["stsb"], rows, pruning=False)
    assert rows == {} and "not pruned yet, skipped (--no-prune)" in capsys.readouterr().out


def test_the_tables_study_fits_the_same_timings_both_ways():
    """Timings that add up exactly (1 ms a head, 0.1 ms a neuron, whole models the sum of their layers): the current
    fit and version 2's both predict every whole model exactly; the markdown states both fits' errors."""
    from benchmarks.studies.latency_tables import markdown, summary, version2_fit
    from lit_prune.core.latency_tables import fit_table

    model = tiny_model("bert")
    variants, whole = table_variants(model)
    fixed, base = 2.0, 0.5
    medians = {name: 0.0 for name in variants}
    medians |= {f"heads={h}": base + h for h in range(H + 1)}
    medians |= {name: base + 0.1 * int(name.split("=")[1]) for name in variants if name.startswith("neurons=")}
    medians |= {name: base + H * int(name.split("=")[1]) / D_H for name in variants if name.startswith("width=")}
    for name, masks in whole.items():
        medians[name] = fixed + float(masks.head.sum() + 0.1 * masks.ffn.sum())
    medians["dense"] = fixed + L_ * (H + 0.1 * F)
    current = fit_table(model, LatencyShape.of(model, 2, 8, threads=1), medians, whole, seconds=1.0)
    previous = version2_fit(current, medians, whole)
    for table in (current, previous):
        assert table.predict(whole["held_out"].structure()) == pytest.approx(medians["held_out"])
        assert table.predict_counts([3, 1], [12, 36]) == pytest.approx(fixed + 4 + 4.8)
    folder = {"method": "kwon", "task": "mrpc", "budget": "speedup 2", "folder": "runs/x", "measured": 2.0}
    builds = [{"build": i, "dense_ms": 700.0 + i, "seconds": 60.0, "held_out_error": {"current": 0.01, "version2": 0.1},
               "folders": [{**folder, "current": {"predicted": 2.0 + 0.1 * i, "error": 0.05 * i},
                            "version2": {"predicted": 2.2, "error": 0.1}}]} for i in range(2)]
    assert summary(builds, "current") == {"mean_abs": pytest.approx(0.025), "max_abs": pytest.approx(0.05),
                                          "within_7": 1.0}
    text = markdown(builds, "CPU: test", repeats=7)
    assert "| 1 | 701 | +1.0% / +10.0% | 5.0% / 10.0% | 5.0% / 10.0% |" in text
    assert "mean absolute error 2.5% (version 2's fit: 10.0%)" in text
    assert "| kwon | mrpc | speedup 2 | 2.00x | 2.05x (+2.5%) | 2.20x (+10.0%) |" in text
