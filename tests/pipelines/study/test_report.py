"""The study report on MLflow runs logged the way study children log them (tags, params, test
metrics, ``predictions.csv`` and ``metrics.json``), without training anything: pairing by image, the
baseline matched across an amount sweep, Holm across comparisons, the figures a grid calls for, an
experiment of plain bundle runs (no study) with three classes, and the sanity marks that keep smoke
runs, too few seeds and collapsed models from reading as findings."""

import csv
import json

import mlflow
import numpy as np
import pytest
from mlflow.entities import Metric, Param
from scipy import stats as scipy_stats

from medaug.pipelines.evaluate import stats
from medaug.pipelines.evaluate.metrics import compute_metrics
from medaug.pipelines.study import report_flags
from medaug.pipelines.study.report import ReportError, RunRecord, leak_note, write_study_report

N = 60
Y = np.array([0, 1, 1, 1] * (N // 4))  # class 0 is the minority


def _predictions(rng, accuracy, k=2):
    """Class probabilities whose argmax is right with about the given accuracy."""
    right = rng.random(N) < accuracy
    pred = np.where(right, Y, (Y + 1) % k)
    prob = rng.dirichlet(np.ones(k), N) * 0.4
    prob[np.arange(N), pred] += 0.6
    return prob / prob.sum(1, keepdims=True)


def _log_run(client, experiment_id, tmp_path, name, tags, prob, class_names, metrics=None, reverse=False, params=None):
    run = client.create_run(experiment_id, run_name=name, tags=tags)
    folder = tmp_path / "artifacts" / name
    folder.mkdir(parents=True)
    rows = [
        {
            "image": f"data.npz#test/{i}",
            "frame": "",
            "label": class_names[Y[i]],
            "predicted": class_names[int(np.argmax(prob[i]))],
            **{f"prob_{c}": f"{p:.6f}" for c, p in zip(class_names, prob[i])},
        }
        for i in range(N)
    ]
    with open(folder / "predictions.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows[::-1] if reverse else rows)
    (folder / "metrics.json").write_text(json.dumps({"class_names": class_names, "positive_class": class_names[0]}))
    client.log_artifact(run.info.run_id, str(folder / "predictions.csv"))
    client.log_artifact(run.info.run_id, str(folder / "metrics.json"))
    values = compute_metrics(Y, prob, positive_class=0, class_names=class_names)
    logged = {**{f"test_{k}": v for k, v in values.items() if k != "n"}, **(metrics or {})}
    client.log_batch(
        run.info.run_id,
        metrics=[Metric(k, float(v), 0, 0) for k, v in logged.items()],
        params=[Param(k, v) for k, v in (params or {}).items()],
    )
    client.set_terminated(run.info.run_id, "FINISHED")
    return prob


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for the module (creating its tables takes seconds)."""
    folder = tmp_path_factory.mktemp("store")
    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}"), folder


@pytest.fixture
def amount_study(store, tmp_path):
    """none (amount fixed at 0) and gan at three amounts, three seeds, a synthetic_fid per gan run;
    a smoke study: its parent lists configs/smoke.json, its children ran 2 epochs."""
    client, folder = store
    experiment_id = client.create_experiment("amounts", (tmp_path / "mlruns").as_uri())
    parent = client.create_run(
        experiment_id,
        run_name="study",
        tags={"medaug.role": "study", "medaug.baseline": "none", "medaug.amount_key": "oversample#amount"},
    ).info.run_id
    configs = json.dumps(["bundles/b/configs/train.json", "bundles/b/configs/smoke.json"])
    client.log_batch(parent, params=[Param("configs", configs)])
    rng = np.random.default_rng(0)
    probs = {}
    for seed in range(3):
        for strategy, amount, accuracy in [("none", 0, 0.6), ("gan", 0.5, 0.65), ("gan", 1.0, 0.75), ("gan", 2.0, 0.7)]:
            axes = {} if strategy == "none" else {"oversample#amount": amount}
            tags = {
                "mlflow.parentRunId": parent,
                "medaug.strategy": strategy,
                "medaug.seed": str(seed),
                "medaug.axes": json.dumps(axes),
                "medaug.overrides": json.dumps({"oversample#amount": amount}),
            }
            extra = (
                {
                    "synthetic_fid": 40.0 / (1 + amount),
                    "oversample_synthetic_total": 20 * amount,
                    "oversample_fit_seconds": 30.0 + seed,
                    "oversample_sample_seconds": 2.0,
                    "oversample_fit_peak_memory_mb": 900.0,
                    "oversample_sample_peak_memory_mb": 700.0 + seed,
                }
                if strategy == "gan"
                else None
            )
            probs[(strategy, amount, seed)] = _log_run(
                client,
                experiment_id,
                tmp_path,
                f"{strategy}-{amount}-{seed}",
                tags,
                _predictions(rng, accuracy),
                ["minority", "majority"],
                extra,
                reverse=strategy == "none",
                params={"max_epochs": "2"},
            )
    return client, parent, probs, folder


def test_amount_sweep_report_pairs_by_image_and_matches_the_baseline_across_amounts(amount_study, tmp_path):
    client, parent, probs, folder = amount_study
    result = write_study_report("amounts", runs_dir=folder, out_dir=tmp_path / "report", n_bootstrap=300)
    assert result["runs"] == 12 and result["cells"] == 4 and result["comparisons"] == 3
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    by_cell = {c["cell"]: c for c in data["comparisons"]}
    assert {c["baseline_cell"] for c in by_cell.values()} == {"none"}
    one = by_cell["gan (oversample#amount=1.0)"]["result"]
    assert one["seeds"] == [0, 1, 2] and one["images"] == N and one["shared_images"]
    # The baseline's predictions.csv lists the images in reverse order: the report joins on the image.
    expected = stats.delong_test(
        [
            (
                (Y == 0).astype(int),
                np.stack([probs[("gan", 1.0, s)][:, 0] for s in range(3)]),
                np.stack([probs[("none", 0, s)][:, 0] for s in range(3)]),
            )
        ]
    )
    assert one["auc"]["diff"] == pytest.approx(expected["diff"], abs=1e-5)
    assert one["auc"]["p"] == pytest.approx(expected["p"], rel=1e-3)
    raw = [by_cell[c]["result"]["mcnemar"]["p"] for c in sorted(by_cell)]
    assert [by_cell[c]["result"]["mcnemar"]["p_holm"] for c in sorted(by_cell)] == pytest.approx(stats.holm(raw))
    files = {p.name for p in (tmp_path / "report").iterdir()}
    assert {"amount_sweep.png", "quality_vs_gain.png", "metrics_by_strategy.png", "report.html", "report.md"} <= files
    assert data["quality_vs_gain"]["n"] == 3 and data["quality_vs_gain"]["metric"] == "synthetic_fid"
    # Compute cost next to accuracy: means over seeds of what the oversampling cost, per cell.
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "## Compute cost" in markdown and "images generated" in markdown
    section = markdown.split("## Compute cost")[1].split("\n## ")[0].splitlines()
    cost = next(line for line in section if line.startswith("| gan (oversample#amount=2.0) | 3 |"))
    cells = [c.strip() for c in cost.strip("|").split("|")]
    assert (
        cells[3:7] == ["40.0", "31.0", "2.0", "–"] and cells[7] == "900.0"
    )  # images, fit s (30..32), sampling, no copies, peak MB
    none_row = next(line for line in section if line.startswith("| none | 3 |"))
    assert none_row.count("–") == 5  # nothing oversampled: only the wall time
    # A 2-epoch smoke study of 3 seeds answers nothing: each comparison says why instead of Δ, p and Holm
    # (the numbers above stay in report.json, marked).
    compared = markdown.split("## Paired comparisons")[1].split("\n## ")[0]
    rows = [line for line in compared.splitlines() if line.startswith("| gan")]
    assert len(rows) == 3
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[4].startswith("✗ not an answer: smoke runs (2 epochs); 3 seeds < 5")
        assert cells[5:] == ["–"] * 8
    assert all(c["flags"]["verdict"] is False for c in data["comparisons"])
    assert data["sanity"]["cells"]["none"]["setup"] == ["smoke runs (2 epochs)", "3 seeds < 5"]
    # Two classes: the per-class rows that repeat a summary metric are left out; F1 of the negative class is new.
    metrics_table = markdown.split("## All test metrics")[1].split("\n## ")[0]
    listed = {line.split("|")[1].strip() for line in metrics_table.splitlines() if line.startswith("| test_")}
    assert "test_f1_class_majority" in listed and "test_sensitivity" in listed and "test_auc" in listed
    assert not any("_class_" in m for m in listed - {"test_f1_class_majority"})
    assert {a.path for a in client.list_artifacts(parent, "report")} >= {
        "report/report.html",
        "report/amount_sweep.png",
    }
    with pytest.raises(ReportError, match="--baseline: 'vae' is none of the strategies"):
        write_study_report("amounts", baseline="vae", runs_dir=folder, out_dir=tmp_path / "r2", log_to_mlflow=False)


def test_plain_runs_of_an_experiment_with_three_classes(store, tmp_path):
    client, folder = store
    experiment_id = client.create_experiment("plain", (tmp_path / "mlruns").as_uri())
    rng = np.random.default_rng(1)
    for seed in range(2):
        for strategy, accuracy in [("none", 0.5), ("class_weight", 0.7)]:
            tags = {"strategy": strategy, "seed": str(seed), "classifier": "small_cnn"}
            _log_run(
                client,
                experiment_id,
                tmp_path,
                f"{strategy}-{seed}",
                tags,
                _predictions(rng, accuracy, k=3),
                ["a", "b", "c"],
            )
    single = {"strategy": "oversample", "seed": "0", "classifier": "small_cnn"}  # one seed only
    _log_run(
        client,
        experiment_id,
        tmp_path,
        "oversample-0",
        single,
        _predictions(rng, 0.6, k=3),
        ["a", "b", "c"],
        {
            "test_balanced_accuracy_ci_low": 0.41,
            "test_balanced_accuracy_ci_high": 0.72,
            "data_leaked_test_images": 3,
            "data_leaked_test_images_dropped": 3,
        },
    )
    result = write_study_report("plain", runs_dir=folder, out_dir=tmp_path / "report", n_bootstrap=200)
    assert (
        "- leaked test images (identical pixels to a train/val image): 3 per run; scored in 0 run(s), dropped "
        "before scoring (leaks: drop_test) in 1 run(s); not recorded by 4 run(s)"
    ) in (tmp_path / "report" / "report.md").read_text()
    assert result["baseline"] == "none" and result["comparisons"] == 2
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    comparison = next(c for c in data["comparisons"] if c["cell"] == "class_weight (classifier=small_cnn)")
    single_seed = next(c for c in data["comparisons"] if c["cell"] == "oversample (classifier=small_cnn)")
    assert single_seed["result"]["seeds"] == [0]  # tested against none on the one seed they share
    one_seed = data["summary"]["oversample (classifier=small_cnn)"]["test_balanced_accuracy"]
    assert (one_seed["ci_low"], one_seed["ci_high"]) == (0.41, 0.72) and one_seed["ci_source"].startswith("bootstrap")
    assert "multi-class" in comparison["result"]["auc"]["note"]
    metrics_table = (tmp_path / "report" / "report.md").read_text().split("## All test metrics")[1]
    assert "| test_sensitivity_class_b |" in metrics_table  # three classes: every per-class row says something
    assert 0 < comparison["result"]["balanced_accuracy"]["p"] <= 1
    report_run = client.get_run(result["logged_to"])
    assert report_run.data.tags["medaug.role"] == "report" and report_run.info.status == "FINISHED"
    with pytest.raises(ReportError, match="no MLflow experiment named 'nothing'"):
        write_study_report("nothing", runs_dir=folder, log_to_mlflow=False)


def test_a_collapsed_model_gets_no_verdict_while_a_healthy_cell_keeps_its_own(store, tmp_path):
    client, folder = store
    experiment_id = client.create_experiment("collapse", (tmp_path / "mlruns").as_uri())
    rng = np.random.default_rng(2)
    one_class = np.tile([0.3, 0.7], (N, 1))  # every test image called 'majority'
    for seed in range(2):
        for strategy, prob in [
            ("none", _predictions(rng, 0.9)),
            ("class_weight", one_class),
            ("oversample", _predictions(rng, 0.97)),
        ]:
            tags = {"strategy": strategy, "seed": str(seed)}
            _log_run(
                client,
                experiment_id,
                tmp_path,
                f"{strategy}-{seed}",
                tags,
                prob,
                ["minority", "majority"],
                params={"max_epochs": "40"},
            )
    write_study_report(
        "collapse", runs_dir=folder, out_dir=tmp_path / "report", n_bootstrap=200, min_seeds=2, log_to_mlflow=False
    )
    markdown = (tmp_path / "report" / "report.md").read_text()
    data = json.loads((tmp_path / "report" / "report.json").read_text())

    def row(section: str, cell: str) -> list[str]:
        lines = markdown.split(f"## {section}")[1].split("\n## ")[0].splitlines()
        return [c.strip() for c in next(x for x in lines if x.startswith(f"| {cell} |")).strip("|").split("|")]

    assert row("Test metrics by strategy", "class_weight")[2] == "⚠ every run predicted one class (majority)"
    assert row("Test metrics by strategy", "none")[2] == "ok"
    collapsed = row("Paired comparisons", "class_weight")
    assert collapsed[4] == "✗ not an answer: every run predicted one class (majority)"
    assert collapsed[5:] == ["–"] * 8
    healthy = row("Paired comparisons", "oversample")
    assert healthy[4] == "ok" and healthy[5].count("[") == 1 and healthy[6] != "–"  # Δ [CI] and p (Holm)
    verdicts = {c["cell"]: c["flags"]["verdict"] for c in data["comparisons"]}
    assert verdicts == {"class_weight": False, "oversample": True}
    assert "Sanity marks." in markdown and report_flags.LEGEND in markdown
    # Runs not scored under corruption (evaluate#robustness off, or older runs): no robustness columns at all.
    assert "corruption" not in markdown and data["robustness"] is None
    assert len(row("Paired comparisons", "oversample")) == 13


def test_the_leak_note_says_how_many_test_images_leaked_and_what_was_done():
    def runs(*metrics):
        return [RunRecord(str(i), f"r{i}", "none", i, {}, {}, m) for i, m in enumerate(metrics)]

    clean = {"data_leaked_test_images": 0, "data_leaked_test_images_dropped": 0}
    scored = {"data_leaked_test_images": 216, "data_leaked_test_images_dropped": 0}
    dropped = {"data_leaked_test_images": 216, "data_leaked_test_images_dropped": 216}
    assert leak_note(runs(clean, clean)).endswith(": none")
    assert leak_note(runs(scored, dropped)).endswith(
        ": 216 per run; scored in 1 run(s), dropped before scoring (leaks: drop_test) in 1 run(s)"
    )
    assert leak_note(runs({}, {})) == "leaked test images: not recorded by these runs"


def _robust(mean, drop, jpeg, brightness):
    """What evaluate#robustness logs for one run (two corruptions at severities 1 and 3)."""
    cells = {
        f"robust_balanced_accuracy_{c}_s{k}": v + d
        for c, v in (("jpeg", jpeg), ("brightness", brightness))
        for k, d in ((1, 0.05), (3, -0.05))
    }
    return {
        **cells,
        "robust_balanced_accuracy_jpeg_mean": jpeg,
        "robust_balanced_accuracy_brightness_mean": brightness,
        "robust_mean_balanced_accuracy": mean,
        "robust_mean_balanced_accuracy_ci_low": mean - 0.1,
        "robust_mean_balanced_accuracy_ci_high": mean + 0.1,
        "robust_relative_drop_balanced_accuracy": drop,
        "robust_worst_balanced_accuracy": min(jpeg, brightness),
        "robust_mean_auc": mean + 0.05,
        "robust_mean_sensitivity": mean - 0.05,
    }


def test_robustness_columns_interval_over_seeds_and_paired_t_test_against_the_baseline(store, tmp_path):
    """none and preset scored under corruption on three seeds, geometric on one (its other runs are
    older, without robustness): the strategy table gains the corrupted balanced accuracy and the
    relative drop (mean ± sd [t-interval]), the comparisons a paired t-test over seeds of each,
    Holm-corrected; geometric's cells say on how few seeds they stand."""
    client, folder = store
    experiment_id = client.create_experiment("robust", (tmp_path / "mlruns").as_uri())
    rng = np.random.default_rng(3)
    robust = {
        "none": [(0.60, 0.20, 0.70, 0.50), (0.62, 0.18, 0.72, 0.52), (0.64, 0.16, 0.74, 0.54)],
        "preset": [(0.70, 0.08, 0.72, 0.68), (0.71, 0.10, 0.73, 0.69), (0.75, 0.05, 0.76, 0.74)],
    }
    for seed in range(3):
        for strategy in ("none", "preset", "geometric"):
            extra = _robust(*robust[strategy][seed]) if strategy in robust else None
            if strategy == "geometric" and seed == 0:
                extra = _robust(0.65, 0.15, 0.70, 0.60)
            _log_run(
                client,
                experiment_id,
                tmp_path,
                f"{strategy}-{seed}",
                {"strategy": strategy, "seed": str(seed)},
                _predictions(rng, 0.9),
                ["minority", "majority"],
                extra,
                params={"max_epochs": "40"},
            )
    write_study_report(
        "robust", runs_dir=folder, out_dir=tmp_path / "report", n_bootstrap=100, min_seeds=3, log_to_mlflow=False
    )
    data = json.loads((tmp_path / "report" / "report.json").read_text())
    markdown = (tmp_path / "report" / "report.md").read_text()

    def table(section: str) -> tuple[list[str], dict]:
        lines = [x for x in markdown.split(f"## {section}")[1].split("\n## ")[0].splitlines() if x.startswith("| ")]
        split = [[c.strip() for c in x.strip("|").split("|")] for x in lines]
        return split[0], {row[0]: row for row in split[1:]}

    preset = [m[0] for m in robust["preset"]]
    spread = stats.mean_sd_ci(preset)
    summary = data["summary"]["preset"]["robust_mean_balanced_accuracy"]
    assert {k: summary[k] for k in spread} == pytest.approx(spread) and summary["ci_source"] == "seeds"
    assert spread["mean"] == pytest.approx(0.72) and spread["ci_low"] == pytest.approx(0.72 - 0.0657, abs=1e-4)
    header, rows = table("Test metrics by strategy")
    assert header[-2:] == ["balanced_accuracy under corruption", "relative drop from clean"]
    assert rows["preset"][-2:] == ["0.720 ± 0.026 [0.654, 0.786]", "0.077 ± 0.025 [0.014, 0.139]"]
    assert rows["geometric"][-2:] == ["0.650 ± n/a (1 of 3 seeds)", "0.150 ± n/a (1 of 3 seeds)"]

    header, rows = table("Paired comparisons")
    by_cell = {c["cell"]: c["result"] for c in data["comparisons"]}
    for name, column in (("robust_mean_balanced_accuracy", -4), ("robust_relative_drop_balanced_accuracy", -2)):
        a, b = (
            [m[0 if "mean" in name else 1] for m in robust["preset"]],
            [m[0 if "mean" in name else 1] for m in robust["none"]],
        )
        expected = scipy_stats.ttest_rel(a, b)
        test = by_cell["preset"][name]
        assert test["p"] == pytest.approx(expected.pvalue) and test["seeds"] == 3
        assert test["diff"] == pytest.approx(np.mean(np.subtract(a, b)))
        assert test["p_holm"] == pytest.approx(test["p"])  # the only comparison with a p-value: Holm counts one
        assert by_cell["geometric"][name]["seeds"] == 1 and np.isnan(by_cell["geometric"][name]["p"])
        assert header[column].endswith("(paired t, seeds)") and header[column + 1] == "p (Holm)"
        assert rows["preset"][column + 1] == f"{test['p']:.3f} ({test['p_holm']:.3f})"
        geometric = rows["geometric"][column], rows["geometric"][column + 1]
        assert geometric == ("1 seed(s) with the metric on both sides: no test over seeds", "n/a")
    assert by_cell["preset"]["robust_mean_balanced_accuracy"]["diff"] == pytest.approx(0.1)
    assert by_cell["preset"]["robust_relative_drop_balanced_accuracy"]["diff"] == pytest.approx(-0.31 / 3)

    header, rows = table("Balanced accuracy by corruption")
    assert header == ["strategy", "seeds", "brightness", "jpeg", "worst"]
    assert rows["none"][2:] == ["0.520 ± 0.020", "0.720 ± 0.020", "brightness"]
    assert rows["geometric"][2:] == ["0.600 ± n/a", "0.700 ± n/a", "brightness"]
    listed = [x.split("|")[1:3] for x in markdown.split("## All test metrics")[1].splitlines() if "| robust_" in x]
    assert [" robust_mean_balanced_accuracy ", " preset "] in listed and [" robust_mean_auc ", " geometric "] in listed
    assert data["robustness"]["per_corruption"]["preset"]["jpeg"]["mean"] == pytest.approx(0.7367, abs=1e-4)
    assert (tmp_path / "report" / "robust_vs_clean.png").is_file()
    assert "paired t-tests over the common seeds" in markdown
