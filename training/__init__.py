"""Offline training: data, the three training scripts, evaluation, and the artifacts they write."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
