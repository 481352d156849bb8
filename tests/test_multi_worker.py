"""MultiWorkerMirroredStrategy: two worker processes on localhost (TF_CONFIG), both Keras flavours.

tf_keras trains with `fit` and a step-scheduled `CodebookRefresh`; Keras 3.15's own `fit` fails under
this strategy whatever the model (a plain Dense regression too: "Attempt to convert a value
(PerReplica ...)"), so the Keras 3 run is a custom loop that refreshes at every epoch.
"""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import portpicker
import pytest

WORKER = textwrap.dedent("""
    import hashlib, json, os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np, tensorflow as tf
    import tf_adaptive_softmax as tfas
    from tf_adaptive_softmax import datasets
    from tf_adaptive_softmax._keras import IS_KERAS_3
    K = tf.keras
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    N, D = 120, 8
    teacher = datasets.make_teacher(N, D, seed=0)
    (x, y), _ = datasets.train_test_split(teacher, 1024, 16)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(64)
    with strategy.scope():
        sampler = tfas.samplers.MIDX(N, num_codewords=4, seed=0)
        output = tfas.AdaptiveSampledSoftmaxLoss(N, sampler, num_samples=8)
        features = K.Input((D,))
        model = K.Model(features, K.layers.Dense(D, kernel_initializer=K.initializers.GlorotUniform(0))(features))
        optimizer = K.optimizers.Adam(0.05)
        output.build_for_dim(D)
    if IS_KERAS_3:
        # Keras 3's own `fit` fails under MultiWorkerMirroredStrategy (a plain Dense model too): a custom loop.
        variables = model.trainable_variables + output.trainable_variables
        with strategy.scope():
            optimizer.build(variables)
        @tf.function
        def step(features, labels):
            def replica_step(features, labels):
                with tf.GradientTape() as tape:
                    per_example = output((model(features), labels), training=True)
                    loss = tf.nn.compute_average_loss(per_example, global_batch_size=64)
                optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
                return loss
            return strategy.reduce("SUM", strategy.run(replica_step, (features, labels)), axis=None)
        losses, refreshes = [], 0
        for epoch in range(3):
            output.refresh_sampler(); refreshes += 1
            total = [float(step(a, b)) for a, b in strategy.experimental_distribute_dataset(data)]
            losses.append(float(np.mean(total)))
    else:
        with strategy.scope():
            model.compile(optimizer=optimizer, loss=tfas.SampledSoftmaxLoss(output, model=model))
        refresh = tfas.CodebookRefresh(output, every_n_steps=3)
        losses = model.fit(data, epochs=3, verbose=0, callbacks=[refresh]).history["loss"]
        refreshes = refresh.refresh_count
    state = [np.asarray(w).tobytes() for w in sampler.weights if "seed" not in w.name]
    digest = hashlib.sha256(b"".join(state)).hexdigest()
    draws = strategy.run(tf.function(lambda: sampler.sample(tf.ones([2, D]), 16)[0]))
    local = [np.asarray(d).tolist() for d in strategy.experimental_local_results(draws)]
    # Cross-replica candidates: each worker scores against both workers' positives, its own first.
    from tf_adaptive_softmax import retrieval
    rng = np.random.default_rng(7)
    queries = tf.constant(rng.standard_normal((4, D)).astype("float32"))
    candidates = tf.constant(rng.standard_normal((4, D)).astype("float32"))
    def scores_step():
        rows = tf.range(2) + 2 * tf.distribute.get_replica_context().replica_id_in_sync_group
        scores, _ = retrieval.mixed_negatives_scores(
            tf.gather(queries, rows), tf.gather(candidates, rows), cross_replica_candidates=True)
        return scores
    per_replica = strategy.run(tf.function(scores_step))
    scores = [np.asarray(s).tolist() for s in strategy.experimental_local_results(per_replica)]
    task = json.loads(os.environ["TF_CONFIG"])["task"]["index"]
    print("RESULT " + json.dumps({"task": task, "loss": [float(v) for v in losses], "refreshes": refreshes,
                                  "initialized": bool(np.asarray(sampler.initialized)), "state": digest,
                                  "draws": local, "scores": scores, "queries": queries.numpy().tolist(),
                                  "candidates": candidates.numpy().tolist()}))
""")


def _run_workers(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    cluster = {"worker": [f"localhost:{portpicker.pick_unused_port()}" for _ in range(2)]}
    processes = []
    for index in range(2):
        config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        env = dict(os.environ, TF_CONFIG=json.dumps(config))
        processes.append(
            subprocess.Popen(
                [sys.executable, str(script)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=300)
            lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
            assert lines, err[-4000:]
            results.append(json.loads(lines[0][len("RESULT ") :]))
    finally:
        for process in processes:
            process.kill()
    return sorted(results, key=lambda result: result["task"])


@pytest.mark.slow
def test_two_workers_train_refresh_identically_and_draw_differently(tmp_path):
    first, second = _run_workers(tmp_path)
    for result in (first, second):
        assert result["initialized"] and result["refreshes"] >= 3
        assert result["loss"][-1] < 0.9 * result["loss"][0], result["loss"]
    # The refreshed sampler state is identical on both workers (same table, same seed stream).
    assert first["state"] == second["state"]
    assert first["loss"] == second["loss"]
    # Each worker's replica draws its own negatives for identical queries.
    assert first["draws"] != second["draws"]
    # Cross-replica candidates: every worker sees both workers' positives, its own first.
    full = np.array(first["queries"]) @ np.array(first["candidates"]).T
    np.testing.assert_allclose(first["scores"][0], full[:2], rtol=1e-5)
    np.testing.assert_allclose(second["scores"][0], full[2:4][:, [2, 3, 0, 1]], rtol=1e-5)
