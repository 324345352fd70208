"""A run directory: resolved recipe, metrics, summary, adapter and checkpoint.

Layout::

    RUN_DIR/recipe.yaml          the fully resolved recipe
    RUN_DIR/metrics.jsonl        one JSON object per completed round
    RUN_DIR/summary.json         final accuracy, epsilon, totals, wall time
    RUN_DIR/adapter/             final adapter in PEFT format (+ base_weights.safetensors
                                 for methods that change the frozen weights)
    RUN_DIR/checkpoint/          state-<round>.safetensors + meta.json, for --resume

Every file is written atomically (temporary file, fsync, rename), so a crash leaves either the
old or the new version, never half of one. Writes never follow a symlink: the temporary file is
created new under a random name (``O_EXCL``), the rename replaces a link at the destination
instead of writing through it, and a symlinked ``checkpoint/`` or ``adapter/`` directory, or a
checkpoint ``meta.json`` that names a file outside ``checkpoint/``, is refused.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save, save_file

from fedlora_cli.errors import InputError, first_line

RECIPE_FILE = "recipe.yaml"
METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
ADAPTER_DIR = "adapter"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_META = "meta.json"
STATE_FILE = re.compile(r"state-\d{5,}\.safetensors")
DAMAGED = "the file is damaged (missing, truncated or overwritten?): restore it from a copy, or run again"
# what a checkpoint's meta.json holds, by key: the JSON types each value may have
META_TYPES = {"rounds_done": (int,), "client_steps": (list,), "stopped": (str, type(None)), "elapsed": (int, float)}


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """``path`` gets ``data`` or keeps its old content; a symlink at ``path`` is replaced, not followed."""
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    atomic_write_bytes(path, save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


def read_json(path: Path, fix: str = DAMAGED):
    """The JSON document in ``path``; InputError naming the file and ``fix`` when it is not valid JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not valid JSON ({first_line(exc)}); {fix}") from None


def read_tensors(path: Path, fix: str = DAMAGED, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The tensors in safetensors file ``path``, loaded onto ``device``; InputError naming the file
    and ``fix`` when it is missing, empty or truncated."""
    try:
        return load_file(str(path), device=str(device))
    except (OSError, SafetensorError) as exc:
        raise InputError(f"{path}: cannot be read ({first_line(exc)}); {fix}") from None


def file_in_the_way(path: Path) -> Path | None:
    """The existing non-directory at ``path`` or at one of its parents, which stops a directory
    being made there (None when there is none)."""
    for candidate in (path, *path.parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def check_new_run_path(path: Path) -> None:
    """``--out``: InputError unless ``path`` is a new or empty directory that can be made."""
    blocker = file_in_the_way(path)
    if blocker is not None:
        raise InputError(f"--out {path}: {blocker} is a file, not a directory; choose another --out")
    if path.exists() and any(path.iterdir()):
        raise InputError(f"--out {path}: directory exists and is not empty; choose a new one or use --resume {path}")


def refuse_symlink(path: Path) -> None:
    """InputError if ``path`` is a symlink: fedlora does not write into, or read from, a linked place."""
    if path.is_symlink():
        raise InputError(
            f"{path} is a symbolic link; fedlora never writes or reads run files through links "
            "(one could point outside the run directory); remove it"
        )


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    @classmethod
    def create(cls, parent: str | Path, name: str) -> "RunDir":
        """A new, uniquely named run directory ``parent/name-YYYYmmdd-HHMMSS``."""
        parent = Path(parent)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = parent / f"{name}-{stamp}"
        suffix = 1
        while path.exists():
            suffix += 1
            path = parent / f"{name}-{stamp}-{suffix}"
        path.mkdir(parents=True)
        return cls(path)

    @classmethod
    def at(cls, path: str | Path) -> "RunDir":
        """An explicit directory (``--out``): see :func:`check_new_run_path`."""
        path = Path(path)
        check_new_run_path(path)
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> "RunDir":
        run = cls(Path(path))
        if not (run.path / RECIPE_FILE).is_file():
            raise InputError(f"{path}: not a fedlora run directory (no {RECIPE_FILE})")
        for entry in (run.checkpoint_path, run.checkpoint_path / CHECKPOINT_META, run.adapter_path):
            refuse_symlink(entry)
        return run

    # recipe, metrics, summary -------------------------------------------------------------
    @property
    def recipe_path(self) -> Path:
        return self.path / RECIPE_FILE

    def write_recipe(self, text: str) -> None:
        atomic_write_text(self.recipe_path, text)

    def read_metrics(self) -> list[dict]:
        """One dict per completed round; InputError naming the file and line for a damaged one."""
        path = self.path / METRICS_FILE
        if not path.exists():
            return []
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as exc:
                raise InputError(f"{path}: line {number} is not valid JSON ({first_line(exc)}); {DAMAGED}") from None
            if not isinstance(row, dict):
                raise InputError(f"{path}: line {number} is not a JSON object; {DAMAGED}")
            rows.append(row)
        return rows

    def write_metrics(self, rows: list[dict]) -> None:
        atomic_write_text(self.path / METRICS_FILE, "".join(json.dumps(row) + "\n" for row in rows))

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.path / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")

    def read_summary(self) -> dict | None:
        path = self.path / SUMMARY_FILE
        if not path.exists():
            return None
        summary = read_json(path)
        if not isinstance(summary, dict):
            raise InputError(f"{path}: not a JSON object; {DAMAGED}")
        return summary

    # adapter --------------------------------------------------------------------------------
    @property
    def adapter_path(self) -> Path:
        return self.path / ADAPTER_DIR

    def save_adapter(self, peft_model, base_weights: dict[str, torch.Tensor] | None) -> None:
        """Save the PEFT adapter (and changed base weights) into ``adapter/`` atomically."""
        refuse_symlink(self.adapter_path)
        tmp = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{ADAPTER_DIR}."))  # new, never a planted link
        peft_model.save_pretrained(str(tmp))
        if base_weights:
            save_file({k: v.detach().cpu().contiguous() for k, v in base_weights.items()}, str(tmp / "base_weights.safetensors"))
        os.chmod(tmp, 0o755)
        old = Path(tempfile.mkdtemp(dir=self.path, prefix=f".{ADAPTER_DIR}.old."))
        if self.adapter_path.exists():
            os.replace(self.adapter_path, old)  # onto the new empty directory
        os.replace(tmp, self.adapter_path)
        shutil.rmtree(old)

    # checkpoint -----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.path / CHECKPOINT_DIR

    def save_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """Tensors to ``state-<round>.safetensors``, then the meta that points at it (atomic)."""
        refuse_symlink(self.checkpoint_path)
        self.checkpoint_path.mkdir(exist_ok=True)
        state_name = f"state-{meta['rounds_done']:05d}.safetensors"
        atomic_save_tensors(self.checkpoint_path / state_name, tensors)
        atomic_write_text(self.checkpoint_path / CHECKPOINT_META, json.dumps({**meta, "state_file": state_name}, indent=2))
        for stale in self.checkpoint_path.glob("state-*.safetensors"):
            if stale.name != state_name:
                stale.unlink()

    def load_checkpoint(self, device: torch.device | str = "cpu") -> tuple[dict[str, torch.Tensor], dict] | None:
        """The checkpoint's tensors (loaded onto ``device``; saved as CPU tensors) and meta; its
        ``state_file`` must be a ``state-NNNNN.safetensors`` file inside ``checkpoint/`` (InputError otherwise)."""
        meta_path = self.checkpoint_path / CHECKPOINT_META
        refuse_symlink(self.checkpoint_path)
        refuse_symlink(meta_path)
        if not meta_path.exists():
            return None
        meta = read_json(meta_path)
        if not isinstance(meta, dict):
            raise InputError(f"{meta_path}: not a JSON object; {DAMAGED}")
        state_file = meta.get("state_file")
        if not isinstance(state_file, str) or not STATE_FILE.fullmatch(state_file):
            raise InputError(
                f"{meta_path}: state_file must name a state-NNNNN.safetensors file in {self.checkpoint_path} "
                f"(got {str(state_file)[:80]!r}); the checkpoint is damaged, start a new run"
            )
        refuse_symlink(self.checkpoint_path / state_file)
        return read_tensors(self.checkpoint_path / state_file, device=device), meta


def check_run_meta(meta: dict, path: Path) -> None:
    """InputError unless a run's checkpoint ``meta`` (as FederatedRun saves it) has the types in
    ``META_TYPES`` (``client_steps`` a list of counts), so a damaged checkpoint is refused before use."""
    wrong = [
        f"{key} must be {' or '.join('null' if t is type(None) else t.__name__ for t in types)} (got {str(meta.get(key))[:40]!r})"
        for key, types in META_TYPES.items()
        if key not in meta or isinstance(meta[key], bool) or not isinstance(meta[key], types)
    ]
    steps = meta.get("client_steps")
    if isinstance(steps, list) and not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in steps):
        wrong.append("client_steps must be a list of step counts")
    if isinstance(meta.get("rounds_done"), int) and meta["rounds_done"] < 0:
        wrong.append("rounds_done must be at least 0")
    if wrong:
        raise InputError(f"{path}: {'; '.join(wrong)}; {DAMAGED}")
