"""The train-extractor step: the digits CNN whose features the embedded default's FD and IS use."""

from __future__ import annotations

from pathlib import Path

from bench.data import load_dataset
from bench.metrics.classifier import accuracy, save_classifier, train_classifier
from bench.runtime.device import cpu_choice
from bench.runtime.io import atomic_json
from bench.runtime.stepclock import StepClock


def run(spec: dict, out: Path) -> None:
    """Train the extractor on the dataset's train split; its test accuracy and times go to OUT with suffix .json."""
    # The extractor trains on the CPU on purpose: its weights are defined as the CPU run's for a seed.
    clock = StepClock(cpu_choice())
    train = load_dataset(spec["dataset"], "train")
    test = load_dataset(spec["dataset"], "test")
    model = train_classifier(train, seed=spec["extractor"].get("seed", 0), epochs=spec["extractor"].get("epochs", 12))
    acc = accuracy(model, test)
    save_classifier(model, out)
    atomic_json({"test_accuracy": acc, **clock.record()}, out.with_suffix(".json"))
