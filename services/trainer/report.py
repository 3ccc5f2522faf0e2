"""The run report image: training loss curve, and reward distributions of base vs student
(vs teacher revision where known) on the held-out prompts."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence


def write_report(
    path: Path,
    *,
    title: str,
    losses: Sequence[Sequence[float]],
    base_rewards: Sequence[float],
    student_rewards: Sequence[float],
    teacher_rewards: Sequence[float] = (),
) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display on servers
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), dpi=100)
    steps = [row[0] for row in losses]
    values = [row[1] for row in losses]
    left.plot(steps, values, color="#9aa5b1", linewidth=1, label="loss")
    if len(values) >= 5:
        window = max(2, len(values) // 10)
        smooth = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1]) for i in range(len(values))]
        left.plot(steps, smooth, color="#1f77b4", linewidth=2, label=f"mean of {window}")
    left.set(title="training loss (answer tokens)", xlabel="step", ylabel="cross-entropy")
    left.legend(loc="upper right")
    left.grid(alpha=0.3)

    series = [("base", list(base_rewards), "#d62728"), ("student", list(student_rewards), "#2ca02c")]
    if teacher_rewards:
        series.append(("teacher revision", list(teacher_rewards), "#ff7f0e"))
    series = [item for item in series if item[1]]
    if series:
        right.boxplot([item[1] for item in series], tick_labels=[item[0] for item in series], showmeans=True)
        for position, (_name, rewards, colour) in enumerate(series, start=1):
            jitter = [position + (i % 7 - 3) * 0.03 for i in range(len(rewards))]
            right.scatter(jitter, rewards, s=12, alpha=0.6, color=colour)
            mean = sum(rewards) / len(rewards)
            right.annotate(f"mean {mean:.3f}", (position, mean), textcoords="offset points", xytext=(14, 0), fontsize=8)
    right.set(title=f"reward on held-out prompts (n={len(base_rewards)})", ylabel="reward")
    right.grid(alpha=0.3, axis="y")

    figure.suptitle(title)
    figure.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    figure.savefig(tmp, format="png")
    plt.close(figure)
    tmp.replace(path)
    return path
