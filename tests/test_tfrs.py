"""TFRS integration (tf_keras mode only; Keras 3 mode checks the import guard)."""

import json
import pathlib
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from conftest import run_python

from tf_adaptive_softmax import CodebookRefresh, samplers
from tf_adaptive_softmax._keras import IS_KERAS_3

pytestmark_legacy = pytest.mark.skipif(IS_KERAS_3, reason="TFRS needs tf_keras (TF_USE_LEGACY_KERAS=1)")


@pytest.mark.skipif(not IS_KERAS_3, reason="Keras 3 mode only")
def test_keras3_import_raises_a_clear_error():
    with pytest.raises(ImportError, match="TF_USE_LEGACY_KERAS=1"):
        import tf_adaptive_softmax.tfrs  # noqa: F401


if not IS_KERAS_3:
    import tensorflow_recommenders as tfrs

    from tf_adaptive_softmax.retrieval import _MIN_FLOAT
    from tf_adaptive_softmax.tfrs import AdaptiveRetrieval

B, C, D, N = 4, 6, 5, 40


def _batch(seed=0):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, D)).astype(np.float32)
    c = rng.standard_normal((C, D)).astype(np.float32)
    ids = np.array([3, 7, 3, 11, 20, 21], np.int32)  # row 2 repeats id 3: an in-batch accidental hit
    p = rng.uniform(0.01, 0.2, C).astype(np.float32)
    return q, c, ids, p


def _metrics(table):
    candidates = tf.data.Dataset.from_tensor_slices((np.arange(N, dtype=np.int32), table)).batch(16)
    index = tfrs.layers.factorized_top_k.BruteForce(k=5)
    index.index_from_dataset(candidates.map(lambda i, e: (i, e)))
    return tfrs.metrics.FactorizedTopK(candidates=index, ks=(1, 5))


@pytestmark_legacy
@pytest.mark.parametrize(
    "options",
    [
        {},
        {"temperature": 0.5},
        {"remove_accidental_hits": True},
        {"num_hard_negatives": 2},
    ],
)
def test_parity_with_tfrs_retrieval_without_catalogue_negatives(options):
    q, c, ids, p = _batch()
    table = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    auc_ours, auc_theirs = tf.keras.metrics.AUC(), tf.keras.metrics.AUC()
    ours = AdaptiveRetrieval(
        retrieval=tfrs.tasks.Retrieval(metrics=_metrics(table), batch_metrics=[auc_ours], **options)
    )
    theirs = tfrs.tasks.Retrieval(metrics=_metrics(table), batch_metrics=[auc_theirs], **options)
    # C > B: the extra candidates are shared negatives. Retrieval passes unsliced ids to
    # FactorizedTopK there (TFRS#642), so the factorized metrics are compared with C == B below.
    kwargs = dict(candidate_sampling_probability=p, candidate_ids=ids)
    loss_ours = ours(q, c, **kwargs, compute_metrics=False, training=True)
    loss_theirs = theirs(q, c, **kwargs, compute_metrics=False)
    np.testing.assert_allclose(loss_ours.numpy(), loss_theirs.numpy(), rtol=1e-6)
    ours(q, c[:B], candidate_ids=ids[:B], training=False)
    theirs(q, c[:B], candidate_ids=ids[:B])
    assert float(auc_ours.result()) == pytest.approx(float(auc_theirs.result()), rel=1e-6)
    got = [float(v) for v in ours.factorized_metrics[0].result()]
    want = [float(v) for v in theirs.factorized_metrics[0].result()]
    assert got == want


@pytestmark_legacy
def test_extra_negatives_with_ids_do_not_break_factorized_metrics():
    # tfrs.tasks.Retrieval crashes here (TFRS#642); only the B true pairs reach the metric.
    q, c, ids, _ = _batch()
    table = np.random.default_rng(1).standard_normal((N, D)).astype(np.float32)
    task = AdaptiveRetrieval(retrieval=tfrs.tasks.Retrieval(metrics=_metrics(table)))
    assert np.isfinite(task(q, c, candidate_ids=ids).numpy())
    assert len(task.factorized_metrics[0].result()) == 2


@pytestmark_legacy
def test_logq_correction_defaults_to_standard_and_old_arguments_still_work():
    embedding = tf.keras.layers.Embedding(N, D)
    assert AdaptiveRetrieval(samplers.Uniform(N), candidate_embeddings=embedding).logq_correction == "standard"
    assert AdaptiveRetrieval().logq_correction == "standard"
    with pytest.warns(DeprecationWarning, match="correct_positive"):
        old = AdaptiveRetrieval(samplers.Uniform(N), candidate_embeddings=embedding, correct_positive=False)
    assert old.logq_correction == "negatives_only"
    # Retrieval's own arguments, once taken directly: deprecated, still honoured.
    with pytest.warns(DeprecationWarning, match="retrieval=tfrs.tasks.Retrieval"):
        old = AdaptiveRetrieval(temperature=0.5, remove_accidental_hits=True)
    assert old.retrieval._temperature == 0.5 and old.retrieval._remove_accidental_hits
    q, c, ids, p = _batch()
    new = AdaptiveRetrieval(retrieval=tfrs.tasks.Retrieval(temperature=0.5, remove_accidental_hits=True))
    kwargs = dict(candidate_sampling_probability=p, candidate_ids=ids)
    assert float(old(q, c, **kwargs)) == pytest.approx(float(new(q, c, **kwargs)), rel=1e-6)
    with pytest.raises(ValueError, match="retrieval"):
        AdaptiveRetrieval(retrieval=tfrs.tasks.Retrieval(), temperature=0.5)
    with pytest.raises(TypeError, match="retrieval"):
        AdaptiveRetrieval(retrieval="Retrieval")
    with pytest.raises(TypeError, match="unexpected"):
        AdaptiveRetrieval(temprature=0.5)


@pytestmark_legacy
@pytest.mark.parametrize("logq_correction", ["standard", "negatives_only"])
@pytest.mark.parametrize("temperature", [None, 0.7])
def test_mixed_negatives_match_a_hand_computation(temperature, logq_correction):
    q, c, ids, p = _batch()
    table = np.random.default_rng(2).standard_normal((N, D)).astype(np.float32)
    embedding = tf.keras.layers.Embedding(N, D, embeddings_initializer=tf.keras.initializers.Constant(table))
    embedding.build((None,))
    task = AdaptiveRetrieval(
        samplers.Uniform(N, seed=5),
        num_samples=7,
        candidate_embeddings=embedding,
        retrieval=tfrs.tasks.Retrieval(temperature=temperature),
        logq_correction=logq_correction,
    )
    twin = samplers.Uniform(N, seed=5)  # same stream: reproduces the task's draws
    loss = task(q, c, candidate_sampling_probability=p, candidate_ids=ids, training=True).numpy()
    drawn, _ = twin.sample(q, 7)
    drawn = drawn.numpy()
    tau = temperature or 1.0
    in_batch = q @ c.T / tau - np.log(C * p)  # log expected counts C·p, beside the catalogue's m·q
    if logq_correction == "negatives_only":  # eq. 3: the positive keeps its raw score
        in_batch[np.arange(B), np.arange(B)] += np.log(C * p[:B])
    sampled = np.einsum("bd,bmd->bm", q, table[drawn]) / tau - np.log(7 / N)  # -log(m·q), q = 1/N
    sampled[drawn == ids[:B, None]] = -1e30
    scores = np.concatenate([in_batch, sampled], axis=1).astype(np.float64)
    expected = sum(-scores[i, i] + np.logaddexp.reduce(scores[i]) for i in range(B))
    assert loss == pytest.approx(expected, rel=1e-5)


@pytestmark_legacy
def test_shared_catalogue_negatives_match_tfrs_extra_candidates():
    # Shared negatives are TFRS's own layout (C > B extra candidates) with q̄ as their probability:
    # Retrieval given those columns, log(m·q̄) and their ids gives the same loss (no in-batch
    # probability, so the positive is uncorrected either way).
    q, c, ids, _ = _batch()
    c, ids = c[:B], ids[:B]
    table = np.random.default_rng(2).standard_normal((N, D)).astype(np.float32)
    embedding = tf.keras.layers.Embedding(N, D, embeddings_initializer=tf.keras.initializers.Constant(table))
    embedding.build((None,))
    sampler, twin = (samplers.QuadraticKernel(N, leaf_size=8, seed=5) for _ in range(2))
    for each in (sampler, twin):
        each.refresh(table)
    task = AdaptiveRetrieval(
        sampler,
        num_samples=7,
        candidate_embeddings=embedding,
        shared_negatives=True,
        retrieval=tfrs.tasks.Retrieval(remove_accidental_hits=True),
    )
    loss = task(q, c, candidate_ids=ids, training=True).numpy()
    drawn, log_q = twin.sample_shared(q, 7)
    theirs = tfrs.tasks.Retrieval(remove_accidental_hits=True)(
        q,
        np.concatenate([c, table[drawn.numpy()]]),
        candidate_sampling_probability=np.concatenate([np.ones(B), 7 * np.exp(log_q.numpy())]).astype(np.float32),
        candidate_ids=np.concatenate([ids, drawn.numpy()]),
    )
    assert loss == pytest.approx(float(theirs), rel=1e-5)


@pytestmark_legacy
def test_catalogue_draws_of_the_positive_are_masked():
    q, c, ids, _ = _batch()
    counts = np.zeros(N)
    counts[3] = 1.0  # the sampler only ever draws id 3, the positive of rows 0 and 2
    embedding = tf.keras.layers.Embedding(N, D)
    embedding.build((None,))
    # Every draw is the positive and masked, so the row's loss is exactly Retrieval's.
    task = AdaptiveRetrieval(samplers.Unigram(counts), num_samples=3, candidate_embeddings=embedding)
    plain = tfrs.tasks.Retrieval()

    def per_row(t):
        training = {"training": True} if t is task else {}
        return t(q, c[:B], candidate_ids=ids[:B], sample_weight=np.eye(B)[0], **training).numpy()

    assert per_row(task) == pytest.approx(per_row(plain), rel=1e-6)
    assert _MIN_FLOAT < -1e30


@pytestmark_legacy
def test_requires_candidate_ids_and_a_tower():
    with pytest.raises(ValueError, match="candidate_embeddings"):
        AdaptiveRetrieval(samplers.Uniform(N))
    task = AdaptiveRetrieval(
        samplers.Uniform(N), candidate_embeddings=lambda i: tf.zeros(tf.concat([tf.shape(i), [D]], 0))
    )
    q, c, _, _ = _batch()
    with pytest.raises(ValueError, match="candidate_ids"):
        task(q, c[:B], training=True)


class _TwoTower(tf.keras.Model if not IS_KERAS_3 else object):
    def __init__(self, task, user_model, item_embedding):
        super().__init__()
        self.task, self.user_model, self.item_embedding = task, user_model, item_embedding

    def train_step(self, data):
        return self._step(data, training=True)

    def test_step(self, data):
        return self._step(data, training=False)

    def _step(self, data, training):
        users, items = data
        with tf.GradientTape() as tape:
            loss = self.task(
                self.user_model(users),
                self.item_embedding(items),
                candidate_ids=items,
                compute_metrics=not training,
                training=training,
            )
        if training:
            variables = self.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables, strict=True))
        return {"loss": loss}


@pytestmark_legacy
@pytest.mark.parametrize("jit_compile", [False, True])
def test_fit_with_midx_refresh_and_reindexing(jit_compile):
    rng = np.random.default_rng(0)
    users = rng.integers(0, 30, 256).astype(np.int32)
    items = ((users * 7) % N).astype(np.int32)
    item_embedding = tf.keras.layers.Embedding(N, D)
    item_embedding.build((None,))
    user_model = tf.keras.layers.Embedding(30, D)
    index = tfrs.layers.factorized_top_k.BruteForce(k=5)
    sampler = samplers.MIDX(N, num_codewords=4, seed=0)
    task = AdaptiveRetrieval(
        sampler,
        num_samples=8,
        candidate_embeddings=item_embedding,
        index=index,
        catalogue_ids=np.arange(N, dtype=np.int32),
    )
    model = _TwoTower(task, user_model, item_embedding)
    model.compile(optimizer=tf.keras.optimizers.Adam(0.05), jit_compile=jit_compile)
    refresh = CodebookRefresh(task, every_n_steps=4)
    history = model.fit(
        tf.data.Dataset.from_tensor_slices((users, items)).batch(32), epochs=3, verbose=0, callbacks=[refresh]
    )
    assert history.history["loss"][-1] < history.history["loss"][0]
    # 24 global steps: refreshes before steps 0, 4, ..., 20; the epoch starts (0, 8, 16) coincide.
    assert bool(sampler.initialized.numpy()) and refresh.refresh_count == 6
    _, top = index(user_model(tf.constant(users[:4])))
    scores = user_model(tf.constant(users[:4])).numpy() @ item_embedding.embeddings.numpy().T
    np.testing.assert_array_equal(top.numpy()[:, 0], np.argmax(scores, axis=1))  # index not stale


@pytestmark_legacy
def test_refresh_through_a_candidate_tower_embeds_the_catalogue(capsys):
    table = np.random.default_rng(3).standard_normal((N, D)).astype(np.float32)
    tower = lambda ids: tf.gather(table, ids) * 2.0  # noqa: E731
    sampler = samplers.Softmax(N, live=False)
    task = AdaptiveRetrieval(
        sampler,
        num_samples=4,
        candidate_embeddings=tower,
        catalogue_ids=np.arange(N, dtype=np.int32),
        refresh_batch_size=16,
    )
    task.refresh_sampler()
    np.testing.assert_allclose(sampler.snapshot_embeddings.numpy(), table * 2.0, rtol=1e-6)


@pytestmark_legacy
def test_an_l2_normalizing_tower_refreshes_on_the_normalized_embeddings():
    # Cosine retrieval: the sampler must see the unit vectors the model scores, not the raw table.
    table = tf.keras.layers.Embedding(N, D)
    table.build((None,))
    sampler = samplers.Softmax(N, live=False)
    task = AdaptiveRetrieval(
        sampler,
        num_samples=4,
        candidate_embeddings=lambda ids: tf.math.l2_normalize(table(ids), axis=-1),
        catalogue_ids=np.arange(N, dtype=np.int32),
        retrieval=tfrs.tasks.Retrieval(temperature=0.2),
    )
    task.refresh_sampler()
    raw = table.embeddings.numpy()
    snapshot = sampler.snapshot_embeddings.numpy()
    np.testing.assert_allclose(snapshot, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(snapshot, axis=1), 1.0, rtol=1e-5)


@pytestmark_legacy
def test_refresh_with_an_index_embeds_the_catalogue_once():
    table = np.random.default_rng(4).standard_normal((N, D)).astype(np.float32)
    chunks_embedded = tf.Variable(0)

    def tower(ids):
        chunks_embedded.assign_add(1)
        return tf.gather(table, ids)

    sampler = samplers.MIDX(N, num_codewords=4, seed=0)
    index = tfrs.layers.factorized_top_k.BruteForce(k=3)
    task = AdaptiveRetrieval(
        sampler,
        num_samples=4,
        candidate_embeddings=tower,
        index=index,
        catalogue_ids=np.arange(N, dtype=np.int32),
        refresh_batch_size=16,
    )
    task.refresh_sampler()
    task.refresh_sampler()
    # 40 items in chunks of 16: 3 tower calls per refresh (the sampler and the index share them),
    # after one call that reads the embedding width.
    assert int(chunks_embedded.numpy()) == 1 + 2 * 3
    assert bool(sampler.initialized.numpy())
    _, top = index(tf.constant(table[:2]))
    np.testing.assert_array_equal(top.numpy()[:, 0], np.argmax(table[:2] @ table.T, axis=1))


def _midx_state(sampler):
    return {
        name: getattr(sampler, name).numpy()
        for name in (
            "codebook1",
            "codebook2",
            "class_bucket",
            "sorted_ids",
            "bucket_offsets",
            "log_bucket_weights",
            "initialized",
        )
    }


@pytestmark_legacy
@pytest.mark.parametrize("through", ["table", "tower"])
def test_compiled_refresh_assigns_the_eager_refresh_state(through):
    # The graph refresh (catalogue read + k-means in one tf.function) is the eager refresh, bit
    # for bit, refresh after refresh (warm starts included); the tower runs in chunks of 64 over
    # 300 ids (a padded last chunk).
    num_items, width = 300, 8
    table = tf.keras.layers.Embedding(num_items, width)
    table.build((None,))
    sampler, twin = (samplers.MIDX(num_items, num_codewords=4, seed=3) for _ in range(2))
    if through == "table":
        task = AdaptiveRetrieval(sampler, candidate_embeddings=table)
        read = lambda: table.embeddings  # noqa: E731
    else:
        task = AdaptiveRetrieval(
            sampler,
            candidate_embeddings=lambda ids: table(ids) * 2.0,
            catalogue_ids=np.arange(num_items, dtype=np.int32),
            refresh_batch_size=64,
        )
        read = lambda: table.embeddings * 2.0  # noqa: E731
    for step in range(3):
        noise = tf.random.stateless_normal([num_items, width], [step, 0])
        table.embeddings.assign(0.9 * table.embeddings + 0.3 * noise)
        assert task.refresh_sampler() is True
        twin.refresh(tf.convert_to_tensor(read()))
        ours, theirs = _midx_state(sampler), _midx_state(twin)
        for name in ours:
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{name} after refresh {step}")
    np.testing.assert_array_equal(task.catalogue_embeddings().numpy(), read().numpy())
    assert len(task._refresh._function._list_all_concrete_functions()) == 1  # traced once


@pytestmark_legacy
def test_refresh_through_a_tower_that_branches_on_tensors():
    # The catalogue is embedded in a graph: a tower's Python control flow on tensors still works.
    class Tower(tf.keras.layers.Layer):
        def build(self, input_shape):
            self.table = self.add_weight(name="table", shape=(N, D))

        def call(self, ids):
            rows = tf.gather(self.table, ids)
            if tf.reduce_sum(rows) > 1e9:  # AutoGraph turns this into tf.cond
                rows = rows * 0.0
            return rows

    tower = Tower()
    task = AdaptiveRetrieval(
        samplers.MIDX(N, num_codewords=2, seed=0),
        candidate_embeddings=tower,
        catalogue_ids=np.arange(N, dtype=np.int32),
        refresh_batch_size=16,
    )
    assert task.refresh_sampler() is True
    np.testing.assert_array_equal(task.catalogue_embeddings().numpy(), tower.table.numpy())


@pytestmark_legacy
def test_refresh_keeps_state_and_index_on_nonfinite_embeddings():
    table = tf.keras.layers.Embedding(N, D)
    table.build((None,))
    index = tfrs.layers.factorized_top_k.BruteForce(k=3)
    sampler = samplers.MIDX(N, num_codewords=4, seed=0)
    task = AdaptiveRetrieval(sampler, candidate_embeddings=table, index=index)
    assert task.refresh_sampler()
    before, indexed = _midx_state(sampler), index._candidates.numpy()  # pylint: disable=protected-access
    good = table.embeddings.numpy()
    table.embeddings.assign(tf.tensor_scatter_nd_update(table.embeddings, [[2, 1]], [np.nan]))
    with pytest.warns(RuntimeWarning, match="NaN or Inf"):  # named after the task
        assert task.refresh_sampler(on_nonfinite="keep") is False
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or Inf"):
        task.refresh_sampler()
    for name, value in _midx_state(sampler).items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)
    np.testing.assert_array_equal(index._candidates.numpy(), indexed)  # pylint: disable=protected-access
    table.embeddings.assign(good * 2.0)
    assert task.refresh_sampler(on_nonfinite="keep") is True
    np.testing.assert_allclose(index._candidates.numpy(), good * 2.0)  # pylint: disable=protected-access


@pytestmark_legacy
@pytest.mark.slow
def test_mirrored_strategy_fit_and_evaluate():
    # jit_compile=True is not tested here: under MirroredStrategy over logical CPU devices, XLA
    # fails in TF itself ("Trying to access resource ... located in device CPU:1"), with plain
    # tfrs.tasks.Retrieval as well.
    script = "JIT = False\n" + textwrap.dedent("""
        import numpy as np, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        import tensorflow_recommenders as tfrs
        from tf_adaptive_softmax import samplers, CodebookRefresh
        from tf_adaptive_softmax.tfrs import AdaptiveRetrieval
        N, D = 40, 5
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        with strategy.scope():
            items = tf.keras.layers.Embedding(N, D); items.build((None,))
            users = tf.keras.layers.Embedding(30, D); users.build((None,))
            sampler = samplers.MIDX(N, num_codewords=4, seed=0)
            task = AdaptiveRetrieval(sampler, num_samples=8, candidate_embeddings=items,
                                     cross_replica_candidates=True)
            class M(tfrs.Model):
                def __init__(self):
                    super().__init__(); self.task, self.users, self.items = task, users, items
                def compute_loss(self, data, training=False):
                    u, i = data
                    return self.task(self.users(u), self.items(i), candidate_ids=i, training=training,
                                     compute_metrics=not training)
            model = M(); model.compile(optimizer=tf.keras.optimizers.Adam(0.05), jit_compile=JIT)
        rng = np.random.default_rng(0)
        u = rng.integers(0, 30, 256).astype(np.int32); i = ((u * 7) % N).astype(np.int32)
        ds = tf.data.Dataset.from_tensor_slices((u, i)).batch(32, drop_remainder=True)
        h = model.fit(ds, epochs=2, verbose=0, callbacks=[CodebookRefresh(task, every_n_steps=2)])
        model.evaluate(ds, verbose=0)
        assert h.history["loss"][-1] < h.history["loss"][0], h.history
        # The refreshed state is identical on every replica.
        for variable in sampler.weights:
            values = [v.numpy() for v in strategy.experimental_local_results(variable)]
            assert all(np.array_equal(values[0], v) for v in values[1:]), variable.name
        # Replicas draw independent negatives even for identical queries.
        draws = strategy.run(tf.function(lambda: sampler.sample(tf.ones([3, D]), 16)[0]))
        first, second = [d.numpy() for d in strategy.experimental_local_results(draws)]
        assert not np.array_equal(first, second)
        # Cross-replica candidates: each replica sees both replicas' positives, its own first.
        from tf_adaptive_softmax import retrieval
        queries = tf.constant(rng.standard_normal((4, D)).astype(np.float32))
        cands = tf.constant(rng.standard_normal((8, D)).astype(np.float32))
        def step():
            ctx = tf.distribute.get_replica_context()
            r = ctx.replica_id_in_sync_group
            local_q = tf.gather(queries, tf.range(2) + 2 * r)
            local_c = tf.gather(cands, tf.range(2) + 2 * r)
            scores, _ = retrieval.mixed_negatives_scores(local_q, local_c, cross_replica_candidates=True)
            return scores
        per_replica = [x.numpy() for x in strategy.experimental_local_results(strategy.run(tf.function(step)))]
        full = queries.numpy()[:4] @ cands.numpy()[:4].T
        np.testing.assert_allclose(per_replica[0], full[:2], rtol=1e-5)
        np.testing.assert_allclose(per_replica[1], full[2:4][:, [2, 3, 0, 1]], rtol=1e-5)
        print("MIRRORED_OK", strategy.num_replicas_in_sync)
    """)
    assert "MIRRORED_OK 2" in run_python("-c", script).stdout


@pytestmark_legacy
def test_two_tower_example_runs_on_a_synthetic_catalogue(tmp_path):
    # The real-catalogue runs are in test_real_catalogues.py; this one needs no data folder and
    # checks the teacher's own scores, the ceiling only a synthetic catalogue has.
    root = pathlib.Path(__file__).resolve().parents[1]
    tiny = ["--num-items", "300", "--num-users", "200", "--validation-users", "40", "--batch-size", "32"]
    samples = ["--num-samples", "8", "--shared-samples", "32", "--only", "in-batch + logQ, cosine|MIDX, shared"]
    outputs = ["--json", tmp_path / "rows.json", "--plot", tmp_path / "curve.png"]
    example = root / "examples" / "tfrs_two_tower.py"
    run_python(example, "--catalogue", "synthetic", "--quick", "--epochs", "1", *tiny, *samples, *outputs, cwd=root)
    rows = json.loads((tmp_path / "rows.json").read_text())["rows"]
    names = [row["name"] for row in rows]
    assert names[0] == "Popularity" and "Teacher scores (ceiling)" in names
    assert "Retrieval, in-batch + logQ, cosine" in names and "AdaptiveRetrieval + MIDX, shared" in names
    assert all(0.0 <= row["recall_at_20"] <= 1.0 for row in rows)
    teacher = next(row for row in rows if row["name"] == "Teacher scores (ceiling)")
    # The teacher ranks its own draws far better than popularity does.
    assert teacher["recall_at_20"] > rows[0]["recall_at_20"]
