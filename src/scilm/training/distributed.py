"""``scilm train --nproc N``: the launcher (rank and collective helpers: :mod:`scilm.distributed`).

The engine is PyTorch's own (``torchrun`` = ``torch.distributed.run``) driving the Hugging Face
Trainer's DDP; ``accelerate launch`` works the same way. scilm only adds this convenience launcher.
"""

from __future__ import annotations

import os
import sys

from scilm.errors import ScilmError


def launched_by_torchrun() -> bool:
    """Whether this process is one of a launcher's workers (torchrun and accelerate set these)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def strip_option(argv: list[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE``."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == name:
            skip = True
            continue
        if arg.startswith(name + "="):
            continue
        out.append(arg)
    return out


def launch_torchrun(nproc: int, train_argv: list[str]) -> int:
    """Run ``scilm train`` in ``nproc`` processes with torchrun's launcher; returns the exit code.

    ``train_argv`` are the arguments after ``train`` (``--nproc`` already removed). A failed
    process's own message is printed by that process; this adds one line, never a traceback.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    if nproc < 1:
        raise ScilmError(f"--nproc must be at least 1 (got {nproc})")
    from scilm.distributed import threads_per_process

    os.environ.setdefault("OMP_NUM_THREADS", str(threads_per_process(nproc)))  # physical cores shared out
    # workers get time to finish their step and save a checkpoint when the launcher is signalled
    args = parse_args(["--standalone", f"--nproc_per_node={nproc}", "--shutdown-timeout=600",
                       "-m", "scilm", "train", *train_argv])
    print(f"scilm: training in {nproc} processes (torchrun --standalone --nproc_per_node {nproc})",
          file=sys.stderr, flush=True)
    try:
        run(args)
    except SignalException as exc:
        print(f"error: stopped by {exc.sigval.name}; the workers saved a checkpoint if they could; to continue, "
              "run the same command with --resume", file=sys.stderr)
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        codes = sorted({failure.exitcode for failure in exc.failures.values()})
        code = next((c for c in codes if c and c > 0), 1)
        print(f"error: {len(exc.failures)} of {nproc} training processes failed (exit code "
              f"{', '.join(map(str, codes))}); their messages are above", file=sys.stderr)
        return code
    return 0
