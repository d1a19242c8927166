"""ResNet50 with its last feature map and pooled vector as outputs next to the logits (eager and ONNX export).

torchvision's ResNet ends in global average pooling and one linear layer, so layer4's map A (N, 2048, 7, 7)
and the pooled vector p = mean(A) (N, 2048) are exactly what class activation maps and embeddings need:
logits = fc(p). The forward pass is torchvision's own, step by step; nothing is recomputed.
"""

from __future__ import annotations

import torch


class ResNetWithMaps(torch.nn.Module):  # type: ignore[misc]  # torch is not followed (pyproject), so Module is Any
    """forward(x) → (logits, features, pooled): fc's output, layer4's output, avgpool's output flattened."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        features = m.layer4(m.layer3(m.layer2(m.layer1(x))))
        pooled = torch.flatten(m.avgpool(features), 1)
        return m.fc(pooled), features, pooled
