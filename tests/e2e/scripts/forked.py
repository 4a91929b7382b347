"""An inference loop fed by a DataLoader with two worker processes whose dataset applies a small module (an
eval-mode transform, as torchvision's are modules), then a plain `os.fork` child that runs the model and exits
normally, then one more pass with a worker started by `spawn` (which imports torch afresh).

Usage: python forked.py OUT.pt
Saves the model's outputs over two epochs, the child's output for a fixed batch (written by the child to
OUT.pt.child) and the parent's own output for that batch.
"""

import os
import sys

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


class Transform(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mix = nn.Conv2d(3, 3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.mix(x))


class Images(Dataset):
    def __init__(self) -> None:
        torch.manual_seed(1)
        self.transform = Transform().eval()

    def __len__(self) -> int:
        return 96

    def __getitem__(self, i: int) -> torch.Tensor:
        with torch.no_grad():
            return self.transform(torch.rand(3, 16, 16, generator=torch.Generator().manual_seed(i)))


def main(out_path: str) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4))
    model.eval()
    data = Images()
    outputs = []
    with torch.no_grad():
        for _ in range(2):  # the workers are started anew each epoch
            for batch in DataLoader(data, batch_size=8, num_workers=2):
                outputs.append(model(batch))
        probe = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(7))
        pid = os.fork()
        if pid == 0:  # the child: runs the model and exits through the normal interpreter exit
            torch.save(model(probe), out_path + ".child")
            sys.exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        parent = model(probe)
        for batch in DataLoader(data, batch_size=8, num_workers=1, multiprocessing_context="spawn"):
            outputs.append(model(batch))
    torch.save({"outputs": torch.cat(outputs), "child": torch.load(out_path + ".child"), "parent": parent},
               out_path)
    print("forked: done")


if __name__ == "__main__":
    main(sys.argv[1])
