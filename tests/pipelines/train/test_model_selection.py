"""Model selection follows ``select_on``: the key validation metric, the checkpoint MONAI's
``CheckpointSaver`` keeps and the epoch ``EarlyStopHandler`` stops at; the loss is lower-is-better."""

import pytest
import torch
from ignite.engine import Engine, Events
from monai.handlers import CheckpointSaver, EarlyStopHandler

from medaug.pipelines.train import lower_is_better, metric_cmp_fn, selection_score, validation_metrics


@pytest.mark.parametrize("select_on", ["balanced_accuracy", "auc", "loss"])
def test_the_key_metric_is_val_select_on_and_both_study_metrics_stay_logged(select_on):
    key, additional = validation_metrics(select_on, positive_class=0)
    assert list(key) == [f"val_{select_on}"]
    assert {"val_balanced_accuracy", "val_auc"} <= set(key) | set(additional)
    assert ("val_loss" in additional or "val_loss" in key) == (select_on == "loss")


def test_an_unknown_criterion_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="balanced_accuracy, auc, loss"):
        validation_metrics("accuracy")


def test_val_loss_is_the_cross_entropy_of_the_probabilities_with_classes_weighted_equally():
    (loss,) = validation_metrics("loss")[0].values()
    loss.reset()
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.25, 0.75]])
    labels = torch.tensor([0, 0, 0, 1])
    loss.update((probs, labels))
    class0 = -torch.log(torch.tensor([0.9, 0.8, 0.6])).mean()
    class1 = -torch.log(torch.tensor(0.75))
    assert loss.compute() == pytest.approx(float((class0 + class1) / 2))


def _validation_epochs(tmp_path, select_on, values, patience=2):
    """A stand-in evaluator whose key metric takes ``values`` epoch by epoch, with the bundle's saver and
    early stopping; returns (the epoch whose weights model.pt holds, the epochs run)."""
    network = torch.nn.Linear(1, 1, bias=False)
    name = f"val_{select_on}"
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(engine):
        engine.state.key_metric_name = name
        engine.state.metrics = {name: values[engine.state.epoch - 1]}
        network.weight.data.fill_(engine.state.epoch)  # the weights say which epoch they are from

    CheckpointSaver(
        save_dir=str(tmp_path),
        save_dict={"model": network},
        save_key_metric=True,
        key_metric_negative_sign=lower_is_better(select_on),
        key_metric_greater_or_equal=True,
        key_metric_filename="model.pt",
    ).attach(evaluator)
    EarlyStopHandler(patience=patience, score_function=selection_score(select_on), trainer=evaluator).attach(evaluator)
    evaluator.run([0], max_epochs=len(values))
    saved = torch.load(tmp_path / "model.pt", weights_only=True)["weight"]  # one object: its bare state dict
    return int(saved.item()), evaluator.state.epoch


def test_with_select_on_loss_the_lowest_loss_is_kept_and_rising_loss_stops_training(tmp_path):
    best, epochs = _validation_epochs(tmp_path, "loss", [0.7, 0.4, 0.5, 0.6, 0.3])
    assert (best, epochs) == (2, 4), "kept epoch 2 (loss 0.4); stopped after 2 epochs without a lower loss"


def test_with_select_on_auc_the_highest_auc_is_kept(tmp_path):
    best, epochs = _validation_epochs(tmp_path, "auc", [0.6, 0.8, 0.7, 0.75, 0.9])
    assert (best, epochs) == (2, 4)


def test_the_evaluators_best_metric_comparison_follows_the_direction():
    assert metric_cmp_fn("loss")(0.3, 0.4) and not metric_cmp_fn("loss")(0.5, 0.4)
    assert metric_cmp_fn("auc")(0.9, 0.8) and not metric_cmp_fn("balanced_accuracy")(0.7, 0.8)
