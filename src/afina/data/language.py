"""A cheap language guess from stopwords: enough to notice an English slice in a Spanish mix.

No dependencies and no model: count how many of a text's words are among each language's most
common function words. Short texts (a few words) stay undecided rather than guessed.
"""

from __future__ import annotations

import re
from collections import Counter

STOPWORDS = {
    "en": "the and of to a in is it you that for on with as are this be at or have from not your we can by an will my if do our please me",
    "es": "a el la de que y en los las un una por con para es no se del al lo su como más pero sus le ya muy sí te tu mi nos "
    "está hay puedes",
    "fr": "le la les de des et en un une du est que qui pour pas dans sur au avec ce il elle vous nous mais ou se sont votre aux très je",
    "de": "der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch es an als wir sie ich du bitte oder ihr wie noch",
    "pt": "o a os as de que e do da em um uma para com não por se na no mais dos das ao como mas foi você seu sua muito já está são",
    "it": "a il lo la gli le di che e un una per non in con del della è sono si ma come anche più al alla ci questo nel sei ho tu",
}
_WORDS = {lang: set(words.split()) for lang, words in STOPWORDS.items()}
_TOKEN = re.compile(r"[^\W\d_]+", re.UNICODE)


def detect(text: str, min_hits: int = 2) -> str | None:
    """ISO code of the likeliest language, or None when too few stopwords decide it."""
    words = [w.lower() for w in _TOKEN.findall(text)]
    scores = Counter({lang: sum(w in stop for w in words) for lang, stop in _WORDS.items()})
    (best, hits), *rest = scores.most_common()
    if hits < min_hits or (rest and rest[0][1] == hits):
        return None
    return best


def share(texts: list[str], lang: str) -> tuple[float, list[int]]:
    """Share of the decided texts in `lang`, and the indices of those detected as another language."""
    found = [(i, detect(t)) for i, t in enumerate(texts)]
    decided = [(i, g) for i, g in found if g is not None]
    if not decided:
        return 1.0, []
    other = [i for i, g in decided if g != lang]
    return 1 - len(other) / len(decided), other
