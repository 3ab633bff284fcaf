"""lib.checks: the shared content checks raise on the contents a user's mistake produces and pass clean inputs."""
import numpy as np
import pytest
import torch

from lib import checks


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_check_finite_names_nan_and_inf_and_where(dtype):
    scores = torch.zeros(3, 4, dtype=dtype)
    assert checks.check_finite("scores", scores) is scores
    scores[1, 2] = float("nan")
    scores[2, 0] = float("-inf")
    with pytest.raises(ValueError, match=r"scores must be finite, got 1 NaN and 1 ±inf of 12 entries "
                                         r"\(first at index \(1, 2\)\); a diverged model"):
        checks.check_finite("scores", scores, what="a diverged model gives NaN scores")


def test_check_finite_accepts_arrays_lists_and_integers():
    checks.check_finite("x", np.arange(5))
    checks.check_finite("x", [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="1 NaN"):
        checks.check_finite("x", np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="0 NaN and 1 ±inf"):
        checks.check_finite("x", [1.0, float("inf")])
    with pytest.raises(TypeError, match="x must hold numbers"):
        checks.check_finite("x", ["a", "b"])


def test_check_index_range_refuses_padding_ids_and_ids_past_the_vocabulary():
    ids = torch.tensor([[3, 7, 1], [0, 2, 9]])
    assert checks.check_index_range("ids", ids, 0, 10) is ids
    with pytest.raises(ValueError, match=r"ids must hold ids in \[0, 10\), got min -1, max 7 \(1 outside; "
                                         r"first at index \(0, 2\)\)"):
        checks.check_index_range("ids", torch.tensor([[3, 7, -1]]), 0, 10)  # -1: the padding convention
    with pytest.raises(ValueError, match="max 10"):
        checks.check_index_range("ids", [10], 0, 10)
    checks.check_index_range("ids", torch.zeros(0, dtype=torch.long), 0, 10)  # empty passes


def test_check_index_range_refuses_float_positions_that_would_be_truncated():
    with pytest.raises(TypeError, match="ids must hold integer ids, got dtype torch.float64"):
        checks.check_index_range("ids", [1.0, 2.7], 0, 10)
    with pytest.raises(TypeError, match="integer ids"):
        checks.check_index_range("ids", torch.tensor([True, False]), 0, 2)


def test_check_probabilities_refuses_logits():
    logits = torch.tensor([[2.0, -1.0, 0.5]])
    probs = logits.softmax(-1)
    assert checks.check_probabilities("probs", probs) is probs
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\].*logits\?"):
        checks.check_probabilities("probs", logits)
    with pytest.raises(ValueError, match="sum to 1 along dim -1"):
        checks.check_probabilities("probs", torch.tensor([[0.2, 0.2]]))
    checks.check_probabilities("probs", torch.tensor([[0.2, 0.2]]), dim=None)  # independent sigmoids
    with pytest.raises(ValueError, match="finite"):
        checks.check_probabilities("probs", torch.tensor([[float("nan"), 1.0]]))
    with pytest.raises(TypeError, match="floating-point"):
        checks.check_probabilities("probs", torch.tensor([[0, 1]]))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_check_probabilities_accepts_half_precision_softmax(dtype):
    probs = torch.randn(64, 512, generator=torch.Generator().manual_seed(0)).to(dtype).softmax(-1)
    checks.check_probabilities("probs", probs)  # default tolerance follows the dtype's eps
    with pytest.raises(ValueError, match="sum to 1"):
        checks.check_probabilities("probs", probs * 0.8)
