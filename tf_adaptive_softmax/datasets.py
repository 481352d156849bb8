"""Synthetic teacher data: a known softmax model over clustered classes with a Zipf prior.

The teacher has class embeddings drawn around cluster centres (so adaptive samplers have structure
to find), a bias log π_i from a Zipf prior, and queries x ~ N(0, I). By default the Zipf prior
follows the ids (id 0 the most frequent, as vocabularies are sorted: exactly what `LogUniform` and
TF's log-uniform sampler assume); `frequency_sorted_ids=False` permutes the ids, as in item
catalogues whose ids say nothing about popularity. Labels are drawn from
softmax(x Wᵀ + b), chunk by chunk, so [examples, N] logits never sit in memory at once: 10^6
classes work. The Bayes-optimal cross-entropy is known, which gives every benchmark a floor.

Example:
    >>> from tf_adaptive_softmax import datasets
    >>> teacher = datasets.make_teacher(num_classes=1000, dim=16, seed=0)
    >>> x, y = teacher.sample(256, seed=1)
    >>> x.shape, y.shape, y.dtype
    ((256, 16), (256,), dtype('int32'))
"""

from __future__ import annotations

import dataclasses
from typing import Tuple

import numpy as np
import tensorflow as tf

from tf_adaptive_softmax import _validation

__all__ = ["Teacher", "make_teacher", "train_test_split"]

# Logits of one chunk stay under this many floats (64 MB).
_CHUNK_ELEMENTS = 1 << 24


@dataclasses.dataclass
class Teacher:
    """A known softmax model. logits(x) = x @ class_embeddingsᵀ + class_bias.

    Args:
      class_embeddings: [N, d] float32.
      class_bias: [N] float32, the log of the Zipf prior.
      cluster_ids: [N] int32, the cluster each class was drawn around.
    """

    class_embeddings: np.ndarray  # [N, d] float32
    class_bias: np.ndarray  # [N] float32, log of the Zipf prior
    cluster_ids: np.ndarray  # [N] int32

    @property
    def num_classes(self) -> int:
        return self.class_embeddings.shape[0]

    @property
    def dim(self) -> int:
        return self.class_embeddings.shape[1]

    def _chunks(self, num_examples: int):
        size = max(1, _CHUNK_ELEMENTS // self.num_classes)
        for start in range(0, num_examples, size):
            yield start, min(num_examples, start + size)

    def sample(self, num_examples: int, seed: int = 0) -> Tuple[np.ndarray, np.ndarray]:
        """Draws examples: features x ~ N(0, I), labels ~ softmax(teacher logits(x)).

        Args:
          num_examples: n.
          seed: the draws' seed. Default 0.

        Returns:
          (features [n, d] float32, labels [n] int32).

        Raises:
          ValueError: num_examples below 1.
        """
        num_examples = _validation.check_positive_int(num_examples, "num_examples")
        rng = np.random.default_rng(seed)
        features = rng.standard_normal((num_examples, self.dim)).astype(np.float32)
        weights = tf.constant(self.class_embeddings)
        bias = tf.constant(self.class_bias)
        labels = np.empty(num_examples, dtype=np.int32)
        for index, (start, stop) in enumerate(self._chunks(num_examples)):
            logits = tf.matmul(features[start:stop], weights, transpose_b=True) + bias
            draw = tf.random.stateless_categorical(logits, 1, seed=[seed, index], dtype=tf.int32)
            labels[start:stop] = draw.numpy()[:, 0]
        return features, labels

    def cross_entropy(self, features: np.ndarray, labels: np.ndarray) -> float:
        """Mean teacher cross-entropy on (features, labels): the Bayes floor for any student.

        Args:
          features: [n, d] float32. labels: [n] int class ids.

        Returns:
          The mean cross-entropy in nats.
        """
        weights = tf.constant(self.class_embeddings)
        bias = tf.constant(self.class_bias)
        total = 0.0
        for start, stop in self._chunks(len(labels)):
            logits = tf.matmul(features[start:stop], weights, transpose_b=True) + bias
            total += float(tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(labels[start:stop], logits)))
        return total / len(labels)


def make_teacher(
    num_classes: int = 10_000,
    dim: int = 32,
    num_clusters: int | None = None,
    zipf_exponent: float = 1.0,
    logit_scale: float = 3.0,
    cluster_spread: float = 0.35,
    seed: int = 0,
    frequency_sorted_ids: bool = True,
) -> Teacher:
    """Builds a `Teacher`.

    Args:
      num_classes: N (up to 10^6 and beyond; memory is O(N·d)).
      dim: d, the query and class-embedding width.
      num_clusters: number of class clusters (default ~sqrt(N)).
      zipf_exponent: s in π_i ∝ 1 / (i + 1)^s.
      logit_scale: standard deviation of <x, w_i> for x ~ N(0, I); larger is more peaked.
      cluster_spread: within-cluster spread relative to the distance between centres.
      seed: everything is a deterministic function of it.
      frequency_sorted_ids: True (default): the Zipf prior decreases with the id. False: the
        ids are a random permutation of the frequency ranks (an item catalogue).

    Returns:
      The `Teacher`.

    Raises:
      ValueError: num_classes or dim below 1.
    """
    num_classes = _validation.check_positive_int(num_classes, "num_classes")
    dim = _validation.check_positive_int(dim, "dim")
    num_clusters = num_clusters or max(1, round(np.sqrt(num_classes)))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((num_clusters, dim))
    cluster_ids = rng.integers(0, num_clusters, size=num_classes)
    offsets = cluster_spread * rng.standard_normal((num_classes, dim))
    embeddings = centres[cluster_ids] + offsets
    # Scale so that <x, w> has standard deviation logit_scale for x ~ N(0, I).
    embeddings *= logit_scale / np.sqrt(np.mean(np.sum(embeddings**2, axis=1)))
    prior = 1.0 / np.power(np.arange(1, num_classes + 1, dtype=np.float64), zipf_exponent)
    bias = np.log(prior / prior.sum())
    if not frequency_sorted_ids:
        # A separate stream, so the sorted teacher of the same seed is unchanged.
        bias = bias[np.random.default_rng([seed, 1]).permutation(num_classes)]
    return Teacher(
        class_embeddings=embeddings.astype(np.float32),
        class_bias=bias.astype(np.float32),
        cluster_ids=cluster_ids.astype(np.int32),
    )


def train_test_split(
    teacher: Teacher, num_train: int, num_test: int, seed: int = 0
) -> Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]:
    """Independent train and test draws from the teacher: ((x, y), (x, y)).

    Args:
      teacher: the `Teacher`.
      num_train: training examples.
      num_test: test examples.
      seed: the draws' seed (default 0); train and test use different streams of it.

    Returns:
      ((train features, train labels), (test features, test labels)).
    """
    return teacher.sample(num_train, seed=2 * seed + 1), teacher.sample(num_test, seed=2 * seed + 2)
