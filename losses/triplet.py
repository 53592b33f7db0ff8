"""Cross-view triplet loss with batch-hard mining.

The retrieval task only ever compares a drone image with satellite tiles (and the reverse), so
positives and negatives are mined across views only: a satellite anchor is pulled towards its
hardest drone positive and pushed from its hardest drone negative, and vice versa. Mining inside
one view (as a triplet loss over the concatenated views would) spends the margin on same-view
pairs that retrieval never ranks.
"""
import torch
import torch.nn.functional as F

__all__ = ["cross_view_triplet_loss"]


def _batch_hard(dist, same):
    """Hardest positive and negative distance per anchor row; rows lacking either are dropped."""
    valid = same.any(1) & (~same).any(1)
    dist, same = dist[valid], same[valid]
    hardest_pos = dist.masked_fill(~same, float("-inf")).amax(1)
    hardest_neg = dist.masked_fill(same, float("inf")).amin(1)
    return hardest_pos, hardest_neg


def cross_view_triplet_loss(feat_a, feat_b, labels_a, labels_b, margin=0.3):
    """Symmetric batch-hard triplet loss between two views.

    Features are L2-normalized and compared with the Euclidean distance. Anchors of view ``a`` are
    mined against samples of view ``b`` and anchors of view ``b`` against samples of view ``a``;
    the hinge ``relu(d_ap - d_an + margin)`` is averaged over all anchors of both views together
    (with equal batch sizes this is the mean of the two directional means, the same scale as a
    batch-hard loss over the concatenated views). Anchors without a cross-view positive or negative
    (e.g. a batch of one class) are skipped; with none left the loss is zero (still differentiable).
    """
    dist = torch.cdist(F.normalize(feat_a, dim=1), F.normalize(feat_b, dim=1))
    same = labels_a[:, None] == labels_b[None, :]
    pos_ab, neg_ab = _batch_hard(dist, same)
    pos_ba, neg_ba = _batch_hard(dist.t(), same.t())
    hardest_pos = torch.cat([pos_ab, pos_ba])
    hardest_neg = torch.cat([neg_ab, neg_ba])
    if hardest_pos.numel() == 0:
        return dist.sum() * 0.0
    return F.margin_ranking_loss(hardest_neg, hardest_pos, torch.ones_like(hardest_pos), margin=margin)
