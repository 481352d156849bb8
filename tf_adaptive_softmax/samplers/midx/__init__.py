"""MIDX: the inverted multi-index sampler (Chen et al., 2025).

Modules: `sampler.py` (the `MIDX` sampler), `options.py` (how its codebooks are built:
`KMeansOptions`, `LearnedCodebooks`), `_draw.py` (the compiled draws up to the buckets),
`_index.py` (the inverted index a refresh builds), `_learned.py` (the learned codebooks' loss).

Two codebooks of K codewords quantize the class embeddings (product quantization: one codebook per
half of the vector; residual quantization: the second codebook clusters what the first leaves).
Class i lands in bucket (k1, k2) and is approximated by q̂_i ([c¹_k1; c²_k2] or c¹_k1 + c²_k2).
The proposal is the softmax over the quantized logits, times an optional per-class weight w_i:

    q(i | z) = exp(<z, q̂_i>) · w_i / Z(z),     Z(z) = Σ_{k1,k2} exp(s¹_k1 + s²_k2) · W[k1, k2]

with s¹ = z¹C¹ᵀ, s² = z²C²ᵀ (z¹ = z² = z for rvq) and W[k1, k2] = Σ_{i in bucket} w_i. It factors
as P(k1 | z) · P(k2 | k1, z) · P(i | k1, k2): two categoricals over K codewords, then a draw inside
the bucket, uniform (w_i = 1, "MIDX-uniform") or proportional to popularity (w_i = count_i^power,
"MIDX-unigram" / MIDX-pop). With `include_bias=True` the model's class bias joins the weight
(w_i ·= exp(b_i)), which makes q closer to the model's softmax when the bias matters.

Cost per query O(K·d + K²) and per draw O(K) for the first codeword's inverse CDF plus 2·8 + K/8
values for the second (drawn a block of 8 codewords at a time), + O(log bucket size) for weighted
buckets, independent of N. Negatives shared by a batch come from the batch mixture
q̄(i) = (1/B) Σ_b q(i | h_b) = M[k1(i), k2(i)] · w_i with M[k1, k2] = mean_b exp(s¹_b,k1 + s²_b,k2 −
log Z_b): it lives on the K² buckets, so it costs B·K² whatever N and m. The draws up to the bucket
run as one XLA computation in every mode, graph mode and eager included (`_draw.py`), compiled once
per layout and shape. State: codebooks,
the bucket of every class and the class ids sorted by bucket (8 bytes per class; weighted buckets
add a log-weight and a cumulative weight, 16 bytes), bucket offsets [K² + 1] and log bucket weights
[K, K]. Before the first `refresh` everything sits in one bucket: q is uniform. A refresh trains
k-means on a sample of the classes (1024 per codeword by default) and assigns every class once:
about two passes over the table.

Learned codebooks (`learn_codebooks=True` or a `LearnedCodebooks`, the paper's codeword learning): the codewords become
trainable variables, trained by the model's optimizer on an auxiliary loss that the sampler's
owner (the loss layer, the compile adapter through it, `AdaptiveRetrieval`, or a custom loop via
`auxiliary_loss`) adds in training:

    λ · ( −Σ_j p̂_j log q_j + Σ_j p̂_j log p̂_j  +  ρ · mean_t ‖w_{y_t} − q̂_{y_t}‖² )

over the step's candidates j (positives and drawn negatives), with p̂ = softmax of the loss's own
corrected logits, the self-normalized importance estimate of the model's softmax p there. Its
gradient is an estimate of ∇ KL(p‖q) over all N classes at O(B·(T + m) + B·K²) cost (log q_j is
exact: its normalizer sums the K² buckets), so nothing grows with N. The direction is KL(p‖q),
the forward KL: the sampled-softmax estimator's bias and variance grow where q is small while p
is large (its weights are p/q), and the forward KL penalizes exactly that (mass-covering), while
KL(q‖p) would let q drop modes of p. The reconstruction term (weight ρ) keeps codewords near the
classes they stand for, so that re-assignment stays meaningful. The first refresh initialises the
codebooks by k-means; later refreshes keep them and only re-assign every class to its nearest
codewords (one pass over the table, no Lloyd iterations). The gradient reaches only the
codewords: queries, class embeddings and targets are held constant. Weight decay in the
optimizer (AdamW) also shrinks the codewords.

References:
  Chen, Zhang, Huang, Yang, Lian, Chen, "Adaptive Sampled Softmax with Inverted Multi-Index:
  Methods, Theory and Applications", arXiv:2501.08563, 2025.
"""

from tf_adaptive_softmax.samplers.midx.options import KMeansOptions, LearnedCodebooks
from tf_adaptive_softmax.samplers.midx.sampler import MIDX

__all__ = ["MIDX", "KMeansOptions", "LearnedCodebooks"]
