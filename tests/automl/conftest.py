"""Tiny AutoML fixtures: a copy of the packaged specs/ and a demo dataset with MiT-b0-at-64px overrides."""

from __future__ import annotations

import shutil

import pytest

from segformer_tao.config.compose import package_dir


@pytest.fixture
def specs_copy(tmp_path):
    """A writable copy of the packaged specs/ folder."""
    dst = tmp_path / "specs"
    shutil.copytree(package_dir("specs"), dst)
    return dst


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    from segformer_tao.data.synthetic import make_demo_dataset

    return make_demo_dataset(tmp_path_factory.mktemp("demo"), train=4, val=2, test=1)


def tiny_overrides(root, results_dir, *extra: str) -> list[str]:
    """Overrides for a seconds-long trial: mit_b0, 64 px, 4 train / 2 val images, batch 2, no workers."""
    return [f"dataset.segment.root_dir={root}", "dataset.segment.img_size=64", "dataset.segment.batch_size=2",
            "dataset.segment.workers=0", "model.backbone.type=mit_b0", f"results_dir={results_dir}", *extra]
