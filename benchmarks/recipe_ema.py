"""EMA of the weights or not: the default bundle's recipe with and without ``ema#enabled``, paired by seed.

Reads the ``records.jsonl`` of two ``benchmarks/pretraining.py`` runs that differ only in
``--overrides '{"ema#enabled": true}'`` (same dataset, network, init and seeds) and writes
``benchmarks/results/<name>.{json,md}``: per variant the mean ± sd and 95% t-interval over seeds of
test AUC, balanced accuracy and accuracy; per metric the paired difference (EMA - plain) over the
seeds both have, with its t-interval and the paired t-test's p (SciPy ``ttest_rel``).

    python benchmarks/pretraining.py --datasets breastmnist_64 --networks resnet18 --inits scratch --no-peer \\
        --runs-dir benchmarks/results/tmp_pt_noema
    python benchmarks/pretraining.py ... --overrides '{"ema#enabled": true}' --runs-dir benchmarks/results/tmp_pt_ema
    python benchmarks/recipe_ema.py --plain benchmarks/results/tmp_pt_noema --ema benchmarks/results/tmp_pt_ema
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
RESULTS = REPO / "benchmarks" / "results"

from medaug.pipelines.evaluate.stats import mean_sd_ci, paired_seed_test  # noqa: E402

METRICS = ("auc", "balanced_accuracy", "accuracy")


def records(runs_dir: Path) -> dict[int, dict]:
    """``{seed: record}`` of one variant (a later line for the same seed wins)."""
    path = runs_dir / "records.jsonl"
    if not path.is_file():
        raise SystemExit(f"{path}: no records (run benchmarks/pretraining.py with --runs-dir {runs_dir} first)")
    lines = path.read_text().splitlines()
    return {r["seed"]: r for r in (json.loads(line) for line in lines if line.strip())}


def compare(plain: dict[int, dict], ema: dict[int, dict]) -> dict:
    seeds = sorted(set(plain) & set(ema))
    out = {"seeds": seeds, "variants": {}, "paired": {}}
    for name, runs in (("plain", plain), ("ema", ema)):
        out["variants"][name] = {m: mean_sd_ci([runs[s]["metrics"][m] for s in seeds]) for m in METRICS}
        out["variants"][name]["seconds"] = mean_sd_ci([runs[s]["seconds"] for s in seeds])
    for metric in METRICS:
        out["paired"][metric] = paired_seed_test(
            [ema[s]["metrics"][metric] for s in seeds], [plain[s]["metrics"][metric] for s in seeds]
        )
    out["per_seed"] = {
        s: {name: {m: runs[s]["metrics"][m] for m in METRICS} for name, runs in (("plain", plain), ("ema", ema))}
        for s in seeds
    }
    return out


def markdown(result: dict, title: str) -> str:
    ci = lambda m: f"{m['mean']:.3f} ± {m['sd']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"  # noqa: E731
    lines = [
        f"# {title}",
        "",
        f"Seeds {', '.join(map(str, result['seeds']))}; official test split; mean ± sd [95% t-interval] over seeds; "
        "paired over seeds: EMA - plain, t-interval and paired t-test p. Seconds: wall time per model on the "
        "2-core machine shared with other jobs (not a timing of the recipe).",
        "",
        "| variant | test AUC | balanced accuracy | accuracy | s/model |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("plain", "plain (ema off)"), ("ema", "ema#enabled true")):
        v = result["variants"][name]
        lines.append(
            f"| {label} | {ci(v['auc'])} | {ci(v['balanced_accuracy'])} | {ci(v['accuracy'])} "
            f"| {v['seconds']['mean']:.0f} |"
        )
    lines += ["", "| metric | EMA - plain [95% CI] | p (paired t) |", "|---|---|---|"]
    for metric, test in result["paired"].items():
        lines.append(
            f"| {metric} | {test['diff']:+.3f} [{test['ci_low']:+.3f}, {test['ci_high']:+.3f}] | {test['p']:.3f} |"
        )
    lines += ["", "| seed | plain AUC / BA | EMA AUC / BA |", "|---|---|---|"]
    for seed, row in result["per_seed"].items():
        p, e = row["plain"], row["ema"]
        plain_cell, ema_cell = (f"{r['auc']:.3f} / {r['balanced_accuracy']:.3f}" for r in (p, e))
        lines.append(f"| {seed} | {plain_cell} | {ema_cell} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", type=Path, nargs="+", required=True, help="runs dir(s) of the plain recipe")
    parser.add_argument("--ema", type=Path, nargs="+", required=True, help="runs dir(s) with ema#enabled true")
    parser.add_argument(
        "--title", default="EMA of the weights: BreastMNIST 64 px, ResNet-18 from scratch, default recipe"
    )
    parser.add_argument("--name", default="recipe_ema", help="results file stem")
    args = parser.parse_args()
    plain = {s: r for d in args.plain for s, r in records(d).items()}
    ema = {s: r for d in args.ema for s, r in records(d).items()}
    result = compare(plain, ema) | {"date": time.strftime("%Y-%m-%d")}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(result, indent=2))
    table = markdown(result, args.title)
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
