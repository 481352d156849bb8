"""Real item catalogues for the retrieval examples: reading, the held-out split, full-catalogue
Recall@K / NDCG@K.

Two file formats are read (`read_catalogue` tells them apart by their first line):

* one user a line, as `gowalla.txt` and `amazon-book.txt` (LightGCN's release): the user id, then
  the ids of that user's items, separated by spaces;
* an interactions table, as MovieLens' `ml-100k.inter`: user, item, [rating,] timestamp, tab- or
  comma-separated, with or without a header (`common.load_interactions`).

The protocol (LightGCN's release, He et al. 2020, one held-out item): duplicate items count once, users with fewer
than two distinct items are dropped, and each remaining user's test item is drawn at random with
the split's seed. Users with at least three items may also give a validation item (a random subset
of them, `validation_users`), for early stopping and the choice of temperature. Everything else
trains. Metrics rank the held-out item against the whole catalogue with the user's known items
(training, and validation for the test item) excluded; ties with the held-out item count against
it.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import tensorflow as tf
from common import load_interactions

Pairs = Tuple[np.ndarray, np.ndarray]  # (users [n] int32, items [n] int32)


@dataclasses.dataclass
class Catalogue:
    """Interactions as (user, item) pairs of dense int32 ids, with what reading dropped."""

    users: np.ndarray
    items: np.ndarray
    num_users: int
    num_items: int
    source: str
    counts: Dict[str, int]


def _parse_id(token: str, path: pathlib.Path, line_number: int, what: str) -> int:
    try:
        value = int(token)
    except ValueError:
        raise ValueError(f"{path}, line {line_number}: {what} {token!r} is not an integer id.") from None
    if value < 0:
        raise ValueError(f"{path}, line {line_number}: {what} {value} is negative; ids are >= 0.")
    return value


def read_user_item_lists(path: pathlib.Path) -> Catalogue:
    """Reads a one-user-a-line file: `user item item ...` (whitespace-separated integer ids).

    Item ids are kept as they are (N = largest id + 1: ids that never occur are catalogue items no
    one chose); user ids are made dense. A user's repeated items count once. Blank lines are
    skipped.

    Raises:
      ValueError: naming the file and line, for a token that is not a non-negative integer or a
        user id that appears on a second line.
    """
    path = pathlib.Path(path)
    users, items, seen_users = [], [], {}
    duplicates = 0
    with open(path) as handle:
        for line_number, line in enumerate(handle, start=1):
            tokens = line.split()
            if not tokens:
                continue
            user = _parse_id(tokens[0], path, line_number, "user id")
            if user in seen_users:
                raise ValueError(
                    f"{path}, line {line_number}: user {user} already has a line (line {seen_users[user]}); "
                    "a user's items must be on one line."
                )
            seen_users[user] = line_number
            row = [_parse_id(token, path, line_number, "item id") for token in tokens[1:]]
            distinct = list(dict.fromkeys(row))
            duplicates += len(row) - len(distinct)
            users.append(np.full(len(distinct), len(seen_users) - 1, np.int32))
            items.append(np.asarray(distinct, np.int64))
    if not seen_users:
        raise ValueError(f"{path}: no users (the file is empty).")
    items_array = np.concatenate(items) if items else np.zeros(0, np.int64)
    if items_array.size and items_array.max() >= 2**31:
        raise ValueError(f"{path}: item id {items_array.max()} does not fit int32.")
    return Catalogue(
        users=np.concatenate(users),
        items=items_array.astype(np.int32),
        num_users=len(seen_users),
        num_items=int(items_array.max()) + 1 if items_array.size else 0,
        source=path.name,
        counts={"lines": len(seen_users), "repeated items dropped": duplicates},
    )


def read_catalogue(path: pathlib.Path) -> Catalogue:
    """A user-item-list file or an interactions table (tab or comma in the first line)."""
    path = pathlib.Path(path)
    with open(path) as handle:
        first = next((line for line in handle if line.strip()), "")
    if "\t" not in first and "," not in first:
        return read_user_item_lists(path)
    users, items, _ = load_interactions(path)
    pairs = np.unique(np.stack([users, items], 1), axis=0)
    return Catalogue(
        users=pairs[:, 0].astype(np.int32),
        items=pairs[:, 1].astype(np.int32),
        num_users=int(users.max()) + 1,
        num_items=int(items.max()) + 1,
        source=path.name,
        counts={"rows": len(users), "repeated items dropped": len(users) - len(pairs)},
    )


def first_users(catalogue: Catalogue, max_users: Optional[int]) -> Catalogue:
    """The interactions of users `0 .. max_users - 1` (`--max-users`); the item ids keep their
    range, so the catalogue ranked is still the whole one. `None`: the catalogue unchanged."""
    if max_users is None:
        return catalogue
    keep = catalogue.users < max_users
    return dataclasses.replace(catalogue, users=catalogue.users[keep], items=catalogue.items[keep], num_users=max_users)


@dataclasses.dataclass
class Split:
    """The held-out split of one seed. `known_for_test` lists the items excluded when ranking the test
    item (training and validation items), `known_for_validation` those excluded for the validation item."""

    train: Pairs
    validation: Pairs
    test: Pairs
    num_users: int
    num_items: int
    counts: Dict[str, int]
    catalogue_users: np.ndarray  # the catalogue's user id of each (dense) split user id

    @property
    def known_for_validation(self) -> Pairs:
        return self.train

    @property
    def known_for_test(self) -> Pairs:
        return (
            np.concatenate([self.train[0], self.validation[0]]),
            np.concatenate([self.train[1], self.validation[1]]),
        )


def holdout_split(catalogue: Catalogue, seed: int, validation_users: int = 5000) -> Split:
    """One random test item per user with >= 2 items; a validation item for up to `validation_users`
    users with >= 3 items (chosen at random); users with fewer than 2 items are dropped.

    Deterministic in `seed`: the same seed gives the same split on every machine (NumPy's PCG64).
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(catalogue.users)), catalogue.users))  # each user's items shuffled
    users, items = catalogue.users[order], catalogue.items[order]
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    lengths = np.diff(np.r_[starts, len(users)])
    kept = lengths >= 2
    eligible = np.flatnonzero(lengths >= 3)
    chosen = rng.choice(eligible, size=min(validation_users, len(eligible)), replace=False)
    role = np.zeros(len(users), np.int8)  # 0 train, 1 test, 2 validation, -1 dropped
    role[starts[kept]] = 1
    role[starts[chosen] + 1] = 2
    role[np.repeat(~kept, lengths)] = -1
    # Dense user ids over the kept users, so the user table has no empty rows.
    new_id = np.cumsum(kept) - 1
    dense_users = new_id[np.repeat(np.arange(len(starts)), lengths)].astype(np.int32)
    pick = lambda value: (dense_users[role == value], items[role == value])  # noqa: E731
    return Split(
        train=pick(0),
        validation=pick(2),
        test=pick(1),
        num_users=int(kept.sum()),
        num_items=catalogue.num_items,
        counts={
            # Users with no interaction at all (a line with only a user id) are dropped too.
            "users dropped (< 2 items)": catalogue.num_users - int(kept.sum()),
            "interactions dropped with them": int(lengths[~kept].sum()),
        },
        catalogue_users=users[starts[kept]],
    )


class FullCatalogueRanking:
    """Recall@K and NDCG@K of held-out items ranked against all N items, known items excluded.

    Scores are computed in chunks of users inside one compiled function, so memory stays at one
    [chunk, N] block. `ranks(user_vectors, item_vectors)` gives the 0-based rank of each held-out item
    (the number of other unexcluded items scoring at least as high).

    Args:
      held_out: (users, items) to rank, one per row.
      known: (users, items) pairs excluded from each user's ranking.
      num_items: N.
      chunk_elements: at most this many scores at once. Default 2^25 (128 MB).
    """

    def __init__(self, held_out: Pairs, known: Pairs, num_items: int, chunk_elements: int = 1 << 25):
        self.users, self.items = (np.asarray(a, np.int32) for a in held_out)
        self.num_items = num_items
        self.chunk = max(1, min(len(self.users), chunk_elements // max(num_items, 1)))
        # Known items of each evaluated user, as (row within the evaluation set, item) pairs.
        row_of_user = {int(u): r for r, u in enumerate(self.users)}
        known_users, known_items = (np.asarray(a) for a in known)
        rows = np.array([row_of_user.get(int(u), -1) for u in known_users], np.int64)
        keep = rows >= 0
        order = np.argsort(rows[keep], kind="stable")
        self._known_rows, self._known_items = rows[keep][order], known_items[keep][order].astype(np.int64)
        self._rank_chunk = tf.function(
            self._rank_chunk_eager,
            input_signature=[
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None, None], tf.float32),
                tf.TensorSpec([None], tf.int32),
                tf.TensorSpec([None], tf.int64),
                tf.TensorSpec([None], tf.int64),
            ],
        )

    @staticmethod
    def _rank_chunk_eager(queries, item_vectors, targets, mask_rows, mask_items):
        scores = tf.matmul(queries, item_vectors, transpose_b=True)
        excluded = tf.stack([mask_rows, mask_items], axis=1)
        scores = tf.tensor_scatter_nd_update(
            scores, excluded, tf.fill(tf.shape(mask_rows), tf.constant(-np.inf, scores.dtype))
        )
        target_scores = tf.gather(scores, targets, batch_dims=1)[:, tf.newaxis]
        at_least = tf.reduce_sum(tf.cast(scores >= target_scores, tf.int32), axis=1)
        return at_least - 1  # the target itself scores >= itself

    def ranks(self, user_vectors: np.ndarray, item_vectors: np.ndarray) -> np.ndarray:
        """[n] 0-based ranks of the held-out items. `user_vectors` [num_users, d] is indexed by user id."""
        item_vectors = tf.constant(item_vectors, tf.float32)
        out = []
        for start in range(0, len(self.users), self.chunk):
            stop = min(start + self.chunk, len(self.users))
            lo, hi = np.searchsorted(self._known_rows, [start, stop])
            out.append(
                self._rank_chunk(
                    tf.constant(user_vectors[self.users[start:stop]], tf.float32),
                    item_vectors,
                    tf.constant(self.items[start:stop, None], tf.int32)[:, 0],
                    tf.constant(self._known_rows[lo:hi] - start),
                    tf.constant(self._known_items[lo:hi]),
                ).numpy()
            )
        return np.concatenate(out) if out else np.zeros(0, np.int32)

    def metrics(self, user_vectors: np.ndarray, item_vectors: np.ndarray, k: int = 20) -> Dict[str, float]:
        """{"recall_at_K": ..., "ndcg_at_K": ...} averaged over the held-out rows."""
        return metrics_from_ranks(self.ranks(user_vectors, item_vectors), k)

    def metrics_of_scores(self, score_users: Callable[[np.ndarray], np.ndarray], k: int = 20) -> Dict[str, float]:
        """The same metrics for any scorer `users -> [len(users), N]` (e.g. popularity)."""
        ranks = []
        for start in range(0, len(self.users), self.chunk):
            stop = min(start + self.chunk, len(self.users))
            scores = np.array(score_users(self.users[start:stop]), np.float32)
            lo, hi = np.searchsorted(self._known_rows, [start, stop])
            scores[self._known_rows[lo:hi] - start, self._known_items[lo:hi]] = -np.inf
            target = scores[np.arange(stop - start), self.items[start:stop]][:, None]
            ranks.append((scores >= target).sum(axis=1) - 1)
        return metrics_from_ranks(np.concatenate(ranks), k)


def metrics_from_ranks(ranks: np.ndarray, k: int) -> Dict[str, float]:
    """Recall@k (the held-out item in the top k) and NDCG@k (1 / log2(rank + 2) when it is)."""
    ranks = np.asarray(ranks)
    hit = ranks < k
    return {
        f"recall_at_{k}": float(hit.mean()),
        f"ndcg_at_{k}": float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean()),
    }


def describe(catalogue: Catalogue, split: Split, seed: int) -> str:
    """One line with the counts the reader and the split dropped and kept."""
    dropped = ", ".join(f"{value} {key}" for key, value in {**catalogue.counts, **split.counts}.items())
    return (
        f"{catalogue.source}: {split.num_users} users, {split.num_items} items, {len(split.train[0])} train / "
        f"{len(split.validation[0])} validation / {len(split.test[0])} test interactions (seed {seed}); "
        f"read: {dropped}"
    )
