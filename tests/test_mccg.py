"""MCCG head: gate math, ClassBlock, branch order and both head inputs, against hand computations."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

from models.mccg import (BLOCKS, CW_PERMUTATION, HC_PERMUTATION, HEAD_INPUTS, ClassBlock, MCCGHead, PermutedGate,
                         init_classblock_bn)

C, NUM_CLASSES = 12, 7


def randomize_batchnorms(module, seed=0):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.3)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g) * 0.5 + 1)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.3)


def batchnorm(y, bn, training):
    """BatchNorm over every axis but 1, written out: batch statistics in training, running ones in eval."""
    axes = [d for d in range(y.dim()) if d != 1]
    shape = [1, -1] + [1] * (y.dim() - 2)
    if training:
        mean, var = y.mean(axes), y.var(axes, unbiased=False)
    else:
        mean, var = bn.running_mean, bn.running_var
    return (y - mean.view(shape)) / torch.sqrt(var.view(shape) + bn.eps) * bn.weight.view(shape) + bn.bias.view(shape)


def gate_plane(plane, attn, training):
    """sigmoid(BN(conv7x7([mean, max]))) of a (B, K, P, Q) stack pooled over K -> (B, P, Q).

    timm's spatial attention feeds the mean as conv input channel 0 and the max as channel 1.
    """
    pooled = torch.stack([plane.mean(1), plane.amax(1)], dim=1)
    y = F.conv2d(pooled, attn.conv.conv.weight, padding=3)
    return torch.sigmoid(batchnorm(y, attn.conv.bn, training))[:, 0]


def reference_cw(x, gate, training=False):
    """C-W gate without permutes: pool over H, gate the (C, W) plane, broadcast over H."""
    weights = gate_plane(x.transpose(1, 2), gate.gate, training)  # (B, C, W)
    return x * weights[:, :, None, :]


def reference_hc(x, gate, training=False):
    """H-C gate without permutes: pool over W, gate the (H, C) plane, broadcast over W."""
    weights = gate_plane(x.permute(0, 3, 2, 1), gate.gate, training)  # (B, H, C)
    return x * weights.transpose(1, 2)[:, :, :, None]


def reference_class_block(v, cb, training):
    """Bottleneck feature (no dropout) and logits of a ClassBlock, written out."""
    feature = batchnorm(v @ cb.fc.weight.T + cb.fc.bias, cb.bn, training)
    return feature @ cb.classifier.weight.T + cb.classifier.bias, feature


def make_head(block=2, head_input="spatial", dropout=0.5, seed=0):
    torch.manual_seed(seed)
    head = MCCGHead(C, NUM_CLASSES, block=block, head_input=head_input, dropout=dropout)
    randomize_batchnorms(head, seed)
    return head


def test_gates_match_direct_computation():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 4, 6)
    for permutation, reference in ((CW_PERMUTATION, reference_cw), (HC_PERMUTATION, reference_hc)):
        gate = PermutedGate(permutation)
        randomize_batchnorms(gate)
        gate.eval()
        torch.testing.assert_close(gate(x), reference(x, gate, training=False))
        gate.train()
        torch.testing.assert_close(gate(x), reference(x, gate, training=True))


def test_class_block_init_follows_mccg():
    torch.manual_seed(0)
    cb = ClassBlock(1024, 2000)
    assert cb.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)  # Kaiming fan_out
    assert cb.classifier.weight.std().item() == pytest.approx(0.001, rel=0.02)
    assert torch.equal(cb.bn.weight, torch.ones(512))  # MCCG's weights_init_kaiming: BatchNorm scale 1
    for bias in (cb.fc.bias, cb.bn.bias, cb.classifier.bias):
        assert torch.count_nonzero(bias) == 0


def test_classblock_bn_init_normal_is_the_university1652_baselines_and_touches_only_classblocks():
    torch.manual_seed(0)
    head = MCCGHead(64, 10, block=2)
    gates_before = [p.clone() for p in head.gates.parameters()]
    init_classblock_bn(head, "normal")
    for block in head.classifiers:
        assert block.bn.weight.mean().item() == pytest.approx(1.0, abs=0.01)
        assert block.bn.weight.std().item() == pytest.approx(0.02, rel=0.3)
    assert all(torch.equal(a, b) for a, b in zip(gates_before, head.gates.parameters()))
    init_classblock_bn(head, "constant")
    assert all(torch.equal(block.bn.weight, torch.ones(512)) for block in head.classifiers)
    with pytest.raises(ValueError, match="mode must be one of constant, normal"):
        init_classblock_bn(head, "zeros")


def test_class_block_modes():
    torch.manual_seed(0)
    cb = ClassBlock(C, NUM_CLASSES)
    randomize_batchnorms(cb)
    v = torch.randn(6, C)
    cb.eval()
    feature = cb(v)
    torch.testing.assert_close(feature, reference_class_block(v, cb, training=False)[1])
    logits, same_feature = cb.forward_heads(v)
    torch.testing.assert_close(same_feature, feature)
    torch.testing.assert_close(logits, feature @ cb.classifier.weight.T)
    cb.train()
    logits, feature = cb(v)
    # Dropout zeroes about half the units and scales the rest by 2; logits use that same feature.
    _, clean = reference_class_block(v, cb, training=True)
    kept = feature != 0
    assert 0.2 < kept.float().mean() < 0.8
    torch.testing.assert_close(feature[kept], 2 * clean[kept])
    torch.testing.assert_close(logits, feature @ cb.classifier.weight.T)


def test_spatial_head_eval_features_equal_class_blocks_on_hand_vectors():
    head = make_head().eval()
    x = torch.randn(3, C, 5, 4)
    vectors = [x.mean((2, 3)), reference_cw(x, head.gates[0]).mean((2, 3)),
               reference_hc(x, head.gates[1]).mean((2, 3))]
    expected = torch.stack([reference_class_block(v, cb, False)[1] for v, cb in zip(vectors, head.classifiers)], 2)
    out = head(x)
    assert out.shape == (3, 512, 3)
    torch.testing.assert_close(out, expected)
    logits, features = head.forward_heads(x)
    torch.testing.assert_close(torch.stack(features, 2), expected)
    for lg, v, cb in zip(logits, vectors, head.classifiers):
        torch.testing.assert_close(lg, reference_class_block(v, cb, False)[0])


def test_spatial_head_train_mode_uses_batch_statistics():
    head = make_head(dropout=0.0).train()
    x = torch.randn(4, C, 3, 5)
    vectors = [x.mean((2, 3)), reference_cw(x, head.gates[0], True).mean((2, 3)),
               reference_hc(x, head.gates[1], True).mean((2, 3))]
    logits, features = head(x)
    assert isinstance(logits, tuple) and isinstance(features, tuple) and len(logits) == len(features) == 3
    for lg, f, v, cb in zip(logits, features, vectors, head.classifiers):
        ref_logits, ref_feature = reference_class_block(v, cb, training=True)
        assert lg.shape == (4, NUM_CLASSES) and f.shape == (4, 512)
        torch.testing.assert_close(f, ref_feature)
        torch.testing.assert_close(lg, ref_logits)


def test_global_feature_replaces_gap():
    head = make_head().eval()
    x = torch.randn(2, C, 4, 4)
    g = torch.randn(2, C)
    out = head(x, global_feature=g)
    torch.testing.assert_close(out[:, :, 0], reference_class_block(g, head.classifiers[0], False)[1])
    torch.testing.assert_close(out[:, :, 1:], head(x)[:, :, 1:])


def channel_gate_1d(v, attn, kernel_line):
    """Gate of a 1x1 map: 1-D conv across channels with one line of the 7x7 kernel, BN, sigmoid."""
    bn = attn.conv.bn
    k = kernel_line.sum(0).view(1, 1, -1)  # both pooled channels equal the input
    y = F.conv1d(v[:, None], k, padding=3)[:, 0]
    y = (y - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    return v * torch.sigmoid(y)


def test_pooled_head_gates_are_channel_convolutions():
    head = make_head(head_input="pooled").eval()
    x = torch.randn(3, C, 4, 6)
    v = x.mean((2, 3))
    w_cw = head.gates[0].gate.conv.conv.weight[0]  # (2, 7, 7)
    w_hc = head.gates[1].gate.conv.conv.weight[0]
    expected_vectors = [v, channel_gate_1d(v, head.gates[0].gate, w_cw[:, :, 3]),
                        channel_gate_1d(v, head.gates[1].gate, w_hc[:, 3, :])]
    for got, want in zip(head.branch_vectors(x), expected_vectors):
        torch.testing.assert_close(got, want)
    expected = torch.stack([reference_class_block(e, cb, False)[1]
                            for e, cb in zip(expected_vectors, head.classifiers)], 2)
    torch.testing.assert_close(head(x), expected)
    # Same weights on the spatial map give different attention vectors.
    head.head_input = "spatial"
    assert not torch.allclose(head.branch_vectors(x)[1], expected_vectors[1])


@pytest.mark.parametrize("block", [0, 1])
def test_fewer_blocks(block):
    head = make_head(block=block)
    assert len(head.gates) == block and len(head.classifiers) == block + 1
    x = torch.randn(2, C, 4, 4)
    logits, features = head.train()(x)
    assert len(logits) == len(features) == block + 1
    out = head.eval()(x)
    assert out.shape == (2, 512, block + 1)
    if block == 1:
        cw = reference_cw(x, head.gates[0]).mean((2, 3))
        torch.testing.assert_close(out[:, :, 1], reference_class_block(cw, head.classifiers[1], False)[1])


def test_bad_options_are_value_errors_naming_the_parameter():
    assert BLOCKS == (0, 1, 2) and HEAD_INPUTS == ("spatial", "pooled")
    for kwargs, message in (({"block": 3}, "block must be 0, 1 or 2 (attention branches), got 3"),
                            ({"head_input": "flat"}, "head_input must be one of spatial, pooled, got 'flat'")):
        with pytest.raises(ValueError, match=re.escape(message)) as err:
            MCCGHead(C, NUM_CLASSES, **kwargs)
        assert "--" not in str(err.value)
