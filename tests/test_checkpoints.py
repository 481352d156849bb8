"""Stopping and resuming training: the resumed run follows the uninterrupted one exactly.

The sampler's state (codebooks, kernel groups, the seed stream) lives in variables that travel with
the model, and CodebookRefresh schedules step refreshes by the optimizer's global step, so a
restored run draws the same negatives and refreshes at the same steps as an uninterrupted one.
"""

import functools

import numpy as np
import pytest
import tensorflow as tf
from conftest import keras3_only, legacy_only

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, CodebookRefresh, samplers
from tf_adaptive_softmax._keras import IS_KERAS_3, K

N, D, BATCH, STEPS = 40, 8, 8, 12

SAMPLERS = {
    "uniform": lambda: samplers.Uniform(N, seed=5),
    "midx": lambda: samplers.MIDX(N, num_codewords=4, seed=5),
    "midx_learned": lambda: samplers.MIDX(N, num_codewords=4, learn_codebooks=True, seed=5),
    "quadratic_kernel": lambda: samplers.QuadraticKernel(N, seed=5),
}


def _data(steps=STEPS):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((BATCH * steps, D)).astype("float32")
    y = rng.integers(0, N, BATCH * steps).astype("int32")
    return x, y


def _model(sampler_name, optimizer="adam", init_seed=0):
    """Functional model with the loss layer inside it (every save format can express it)."""
    K.utils.set_random_seed(init_seed)
    features = K.Input((D,), name="features")
    labels = K.Input((), dtype="int32", name="labels")
    query = K.layers.Dense(D, name="query")(features)
    output = AdaptiveSampledSoftmaxLoss(
        N, SAMPLERS[sampler_name](), num_samples=6, add_to_model_loss=True, name="output"
    )
    model = K.Model([features, labels], output((query, labels)))
    model.compile(optimizer=K.optimizers.Adam(0.05) if optimizer == "adam" else K.optimizers.SGD(0.5))
    return model


class BatchLosses(K.callbacks.Callback):
    """Per-batch training losses, recovered from Keras' running epoch mean (equal batch sizes)."""

    def __init__(self):
        super().__init__()
        self.losses = []

    def on_epoch_begin(self, epoch, logs=None):
        self._seen, self._mean = 0, 0.0

    def on_train_batch_end(self, batch, logs=None):
        self._seen += 1
        mean = float(logs["loss"])
        self.losses.append(self._seen * mean - (self._seen - 1) * self._mean)
        self._mean = mean


class StopAt(K.callbacks.Callback):
    """Raises after a given (epoch, batch): a crash in the middle of an epoch."""

    def __init__(self, epoch, batch):
        super().__init__()
        self.stop, self._epoch = (epoch, batch), 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self._epoch, batch) == self.stop:
            raise RuntimeError("simulated crash")


def _refresh(model, on_epoch_begin=False):
    return CodebookRefresh(model.get_layer("output"), every_n_steps=2, on_epoch_begin=on_epoch_begin)


def _fit(model, x, y, callbacks, epochs=1):
    recorder = BatchLosses()
    model.fit([x, y], batch_size=BATCH, epochs=epochs, shuffle=False, verbose=0, callbacks=callbacks + [recorder])
    return recorder.losses


def _assert_same_run(losses, reference, model, reference_model):
    np.testing.assert_allclose(losses, reference, rtol=2e-5, atol=2e-5)
    for got, want in zip(model.get_layer("output").weights, reference_model.get_layer("output").weights):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-6, err_msg=got.name)


@functools.cache  # both save formats resume against one reference run
def _uninterrupted(sampler_name, optimizer="adam", epochs=1, on_epoch_begin=False):
    model = _model(sampler_name, optimizer)
    x, y = _data()
    return model, _fit(model, x, y, [_refresh(model, on_epoch_begin)], epochs=epochs)


@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
def test_checkpoint_resume_mid_epoch_matches_uninterrupted_run(sampler_name, tmp_path):
    reference_model, reference = _uninterrupted(sampler_name)
    x, y = _data()
    stop = 5  # not a multiple of the refresh period: the schedule must come from the global step
    first = _model(sampler_name)
    losses = _fit(first, x[: stop * BATCH], y[: stop * BATCH], [_refresh(first)])
    path = tf.train.Checkpoint(model=first, optimizer=first.optimizer).write(str(tmp_path / "ckpt"))

    resumed = _model(sampler_name, init_seed=99)
    resumed.optimizer.build(resumed.trainable_variables)
    tf.train.Checkpoint(model=resumed, optimizer=resumed.optimizer).read(path).assert_existing_objects_matched()
    losses += _fit(resumed, x[stop * BATCH :], y[stop * BATCH :], [_refresh(resumed)])
    _assert_same_run(losses, reference, resumed, reference_model)


@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
@pytest.mark.parametrize("save_format", ["weights", "keras"])
def test_save_weights_and_keras_file_resume(sampler_name, save_format, tmp_path):
    # SGD keeps no slots, so weights alone (no optimizer state) suffice to resume exactly; the
    # stop is at a multiple of the refresh period because save_weights does not keep the step.
    reference_model, reference = _uninterrupted(sampler_name, optimizer="sgd")
    x, y = _data()
    stop = 6
    first = _model(sampler_name, optimizer="sgd")
    losses = _fit(first, x[: stop * BATCH], y[: stop * BATCH], [_refresh(first)])
    if save_format == "weights":
        path = str(tmp_path / ("model.weights.h5" if IS_KERAS_3 else "ckpt"))
        first.save_weights(path)
        resumed = _model(sampler_name, optimizer="sgd", init_seed=99)
        resumed.load_weights(path)
    else:
        path = str(tmp_path / "model.keras")
        first.save(path)
        resumed = K.models.load_model(path)
    sampler = resumed.get_layer("output").sampler
    for got, want in zip(sampler.weights, first.get_layer("output").sampler.weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.name)
    losses += _fit(resumed, x[stop * BATCH :], y[stop * BATCH :], [_refresh(resumed)])
    _assert_same_run(losses, reference, resumed, reference_model)


@pytest.mark.parametrize("sampler_name", sorted(SAMPLERS))
def test_backup_and_restore_after_a_crash_mid_epoch(sampler_name, tmp_path):
    # Saved at epoch ends (every flavour's BackupAndRestore resumes those exactly); the crash in
    # epoch 1 reruns that epoch from the epoch-0 backup, epoch refreshes included.
    reference_model, reference = _uninterrupted(sampler_name, epochs=2, on_epoch_begin=True)
    x, y = _data()
    backup = str(tmp_path / "backup")
    first = _model(sampler_name)
    recorder = BatchLosses()
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(
            [x, y],
            batch_size=BATCH,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[K.callbacks.BackupAndRestore(backup), _refresh(first, True), recorder, StopAt(1, 3)],
        )
    resumed = _model(sampler_name, init_seed=99)
    losses = recorder.losses[:STEPS] + _fit(
        resumed, x, y, [K.callbacks.BackupAndRestore(backup), _refresh(resumed, True)], epochs=2
    )
    _assert_same_run(losses, reference, resumed, reference_model)


@legacy_only
def test_tf_keras_backup_and_restore_resumes_mid_epoch(tmp_path):
    # tf_keras saves every `save_freq` batches and resumes inside the epoch (Keras 3 resumes at
    # epoch granularity). It does not save the data iterator: the resumed partial epoch reads its
    # batches from the start of the data again. The reference replays that data order without a
    # crash; sampler state, seed stream and step-scheduled refreshes must carry over exactly.
    x, y = _data()
    crash_after = 3  # batches of epoch 1 done before the crash
    reference_model = _model("midx")
    refresh = _refresh(reference_model)
    reference = _fit(reference_model, x, y, [refresh])
    reference += _fit(reference_model, x[: crash_after * BATCH], y[: crash_after * BATCH], [refresh])
    remaining = (STEPS - crash_after) * BATCH
    reference += _fit(reference_model, x[:remaining], y[:remaining], [refresh])

    backup = str(tmp_path / "backup")
    first = _model("midx")
    recorder = BatchLosses()
    with pytest.raises(RuntimeError, match="simulated crash"):
        first.fit(
            [x, y],
            batch_size=BATCH,
            epochs=2,
            shuffle=False,
            verbose=0,
            callbacks=[
                K.callbacks.BackupAndRestore(backup, save_freq=1),
                _refresh(first),
                recorder,
                StopAt(1, crash_after - 1),
            ],
        )
    resumed = _model("midx", init_seed=99)
    losses = recorder.losses[: STEPS + crash_after] + _fit(
        resumed, x, y, [K.callbacks.BackupAndRestore(backup, save_freq=1), _refresh(resumed)], epochs=2
    )
    _assert_same_run(losses, reference, resumed, reference_model)


@keras3_only
def test_keras3_backup_and_restore_saves_sampler_state(tmp_path):
    model = _model("midx")
    x, y = _data()
    _fit(model, x, y, [K.callbacks.BackupAndRestore(str(tmp_path / "b"), delete_checkpoint=False), _refresh(model)])
    restored = _model("midx", init_seed=99)
    restored.load_weights(str(tmp_path / "b" / "latest.weights.h5"))
    for got, want in zip(restored.get_layer("output").sampler.weights, model.get_layer("output").sampler.weights):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=got.name)
