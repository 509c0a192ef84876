"""Known training data sets: what a model card says about them (license, citation, known biases).

A card carries this prose only when the run read the data set: from the Hub (its id), or from local
files whose paths name it (see `DatasetFacts.path_hints`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trainer_ext.runs.info import DataSource


@dataclass(frozen=True)
class DatasetFacts:
    """What a card says about a known training data set.

    Args:
        hub_id (`str`): The data set's id on the Hub.
        name (`str`): A readable name.
        license (`str`): SPDX-style license id of the data.
        citation (`str`): BibTeX entry of the paper to cite.
        limits (`str`): Known biases and limits, in Markdown.
        path_hints (`tuple[str, ...]`): Fragments of local file paths that identify the data set.
    """

    hub_id: str
    name: str
    license: str
    citation: str
    limits: str
    path_hints: tuple[str, ...] = ()


DAVIDSON = DatasetFacts(
    hub_id="tdavidson/hate_speech_offensive",
    name="Davidson et al. 2017, hate speech and offensive language tweets",
    license="mit",
    citation="""@inproceedings{davidson2017automated,
  title     = {Automated Hate Speech Detection and the Problem of Offensive Language},
  author    = {Davidson, Thomas and Warmsley, Dana and Macy, Michael and Weber, Ingmar},
  booktitle = {Proceedings of the 11th International AAAI Conference on Web and Social Media (ICWSM)},
  year      = {2017}
}""",
    limits="""The tweets come from Davidson et al. (2017): English tweets found by searching for words of a
hate-speech lexicon, each labelled by crowd workers as hate speech, offensive language or neither.

- **Racial bias.** Davidson, Bhattacharya & Weber (2019), *Racial Bias in Hate Speech and Abusive Language
  Detection Datasets*, showed that in this data set (and others like it) tweets written in
  African-American English are labelled hateful or offensive much more often than other tweets, and that
  classifiers trained on it repeat the skew. Expect this model to over-flag African-American English and
  other dialects that the annotators judged harshly.
- **Sampling.** Tweets were selected by lexicon keywords, so slurs used in reclaimed or quoted senses are
  likely common, and hate expressed without those words is rare: expect the model to lean on surface words.
- **Subjective labels.** The line between "hate" and "offensive" is where annotators disagreed most;
  expect most confusions between these two labels (see the confusion matrix above).
- **Class shares.** The study's moderation split (1,000 training and 200 validation tweets) has the three
  classes in roughly equal shares; in the full data set hate is about 6% of tweets, offensive about 77% and
  neither about 17% (see the training data above for what this model saw). Scores on real traffic will
  differ, with lower precision for "hate" after balanced training.""",
    path_hints=("davidson", "seed_split", "hate_speech_offensive"),
)
KNOWN_DATASETS = (DAVIDSON,)


def detect_dataset(sources: list[DataSource]) -> DatasetFacts | None:
    """The known data set a run read, from the Hub ids or local file paths of its `sources`, if any."""
    for facts in KNOWN_DATASETS:
        for source in sources:
            if source.hub_dataset == facts.hub_id:
                return facts
            path = str(source.path or "").lower()
            if not source.hub_dataset and path and any(hint in path for hint in facts.path_hints):
                return facts
    return None
