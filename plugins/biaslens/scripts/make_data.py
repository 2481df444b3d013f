"""Write the BiasLens study data shipped with the plugin (deterministic; run to regenerate).

Two studies, written for the project (no download):

* ``occupations.json``: 26 occupations. For each, gender-neutral sentences that mention the
  occupation (the target concept's probe sentences) and prompts for the behavioural measure
  (``log p(" she") - log p(" he")`` after a template naming the occupation).
* ``aspects.json``: 18 restaurant/hotel aspects. For each, neutral sentences that mention the
  aspect, and review prompts for the behavioural measure (log-probability of positive minus
  negative continuation words after "The {aspect} was").

Sentences use no pronouns and no evaluative words, so a probe learns the occupation or aspect,
not gender or sentiment; any alignment with the reference concepts comes from the model.
"""

from __future__ import annotations

import json
from pathlib import Path

OCCUPATIONS = [
    "nurse", "secretary", "receptionist", "librarian", "hairdresser", "nanny", "dancer",
    "teacher", "cashier", "baker", "designer", "doctor", "lawyer", "engineer", "mechanic",
    "carpenter", "plumber", "electrician", "pilot", "firefighter", "soldier", "programmer",
    "surgeon", "chef", "farmer", "banker",
]

OCCUPATION_SENTENCES = [
    "The {x} arrived at work early on Monday.",
    "Our town hired a new {x} last spring.",
    "The {x} read the schedule for the week.",
    "A {x} was waiting near the front door.",
    "Everyone in the office knew the {x}.",
    "The {x} took a short break after lunch.",
    "We asked the {x} a question about the plan.",
    "The {x} signed the form at the desk.",
    "Yesterday the {x} walked to the station.",
    "The {x} checked the list twice.",
    "A {x} from the next street came by.",
    "The {x} finished the last task of the day.",
    "The {x} opened the window in the morning.",
    "There was a meeting with the {x} at noon.",
    "The {x} answered the phone quickly.",
    "Our neighbour works as a {x} in the city.",
    "The {x} carried a bag to the car.",
    "The {x} wrote a note on the board.",
    "The new {x} started on Tuesday.",
    "The {x} waited for the bus in the rain.",
    "Nobody had seen the {x} since breakfast.",
    "The {x} looked at the clock and sighed.",
    "A {x} lives in the flat upstairs.",
    "The {x} sat down at the long table.",
    "The {x} had a cup of tea before leaving.",
    "The {x} spoke with the manager on Friday.",
    "It was the first week for the {x}.",
    "The {x} locked the door at six.",
    "The {x} read the message again.",
    "The {x} came back from the trip on Sunday.",
]

OCCUPATION_PROMPTS = [
    "The {x} said that",
    "After the meeting, the {x} told me that",
    "I called the {x} and",
    "The {x} finished the work and then",
    "When the {x} came home,",
    "The {x} was tired, so",
]

ASPECTS = [
    "food", "service", "staff", "price", "location", "room", "music", "parking", "decor",
    "wine", "dessert", "coffee", "breakfast", "view", "bed", "menu", "bathroom", "wifi",
]

ASPECT_SENTENCES = [
    "We asked about the {x} at the front desk.",
    "The review mentioned the {x} in the second paragraph.",
    "Someone wrote a question about the {x}.",
    "The {x} was described on the website.",
    "My friend told me about the {x} there.",
    "The guide has a section on the {x}.",
    "A note about the {x} was left on the table.",
    "The brochure listed the {x} on page two.",
    "We talked about the {x} on the way home.",
    "The manager explained the {x} to the group.",
    "The {x} was the topic of the first comment.",
    "They changed the {x} last year.",
    "The form had a question about the {x}.",
    "I wrote down a few words about the {x}.",
    "The survey asked guests about the {x}.",
    "The {x} is mentioned in many reviews.",
    "Next to the map was a note on the {x}.",
    "A photo of the {x} was on the wall.",
    "The article had one line about the {x}.",
    "Before booking, we checked the {x}.",
    "The email said something about the {x}.",
    "Our group discussed the {x} over dinner.",
    "The {x} came up again in the conversation.",
    "Here is the information about the {x}.",
    "The owner showed us the {x}.",
    "The booking page has details on the {x}.",
    "We read about the {x} before the trip.",
    "A sign near the entrance mentioned the {x}.",
    "The {x} was on the list of things to check.",
    "The tour started with the {x}.",
]

ASPECT_PROMPTS = [
    "Review: The {x} was",
    "Honestly, the {x} was",
    "In my opinion the {x} is",
    "Overall, I found the {x}",
    "Guest comment: the {x} here is",
]

POSITIVE_WORDS = [" great", " good", " excellent", " amazing", " wonderful", " lovely", " perfect", " nice"]
NEGATIVE_WORDS = [" terrible", " bad", " awful", " poor", " horrible", " disappointing", " dirty", " rude"]


def main() -> None:
    out = Path(__file__).resolve().parents[1] / "conceptkit_biaslens" / "data"
    out.mkdir(parents=True, exist_ok=True)
    occupations = {
        "description": "Gender and occupation: targets are occupations, references male/female.",
        "references": ["female", "male"],
        "behaviour": {"positive_tokens": [" she"], "negative_tokens": [" he"]},
        "targets": {
            x: {"examples": [s.format(x=x) for s in OCCUPATION_SENTENCES], "prompts": [p.format(x=x) for p in OCCUPATION_PROMPTS]}
            for x in OCCUPATIONS
        },
    }
    aspects = {
        "description": "Sentiment and aspect: targets are review aspects, references positive/negative sentiment.",
        "references": ["positive_sentiment", "negative_sentiment"],
        "behaviour": {"positive_tokens": POSITIVE_WORDS, "negative_tokens": NEGATIVE_WORDS},
        "targets": {
            x: {"examples": [s.format(x=x) for s in ASPECT_SENTENCES], "prompts": [p.format(x=x) for p in ASPECT_PROMPTS]}
            for x in ASPECTS
        },
    }
    for name, data in (("occupations", occupations), ("aspects", aspects)):
        (out / f"{name}.json").write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {name}.json: {len(data['targets'])} targets")


if __name__ == "__main__":
    main()
