"""Same seed, same run: identical draws and identical training curves, in graph mode and under
XLA, and the same negatives in both modes (every draw names the Philox generator)."""

import numpy as np
import pytest
import tensorflow as tf
from test_samplers import FACTORIES, _queries

from tf_adaptive_softmax import _experiments as experiments
from tf_adaptive_softmax import datasets


@pytest.mark.parametrize("name", sorted(FACTORIES))
@pytest.mark.parametrize("jit_compile", [False, True])
def test_same_seed_same_draws(name, jit_compile):
    if jit_compile and name == "softmax":
        pytest.skip("the Softmax oracle is a test reference, not an XLA sampler")
    draws = []
    for _ in range(2):
        sampler = FACTORIES[name]()
        sample = tf.function(lambda q: sampler.sample(q, num_samples=64), jit_compile=jit_compile)
        queries = tf.constant(_queries())
        draws.append([sample(queries)[0].numpy() for _ in range(3)])  # the seed stream advances
    for first, second in zip(*draws):
        np.testing.assert_array_equal(first, second)
    assert not np.array_equal(draws[0][0], draws[0][1]), "successive calls must draw afresh"


@pytest.mark.parametrize("name", sorted(set(FACTORIES) - {"softmax"}))
def test_graph_mode_and_xla_draw_the_same_negatives(name):
    draws = []
    for jit_compile in (False, True):
        sampler = FACTORIES[name]()
        sample = tf.function(lambda q: sampler.sample(q, num_samples=64), jit_compile=jit_compile)
        shared = tf.function(lambda q: sampler.sample_shared(q, num_samples=64), jit_compile=jit_compile)
        queries = tf.constant(_queries())
        draws.append([sample(queries)[0].numpy(), shared(queries)[0].numpy()])
    for graph_mode, xla in zip(*draws):
        np.testing.assert_array_equal(graph_mode, xla)


@pytest.mark.parametrize("sampler_name", ["uniform", "midx_rvq", "quadratic_kernel"])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_same_seed_same_training_curve(sampler_name, jit_compile):
    teacher = datasets.make_teacher(200, 8, seed=0)
    train, test = datasets.train_test_split(teacher, 2_000, 500)
    counts = np.bincount(train[1], minlength=200).astype(np.float64)
    results = []
    for _ in range(2):
        sampler = experiments.SAMPLERS[sampler_name](200, counts)
        results.append(
            experiments.train_and_evaluate(
                train,
                test,
                200,
                sampler,
                num_samples=10,
                epochs=2,
                batch_size=64,
                learning_rate=3e-3,
                jit_compile=jit_compile,
                verbose=0,
                seed=3,
            )
        )
    assert results[0]["test_cross_entropy"] == results[1]["test_cross_entropy"]
    assert results[0]["train_losses"] == results[1]["train_losses"]
