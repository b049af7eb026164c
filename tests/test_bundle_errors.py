"""How a ``monai.bundle run`` ends on an error: a user's mistake is one short message, the traceback
goes to a log file and the exit code is 2; any other error keeps Python's traceback. (That the hook
ends an MLflow run FAILED is tested with the tracker, tests/pipelines/tracking/test_tracking.py.)"""

import sys
import tempfile

import pytest

from medaug.bundle_errors import EXIT_SETTINGS, error_hook, running_monai_bundle, user_error
from medaug.settings import SettingsError


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:
        return caught


def monai_wrapped(error: Exception) -> RuntimeError:
    """What MONAI's config instantiation raises around a component's error."""
    try:
        try:
            raise error
        except Exception as inner:
            raise RuntimeError(
                "Failed to instantiate component 'medaug.pipelines.oversample.OversampleStage'"
            ) from inner
    except RuntimeError as outer:
        return outer


def test_the_users_mistake_is_found_inside_monais_wrapping_and_nothing_else_counts_as_one():
    mistake = SettingsError("oversample#method", "not one of gan, vae", "did you mean 'gan'?", value="gann")
    assert user_error(monai_wrapped(mistake)) is mistake
    assert user_error(monai_wrapped(ZeroDivisionError("division by zero"))) is None


def test_importing_medaug_under_pytest_leaves_pythons_exception_handling_alone():
    assert not running_monai_bundle()
    assert sys.excepthook is sys.__excepthook__ or "medaug" not in getattr(sys.excepthook, "__module__", "")


def test_a_mistake_is_a_short_message_with_the_traceback_in_a_log_file_and_exit_2(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # no run started: the log is a temporary file
    passed_on = []
    error = monai_wrapped(SettingsError("classifier", "not one of resnet18", "did you mean 'resnet18'?", "resnet19"))
    with pytest.raises(SystemExit) as exit_info:
        error_hook(lambda *args: passed_on.append(args))(type(error), error, error.__traceback__)
    assert exit_info.value.code == EXIT_SETTINGS and not passed_on
    message = capsys.readouterr().err.strip().splitlines()
    assert message[0] == "medaug: classifier = 'resnet19': not one of resnet18; did you mean 'resnet18'?"
    (log,) = tmp_path.glob("medaug-error-*.log")
    assert message[1:] == [f"(full traceback in {log})"]
    assert "Traceback" in log.read_text() and "RuntimeError: Failed to instantiate" in log.read_text()


def test_any_other_error_is_left_to_the_previous_hook():
    passed_on = []
    error = raised(ZeroDivisionError("division by zero"))
    error_hook(lambda *args: passed_on.append(args))(type(error), error, error.__traceback__)
    assert passed_on == [(ZeroDivisionError, error, error.__traceback__)]
