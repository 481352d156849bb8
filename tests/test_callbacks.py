import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, CodebookRefresh, SampledSoftmaxLoss, samplers
from tf_adaptive_softmax._keras import K

N, D = 30, 6


class _CountingTarget:
    def __init__(self):
        self.calls = 0

    def refresh_sampler(self, on_nonfinite="raise"):
        self.calls += 1
        return True


def _fit(callback, epochs=2, steps=5, jit_compile=False, sampler=None, steps_per_execution=1):
    layer = AdaptiveSampledSoftmaxLoss(N, sampler or samplers.Uniform(N), num_samples=4, name="output")
    features = K.Input((D,))
    model = K.Model(features, K.layers.Dense(D)(features))
    model.compile(
        optimizer="sgd",
        loss=SampledSoftmaxLoss(layer, model=model),
        jit_compile=jit_compile,
        steps_per_execution=steps_per_execution,
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((steps * 8, D)).astype(np.float32)
    y = rng.integers(0, N, steps * 8).astype(np.int32)
    model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[callback(layer)])
    return layer, model


def test_schedule_counts_epochs_and_steps():
    target = _CountingTarget()
    _fit(lambda layer: CodebookRefresh(target, every_n_steps=2, on_epoch_begin=True), epochs=2, steps=5)
    # Global steps 0, 2, 4, 6, 8 and the epoch start at step 5 (step 0's epoch start runs once).
    assert target.calls == 6


def test_epoch_refresh_can_be_disabled():
    target = _CountingTarget()
    _fit(lambda layer: CodebookRefresh(target, on_epoch_begin=False), epochs=2)
    assert target.calls == 0


def test_batch_hooks_only_for_a_step_schedule():
    # tf_keras' ParameterServerStrategy `fit` rejects callbacks that report batch hooks.
    assert not CodebookRefresh(_CountingTarget())._implements_train_batch_hooks()
    assert CodebookRefresh(_CountingTarget(), every_n_steps=3)._implements_train_batch_hooks()


def test_steps_per_execution_that_skips_refreshes_warns():
    target = _CountingTarget()
    with pytest.warns(UserWarning, match="at most once every 8 steps"):
        _fit(
            lambda layer: CodebookRefresh(target, every_n_steps=5, on_epoch_begin=False),
            steps=16,
            epochs=1,
            steps_per_execution=8,
        )
    # Execution boundaries at global steps 0 and 8: 2 refreshes where steps 0, 5, 10, 15 were asked.
    assert target.calls == 2


class _CountingSnapshot(samplers.Softmax):
    """A snapshot softmax that counts its refreshes in a variable (so compiled steps count too)."""

    def __init__(self, num_classes, **kwargs):
        super().__init__(num_classes, live=False, **kwargs)
        self.refreshes = tf.Variable(0, trainable=False)

    def _refresh(self, class_embeddings, class_bias):
        super()._refresh(class_embeddings, class_bias)
        self.refreshes.assign_add(1)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_in_step_refresh_keeps_its_schedule_under_steps_per_execution(jit_compile):
    # Keras calls batch hooks only between executions; the layer's own schedule runs inside the
    # train function: steps 0, 10, ..., 120 of 128, with 32 steps per execution.
    sampler = _CountingSnapshot(N)
    layer = AdaptiveSampledSoftmaxLoss(N, sampler, num_samples=4, refresh_every_n_steps=10)
    features = K.Input((D,))
    model = K.Model(features, K.layers.Dense(D)(features))
    model.compile(
        optimizer="sgd", loss=SampledSoftmaxLoss(layer, model=model), steps_per_execution=32, jit_compile=jit_compile
    )
    rng = np.random.default_rng(0)
    x = rng.standard_normal((128 * 2, D)).astype(np.float32)
    y = rng.integers(0, N, 128 * 2).astype(np.int32)
    model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert int(sampler.refreshes.numpy()) == 13
    assert int(np.asarray(layer._training_steps)) == 128
    assert int(np.asarray(model.optimizer.iterations)) == 128


@pytest.mark.parametrize("jit_compile", [False, True])
def test_in_step_refresh_reads_the_weights_the_step_starts_from(jit_compile):
    # In a custom loop: every second step refreshes before it draws, from the W it starts with
    # (the optimizer's update of that step comes after the loss).
    sampler = samplers.Softmax(N, live=False)
    layer = AdaptiveSampledSoftmaxLoss(N, sampler, num_samples=4, refresh_every_n_steps=2)
    layer.build_for_dim(D)
    optimizer = K.optimizers.SGD(0.5)
    rng = np.random.default_rng(1)
    query = tf.constant(rng.standard_normal((8, D)).astype(np.float32))
    labels = tf.constant(rng.integers(0, N, 8).astype(np.int32))

    @tf.function(jit_compile=jit_compile)
    def train_step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(layer((query, labels), training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, layer.trainable_variables), layer.trainable_variables))

    expected = np.zeros((N, D), np.float32)
    for step in range(5):
        before = np.asarray(layer.class_embeddings).copy()
        if step % 2 == 0:
            expected = before
        train_step()
        assert not np.array_equal(np.asarray(layer.class_embeddings), before)  # W moved
        np.testing.assert_array_equal(sampler.snapshot_embeddings.numpy(), expected)


def test_in_step_refresh_is_off_by_default_and_round_trips_its_config():
    plain = AdaptiveSampledSoftmaxLoss(N, samplers.MIDX(N, num_codewords=4), num_samples=4)
    plain.build_for_dim(D)
    assert plain.get_config()["refresh_every_n_steps"] is None
    assert "training_steps" not in [weight.name.split("/")[-1].split(":")[0] for weight in plain.weights]
    scheduled = AdaptiveSampledSoftmaxLoss(N, samplers.MIDX(N, num_codewords=4), refresh_every_n_steps=7)
    restored = AdaptiveSampledSoftmaxLoss.from_config(scheduled.get_config())
    assert restored.refresh_every_n_steps == 7
    with pytest.raises(ValueError, match="refresh_every_n_steps"):
        AdaptiveSampledSoftmaxLoss(N, samplers.MIDX(N, num_codewords=4), refresh_every_n_steps=0)


def test_bad_arguments():
    with pytest.raises(TypeError, match="target"):
        CodebookRefresh(object())
    with pytest.raises(ValueError, match="every_n_steps"):
        CodebookRefresh(_CountingTarget(), every_n_steps=0)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_refresh_inside_fit_updates_snapshot_sampler(jit_compile):
    # A snapshot Softmax is adaptive state: refreshed before every step, its snapshot equals the
    # weights that step starts from (recorded after the refresh, at batch begin).
    sampler = samplers.Softmax(N, live=False)
    seen, weights = [], []

    class Record(K.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            seen.append(sampler.snapshot_embeddings.numpy().copy())
            weights.append(self.model.sampled_softmax_output.class_embeddings.numpy().copy())

    def callbacks(layer):
        return [CodebookRefresh(layer, every_n_steps=1), Record()]

    layer, model = _fit(
        lambda layer: _Both(callbacks(layer)), epochs=1, steps=4, jit_compile=jit_compile, sampler=sampler
    )
    for snapshot, current in zip(seen, weights):
        np.testing.assert_allclose(snapshot, current, rtol=1e-6)
    assert not np.allclose(seen[0], seen[-1])


class _Both(K.callbacks.Callback):
    """Runs several callbacks in order (so one factory can return two)."""

    def __init__(self, callbacks):
        super().__init__()
        self.callbacks = callbacks

    def set_model(self, model):
        super().set_model(model)
        for callback in self.callbacks:
            callback.set_model(model)

    def on_train_begin(self, logs=None):
        for callback in self.callbacks:
            callback.on_train_begin(logs)

    def on_epoch_begin(self, epoch, logs=None):
        for callback in self.callbacks:
            callback.on_epoch_begin(epoch, logs)

    def on_train_batch_begin(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_train_batch_begin(batch, logs)

    def on_train_batch_end(self, batch, logs=None):
        for callback in self.callbacks:
            callback.on_train_batch_end(batch, logs)


def test_refresh_is_visible_to_a_compiled_function_without_retracing():
    sampler = samplers.Softmax(N, live=False)
    rng = np.random.default_rng(1)
    sampler.refresh(rng.standard_normal((N, D)).astype(np.float32))
    queries = tf.constant(rng.standard_normal((2, D)), tf.float32)
    ids = tf.constant(np.tile(np.arange(N), (2, 1)), tf.int32)
    compiled = tf.function(sampler.log_prob, jit_compile=True)
    first = compiled(queries, ids).numpy()
    new_embeddings = rng.standard_normal((N, D)).astype(np.float32)
    sampler.refresh(new_embeddings)
    second = compiled(queries, ids).numpy()
    logits = queries.numpy() @ new_embeddings.T
    np.testing.assert_allclose(second, logits - np.logaddexp.reduce(logits, axis=1, keepdims=True), atol=1e-5)
    assert not np.allclose(first, second)
    assert compiled.experimental_get_tracing_count() == 1
