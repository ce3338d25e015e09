"""Checkpoints of training state (orbax) with the run's config, and inference-only policy export.

``Checkpointer`` keeps the last ``max_to_keep`` states of one run in a directory, next to the
run's config (``config.json``). Orbax writes each step into a temporary directory and renames it
when complete, so a crash mid-save leaves the previous checkpoints intact. Every problem a user
can hit (other config, other state layout, corrupt files) raises ``CheckpointError``.

    ckpt = Checkpointer(run_dir / "checkpoints", config)
    if ckpt.latest_step() is not None:
        state = ckpt.restore(state)          # state: a freshly initialised state as template
    ckpt.save(step, state)

``save_params`` / ``load_params`` store network parameters with JSON metadata, so they load
without a template (``agents.core.export_policy`` builds on them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

__all__ = ["CheckpointError", "Checkpointer", "load_params", "save_params", "write_atomic"]

PyTree = Any
CONFIG_FILE = "config.json"
POLICY_PARAMS = "params"
POLICY_METADATA = "policy.json"


class CheckpointError(ValueError):
    """A checkpoint cannot be written or read as asked; the message says why and what to do."""


def _to_json(obj: Mapping[str, Any], what: str) -> dict[str, Any]:
    """``obj`` as it reads back from JSON (tuples become lists), or a ValueError naming ``what``."""
    try:
        return json.loads(json.dumps(dict(obj), sort_keys=True))
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"{what} must be a JSON-serialisable mapping ({err}); convert dataclasses with "
            "dataclasses.asdict and arrays with .tolist()."
        ) from err


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename: never half-written.
    With several hosts (``jax.distributed``) only the first writes."""
    if jax.process_index() != 0:
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: Path, obj: dict[str, Any]) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=True))


_MISSING = object()

#: Config fields added after runs were stored, by the end of their dotted path: a stored
#: config without one ran with this value, the behaviour from before the field existed, so it
#: still matches a config that gives that value.
ADDED_FIELDS: dict[str, Any] = {
    "compose.start": "uniform",
    "compose.anchor": 0.0,
    "oer.clone_steps": 1,
    "clip_actions": False,  # online SynthER (agents.synther.SynthERConfig)
}


def _added_field(key: str) -> Any:
    """The old-behaviour value of config key ``key`` (a dotted path) if it was added later."""
    for field, value in ADDED_FIELDS.items():
        if key == field or key.endswith(f".{field}"):
            return value
    return _MISSING


def _flatten_config(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for key, value in obj.items():
            out.update(_flatten_config(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _summary(err: Exception) -> str:
    """The error's type and first line (at most 200 characters), without its traceback."""
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0][:200] if lines else ''}"


def _is_typed_key(leaf: Any) -> bool:
    return jax.dtypes.issubdtype(getattr(leaf, "dtype", None), jax.dtypes.prng_key)


def _is_empty(leaf: Any) -> bool:
    return hasattr(leaf, "shape") and 0 in tuple(leaf.shape)


def _key_data(leaf: Any) -> Any:
    """A storable stand-in for ``leaf``: raw uint32 data for a typed PRNG key, a one-element
    placeholder for an empty array (orbax refuses those; they hold no data), others as is.
    Abstract (ShapeDtypeStruct) leaves map to abstract stand-ins."""
    if _is_empty(leaf):
        if isinstance(leaf, jax.ShapeDtypeStruct):
            return jax.ShapeDtypeStruct((1,), leaf.dtype)
        return np.zeros((1,), leaf.dtype)
    if not _is_typed_key(leaf):
        return leaf
    if isinstance(leaf, jax.ShapeDtypeStruct):
        return jax.eval_shape(jax.random.key_data, leaf)
    return jax.random.key_data(leaf)


def _wrap_like(data: Any, like: Any) -> Any:
    """Undo ``_key_data``: rewrap key data as a typed key like ``like``, re-create empty arrays."""
    if _is_empty(like):
        return jax.numpy.zeros(like.shape, like.dtype)
    if not _is_typed_key(like):
        return data
    impls: list[Any] = []  # key_impl needs an array; a traced one also works for templates
    jax.eval_shape(lambda k: impls.append(jax.random.key_impl(k)), like)
    return jax.random.wrap_key_data(data, impl=impls[0])


def _key_name(entry: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


def _leaf_paths(tree: PyTree) -> dict[str, tuple[int, ...]]:
    """``{"a/b/0": shape}`` for every leaf; dataclass fields, dict keys and indices alike."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(_key_name(k) for k in path): tuple(np.shape(x)) for path, x in leaves}


def _first_mismatch(stored: dict[str, tuple], wanted: dict[str, tuple]) -> str | None:
    for path, shape in wanted.items():
        if path not in stored:
            return f"leaf {path!r} is in state_like but not in the checkpoint"
        if stored[path] != shape:
            return (
                f"leaf {path!r} has shape {stored[path]} in the checkpoint, {shape} in state_like"
            )
    for path in stored:
        if path not in wanted:
            return f"leaf {path!r} is in the checkpoint but not in state_like"
    return None


class Checkpointer:
    """Saves and restores one run's training state; the run's config is stored alongside.

    ``config`` (a JSON-serialisable mapping) is written to ``directory/config.json`` when the
    directory has none; ``save`` and ``restore`` raise ``CheckpointError`` if it holds another.
    PRNG keys in the state (typed or raw uint32) round-trip unchanged.
    """

    def __init__(
        self, directory: str | os.PathLike, config: Mapping[str, Any], max_to_keep: int = 3
    ):
        if not (isinstance(max_to_keep, int) and max_to_keep >= 1):
            raise ValueError(f"max_to_keep must be a positive int, got {max_to_keep!r}.")
        self.directory = Path(directory).absolute()
        self.config = _to_json(config, "config")
        self._manager = ocp.CheckpointManager(
            self.directory,
            item_handlers=ocp.StandardCheckpointHandler(),
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
            ),
        )
        config_path = self.directory / CONFIG_FILE
        if not config_path.exists():
            if self._manager.all_steps():  # no record to compare with: refuse, never guess
                raise CheckpointError(
                    f"{self.directory} holds checkpoints {sorted(self._manager.all_steps())} "
                    f"but no {CONFIG_FILE} recording the config they were trained with; restore "
                    "that file, or delete the checkpoints to train from scratch."
                )
            if jax.process_index() == 0:
                _write_json(config_path, self.config)

    def all_steps(self) -> list[int]:
        """Steps of the checkpoints kept in the directory, ascending."""
        self._manager.reload()
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        """The newest saved step, or None if the directory holds no checkpoint."""
        steps = self.all_steps()
        return steps[-1] if steps else None

    def _check_config(self) -> None:
        path = self.directory / CONFIG_FILE
        try:
            stored = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise CheckpointError(f"cannot read the run config {path}: {err}.") from err
        ours, theirs = _flatten_config(self.config), _flatten_config(stored)
        missing = "<missing>"
        for key in set(ours) - set(theirs):
            if (value := _added_field(key)) is not _MISSING:
                theirs[key] = value
        diffs = [
            f"{key}: stored {theirs.get(key, missing)!r}, given {ours.get(key, missing)!r}"
            for key in sorted(set(ours) | set(theirs))
            if ours.get(key, missing) != theirs.get(key, missing)
        ]
        if diffs:
            raise CheckpointError(
                f"{self.directory} holds checkpoints of a run with another config ("
                + "; ".join(diffs)
                + "). Use a fresh directory for this config, or the matching config to resume."
            )

    def save(self, step: int, state: PyTree) -> None:
        """Write ``state`` as checkpoint ``step`` and return once it is on disk.

        ``step`` must exceed the latest saved step; the oldest checkpoints beyond
        ``max_to_keep`` are deleted.
        """
        self._check_config()
        if not isinstance(step, (int, np.integer)) or step < 0:
            raise CheckpointError(f"step must be a non-negative int, got {step!r}.")
        latest = self._manager.latest_step()
        if latest is not None and step <= latest:
            raise CheckpointError(
                f"cannot save step {step} in {self.directory}: steps must increase past the "
                f"latest saved step {latest}."
            )
        item = jax.tree.map(_key_data, state)
        self._manager.save(int(step), args=ocp.args.StandardSave(item))
        self._manager.wait_until_finished()

    def restore(self, state_like: PyTree, step: int | None = None) -> PyTree:
        """The state saved at ``step`` (default: latest), with the structure of ``state_like``.

        ``state_like`` is a state of the same layout (e.g. freshly initialised; leaves may be
        ``jax.ShapeDtypeStruct``); its leaves' dtypes and shardings are used.
        """
        self._check_config()
        steps = sorted(self._manager.all_steps())
        if not steps or (step is not None and step not in steps):
            steps = self.all_steps()  # look again, for steps saved by another process
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory}; save one first.")
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(
                f"no checkpoint for step {step} in {self.directory}; saved: {steps}."
            )
        template = jax.tree.map(_key_data, state_like)
        corrupt = (
            f"checkpoint step {step} in {self.directory} is corrupt or incomplete; "
            f"delete {self.directory / str(step)} and restore an earlier step"
        )
        try:
            stored = _leaf_paths(self._manager.item_metadata(step).tree)
        except Exception as err:  # orbax/tensorstore raise many types; all mean unreadable
            raise CheckpointError(f"{corrupt} ({_summary(err)}).") from None
        mismatch = _first_mismatch(stored, _leaf_paths(template))
        if mismatch:
            raise CheckpointError(
                f"checkpoint step {step} in {self.directory} does not fit state_like: {mismatch}. "
                "Restore into a state built with the same config and code as the saved one."
            )
        try:
            restored = self._manager.restore(step, args=ocp.args.StandardRestore(template))
        except Exception as err:
            raise CheckpointError(f"{corrupt} ({_summary(err)}).") from None
        return jax.tree.map(_wrap_like, restored, state_like)


def save_params(directory: str | os.PathLike, params: PyTree, metadata: Mapping[str, Any]) -> None:
    """Export ``params`` and JSON ``metadata`` (architecture, sizes) to a new ``directory``; the
    directory appears complete or not at all."""
    directory = Path(directory).absolute()
    meta = _to_json(metadata, "metadata")
    if directory.exists() and any(directory.iterdir()):
        raise CheckpointError(f"{directory} is not empty; export the policy to a fresh directory.")
    if any(_is_typed_key(x) for x in jax.tree.leaves(params)):
        raise ValueError("params hold a PRNG key; export network parameters only.")
    # written beside the target and renamed into place: a kill leaves no half-written export
    directory.parent.mkdir(parents=True, exist_ok=True)
    partial = directory.parent / f".{directory.name}.partial"
    if jax.process_index() == 0 and partial.exists():
        shutil.rmtree(partial)  # an earlier export that was killed
    with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
        checkpointer.save(partial / POLICY_PARAMS, args=ocp.args.StandardSave(params))
    if jax.process_index() == 0:
        _write_json(partial / POLICY_METADATA, meta)
        if directory.exists():
            directory.rmdir()  # empty (checked above)
        os.replace(partial, directory)


def load_params(directory: str | os.PathLike) -> tuple[PyTree, dict[str, Any]]:
    """``(params, metadata)`` stored by ``save_params``; params as jax arrays in nested dicts."""
    directory = Path(directory).absolute()
    if not directory.exists():
        raise CheckpointError(
            f"no policy at {directory}: the folder does not exist; check the path (a study "
            "exports its policy to <its run folder>/policy once training has finished)."
        )
    if not (directory / POLICY_METADATA).exists() or not (directory / POLICY_PARAMS).exists():
        raise CheckpointError(
            f"no complete policy export in {directory} (expected {POLICY_PARAMS}/ and "
            f"{POLICY_METADATA}); export one with agents.core.export_policy."
        )
    try:
        metadata = json.loads((directory / POLICY_METADATA).read_text())
        with ocp.Checkpointer(ocp.StandardCheckpointHandler()) as checkpointer:
            params = checkpointer.restore(directory / POLICY_PARAMS)
    except Exception as err:
        raise CheckpointError(
            f"policy export in {directory} is corrupt ({_summary(err)}); export it again."
        ) from None
    return jax.tree.map(jax.numpy.asarray, params), metadata
