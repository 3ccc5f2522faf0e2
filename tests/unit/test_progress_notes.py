"""What the CLI's progress bar says of a distillation run (services/demo.py, also `dsc distil`)."""

from services.demo import _training_progress


def test_the_bar_shows_the_loss_while_training_and_pairs_done_in_a_preference_pass():
    training = {"phase": "training", "step": 3, "total": 6, "loss": 0.6931}
    assert _training_progress({"progress": training}) == (3, 6, "loss 0.693")
    passing = {**training, "phase": "reference log-probs", "passes": {"reference log-probs": {"done": 96, "total": 262}}}
    assert _training_progress({"progress": passing}) == (3, 6, "reference log-probs 96/262 pairs")
    assert _training_progress({"progress": {**passing, "phase": "evaluating"}}) == (3, 6, "evaluating")
