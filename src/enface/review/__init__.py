"""``enface review``: a local web page to look at, correct and draw en-face masks.

* :mod:`enface.review.cases` — the dataset's cases as the page sees them (list, en-face
  layers, B-scans from the memory-mapped volume, masks), every path checked;
* :mod:`enface.review.render` — projections (mean, sub-BM slab), display ranges, PNGs;
* :mod:`enface.review.predictions` — ``enface predict``'s output folder and a queue CSV;
* :mod:`enface.review.store` — the grader's masks, versioned and written atomically;
* :mod:`enface.review.log` — ``annotations.jsonl``, the record of saves and decisions;
* :mod:`enface.review.app` — the Starlette application and its token guard;
* :mod:`enface.review.server` — the socket, the token URL and uvicorn.

The page itself is ``static/index.html``, ``review.js`` and ``review.css`` (package data).
"""

from enface.review.cases import LAYERS, CaseService
from enface.review.server import ReviewServer

__all__ = ["LAYERS", "CaseService", "ReviewServer"]
