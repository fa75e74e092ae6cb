"""A study's unit of work: one stage call (:class:`Run`) and the exact command equivalent to it.

The command is rendered from the stage config's own :func:`~...runtime.options.option` metadata
(the same flags ``cli/options.py`` builds the command line from), so it parses back into the
same config. It lists only values that differ from the defaults, and leaves out how and where
a run executes (``--threads``, ``--device``, ``--resume``/``--overwrite``): the study passes
those from its own options. Paths inside the study directory are written relative to it (the
command runs from ``DIR``; ``runs/<id>/command.sh`` changes there first); every other path is
absolute.

A run's id is a readable name plus a short hash of its command, so the same command asked for
by two tables or two plans is one run, executed once and shared.
"""

from __future__ import annotations

import dataclasses
import hashlib
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ...runtime.options import field_default, flag_of, negated_flag, option_info

RunKind = Literal["teacher", "dump", "student", "evaluate"]

COMMANDS: dict[str, str] = {
    "teacher": "train-teacher",
    "dump": "dump-logits",
    "student": "train-student",
    "evaluate": "evaluate",
}
"""The ``civt-pipe`` command of each run kind."""

RUNS = "runs"
"""Where run directories live inside the study directory."""

BARE_VALUES = {"lambda_kd": "--lambda", "tau": "--tau"}
"""train-student's defaults of per-teacher options that have no flag of their own: the command
line spells them as the bare value of a repeatable flag (``--lambda 0.0``, vs ``--lambda
cnn=0.5`` for one teacher)."""

MACHINERY = frozenset({"resume", "overwrite", "progress", "threads", "device", "sources"})
"""Fields that say how a run executes, not what it computes: never part of the command."""


@dataclass(frozen=True)
class Run:
    """One stage call of a study: its kind, the stage's config, and the equivalent command."""

    id: str
    kind: RunKind
    config: Any
    """The stage's config dataclass, with absolute paths (what the runner passes in)."""
    command: str
    """``civt-pipe …``, run from the study directory."""

    def dir(self, root: Path) -> Path:
        """``root/runs/<id>``: the run's files, ``done.json`` and ``command.sh``."""
        return root / RUNS / self.id


def _text(value: Any) -> str:
    # str() is each value's command-line spelling (a TeacherSpec's is NAME=ARCH:CKPT); repr()
    # of a float is the shortest text that parses back to the same float.
    return repr(value) if isinstance(value, float) else str(value)


def render_command(kind: RunKind, config: Any, root: Path) -> str:
    """The ``civt-pipe`` command equivalent to ``config`` (non-default values only).

    Raises:
        ValueError: a non-default field has no flag of its own (``flag=""``): the study never
            sets such fields, so this is a programming error, not a user's.
    """
    words = ["civt-pipe", COMMANDS[kind]]
    for f in dataclasses.fields(config):
        info = option_info(f)
        if info is None or f.name in MACHINERY:
            continue
        value = getattr(config, f.name)
        if value == field_default(f):
            continue
        if info.flag == "" and f.name not in BARE_VALUES:
            raise ValueError(f"{type(config).__name__}.{f.name} has no command-line flag")
        flag = BARE_VALUES[f.name] if info.flag == "" else flag_of(f, info)
        if isinstance(value, bool):
            words.append(flag if value else negated_flag(flag))
        elif isinstance(value, (tuple, list)):
            for item in value:
                words += [flag, _text(item)]
        else:
            words += [flag, _text(value)]
    # Paths inside the study directory are spelled relative to it, so the command (and with it
    # the run's id) does not depend on where the study directory lives.
    prefix = f"{root}/"
    return " ".join(shlex.quote(word.replace(prefix, "")) for word in words)


def make_run(kind: RunKind, name: str, root: Path, build: Callable[[Path], Any]) -> Run:
    """The run ``name-<hash>`` whose config ``build(run_dir)`` makes.

    The hash is over the command with the run's own directory left out (it holds the hash), so
    it identifies what the run computes.
    """
    draft = render_command(kind, build(root / RUNS / "RUN"), root)
    run_id = f"{name}-{hashlib.blake2b(draft.encode(), digest_size=3).hexdigest()}"
    config = build(root / RUNS / run_id)
    return Run(id=run_id, kind=kind, config=config, command=render_command(kind, config, root))
