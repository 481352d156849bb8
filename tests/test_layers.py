import numpy as np
import pytest
import tensorflow as tf
from conftest import SAMPLER_OPS, op_types

from tf_adaptive_softmax import AdaptiveSampledSoftmaxLoss, SampledSoftmaxLoss, estimator, samplers
from tf_adaptive_softmax._keras import IS_KERAS_3, K

N, D = 50, 8


def _data(batch=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch, D)).astype(np.float32), rng.integers(0, N, batch).astype(np.int32)


def _layer(sampler=None, **kwargs):
    layer = AdaptiveSampledSoftmaxLoss(
        N, sampler if sampler is not None else samplers.Uniform(N, seed=1), num_samples=10, **kwargs
    )
    layer.build_for_dim(D)
    return layer


def test_training_is_sampled_and_inference_is_exact():
    layer = _layer()
    x, y = _data()
    exact = estimator.full_softmax_loss(x, y, layer.class_embeddings, layer.class_bias).numpy()
    np.testing.assert_allclose(layer((x, y), training=False).numpy(), exact, rtol=1e-6)
    np.testing.assert_allclose(layer((x, y)).numpy(), exact, rtol=1e-6)
    sampled = layer((x, y), training=True).numpy()
    assert sampled.shape == (64,) and not np.allclose(sampled, exact)


def test_no_sampler_trains_full_softmax():
    layer = AdaptiveSampledSoftmaxLoss(N, None)
    x, y = _data()
    np.testing.assert_allclose(layer((x, y), training=True).numpy(), layer((x, y)).numpy(), rtol=1e-6)


def test_standard_correction_and_num_true_and_weights():
    layer = _layer(logq_correction="standard")
    x, _ = _data(4)
    labels = np.array([[1, 2], [3, 4], [5, 6], [7, 8]])
    loss = layer((x, labels, np.array([1.0, 0.0, 2.0, 1.0])), training=True).numpy()
    assert loss.shape == (4,) and loss[1] == 0.0 and np.all(np.isfinite(loss))


def test_logits_and_top_k():
    layer = _layer()
    layer.class_bias.assign(np.arange(N, dtype=np.float32))
    x, _ = _data(3)
    logits = layer.logits(x).numpy()
    expected = x @ layer.class_embeddings.numpy().T + np.arange(N)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    scores, ids = layer.top_k(x, k=5)
    np.testing.assert_array_equal(ids.numpy(), np.argsort(-expected, axis=1)[:, :5])
    with pytest.raises(ValueError, match="k"):
        layer.top_k(x, k=N + 1)


def test_absolute_softmax_applies_abs_to_logits():
    layer = _layer(absolute_softmax=True)
    x, y = _data(4)
    raw = x @ layer.class_embeddings.numpy().T
    np.testing.assert_allclose(layer.logits(x).numpy(), np.abs(raw), rtol=1e-5, atol=1e-6)


def _functional_model(layer):
    features = K.Input((D,), name="features")
    labels = K.Input((), dtype="int32", name="labels")
    query = K.layers.Dense(D, name="query")(features)
    loss = layer((query, labels))
    return K.Model([features, labels], loss)


def test_functional_model_with_add_loss_trains_and_evaluates_exactly():
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.LogUniform(N), num_samples=10, add_to_model_loss=True)
    model = _functional_model(layer)
    model.compile(optimizer=K.optimizers.Adam(0.05))
    x, y = _data(512)
    before = model.evaluate([x, y], verbose=0, batch_size=512)
    model.fit([x, y], epochs=5, batch_size=64, verbose=0)
    after = model.evaluate([x, y], verbose=0, batch_size=512)
    after = after[0] if isinstance(after, list) else after
    before = before[0] if isinstance(before, list) else before
    query = model.get_layer("query")(x)
    exact = np.mean(estimator.full_softmax_loss(query, y, layer.class_embeddings, layer.class_bias).numpy())
    assert after < before
    assert after == pytest.approx(exact, rel=1e-4)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_compile_adapter_trains_embeddings_and_evaluates_exactly(jit_compile):
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N, seed=2), num_samples=10)
    features = K.Input((D,))
    query_model = K.Model(features, K.layers.Dense(D)(features))
    query_model.compile(
        optimizer=K.optimizers.Adam(0.05), loss=SampledSoftmaxLoss(layer, model=query_model), jit_compile=jit_compile
    )
    assert len(query_model.trainable_weights) == 4  # Dense kernel/bias + class embeddings/bias
    x, y = _data(256)
    w_before = layer.class_embeddings.numpy().copy()
    query_model.fit(x, y, epochs=3, batch_size=32, verbose=0)
    assert not np.allclose(w_before, layer.class_embeddings.numpy())
    evaluated = query_model.evaluate(x, y, verbose=0, batch_size=256)
    exact = np.mean(layer((query_model(x), y), training=False).numpy())
    assert evaluated == pytest.approx(exact, rel=1e-4)


def test_compile_adapter_rejects_sequential():
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=4)
    model = K.Sequential([K.Input((D,)), K.layers.Dense(D)])
    with pytest.raises(ValueError, match="functional"):
        SampledSoftmaxLoss(layer, model=model)


def test_tied_embedding_shares_the_table():
    tokens = K.Input((), dtype="int32")
    labels = K.Input((), dtype="int32")
    embedding = K.layers.Embedding(N, D)
    query = K.layers.Dense(D)(embedding(tokens))
    layer = AdaptiveSampledSoftmaxLoss(
        N, samplers.Uniform(N), num_samples=5, tied_embedding=embedding, add_to_model_loss=True
    )
    model = K.Model([tokens, labels], layer((query, labels)))
    assert layer.class_embeddings is embedding.embeddings
    assert len({id(v) for v in model.trainable_weights}) == len(model.trainable_weights) == 4
    model.compile(optimizer=K.optimizers.Adam(0.05))
    _, y = _data(128)
    before = embedding.embeddings.numpy().copy()
    model.fit([y, np.roll(y, 1)], epochs=1, batch_size=32, verbose=0)
    assert not np.allclose(before, embedding.embeddings.numpy())


def test_tied_embedding_shape_is_checked():
    embedding = K.layers.Embedding(N + 1, D)
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=5, tied_embedding=embedding)
    with pytest.raises(ValueError, match="tied_embedding"):
        layer.build_for_dim(D)


def test_config_round_trip():
    layer = _layer(samplers.Unigram(np.arange(N) + 1.0, power=0.5), logq_correction="negatives_only")
    config = layer.get_config()
    clone = AdaptiveSampledSoftmaxLoss.from_config(config)
    assert isinstance(clone.sampler, samplers.Unigram) and clone.sampler.power == 0.5
    assert clone.num_samples == 10 and clone.logq_correction == "negatives_only" and clone.num_classes == N


def test_keras_file_round_trip_keeps_weights_and_sampler_state(tmp_path):
    sampler = samplers.Unigram(np.arange(N) + 1.0, power=0.5, seed=5)
    layer = AdaptiveSampledSoftmaxLoss(N, sampler, num_samples=10, add_to_model_loss=True)
    model = _functional_model(layer)
    model.compile(optimizer="adam")
    x, y = _data(64)
    model.fit([x, y], epochs=1, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = K.models.load_model(path)
    restored_layer = next(layer for layer in restored.layers if isinstance(layer, AdaptiveSampledSoftmaxLoss))
    for name in ("log_q", "alias_probability", "alias_index", "seed_state"):
        original = next(w for w in layer.sampler.weights if name in w.name).numpy()
        loaded = next(w for w in restored_layer.sampler.weights if name in w.name).numpy()
        np.testing.assert_array_equal(original, loaded)
    np.testing.assert_allclose(restored.predict([x, y], verbose=0), model.predict([x, y], verbose=0), rtol=1e-6)


def test_keras_file_round_trip_keeps_the_in_step_refresh_schedule(tmp_path):
    # The schedule's step counter is a layer weight: saved, restored, and counting on from there.
    sampler = samplers.MIDX(N, num_codewords=4, seed=5)
    layer = AdaptiveSampledSoftmaxLoss(N, sampler, num_samples=10, add_to_model_loss=True, refresh_every_n_steps=3)
    model = _functional_model(layer)
    model.compile(optimizer="adam")
    x, y = _data(64)
    model.fit([x, y], batch_size=16, epochs=1, verbose=0)  # 4 steps: refreshes at 0 and 3
    assert int(np.asarray(layer._training_steps)) == 4 and bool(sampler.initialized.numpy())
    path = str(tmp_path / "scheduled.keras")
    model.save(path)
    restored = K.models.load_model(path)
    restored_layer = next(layer for layer in restored.layers if isinstance(layer, AdaptiveSampledSoftmaxLoss))
    assert restored_layer.refresh_every_n_steps == 3
    assert int(np.asarray(restored_layer._training_steps)) == 4
    for original, loaded in zip(layer.sampler.weights, restored_layer.sampler.weights):
        np.testing.assert_array_equal(np.asarray(original), np.asarray(loaded))
    restored.compile(optimizer="adam")
    restored.fit([x, y], batch_size=16, epochs=1, verbose=0)
    assert int(np.asarray(restored_layer._training_steps)) == 8


def _serving_module(layer, query_layer):
    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.layer, self.query_layer = layer, query_layer

        @tf.function(input_signature=[tf.TensorSpec([None, D], tf.float32)])
        def top_k(self, features):
            scores, ids = self.layer.top_k(self.query_layer(features), k=5)
            return {"scores": scores, "ids": ids}

    return Serving()


def _saved_graph_ops(path, signature):
    loaded = tf.saved_model.load(path)
    return op_types(loaded.signatures[signature].graph.as_graph_def()), loaded


def test_saved_model_serving_graph_has_no_sampler_ops(tmp_path):
    layer = _layer(samplers.Softmax(N))
    query_layer = K.layers.Dense(D)
    query_layer.build((None, D))
    module = _serving_module(layer, query_layer)
    path = str(tmp_path / "serving")
    tf.saved_model.save(module, path, signatures={"serving_default": module.top_k})
    ops, loaded = _saved_graph_ops(path, "serving_default")
    assert not ops & SAMPLER_OPS
    x, _ = _data(3)
    expected = layer.top_k(query_layer(x), k=5)[1].numpy()
    np.testing.assert_array_equal(loaded.signatures["serving_default"](tf.constant(x))["ids"].numpy(), expected)


def test_model_export_has_no_sampler_ops(tmp_path):
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=10, add_to_model_loss=True)
    model = _functional_model(layer)
    path = str(tmp_path / "exported")
    if hasattr(model, "export"):
        model.export(path, verbose=False) if IS_KERAS_3 else model.export(path)
    else:  # pragma: no cover
        tf.saved_model.save(model, path)
    ops, _ = _saved_graph_ops(path, "serving_default")
    assert not ops & SAMPLER_OPS
    assert "MatMul" in ops or "BatchMatMulV2" in ops  # the exact full softmax is there


def test_bad_inputs_raise_clear_errors():
    layer = _layer()
    x, y = _data(4)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels"):
        layer((x, np.array([0, 1, 2, N])), training=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels"):
        layer((x, np.array([0, -1, 2, 3])))
    graph_call = tf.function(lambda q, t: layer((q, t), training=True))
    with pytest.raises(tf.errors.InvalidArgumentError, match="labels"):
        graph_call(x, tf.constant([0, 1, 2, N + 5]))
    with pytest.raises(TypeError, match="labels"):
        layer((x, y.astype(np.float32)))
    with pytest.raises(ValueError, match="query"):
        layer((x[:, :3], y))
    with pytest.raises(ValueError, match="query"):
        layer((x[None], y))
    with pytest.raises(ValueError, match="labels"):
        layer((x, y[:, None, None]))
    with pytest.raises(ValueError, match="num_samples"):
        AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=0)
    with pytest.raises(ValueError, match="num_classes"):
        AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N + 1))
    with pytest.raises(TypeError, match="sampler"):
        AdaptiveSampledSoftmaxLoss(N, "uniform")


@pytest.mark.skipif(not IS_KERAS_3, reason="tf_keras cannot reload a model with an attached layer (documented)")
def test_model_compiled_with_the_adapter_saves_and_loads(tmp_path):
    layer = AdaptiveSampledSoftmaxLoss(N, samplers.Uniform(N), num_samples=4)
    features = K.Input((D,))
    model = K.Model(features, K.layers.Dense(D)(features))
    model.compile(optimizer="adam", loss=SampledSoftmaxLoss(layer, model=model))
    x, y = _data(32)
    model.fit(x, y, verbose=0)
    path = str(tmp_path / "compiled.keras")
    model.save(path)
    restored = K.models.load_model(path)
    np.testing.assert_allclose(restored.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)
    with pytest.raises(ValueError, match="Compile again"):
        restored.compiled_loss(y, restored(x)) if hasattr(restored, "compiled_loss") else restored.loss(y, restored(x))


def test_compile_adapter_accepts_whole_float_ids_but_rejects_fractions():
    # Keras hands float targets to compiled losses in some paths (distributed Keras 3 builds).
    layer = _layer()
    loss = SampledSoftmaxLoss(layer, mode="full")
    x, y = _data(4)
    np.testing.assert_allclose(loss(y.astype(np.float32), x).numpy(), loss(y, x).numpy(), rtol=1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="integer"):
        loss(y.astype(np.float32) + 0.5, x)
