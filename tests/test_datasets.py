import numpy as np
import pytest
from conftest import CHI_SQUARE_ALPHA, chi_square_pvalue

from tf_adaptive_softmax import datasets


def test_deterministic_from_seed():
    a = datasets.make_teacher(500, 8, seed=3)
    b = datasets.make_teacher(500, 8, seed=3)
    np.testing.assert_array_equal(a.class_embeddings, b.class_embeddings)
    xa, ya = a.sample(100, seed=1)
    xb, yb = b.sample(100, seed=1)
    np.testing.assert_array_equal(xa, xb)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, a.sample(100, seed=2)[1])


def test_labels_follow_the_teacher_softmax():
    # Each label is one draw from softmax(teacher logits of its own features): the label counts
    # match the summed per-example probabilities (a Poisson-binomial, tighter than chi-square's
    # multinomial, so the test is conservative).
    teacher = datasets.make_teacher(20, 4, seed=0)
    x, y = teacher.sample(30000, seed=5)
    logits = x @ teacher.class_embeddings.T + teacher.class_bias
    probs = np.exp(logits - np.logaddexp.reduce(logits, axis=1, keepdims=True)).mean(axis=0)
    counts = np.bincount(y, minlength=20)
    assert chi_square_pvalue(counts, probs, counts.sum()) > CHI_SQUARE_ALPHA
    # A wrong model (the prior alone) is rejected by the same test.
    prior = np.exp(teacher.class_bias)
    assert chi_square_pvalue(counts, prior / prior.sum(), counts.sum()) < 1e-6


def test_sample_chunks_large_catalogues(monkeypatch):
    monkeypatch.setattr(datasets, "_CHUNK_ELEMENTS", 1000)
    teacher = datasets.make_teacher(300, 4, seed=0)
    x, y = teacher.sample(50, seed=0)  # 3 examples per chunk
    assert y.shape == (50,) and y.min() >= 0 and y.max() < 300


def test_zipf_prior_and_floor():
    teacher = datasets.make_teacher(1000, 8, zipf_exponent=1.0, seed=0)
    prior = np.exp(teacher.class_bias)
    assert prior.sum() == pytest.approx(1.0, rel=1e-4)
    assert prior[0] / prior[9] == pytest.approx(10.0, rel=1e-3)
    (x, y), (xt, yt) = datasets.train_test_split(teacher, 2000, 500)
    assert 0 < teacher.cross_entropy(xt, yt) < np.log(1000)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_classes"):
        datasets.make_teacher(0)
    with pytest.raises(ValueError, match="num_examples"):
        datasets.make_teacher(10, 2).sample(0)


def test_unsorted_ids_permute_the_prior_and_keep_everything_else():
    sorted_teacher = datasets.make_teacher(300, 4, seed=2)
    shuffled = datasets.make_teacher(300, 4, seed=2, frequency_sorted_ids=False)
    np.testing.assert_array_equal(shuffled.class_embeddings, sorted_teacher.class_embeddings)
    np.testing.assert_array_equal(np.sort(shuffled.class_bias), np.sort(sorted_teacher.class_bias))
    assert np.all(np.diff(sorted_teacher.class_bias) <= 0)
    # Frequency no longer falls with the id: the rank correlation of id and prior is near 0.
    ranks = np.argsort(np.argsort(-shuffled.class_bias))
    assert abs(np.corrcoef(np.arange(300), ranks)[0, 1]) < 0.2
