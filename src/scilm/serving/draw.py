"""SMILES -> SVG with RDKit, for the web page's molecule pictures (server-side, no JS chemistry).

RDKit holds Python's GIL while it parses and draws (a 280-atom cage took 2.8 s here, and a
thread beside it did not run once in that time), so a thread pool would not keep ``/health``
answering: drawings run in **one worker process** (:class:`DrawWorker`), started by the first
drawing (a server that never draws, e.g. a protein classifier's, never starts one), one at a time,
with a short wait list (more waiting: 503), and a drawing past its time limit kills the worker (a
new one starts for the next). Before any of that, cheap bounds refuse what cannot be
worth drawing: characters, atoms, rings, and a reaction that is not ``reactants>agents>products``.
"""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
import threading
import time
from typing import Any

from rdkit import rdBase
from rdkit.Chem import rdChemReactions
from rdkit.Chem.Draw import rdMolDraw2D

from scilm.chem.smiles import canonical_smiles, to_mol
from scilm.serving.limits import RequestError, check_smiles_chars

MAX_SMILES_CHARS = 1000
# Bounds a drawing must fit. Large drug-like and natural-product molecules (vancomycin: 101 heavy atoms,
# 9 rings; maitotoxin: 32 rings) pass; a 280-atom cage with 598 rings (2.8 s here) does not.
MAX_ATOMS = 300
MAX_RINGS = 40
DRAW_SECONDS = 5.0  # wall time of one drawing in the worker; past it the worker is killed
MAX_WAITING = 8  # drawings waiting for the worker; more is a 503


class DrawError(Exception):
    """A SMILES that cannot be drawn; the message names the field (``smiles: ...``)."""


def check_smiles(smiles: str, max_chars: int = MAX_SMILES_CHARS) -> str:
    """The stripped SMILES if its length and characters are acceptable (cheap: runs in the server).

    Raises a 422 RequestError naming ``smiles`` if it is empty, over ``max_chars`` characters or
    holds a character no SMILES has.
    """
    smiles = smiles.strip()
    if not smiles:
        raise RequestError(422, "smiles: empty")
    if len(smiles) > max_chars:
        raise RequestError(422, f"smiles: {len(smiles)} characters is over the limit of {max_chars}")
    check_smiles_chars(smiles, "smiles")
    return smiles


def smiles_svg(smiles: str, width: int = 360, height: int = 240, max_atoms: int = MAX_ATOMS,
               max_rings: int = MAX_RINGS) -> dict[str, str]:
    """``{"smiles", "canonical", "svg"}``; raises DrawError naming the problem. Runs in the worker.

    A reaction must have exactly three ``>``-separated parts (RDKit's reaction SMILES; an empty part
    is allowed, as in ``A>>B``); atoms (over all molecules) and SSSR rings are bounded.
    """
    canonical = canonical_smiles(smiles)
    if canonical is None:
        raise DrawError(f"smiles: RDKit cannot parse {smiles!r}")
    parts = canonical.count(">") + 1
    if parts not in (1, 3):
        raise DrawError(f"smiles: a reaction is reactants>agents>products (three parts, two '>'); "
                        f"got {parts} parts")
    mol = to_mol(canonical)
    if mol.GetNumAtoms() > max_atoms:
        raise DrawError(f"smiles: {mol.GetNumAtoms()} atoms is over the drawing limit of {max_atoms}")
    rings = mol.GetRingInfo().NumRings()
    if rings > max_rings:
        raise DrawError(f"smiles: {rings} rings is over the drawing limit of {max_rings}")
    drawer = rdMolDraw2D.MolDraw2DSVG(width * (2 if parts == 3 else 1), height)
    with rdBase.BlockLogs():
        try:
            if parts == 3:  # a reaction: reactants > reagents > products, with arrows
                drawer.DrawReaction(rdChemReactions.ReactionFromSmarts(canonical.replace("~", "."), useSmiles=True))
            else:
                drawer.DrawMolecule(mol)
        except (ValueError, RuntimeError) as exc:  # RDKit's own refusals, in its words
            raise DrawError(f"smiles: RDKit cannot draw it ({exc})") from None
    drawer.FinishDrawing()
    return {"smiles": smiles, "canonical": canonical, "svg": drawer.GetDrawingText()}


def _worker_main() -> None:
    """The worker process (``python -m scilm.serving.draw``): one JSON line in, one JSON line out.

    In: ``{"smiles": ..., "bounds": {...}}``; out: ``{"ok": result}`` or ``{"invalid": message}``.
    """
    import json
    import sys

    out = sys.stdout
    sys.stdout = sys.stderr  # nothing else may write to the answer pipe
    out.write('{"ready": true}\n')
    out.flush()
    for line in sys.stdin:
        task = json.loads(line)
        try:
            answer = {"ok": smiles_svg(task["smiles"], **task["bounds"])}
        except DrawError as exc:
            answer = {"invalid": str(exc)}
        except Exception as exc:  # anything else RDKit raises is still about this input
            answer = {"invalid": f"smiles: RDKit cannot draw it ({type(exc).__name__}: {exc})"}
        out.write(json.dumps(answer) + "\n")
        out.flush()


class DrawWorker:
    """One drawing process, used by one request at a time, with a bounded wait list and a time limit.

    The process is ``python -m scilm.serving.draw`` (a plain subprocess: nothing of the server is
    copied or re-imported into it), spoken to in JSON lines, started by the first drawing (its start,
    bounded by ``start_seconds``, does not count against the drawing's ``seconds``). ``draw`` is a
    coroutine; the blocking pipe talk runs in a thread, so the event loop only awaits. Raises RequestError: 422 (the
    SMILES; its time limit included), 503 (too many waiting, or closing).
    """

    def __init__(self, seconds: float = DRAW_SECONDS, max_waiting: int = MAX_WAITING, start_seconds: float = 60.0,
                 max_atoms: int = MAX_ATOMS, max_rings: int = MAX_RINGS):
        self.seconds, self.max_waiting, self.start_seconds = seconds, max_waiting, start_seconds
        self.bounds = {"max_atoms": max_atoms, "max_rings": max_rings}
        self._process: subprocess.Popen | None = None
        self._lock = threading.Lock()  # the process and its pipes: one caller at a time
        self._slot = asyncio.Semaphore(1)
        self._waiting = 0
        self.closing = False

    @property
    def pid(self) -> int | None:
        """The worker process's id while one runs; None before the first drawing (it starts on demand)."""
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def _ensure_started(self) -> None:
        """(With the lock held.) A live worker process, started if needed."""
        if self._process is not None and self._process.poll() is None:
            return
        if self.closing:
            raise RuntimeError("closing")
        process = subprocess.Popen([sys.executable, "-m", "scilm.serving.draw"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=os.environ.copy())
        if self._readline(process, self.start_seconds) is None:
            process.kill()
            process.wait()
            raise RuntimeError(f"no answer within {self.start_seconds:g} s")
        self._process = process

    @staticmethod
    def _readline(process: subprocess.Popen, seconds: float) -> bytes | None:
        ready, _, _ = select.select([process.stdout], [], [], seconds)
        if not ready:
            return None
        return process.stdout.readline() or None

    def _kill(self) -> None:
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def _call(self, smiles: str) -> tuple[str, Any]:
        with self._lock:
            try:
                self._ensure_started()
            except RuntimeError as exc:
                return "unavailable", str(exc)
            started = time.monotonic()
            try:
                self._process.stdin.write((json.dumps({"smiles": smiles, "bounds": self.bounds}) + "\n").encode())
                self._process.stdin.flush()
                line = self._readline(self._process, self.seconds)
            except OSError:
                line = b""
            if line is None:  # past the time limit: kill it; a fresh one starts for the next drawing
                self._kill()
                return "timeout", time.monotonic() - started
            if not line:  # it died (out of memory, a crash in RDKit): a fresh one next time
                self._kill()
                return "invalid", "smiles: the drawing process failed on this input"
            answer = json.loads(line)
            return ("ok", answer["ok"]) if "ok" in answer else ("invalid", answer["invalid"])

    async def draw(self, smiles: str) -> dict[str, str]:
        """``{"smiles", "canonical", "svg"}`` for a SMILES already through :func:`check_smiles`.

        Raises RequestError: 422 if RDKit cannot parse or draw it (past ``max_atoms`` / ``max_rings``)
        or drawing it takes over ``seconds`` (the worker is then killed); 503 with Retry-After if
        the server is shutting down, ``max_waiting`` drawings already wait, or the worker cannot run.
        """
        if self.closing:
            raise RequestError(503, "server is shutting down", {"Retry-After": "5"})
        if self._waiting >= self.max_waiting:
            raise RequestError(503, f"overloaded: {self._waiting} drawings waiting; retry later",
                               {"Retry-After": str(max(1, round(self._waiting * self.seconds / 2)))})
        self._waiting += 1
        try:
            async with self._slot:
                if self.closing:
                    raise RequestError(503, "server is shutting down", {"Retry-After": "5"})
                kind, value = await asyncio.to_thread(self._call, smiles)
        finally:
            self._waiting -= 1
        if kind == "ok":
            return value
        if kind == "timeout":
            raise RequestError(422, f"smiles: drawing it took over the limit of {self.seconds:g} s")
        if kind == "unavailable":
            raise RequestError(503, f"drawing is unavailable ({value}); retry later", {"Retry-After": "5"})
        raise RequestError(422, value)

    def close(self) -> None:
        """Refuse new drawings and stop the process (a drawing in progress is cut)."""
        self.closing = True
        process = self._process
        if process is not None:
            process.kill()  # the pipe talk of a drawing in progress then ends at once
        with self._lock:
            self._kill()


if __name__ == "__main__":
    _worker_main()
