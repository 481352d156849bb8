"""Reading a class table that may be sharded over parameter servers.

Under `ParameterServerStrategy` with a `variable_partitioner`, a layer's [N, d] table (and its [N]
bias) is a `ShardedVariable`: row blocks on different servers, the first N mod P blocks one row
longer ("div" partitioning). Converting it to a tensor concatenates every shard on the reader,
which is the whole table over the network at each step. These helpers read only what is needed:

* `lookup_rows` fetches rows by id with `tf.nn.embedding_lookup`, which TensorFlow dispatches to
  one gather per shard on its server (a plain variable or tensor is one `gather`);
* `shards` lists the row blocks, so full logits are computed block by block and a refresh reads
  one block at a time.

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

__all__ = ["is_sharded", "lookup_rows", "shards"]


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
