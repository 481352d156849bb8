"""The real-catalogue examples' data path: the user-item-list reader, the held-out split, the
full-catalogue ranking metrics, the history model's features, and the `--json` rows."""

import importlib
import importlib.util
import json
import os
import pathlib

import numpy as np
import pytest
from conftest import run_python

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = pathlib.Path(os.environ.get("TFAS_DATA_DIR", ROOT.parent / "shared" / "data"))
TRAINED_KEYS = {"name", "kind", "recall_at_20", "ndcg_at_20", "train_seconds", "epochs", "seeds", "curve"}


@pytest.fixture
def examples(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    return importlib.import_module("catalogues")


def _write(tmp_path, text, name="lists.txt"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_item_lists_are_read_with_counts(examples, tmp_path):
    path = _write(tmp_path, "10 5 7 5 9\n\n3 7\n4\n8 1 2 3\n")
    catalogue = examples.read_catalogue(path)  # detected: no tab or comma
    assert catalogue.num_users == 4 and catalogue.num_items == 10  # largest item id 9, plus one
    assert catalogue.users.tolist() == [0, 0, 0, 1, 3, 3, 3]  # user 4 (line 4) has no items
    assert catalogue.items.tolist() == [5, 7, 9, 7, 1, 2, 3]  # the repeated 5 counts once
    assert catalogue.counts == {"lines": 4, "repeated items dropped": 1}
    split = examples.holdout_split(catalogue, seed=0, validation_users=10)
    # Users 3 (one item) and 4 (none) are dropped by the protocol, and counted.
    assert split.num_users == 2 and split.counts["users dropped (< 2 items)"] == 2


@pytest.mark.parametrize(
    "text, message",
    [
        ("1 2 3\n2 4 x5\n", r"line 2: item id 'x5' is not an integer"),
        ("1 2 3\n-2 4\n", r"line 2: user id -2 is negative"),
        ("1 2 3\n2 4\n1 5\n", r"line 3: user 1 already has a line \(line 1\)"),
        ("1 2 2.5\n", r"line 1: item id '2.5'"),
    ],
)
def test_a_malformed_line_names_the_file_and_line(examples, tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=message) as error:
        examples.read_catalogue(path)
    assert str(path) in str(error.value)


def test_interaction_tables_still_read(examples, tmp_path):
    path = _write(tmp_path, "user_id\titem_id\trating\ttimestamp\n7\t30\t4\t5\n7\t10\t3\t2\n9\t30\t5\t1\n7\t30\t4\t9\n")
    catalogue = examples.read_catalogue(path)
    assert catalogue.num_users == 2 and catalogue.num_items == 2
    assert sorted(zip(catalogue.users.tolist(), catalogue.items.tolist())) == [(0, 0), (0, 1), (1, 1)]
    assert catalogue.counts["repeated items dropped"] == 1


def _random_catalogue(examples, num_users=300, num_items=80, seed=0):
    rng = np.random.default_rng(seed)
    users, items = [], []
    for user in range(num_users):
        chosen = rng.choice(num_items, int(rng.integers(1, 9)), replace=False)
        users.append(np.full(len(chosen), user, np.int32))
        items.append(chosen.astype(np.int32))
    return examples.Catalogue(np.concatenate(users), np.concatenate(items), num_users, num_items, "random", {})


def test_split_is_deterministic_and_never_leaks_held_out_items(examples):
    catalogue = _random_catalogue(examples)
    split = examples.holdout_split(catalogue, seed=3, validation_users=50)
    again = examples.holdout_split(catalogue, seed=3, validation_users=50)
    other = examples.holdout_split(catalogue, seed=4, validation_users=50)
    for part in ("train", "validation", "test"):
        for a, b in zip(getattr(split, part), getattr(again, part)):
            np.testing.assert_array_equal(a, b)
    assert not np.array_equal(split.test[1], other.test[1])
    sizes = np.bincount(catalogue.users, minlength=catalogue.num_users)
    kept = sizes >= 2
    assert split.num_users == kept.sum() and split.counts["users dropped (< 2 items)"] == (~kept).sum()
    # One test item per kept user, validation items only for users with >= 3 items, at most 50.
    assert np.array_equal(np.sort(split.test[0]), np.arange(split.num_users))
    assert len(split.validation[0]) == 50 and len(set(split.validation[0].tolist())) == 50
    train = set(zip(*(a.tolist() for a in split.train)))
    held_out = set(zip(*(a.tolist() for a in split.test))) | set(zip(*(a.tolist() for a in split.validation)))
    assert not train & held_out
    # Every interaction of a kept user is in exactly one part.
    assert len(train) + len(held_out) == sizes[kept].sum()
    remaining = np.bincount(split.train[0], minlength=split.num_users)
    assert remaining.min() >= 1  # every kept user keeps a training item
    # Dense ids map back to the catalogue's users: the dropped ones are skipped.
    np.testing.assert_array_equal(split.catalogue_users, np.flatnonzero(kept))
    held = dict(zip(split.test[0].tolist(), split.test[1].tolist()))
    for user, item in held.items():
        assert item in catalogue.items[catalogue.users == split.catalogue_users[user]]


def test_full_catalogue_ranking_matches_a_numpy_reference(examples):
    catalogue = _random_catalogue(examples, seed=1)
    split = examples.holdout_split(catalogue, seed=0, validation_users=40)
    rng = np.random.default_rng(2)
    users = rng.standard_normal((split.num_users, 6)).astype(np.float32)
    items = rng.standard_normal((split.num_items, 6)).astype(np.float32)
    items[5] = items[6]  # a tie: it counts against the held-out item
    ranking = examples.FullCatalogueRanking(split.test, split.known_for_test, split.num_items, chunk_elements=7 * 80)
    got = ranking.metrics(users, items, k=20)
    # Reference: dense scores, known items masked, rank = other unmasked items scoring >= the target.
    scores = users[split.test[0]] @ items.T
    known = np.zeros_like(scores, bool)
    row_of = {u: r for r, u in enumerate(split.test[0].tolist())}
    for user, item in zip(*split.known_for_test):
        known[row_of[int(user)], item] = True
    scores[known] = -np.inf
    target = scores[np.arange(len(scores)), split.test[1]]
    ranks = (scores >= target[:, None]).sum(1) - 1
    hit = ranks < 20
    assert got["recall_at_20"] == pytest.approx(hit.mean())
    assert got["ndcg_at_20"] == pytest.approx(np.where(hit, 1 / np.log2(ranks + 2), 0).mean(), rel=1e-6)
    np.testing.assert_array_equal(ranking.ranks(users, items), ranks)
    # Any scorer gives the same through metrics_of_scores.
    scorer = ranking.metrics_of_scores(lambda batch: users[batch] @ items.T, k=20)
    assert scorer == pytest.approx(got)


def test_history_features_never_hold_the_target_or_held_out_items(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    catalogues = importlib.import_module("catalogues")
    history_model = importlib.import_module("history_model")
    catalogue = _random_catalogue(catalogues, seed=5)
    split = catalogues.holdout_split(catalogue, seed=1, validation_users=60)
    x = history_model.histories(split.train[0], split, 4, seed=1, leave_out=split.train[1])
    held_out = {}
    for user, item in zip(*split.test):
        held_out.setdefault(int(user), set()).add(int(item))
    for user, item in zip(*split.validation):
        held_out[int(user)].add(int(item))
    own = {}
    for user, item in zip(*split.train):
        own.setdefault(int(user), set()).add(int(item))
    for row, (user, target) in enumerate(zip(*split.train)):
        features = set(x[row][x[row] >= 0].tolist())  # -1 pads
        assert target not in features
        assert not features & held_out[int(user)]
        assert features <= own[int(user)]
        assert len(features) == min(4, len(own[int(user)]) - 1)  # capped at the history length


def test_diagnostic_rows_run_only_when_named(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    history_model = importlib.import_module("history_model")
    diagnostic = [row for row in history_model.ROWS if row.diagnostic]
    assert len(diagnostic) == 2
    for only, expected in (("MIDX", []), ("q = p", diagnostic[:1]), ("q = p|m = 256", diagnostic), ("", [])):
        assert [row for row in diagnostic if history_model.names_only_diagnostic_rows(row, only)] == expected


def _run_quick(script, tmp_path, *extra):
    if not (DATA / "gowalla.txt").exists():
        pytest.skip("gowalla.txt is not in $TFAS_DATA_DIR")
    outputs = ["--json", tmp_path / "rows.json", "--plot", tmp_path / "curve.png"]
    quick = ["--data", DATA / "gowalla.txt", "--quick", "--max-users", "600", *outputs, *extra]
    stdout = run_python(ROOT / "examples" / script, *quick, cwd=tmp_path, timeout=300).stdout
    return stdout, json.loads((tmp_path / "rows.json").read_text())


def _check_rows(rows, kinds):
    assert {row["kind"] for row in rows} <= kinds
    trained = [row for row in rows if row["kind"] != "popularity"]
    assert trained and all(TRAINED_KEYS <= set(row) for row in trained)
    assert sum(bool(row.get("recommended")) for row in rows) == 1
    for row in trained:
        assert row["seeds"] == [0] and 0.0 <= row["recall_at_20"] <= 1.0 and row["epochs"] >= 1
        seconds = [point[0] for point in row["curve"]]
        assert len(seconds) >= 1
        # The reported time is the best validation epoch's point on the curve (curves are rounded).
        assert seconds == sorted(seconds) and any(abs(s - row["train_seconds"]) <= 0.01 for s in seconds)
    full = next(row for row in rows if row["kind"] == "full-softmax")
    # The ceiling row needs no extra time to reach 99% of itself at its final epoch, at most.
    assert full["seconds_to_99_of_full"] is None or full["seconds_to_99_of_full"] <= full["train_seconds"] + 0.01


@pytest.mark.skipif(os.environ.get("TF_USE_LEGACY_KERAS") != "1", reason="once a suite: the example sets tf_keras")
def test_tfrs_two_tower_quick_run_writes_rows(tmp_path):
    stdout, result = _run_quick("tfrs_two_tower.py", tmp_path)
    _check_rows(result["rows"], {"popularity", "tfrs-in-batch", "tfrs-in-batch-logq", "full-softmax", "adaptive"})
    assert "users dropped (< 2 items)" in stdout and (tmp_path / "curve.png").exists()


@pytest.mark.skipif(os.environ.get("TF_USE_LEGACY_KERAS") == "1", reason="once a suite: a Keras 3 example")
def test_history_model_quick_run_writes_rows(tmp_path):
    state = tmp_path / "state.npz"
    stdout, result = _run_quick("history_model.py", tmp_path, "--epochs", "1", "--diagnostics", "--save-state", state)
    _check_rows(result["rows"], {"popularity", "full-softmax", "tf-sampled", "static", "adaptive"})
    from benchmarks import proposal

    saved = proposal.saved_state(state, "quick", probes=64)  # the last row's (MIDX) trained model
    assert saved.class_embeddings.shape == (len(saved.counts), 64) and saved.class_bias.shape == saved.counts.shape
    assert saved.fit_queries.shape == saved.eval_queries.shape and saved.eval_queries.shape[1] == 64
    # The proposal measured against the trained softmax: MIDX only (TF's loss has no proposal).
    measured = {row["name"]: row.get("proposal") for row in result["rows"]}
    assert measured["Full softmax"] is None and measured["tf.nn.sampled_softmax_loss (log-uniform, shared)"] is None
    assert measured["MIDX"]["kl_p_q"] >= 0 and measured["MIDX"]["uniform_kl_p_q"] >= 0
    assert 0 < measured["MIDX"]["ess_ratio"] <= 1 and "proposal on test queries: kl_p_q=" in stdout
    assert "users dropped (< 2 items)" in stdout and (tmp_path / "curve.png").exists()


@pytest.mark.skipif(
    os.environ.get("TF_USE_LEGACY_KERAS") == "1" or importlib.util.find_spec("keras_rs") is None,
    reason="a Keras 3 example that needs keras-rs",
)
def test_keras_rs_two_tower_quick_run_writes_rows_and_a_serving_model(tmp_path):
    import tensorflow as tf
    from conftest import SAMPLER_OPS, op_types

    stdout, result = _run_quick("keras_rs_two_tower.py", tmp_path, "--export", tmp_path / "serving")
    _check_rows(result["rows"], {"popularity", "in-batch-logq", "full-softmax", "adaptive"})
    assert "users dropped (< 2 items)" in stdout and (tmp_path / "curve.png").exists()
    serving = tf.saved_model.load(str(tmp_path / "serving"))
    assert serving.serve(tf.constant([0, 1, 2])).shape == (3, 20)  # user ids -> top-20 item ids
    graph = serving.signatures["serve"].graph.as_graph_def()
    assert not op_types(graph) & SAMPLER_OPS
