"""keras-rs retrieval with our catalogue negatives equals `retrieval.mixed_negatives_loss`."""

import importlib
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax import retrieval, samplers
from tf_adaptive_softmax._keras import IS_KERAS_3, K
from tf_adaptive_softmax.callbacks import CodebookRefresh

N, D = 60, 8
IDS = [3, 7, 3, 12, 40, 7]  # two accidental hits per duplicated id


def _table(seed=0):
    items = K.layers.Embedding(N, D, embeddings_initializer=K.initializers.RandomNormal(stddev=1.0, seed=seed))
    items.build((None,))
    return items


def _refreshed_midx(table):
    sampler = samplers.MIDX(N, num_codewords=4, seed=5)
    sampler.build_state(D)
    sampler.refresh(tf.convert_to_tensor(table))
    return sampler


needs_keras_rs = pytest.mark.skipif(not IS_KERAS_3, reason="keras-rs is built on Keras 3")


@needs_keras_rs
@pytest.mark.parametrize("temperature", [None, 0.5])
@pytest.mark.parametrize("shared_negatives", [False, True])
@pytest.mark.parametrize("with_probability", [False, True])
@pytest.mark.parametrize("cosine", [False, True])
def test_keras_rs_pipeline_equals_mixed_negatives_loss(temperature, shared_negatives, with_probability, cosine):
    keras_rs = pytest.importorskip("keras_rs")
    from tf_adaptive_softmax.keras_rs import CatalogueNegatives

    items = _table()
    rng = np.random.default_rng(0)
    queries = tf.Variable(rng.standard_normal((len(IDS), D)).astype("float32"))
    ids = tf.constant(IDS)
    probability = tf.constant(rng.uniform(0.01, 0.3, len(IDS)).astype("float32")) if with_probability else None
    options = dict(num_samples=16, temperature=temperature, shared_negatives=shared_negatives)
    tower = (lambda i: tf.math.l2_normalize(items(i), axis=-1)) if cosine else items
    negatives = CatalogueNegatives(_refreshed_midx(tower(tf.range(N))), tower, **options)
    variables = [queries, items.embeddings]

    with tf.GradientTape() as tape:  # the keras-rs way: its layers, then ours, then Keras' loss
        logits = K.ops.matmul(queries, K.ops.transpose(tower(ids)))
        if temperature is not None:
            logits = logits / temperature
        labels = K.ops.eye(len(IDS))
        if with_probability:
            logits = keras_rs.layers.SamplingProbabilityCorrection()(logits, probability)
        logits = keras_rs.layers.RemoveAccidentalHits()(logits, labels, ids)
        logits, labels = negatives(
            logits, labels, queries, ids, sampling_probability_corrected=with_probability, training=True
        )
        loss = K.losses.CategoricalCrossentropy(from_logits=True, reduction="sum")(labels, logits)
    gradients = tape.gradient(loss, variables)

    with tf.GradientTape() as tape:  # ours, from a sampler in the same state: the same draws
        expected = retrieval.mixed_negatives_loss(
            queries,
            tower(ids),
            ids,
            sampler=_refreshed_midx(tower(tf.range(N))),
            embed_ids=tower,
            candidate_sampling_probability=probability,
            **options,
        )
    expected_gradients = tape.gradient(expected, variables)
    assert logits.shape == (len(IDS), len(IDS) + 16)
    np.testing.assert_allclose(float(loss), float(expected), rtol=1e-5)
    for got, want in zip(gradients, expected_gradients):
        np.testing.assert_allclose(tf.convert_to_tensor(got), tf.convert_to_tensor(want), rtol=1e-4, atol=1e-6)


@needs_keras_rs
def test_evaluation_masks_accidental_hits_and_adds_no_columns():
    pytest.importorskip("keras_rs")
    from tf_adaptive_softmax.keras_rs import CatalogueNegatives

    items = _table()
    negatives = CatalogueNegatives(samplers.Uniform(N, seed=0), items, num_samples=4)
    logits = tf.reshape(tf.range(36, dtype=tf.float32), [6, 6])
    masked, labels = negatives(logits, tf.eye(6), tf.zeros([6, D]), tf.constant(IDS))
    assert masked.shape == labels.shape == (6, 6)
    hits = np.equal.outer(IDS, IDS) & ~np.eye(6, dtype=bool)
    np.testing.assert_array_equal(masked.numpy()[~hits], logits.numpy()[~hits])
    assert np.all(masked.numpy()[hits] < -1e30)
    midx = samplers.MIDX(N, num_codewords=4, seed=0)
    CatalogueNegatives(midx, items)(logits, tf.eye(6), tf.zeros([6, D]), tf.constant(IDS))
    assert midx.embedding_dim == D  # its state is sized by the queries, built with the layer


@needs_keras_rs
@pytest.mark.parametrize("cosine", [False, True])
def test_refresh_reindexes_the_brute_force_retrieval_index(cosine):
    keras_rs = pytest.importorskip("keras_rs")
    from tf_adaptive_softmax.keras_rs import CatalogueNegatives

    items = _table()
    tower = (lambda i: tf.math.l2_normalize(items(i), axis=-1)) if cosine else items
    index = keras_rs.layers.BruteForceRetrieval(k=5)
    negatives = CatalogueNegatives(samplers.MIDX(N, num_codewords=4, seed=0), tower, index=index)
    refresh = CodebookRefresh(negatives)
    refresh.refresh()
    np.testing.assert_allclose(index.candidate_embeddings.numpy(), tower(tf.range(N)).numpy(), rtol=1e-6)
    items.embeddings.assign(items.embeddings * -2.0 + 1.0)  # the model trained on
    refresh.refresh()
    table = tower(tf.range(N)).numpy()  # what the scores use: normalized vectors for a cosine tower
    np.testing.assert_allclose(index.candidate_embeddings.numpy(), table, rtol=1e-6)
    query = np.random.default_rng(1).standard_normal((3, D)).astype("float32")
    _, top_ids = index(query)
    np.testing.assert_array_equal(top_ids.numpy(), np.argsort(-(query @ table.T), axis=1)[:, :5])
    assert refresh.refresh_count == 2 and bool(np.asarray(negatives.sampler.initialized))


@needs_keras_rs
def test_a_keras_rs_style_model_trains_with_fit_and_codebook_refresh():
    keras_rs = pytest.importorskip("keras_rs")
    from tf_adaptive_softmax.keras_rs import CatalogueNegatives

    class TwoTower(K.Model):
        def __init__(self):
            super().__init__()
            self.users = K.layers.Embedding(30, D)
            self.items = _table(seed=1)
            self.index = keras_rs.layers.BruteForceRetrieval(k=10, return_scores=False)
            sampler = samplers.MIDX(N, num_codewords=4, seed=0)
            self.negatives = CatalogueNegatives(sampler, self.items, num_samples=8, index=self.index)

        def call(self, inputs):
            return self.users(inputs["user"])

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            logits = K.ops.matmul(y_pred, K.ops.transpose(self.items(x["item"])))
            labels = K.ops.eye(K.ops.shape(logits)[0])
            logits, labels = self.negatives(logits, labels, y_pred, x["item"], training=training)
            return K.losses.CategoricalCrossentropy(from_logits=True)(labels, logits)

    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 512).astype("int32")
    data = tf.data.Dataset.from_tensor_slices({"user": users, "item": (users * 2 % N).astype("int32")}).batch(64)
    model = TwoTower()
    initial = model.items.embeddings.numpy()
    model.compile(optimizer=K.optimizers.Adam(0.05))
    refresh = CodebookRefresh(model.negatives, every_n_steps=4)
    history = model.fit(data, epochs=3, verbose=0, callbacks=[refresh])
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0], history.history
    assert refresh.refresh_count >= 6
    assert not np.allclose(model.index.candidate_embeddings.numpy(), initial)  # re-indexed while training
    refresh.refresh()  # before serving: the index holds the final table
    np.testing.assert_array_equal(model.index.candidate_embeddings.numpy(), model.items.embeddings.numpy())
    top = model.index(model({"user": np.arange(30, dtype="int32")}))
    assert np.mean(top.numpy() == (np.arange(30) * 2 % N)[:, None]) > 0  # some users retrieve their item


@needs_keras_rs
def test_bad_arguments_are_clear_errors():
    pytest.importorskip("keras_rs")
    from tf_adaptive_softmax.keras_rs import CatalogueNegatives

    items = _table()
    with pytest.raises(TypeError, match="sampler"):
        CatalogueNegatives("midx", items)
    with pytest.raises(TypeError, match="item_tower"):
        CatalogueNegatives(samplers.Uniform(N), tf.zeros([N, D]))
    with pytest.raises(ValueError, match="num_samples"):
        CatalogueNegatives(samplers.Uniform(N), items, num_samples=0)
    with pytest.raises(ValueError, match="temperature"):
        CatalogueNegatives(samplers.Uniform(N), items, temperature=0.0)
    learned = samplers.MIDX(N, num_codewords=4, learn_codebooks=samplers.LearnedCodebooks())
    with pytest.raises(ValueError, match="mixed_negatives_loss"):
        CatalogueNegatives(learned, items)


def test_without_keras_rs_the_module_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "keras_rs", None)  # as if it were not installed
    monkeypatch.delitem(sys.modules, "tf_adaptive_softmax.keras_rs", raising=False)
    expected = "tf_adaptive_softmax\\[keras-rs\\]" if IS_KERAS_3 else "Keras 3"
    with pytest.raises(ImportError, match=expected):
        importlib.import_module("tf_adaptive_softmax.keras_rs")
    importlib.import_module("tf_adaptive_softmax.retrieval")  # the rest imports and works
