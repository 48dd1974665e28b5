"""Top-k MIL pooling and the decisive-instance choice on a batch worked out by hand."""

from __future__ import annotations

import torch

from skinapp.fusion.pooling import InstanceClassifier, top_real_instance, topk_pool

# two images, 3 instances, 3 classes; image 0 has two real instances and one padded one that
# scores highest for class 0 and 2 (padding must never win); image 1 has no real instance
CAM = torch.tensor([[[1.0, 5.0, 0.0],
                     [3.0, 2.0, 9.0],
                     [7.0, 7.0, 7.0]],
                    [[4.0, 4.0, 4.0],
                     [2.0, 8.0, 1.0],
                     [0.0, 0.0, 0.0]]])
MASK = torch.tensor([[True, True, False], [False, False, False]])


def test_top_real_instance_per_image_and_class():
    idx = top_real_instance(CAM, MASK)
    assert idx.tolist() == [[1, 0, 1], [-1, -1, -1]]  # image 1: no real instance -> -1 for every class


def test_topk_pool_takes_real_instances_first():
    scores, idx = topk_pool(CAM, MASK, k=2)
    # image 0: both real instances, whatever the padded one scores
    assert scores[0].tolist() == [2.0, 3.5, 4.5]
    assert sorted(idx[0, :, 0].tolist()) == [0, 1]
    # image 1: no real instance, so the two best padded ones are averaged (the model routes it to its fallback)
    assert scores[1].tolist() == [3.0, 6.0, 2.5]
    k_too_big, _ = topk_pool(CAM, MASK, k=10)  # clamped to the 3 instances
    torch.testing.assert_close(k_too_big[1], torch.tensor([2.0, 4.0, 5.0 / 3.0]))


def test_instance_classifier_is_three_1x1_convolutions_with_relus():
    """In eval mode (dropout off): conv -> ReLU -> conv -> ReLU -> conv, each instance on its own."""
    torch.manual_seed(0)
    clf = InstanceClassifier(in_dim=6, n_classes=3, hidden=(5, 4)).eval()
    x = torch.randn(2, 7, 6)
    convs = [m for m in clf.layers if isinstance(m, torch.nn.Conv1d)]
    assert [c.kernel_size for c in convs] == [(1,), (1,), (1,)]

    def dense(c, h):  # a 1x1 convolution is a linear map per instance
        return h @ c.weight[:, :, 0].T + c.bias

    expected = dense(convs[2], torch.relu(dense(convs[1], torch.relu(dense(convs[0], x)))))
    torch.testing.assert_close(clf(x), expected)
    torch.testing.assert_close(clf(x[:, [3]]), expected[:, [3]])  # an instance's score ignores the others
