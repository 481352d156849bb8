"""`_ops.tables`: block reads of class tables (tensors, variables) and the block-wise finiteness check."""

import numpy as np
import pytest
import tensorflow as tf

from tf_adaptive_softmax._ops import tables

MODES = {"eager": lambda f: f, "graph": tf.function, "xla": lambda f: tf.function(f, jit_compile=True)}


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("as_variable", [False, True])
def test_all_finite_finds_a_bad_value_in_any_block(monkeypatch, mode, as_variable):
    monkeypatch.setattr(tables, "_BLOCK_ELEMENTS", 4 * 3)  # blocks of 4 rows; 11 rows: the last shifted back
    values = np.random.default_rng(0).standard_normal((11, 3)).astype(np.float32)
    clean = tf.Variable(values) if as_variable else tf.constant(values)
    assert bool(MODES[mode](lambda: tables.all_finite(clean))())
    for row, bad in [(0, np.nan), (5, np.inf), (10, -np.inf)]:
        poisoned = values.copy()
        poisoned[row, row % 3] = bad
        table = tf.Variable(poisoned) if as_variable else tf.constant(poisoned)
        assert not bool(MODES[mode](lambda table=table: tables.all_finite(table))()), row


@pytest.mark.parametrize("as_variable", [False, True])
def test_row_block_is_the_slice(as_variable):
    values = np.arange(30, dtype=np.float32).reshape(10, 3)
    table = tf.Variable(values) if as_variable else tf.constant(values)
    np.testing.assert_array_equal(tables.row_block(table, tf.constant(6), 4).numpy(), values[6:10])
    np.testing.assert_array_equal(tf.function(lambda: tables.row_block(table, 2, 3))().numpy(), values[2:5])
