"""A plain training script with evaluation interleaved: MLP, SGD with momentum, fixed seed.

Usage: python train.py OUT.pt
20 training steps in train mode; after every 5th step, 3 eval-mode calls under no_grad. Saves the losses
(a list of floats and a tensor) and every eval output.
"""

import sys

import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(16, 64)
        self.drop = nn.Dropout(0.1)  # randomness in train mode: the hook must not change the RNG stream
        self.fc2 = nn.Linear(64, 64)
        self.fc3 = nn.Linear(64, 4)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(self.act(self.fc1(x)))
        x = self.act(self.fc2(x))
        return self.fc3(x)


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = MLP()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    data = torch.randn(32, 16)
    labels = torch.randint(0, 4, (32,))
    eval_input = torch.randn(5, 16)
    losses: list[float] = []
    loss_tensors: list[torch.Tensor] = []
    results: dict[str, object] = {}
    for step in range(1, 21):
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(data), labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        loss_tensors.append(loss.detach())
        if step % 5 == 0:
            model.eval()
            with torch.no_grad():
                for j in range(3):
                    results[f"eval_step{step}_{j}"] = model(eval_input)
    results["losses"] = losses
    results["loss_tensor"] = torch.stack(loss_tensors)
    results["final_weight"] = model.fc3.weight.detach().clone()
    torch.save(results, out_path)
    print("train: done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
