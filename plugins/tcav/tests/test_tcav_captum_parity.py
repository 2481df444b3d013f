"""Parity with captum's TCAV: fixed CAVs, `flatten` reduction, same sign and magnitude scores."""

from __future__ import annotations

import pytest
import torch

captum_concept = pytest.importorskip("captum.concept")

from tcav_toys import Net, VectorModel  # noqa: E402

from conceptkit_tcav.scores import directional_derivatives, run_scores  # noqa: E402


class FixedClassifier(captum_concept._utils.classifier.Classifier):
    """A captum classifier that returns fixed CAV rows (as captum's own tests mock it)."""

    def __init__(self, weights: torch.Tensor, classes: list[int]) -> None:
        self._weights, self._classes = weights, classes

    def train_and_eval(self, dataloader, **kwargs):
        return {"accs": torch.tensor(1.0)}

    def weights(self) -> torch.Tensor:
        return self._weights

    def classes(self) -> list[int]:
        return self._classes


class Post(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 16, 4)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        logits = self.fc(torch.relu(h).reshape(h.shape[0], -1))
        return logits if not getattr(self, "per_token", False) else logits[:, None, :].expand(-1, h.shape[1], -1)


def test_sign_and_magnitude_equal_captum(tmp_path):
    """With identical (unnormalised) CAVs, conceptkit's scores equal captum's to 1e-6."""
    from captum.concept import TCAV, Concept

    torch.manual_seed(0)
    net = Net(torch.nn.Linear(8, 16), Post()).eval()
    inputs = torch.randn(25, 3, 8)
    concept_data = torch.randn(10, 3, 8)
    random_data = torch.randn(10, 3, 8)
    w = torch.randn(48)

    concept = Concept(0, "concept", torch.utils.data.DataLoader(list(concept_data), batch_size=5))
    random = Concept(1, "random", torch.utils.data.DataLoader(list(random_data), batch_size=5))
    # Concept id 0 = "concept", id 1 = "random": the row for class 0 points to the concept.
    tcav = TCAV(net, ["site"], classifier=FixedClassifier(torch.stack([w, -w]), [0, 1]), save_path=str(tmp_path / "cav"))
    target = 2
    scores = tcav.interpret(inputs, experimental_sets=[[concept, random]], target=target)["0-1"]["site"]

    net.post.per_token = True  # conceptkit objectives read the output at the last token
    model = VectorModel(net, {f"x{i}": x for i, x in enumerate(inputs)})
    G = model.grad([f"x{i}" for i in range(25)], model.SITE, {"kind": "token_logit", "token": target}, reduce="flatten")
    ours = [run_scores(directional_derivatives(G, w)), run_scores(directional_derivatives(G, -w))]
    assert torch.allclose(scores["sign_count"].double(), torch.tensor([o.sign for o in ours], dtype=torch.float64), atol=1e-6)
    assert torch.allclose(scores["magnitude"].double(), torch.tensor([o.magnitude_mean for o in ours], dtype=torch.float64), atol=1e-6)
