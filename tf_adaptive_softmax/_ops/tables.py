"""Reading a class table that may be sharded over parameter servers.

Under `ParameterServerStrategy` with a `variable_partitioner`, a layer's [N, d] table (and its [N]
bias) is a `ShardedVariable`: row blocks on different servers, the first N mod P blocks one row
longer ("div" partitioning). Converting it to a tensor concatenates every shard on the reader,
which is the whole table over the network at each step. These helpers read only what is needed:

* `lookup_rows` fetches rows by id with `tf.nn.embedding_lookup`, which TensorFlow dispatches to
  one gather per shard on its server (a plain variable or tensor is one `gather`);
* `shards` lists the row blocks, so full logits are computed block by block and a refresh reads
  one block at a time;
* `row_block` and `all_finite` read a table (sharded or not) a block of rows at a time. For a
  variable they use sparse reads (gathers): once a training step has read or updated a variable
  sparsely, TensorFlow keeps it in copy-on-read mode, and every dense read copies it whole,
  while a gather of some rows copies only those rows.

Example:
    >>> import tensorflow as tf
    >>> from tf_adaptive_softmax._ops import tables
    >>> table = tf.Variable(tf.reshape(tf.range(12.0), [6, 2]))
    >>> tables.lookup_rows(table, tf.constant([5, 0])).numpy().tolist()
    [[10.0, 11.0], [0.0, 1.0]]
    >>> len(tables.shards(table))
    1
"""

from __future__ import annotations

from typing import List

import tensorflow as tf

__all__ = ["all_finite", "is_sharded", "is_table_variable", "lookup_rows", "row_block", "shards"]

# One block of rows read by `all_finite` stays under this many floats (16 MB).
_BLOCK_ELEMENTS = 1 << 22


def is_sharded(table) -> bool:
    """True for a `ShardedVariable` (TensorFlow exports no public class to test against: it is
    the composite value whose `variables` are its row blocks)."""
    return isinstance(table, tf.__internal__.CompositeTensor) and isinstance(getattr(table, "variables", None), list)


def shards(table) -> List:
    """The row blocks of a sharded table in row order, or `[table]`."""
    return list(table.variables) if is_sharded(table) else [table]


def lookup_rows(table, ids: tf.Tensor) -> tf.Tensor:
    """`table[ids]` (any ids shape; rows of [N, d], or scalars of an [N] bias), reading only those
    rows from each shard. Its gradient is sparse (IndexedSlices), as `tf.gather`'s."""
    return tf.nn.embedding_lookup(table, ids)


def is_table_variable(table) -> bool:
    """True for a table read through sparse reads: a variable, or a sharded one."""
    return is_sharded(table) or isinstance(table, tf.Variable)


def row_block(table, start, num_rows: int) -> tf.Tensor:
    """Rows [start, start + num_rows) of an unsharded [N, ...] table: a gather from a variable
    (no copy of the whole variable, whatever its read mode), a slice of a tensor."""
    if isinstance(table, tf.Variable):
        return tf.gather(table, start + tf.range(num_rows))
    begin = tf.concat([[start], tf.zeros([table.shape.rank - 1], tf.int32)], axis=0)
    return tf.slice(table, begin, tf.concat([[num_rows], tf.shape(table)[1:]], axis=0))


def all_finite(table) -> tf.Tensor:
    """Scalar bool: no NaN or Inf in the table, checked a block of rows at a time (a variable with
    gathers, so no dense copy of it; a sharded one shard by shard on the shard's device). One
    `is_finite` over a whole [N, d] table would hold an [N, d] bool tensor."""
    if not is_sharded(table):
        return _all_finite(table)
    checks = []
    for block in shards(table):
        with tf.device(block.device):
            checks.append(_all_finite(block))
    return tf.reduce_all(tf.stack(checks))


def _all_finite(table) -> tf.Tensor:
    if not isinstance(table, tf.Variable):
        table = tf.convert_to_tensor(table)
    num_rows = table.shape[0] if table.shape.rank else None
    rows = max(1, _BLOCK_ELEMENTS // max(1, table.shape[1:].num_elements() or 1)) if num_rows else 0
    if num_rows is None or num_rows <= rows:
        num_rows = tf.shape(table)[0] if num_rows is None else num_rows  # static: no read for a shape
        whole = tf.gather(table, tf.range(num_rows)) if isinstance(table, tf.Variable) else table
        return tf.reduce_all(tf.math.is_finite(whole))
    num_blocks = -(-num_rows // rows)

    def step(index, finite):
        # The last block is shifted back to end at row N (it re-reads some rows): one static shape.
        start = tf.minimum(index * rows, num_rows - rows)
        return index + 1, finite & tf.reduce_all(tf.math.is_finite(row_block(table, start, rows)))

    return tf.while_loop(lambda index, _: index < num_blocks, step, [tf.constant(0), tf.constant(True)])[1]
