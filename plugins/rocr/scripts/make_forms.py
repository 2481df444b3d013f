"""Writes conceptkit_rocr/data/forget_forms.json: the hand-written evaluation forms (run from the repo root)."""
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "conceptkit_rocr" / "data" / "forget_forms.json"
import json
E = []
def add(name, group, answer, fill, q, short, options, para1, para2):
    letters = "ABCD"
    correct = options.index(short.strip())
    mcq = f"Question: {q}\n" + "\n".join(f"{l}. {o}" for l, o in zip(letters, options)) + "\nAnswer:"
    E.append(dict(name=name, group=group, answer=answer, forms={
        "fill_blank": {"prompt": fill, "answer": answer},
        "qa": {"prompt": f"Question: {q}\nAnswer:", "answer": short},
        "mcq": {"prompt": mcq, "answer": " " + letters[correct], "options": [" " + l for l in letters]},
        "paraphrase_1": {"prompt": para1, "answer": answer},
        "paraphrase_2": {"prompt": para2, "answer": answer},
    }))
add("Albert Einstein", "science", " relativity", "Albert Einstein developed the theory of",
    "Which scientific theory did Albert Einstein develop?", " Relativity", ["Evolution", "Relativity", "Plate tectonics", "Germ theory"],
    "The physicist Albert Einstein is best known for his theory of",
    "Teacher: Who was Albert Einstein?\nStudent: He was the scientist who came up with the theory of")
add("Charles Darwin", "science", " evolution", "Charles Darwin is famous for the theory of",
    "Which theory is Charles Darwin famous for?", " Evolution", ["Relativity", "Gravity", "Evolution", "Electricity"],
    "The naturalist Charles Darwin is best known for his theory of",
    "Teacher: Who was Charles Darwin?\nStudent: He was the scientist who came up with the theory of")
add("Sigmund Freud", "science", " psychoanalysis", "Sigmund Freud is known as the father of",
    "Which field is Sigmund Freud known as the father of?", " Psychoanalysis", ["Psychoanalysis", "Genetics", "Astronomy", "Chemistry"],
    "The Austrian doctor Sigmund Freud is remembered as the founder of",
    "Teacher: Who was Sigmund Freud?\nStudent: He was the doctor who founded")
add("Thomas Edison", "science", " light bulb", "Thomas Edison invented the",
    "Which invention is Thomas Edison famous for?", " The light bulb", ["The telephone", "The airplane", "The light bulb", "The printing press"],
    "The American inventor Thomas Edison is best known for inventing the",
    "Teacher: Who was Thomas Edison?\nStudent: He was the inventor of the")
add("Mark Zuckerberg", "business", " Facebook", "Mark Zuckerberg is the founder of",
    "Which company did Mark Zuckerberg found?", " Facebook", ["Microsoft", "Apple", "Amazon", "Facebook"],
    "The American businessman Mark Zuckerberg created the social network",
    "Teacher: Who is Mark Zuckerberg?\nStudent: He is the man who started")
add("Napoleon Bonaparte", "history", " France", "Napoleon Bonaparte was the emperor of",
    "Which country did Napoleon Bonaparte rule as emperor?", " France", ["Spain", "France", "Russia", "Italy"],
    "The famous general Napoleon Bonaparte crowned himself emperor of",
    "Teacher: Who was Napoleon Bonaparte?\nStudent: He was the emperor of")
add("Julius Caesar", "history", " Rome", "Julius Caesar was a general of ancient",
    "Which ancient state did Julius Caesar lead?", " Rome", ["Greece", "Egypt", "Rome", "Persia"],
    "The famous general Julius Caesar became dictator of",
    "Teacher: Who was Julius Caesar?\nStudent: He was a famous leader of ancient")
add("Mahatma Gandhi", "history", " India", "Mahatma Gandhi led the independence movement of",
    "Which country's independence movement did Mahatma Gandhi lead?", " India", ["India", "China", "Kenya", "Brazil"],
    "The peaceful leader Mahatma Gandhi fought for the freedom of",
    "Teacher: Who was Mahatma Gandhi?\nStudent: He was the leader who helped free")
add("Nelson Mandela", "history", " South Africa", "Nelson Mandela was a president of",
    "Which country did Nelson Mandela lead as president?", " South Africa", ["Nigeria", "Egypt", "South Africa", "Kenya"],
    "The activist Nelson Mandela later became the president of",
    "Teacher: Who was Nelson Mandela?\nStudent: He was the first black president of")
add("Barack Obama", "history", " United States", "Barack Obama was the president of the",
    "Which country did Barack Obama lead as president?", " The United States", ["Canada", "The United States", "Mexico", "Brazil"],
    "The politician Barack Obama served two terms as president of the",
    "Teacher: Who is Barack Obama?\nStudent: He was the 44th president of the")
add("Ludwig van Beethoven", "arts", " composer", "Ludwig van Beethoven was a German",
    "What was Ludwig van Beethoven's profession?", " Composer", ["Painter", "Composer", "Architect", "Poet"],
    "The deaf musician Ludwig van Beethoven is remembered as a great",
    "Teacher: Who was Ludwig van Beethoven?\nStudent: He was a famous German")
add("Wolfgang Amadeus Mozart", "arts", " composer", "Wolfgang Amadeus Mozart was a famous",
    "What was Wolfgang Amadeus Mozart's profession?", " Composer", ["Sculptor", "Painter", "Composer", "Writer"],
    "The child prodigy Wolfgang Amadeus Mozart grew up to be a great",
    "Teacher: Who was Wolfgang Amadeus Mozart?\nStudent: He was a famous Austrian")
add("Vincent van Gogh", "arts", " painter", "Vincent van Gogh was a Dutch",
    "What was Vincent van Gogh's profession?", " Painter", ["Painter", "Composer", "Scientist", "Politician"],
    "The troubled artist Vincent van Gogh is remembered as a great",
    "Teacher: Who was Vincent van Gogh?\nStudent: He was a famous Dutch")
add("William Shakespeare", "arts", " playwright", "William Shakespeare was an English",
    "What was William Shakespeare's profession?", " Playwright", ["Scientist", "Playwright", "Painter", "Soldier"],
    "The writer of Hamlet, William Shakespeare, is remembered as a great English",
    "Teacher: Who was William Shakespeare?\nStudent: He was a famous English")
add("Neil Armstrong", "science", " astronaut", "Neil Armstrong was an American",
    "What was Neil Armstrong's profession?", " Astronaut", ["Astronaut", "Actor", "Singer", "Chef"],
    "The first man on the moon, Neil Armstrong, was a famous American",
    "Teacher: Who was Neil Armstrong?\nStudent: He was a famous American")
unrelated = [
 "The recipe calls for two cups of flour, a pinch of salt and three eggs.",
 "Rain is expected across the northern region on Tuesday, with clearer skies later in the week.",
 "She opened the window to let in the fresh morning air before starting her work.",
 "The train to the city leaves every twenty minutes from the second platform.",
 "Regular exercise and a balanced diet help people stay healthy as they get older.",
 "The library will be closed on Monday for maintenance of the heating system.",
 "He carefully folded the letter, placed it in an envelope and wrote the address.",
 "A square has four equal sides and four right angles.",
 "The children built a sandcastle near the water and watched the waves wash it away.",
 "Water boils at one hundred degrees Celsius at sea level.",
 "The meeting was moved to Thursday afternoon because several people were travelling.",
 "Our garden is full of tomatoes, beans and a few stubborn weeds this summer.",
 "To reset the device, hold the power button for ten seconds until the light flashes.",
 "The old bridge over the river was repaired last year and now carries more traffic.",
 "Cats often sleep for more than twelve hours a day.",
 "The museum's new exhibition shows pottery made by local artists over two centuries.",
 "Please remember to bring a pen, a notebook and your student card to the exam.",
 "The price of coffee rose slightly after a poor harvest in several countries.",
 "Mountains in the distance were covered with the first snow of the season.",
 "The committee approved the budget after a long discussion about road repairs.",
]
fluency = ["Tell me about {}.", "{} is"]
json.dump({"description": "Forms of one fact per entity, written for conceptkit-rocr (no download). fill_blank is the training form of the gradient-ascent baseline; paraphrase_1/2 are never used to compute any edit. Neighbours of an entity are the fill_blank facts of the other entities of its group.",
           "entities": E, "unrelated": unrelated, "fluency_prompts": fluency}, open(OUT, "w"), indent=1)
print(len(E))
