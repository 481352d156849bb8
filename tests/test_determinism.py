"""Same seed, same run: identical draws and identical training curves, in graph mode and under
XLA, and the same negatives in both modes (every draw names the Philox generator)."""

import numpy as np
import pytest
import tensorflow as tf
from test_samplers import FACTORIES, _queries

from tf_adaptive_softmax import _experiments as experiments
from tf_adaptive_softmax import datasets


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_same_seed_same_draws_in_graph_mode_and_under_xla(name):
    # Two fresh samplers with one seed draw one stream in graph mode; a third, compiled with XLA,
    # draws exactly that stream too, so XLA runs reproduce as graph-mode runs do.
    modes = [False, False] + ([] if name == "softmax" else [True])  # the oracle is not an XLA sampler
    draws = []
    for jit_compile in modes:
        sampler = FACTORIES[name]()
        sample = tf.function(lambda q: sampler.sample(q, num_samples=64), jit_compile=jit_compile)
        shared = tf.function(lambda q: sampler.sample_shared(q, num_samples=64), jit_compile=jit_compile)
        queries = tf.constant(_queries())
        draws.append([sample(queries)[0].numpy() for _ in range(3)] + [shared(queries)[0].numpy()])
    for run in draws[1:]:
        for want, got in zip(draws[0], run):
            np.testing.assert_array_equal(want, got)
    assert not np.array_equal(draws[0][0], draws[0][1]), "successive calls must draw afresh"


# Under XLA once, with MIDX's refreshes: every sampler's XLA draws equal its graph-mode ones (above).
@pytest.mark.parametrize(
    "sampler_name,jit_compile",
    [("uniform", False), ("midx_rvq", False), ("quadratic_kernel", False), ("midx_rvq", True)],
)
def test_same_seed_same_training_curve(sampler_name, jit_compile):
    teacher = datasets.make_teacher(200, 8, seed=0)
    train, test = datasets.train_test_split(teacher, 2_048, 512)  # whole batches: one compile a run
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
