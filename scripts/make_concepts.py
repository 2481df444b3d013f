"""Regenerate the shipped concept example sets in core/conceptkit/concepts/data/.

The sets are written for this project: hand-written subjects, predicates and scenes combined
deterministically (seeded), so they are reproducible, small, and free of third-party text.
Run: python scripts/make_concepts.py
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "core" / "conceptkit" / "concepts" / "data"

REVIEW_SUBJECTS = [
    "The film", "This restaurant", "The hotel room", "Our waiter", "The new phone", "This book", "The concert",
    "The delivery service", "The museum tour", "This laptop", "The coffee shop", "The customer support team",
    "The rental car", "This video game", "The theater production", "The dentist", "The bakery", "This album",
    "The airline", "The yoga class", "This pair of headphones", "The hiking guide", "The pizza place", "This app",
]
POSITIVE = [
    "was absolutely wonderful and I would gladly go back", "exceeded every expectation I had",
    "made me smile from start to finish", "was a delight and worth every penny", "was fantastic, friendly and fast",
    "left me happy and impressed", "is the best I have tried in years", "was brilliant and I loved it",
    "was excellent, warm and welcoming", "turned a bad week into a great one", "deserves five stars without a doubt",
    "was charming, clever and a real joy", "felt generous, thoughtful and superb", "was perfect in every way",
    "was a pleasure and I highly recommend it", "was lovely and completely satisfying",
]
NEGATIVE = [
    "was awful and I will never go back", "was a complete waste of money", "left me angry and disappointed",
    "was rude, slow and careless", "is the worst I have tried in years", "was boring and painfully bad",
    "was terrible from start to finish", "ruined an otherwise pleasant day", "deserves zero stars",
    "was broken, dirty and frustrating", "felt cheap, lazy and insulting", "was a miserable experience",
    "was dreadful and I regret it", "made me furious and I want a refund", "was horrible in every way",
    "was disappointing and completely unsatisfying",
]
MALE = ["He", "My brother", "The man", "My father", "The king", "My uncle", "The boy", "Her husband", "The gentleman", "My grandfather", "The actor", "His son"]
FEMALE = ["She", "My sister", "The woman", "My mother", "The queen", "My aunt", "The girl", "His wife", "The lady", "My grandmother", "The actress", "Her daughter"]
GENDER_ACTIONS = [
    "walked to the station this morning", "read the letter twice", "opened the window before lunch",
    "bought a loaf of bread", "waited at the corner for a while", "called the office after dinner",
    "fixed the old chair", "wrote a note on the calendar", "carried the boxes upstairs", "watered the plants",
    "locked the door at night", "sat by the river for an hour",
]
TOPICS = {
    "food": (
        ["The chef", "My grandmother", "The cook", "Our neighbour", "The baker", "A street vendor", "The restaurant", "My friend"],
        ["simmered a tomato sauce with garlic and basil", "baked fresh bread with a crisp crust", "grilled salmon with lemon and butter",
         "served a bowl of spicy noodle soup", "roasted vegetables with olive oil and rosemary", "made pancakes with maple syrup",
         "chopped onions for a chicken curry", "prepared a salad with goat cheese and walnuts", "fried dumplings filled with pork",
         "stirred a pot of creamy risotto"],
    ),
    "sport": (
        ["The striker", "Our team", "The goalkeeper", "The coach", "The sprinter", "The tennis player", "The captain", "The cyclist"],
        ["scored a late goal in the final match", "won the championship after extra time", "trained on the track every morning",
         "served an ace to win the set", "passed the ball across the pitch", "broke the record in the hundred metres",
         "defended the net during the penalty shootout", "climbed the mountain stage of the race",
         "celebrated the victory with the fans in the stadium", "practised free throws on the basketball court"],
    ),
    "science": (
        ["The physicist", "The chemist", "Our laboratory", "The biologist", "The astronomer", "The research team", "The geologist", "The student"],
        ["measured the wavelength of the laser beam", "sequenced the genome of a bacterium", "observed a distant galaxy through the telescope",
         "mixed the acid with a buffer solution", "tested the hypothesis with a controlled experiment", "recorded the temperature of the reaction",
         "analysed rock samples from the volcano", "calculated the orbit of the comet", "published the results in a peer-reviewed journal",
         "examined the cells under an electron microscope"],
    ),
}
TARGET_SUBJECTS = [
    "The sushi bar", "This vacuum cleaner", "The guesthouse", "The barber", "This podcast", "The ferry crossing",
    "The garden centre", "This board game", "The taxi driver", "The ice cream parlour",
]
TARGET_POSITIVE = [
    "was a wonderful surprise and I loved every minute", "was great value and the staff were lovely",
    "made our trip truly special", "works beautifully and I am thrilled",
]
TARGET_NEGATIVE = [
    "was a nasty surprise and I hated every minute", "was poor value and the staff were unpleasant",
    "ruined our trip completely", "barely works and I am fed up",
]
NEUTRAL_SUBJECTS = [
    "The bus", "A small box", "The office", "Our street", "The calendar", "A wooden table", "The printer", "The staircase",
    "A blue folder", "The parking lot", "The hallway", "A paper bag", "The elevator", "The window", "The train schedule",
    "A plastic chair", "The notice board", "The garden shed", "A ceramic mug", "The mailbox", "The lamp", "A cardboard sign",
    "The bookshelf", "The corridor", "A metal gate",
]
NEUTRAL_PREDICATES = [
    "is next to the door", "was moved on Tuesday", "has three shelves", "stands near the corner", "is painted grey",
    "was cleaned yesterday", "opens at eight", "is on the second floor", "was delivered in the afternoon", "has a small label",
    "is about two metres wide", "was replaced last year", "faces the north side", "is usually empty at noon",
    "has a number on it", "was checked by the staff", "is made of pine", "stays closed on Sundays", "was counted twice",
    "is behind the counter", "has a round handle", "was left by the entrance", "is listed in the inventory",
    "leans against the wall", "was measured this morning", "sits beside the radiator", "is kept in the basement",
    "was numbered in pencil", "runs along the fence", "is covered with a cloth", "was noted in the log",
    "has two drawers",
]


def combos(subjects: list[str], predicates: list[str], n: int, seed: int, end: str = ".") -> list[str]:
    rng = random.Random(seed)
    pairs = [(s, p) for s in subjects for p in predicates]
    rng.shuffle(pairs)
    return [f"{s} {p}{end}" for s, p in pairs[:n]]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    sets = {
        "positive_sentiment": ("Positive opinions in short reviews.", combos(REVIEW_SUBJECTS, POSITIVE, 120, 1)),
        "negative_sentiment": ("Negative opinions in short reviews.", combos(REVIEW_SUBJECTS, NEGATIVE, 120, 2)),
        "male": ("Everyday sentences about male people (he, brother, father, ...).", combos(MALE, GENDER_ACTIONS, 72, 3)),
        "female": ("The same everyday sentences about female people (she, sister, mother, ...).", combos(FEMALE, GENDER_ACTIONS, 72, 3)),
        "review_targets_positive": ("Held-out positive reviews (TCAV targets), disjoint from the concept sets.", combos(TARGET_SUBJECTS, TARGET_POSITIVE, 40, 6)),
        "review_targets_negative": ("Held-out negative reviews (TCAV targets), disjoint from the concept sets.", combos(TARGET_SUBJECTS, TARGET_NEGATIVE, 40, 7)),
        "neutral": ("Mundane statements about objects and places: the pool for random sets.", combos(NEUTRAL_SUBJECTS, NEUTRAL_PREDICATES, 800, 4)),
    }
    for topic, (subjects, predicates) in TOPICS.items():
        sets[f"topic_{topic}"] = (f"Sentences about {topic}.", combos(subjects, predicates, 72, 5 + len(topic)))
    index = {}
    for name, (description, examples) in sets.items():
        assert len(examples) == len(set(examples)), name
        (OUT / f"{name}.txt").write_text("\n".join(examples) + "\n")
        index[name] = {"description": description, "count": len(examples), "file": f"{name}.txt"}
    (OUT / "index.json").write_text(json.dumps(index, indent=2) + "\n")
    print({k: v["count"] for k, v in index.items()})


if __name__ == "__main__":
    main()
