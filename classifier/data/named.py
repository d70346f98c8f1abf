"""Benign requests that name people: public figures in ordinary requests, as ``none``.

On real traffic the pii head flagged ordinary requests that carry a person's name: actors and
directors in movie searches, a singer, an author (16 of the teacher's 25 false flags on the held-out
real-traffic set). In the training data a name occurs almost only inside personal data (the
presidio templates put names next to addresses, phone numbers and ids), so a name alone reads as
pii. This module adds what the data set lacked, as ``none``:

- **public figures in ordinary requests**: a fixed list of well-known people by role (film,
  music, books, sport, science, history) in request templates of the kind routers see (search a
  catalogue, compare, summarise, write about their public work), some phrased as tool calls;
- **curated function-calling requests** (BFCL ``simple_python`` and ``irrelevance``, 640 user
  turns with places, works and a few names): real request shapes that are not the held-out BFCL
  *live* requests of the real-traffic evaluation set.

Each row's split comes from a seeded hash of its unit (a template-and-person block, a BFCL id) over
train/validation/calibration only, as for the other benign rows: test and ood stay as they were.
What a name *with* a private person's details is stays pii (the presidio rows); this module never
puts contact data, ids or private circumstances next to a name. Left out: private persons' names
in public roles (we have no list that is known to be public) and names in languages other than
English.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from classifier.data.benign import (
    BenignConfig,
    _rng,
    _row,
    _split_of,
    bfcl_user_turns,
    may_be_sensitive,
)
from classifier.data.normalize import dedup_key

log = logging.getLogger(__name__)

# Well-known public figures, by the kind of request they appear in. No full name here occurs in the
# held-out real-traffic evaluation set (checked when the list was written; four that did were
# replaced), so that set measures whether the lesson transfers to other people's names.
PUBLIC_FIGURES: dict[str, tuple[str, ...]] = {
    "film": (
        "Christopher Nolan", "Greta Gerwig", "Alfred Hitchcock", "Martin Scorsese", "Stanley Kubrick",
        "Meryl Streep", "Tom Hanks", "Denzel Washington", "Cate Blanchett", "Leonardo DiCaprio",
        "Hayao Miyazaki", "Akira Kurosawa", "Bong Joon-ho", "Kathryn Bigelow", "Sofia Coppola",
        "Scarlett Johansson", "Keanu Reeves", "Viola Davis", "Brad Pitt", "Emma Stone",
        "Denis Villeneuve", "Jane Campion", "Ridley Scott", "Jodie Foster", "Morgan Freeman",
    ),
    "music": (
        "Taylor Swift", "Beyonce", "Kendrick Lamar", "Adele", "Joni Mitchell", "Billie Eilish",
        "Bob Dylan", "Aretha Franklin", "David Bowie", "Freddie Mercury", "Miles Davis",
        "Ludwig van Beethoven", "Johann Sebastian Bach", "Wolfgang Amadeus Mozart", "Bad Bunny",
        "Dua Lipa", "Bruno Mars", "Lady Gaga", "Elton John", "Nina Simone",
    ),
    "books": (
        "Jane Austen", "Toni Morrison", "Haruki Murakami", "Gabriel Garcia Marquez", "George Orwell",
        "Virginia Woolf", "Chimamanda Ngozi Adichie", "Kazuo Ishiguro", "Margaret Atwood",
        "Ursula K. Le Guin", "J. R. R. Tolkien", "Agatha Christie", "Leo Tolstoy", "Fyodor Dostoevsky",
        "Mary Shelley", "Ernest Hemingway", "Stephen King", "Zadie Smith", "Terry Pratchett", "Octavia Butler",
    ),
    "sport": (
        "Serena Williams", "Roger Federer", "Lionel Messi", "Cristiano Ronaldo", "Kareem Abdul-Jabbar",
        "Michael Jordan", "Usain Bolt", "Simone Biles", "Rafael Nadal", "Novak Djokovic",
        "Stephen Curry", "Megan Rapinoe", "Lewis Hamilton", "Tiger Woods", "Babe Ruth",
        "Shohei Ohtani", "Wayne Gretzky", "Eliud Kipchoge", "Naomi Osaka", "Tom Brady",
    ),
    "science": (
        "Marie Curie", "Albert Einstein", "Isaac Newton", "Ada Lovelace", "Alan Turing",
        "Grace Hopper", "Richard Feynman", "Rosalind Franklin", "Charles Darwin", "Nikola Tesla",
        "Katherine Johnson", "Carl Sagan", "Emmy Noether", "Srinivasa Ramanujan", "Donald Knuth",
        "Claude Shannon", "John von Neumann", "Barbara Liskov", "Edsger Dijkstra", "Tim Berners-Lee",
    ),
    "history": (
        "Abraham Lincoln", "Nelson Mandela", "Winston Churchill", "Mahatma Gandhi", "Cleopatra",
        "Napoleon Bonaparte", "Julius Caesar", "Queen Victoria", "Martin Luther King Jr.",
        "Frederick Douglass", "Catherine the Great", "Genghis Khan", "Simon Bolivar", "Harriet Tubman",
        "Eleanor Roosevelt", "Franklin D. Roosevelt", "Joan of Arc", "Elizabeth I", "Ashoka", "Confucius",
    ),
}

# Request templates by role; {name} is a public figure of that role, {other} another one.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "film": (
        "Find movies directed by {name} that came out after 2005.",
        "Search the catalogue for films starring {name} and sort them by rating.",
        "What are the best movies with {name}? I liked the last one.",
        "Compare the visual style of {name} and {other} in a short essay.",
        "Write a 200-word review of a film by {name} for a student newspaper.",
        "Call find_movies with directed_by='{name}' and genre='drama'.",
        "Which awards has {name} won? List them by year.",
        "Give me three trivia questions about the career of {name}.",
    ),
    "music": (
        "Play the most popular song by {name}.",
        "Recommend five albums if I like {name} and {other}.",
        "Explain the influence of {name} on modern pop music.",
        "Find concerts by {name} in Berlin next month.",
        "Call play_song with artist='{name}' and shuffle=true.",
        "Write a short biography of {name} for a music-history class.",
        "What key is the most famous piece by {name} written in?",
        "Make a playlist that mixes {name} with similar artists.",
    ),
    "books": (
        "Summarise the themes of the best-known novel by {name}.",
        "Recommend books similar to those by {name}.",
        "Compare the narrative voice of {name} and {other}.",
        "Search the library for works by {name} published before 1950.",
        "Write discussion questions for a book club reading {name}.",
        "What did critics say about the first book by {name}?",
        "Call search_books with author='{name}' and limit=10.",
        "Translate a famous opening line by {name} into French and explain it.",
    ),
    "sport": (
        "How many titles has {name} won in total?",
        "Compare the career statistics of {name} and {other}.",
        "Get the season stats for {name} from the sports API.",
        "Write a motivational paragraph about the training habits of {name}.",
        "Call get_player_stats with player_name='{name}' and season=2019.",
        "Who was the better player at their peak, {name} or {other}? Argue both sides.",
        "Summarise the most famous match of {name} in three sentences.",
        "List the records held by {name}.",
    ),
    "science": (
        "Explain the main contribution of {name} to a high-school class.",
        "Write a timeline of the discoveries of {name}.",
        "Compare the work of {name} and {other} on computation or physics.",
        "What is the most cited paper by {name} and why does it matter?",
        "Prove the result that {name} is best known for, step by step.",
        "Write a short quiz about {name} with answers.",
        "How did the ideas of {name} influence modern computer science?",
        "Call get_biography with person='{name}' and fields=['education', 'awards'].",
    ),
    "history": (
        "Summarise the political legacy of {name}.",
        "Write an essay comparing {name} and {other} as leaders.",
        "What were the causes of the rise of {name}?",
        "Give me five primary sources about {name} for a history paper.",
        "Explain a famous speech or decision of {name} in simple words.",
        "Create a timeline of the life of {name}.",
        "Call search_archive with query='{name}' and era='all'.",
        "Was {name} popular in their own time? Give evidence.",
    ),
}

# Curated BFCL requests (not the *live* ones: those are the real-traffic evaluation set).
BFCL_CURATED = ("BFCL_v4_simple_python.json", "BFCL_v4_irrelevance.json")


def public_figure_prompts(seed: int, config: BenignConfig) -> list[dict[str, Any]]:
    """Ordinary requests naming public figures, as ``none``; ``config.named_prompts`` rows."""
    out: list[dict[str, Any]] = []
    roles = sorted(PUBLIC_FIGURES)
    for i in range(config.named_prompts):
        rng = _rng(seed, "named", i)
        role = roles[int(rng.integers(len(roles)))]
        people = PUBLIC_FIGURES[role]
        a, b = rng.choice(len(people), size=2, replace=False)
        templates = TEMPLATES[role]
        t = int(rng.integers(len(templates)))
        # the unit is a template and a person: a person's rows of one template share a split
        unit = f"named:{role}:{t}:{people[int(a)]}"
        text = templates[t].format(name=people[int(a)], other=people[int(b)])
        out.append(_row(text, "named_negative", f"named:{role}", _split_of(seed, unit), unit, None))
    return out


def curated_bfcl_prompts(root: Path, seed: int) -> list[dict[str, Any]]:
    """User turns of BFCL's curated single-turn requests, as ``none`` (skipped when a scan finds
    an e-mail, phone-like number or key-like token: those are not used as negatives)."""
    out: list[dict[str, Any]] = []
    for name in BFCL_CURATED:
        path = root / "bfcl" / name
        if not path.is_file():
            log.warning("%s not found: no curated BFCL negatives from it", path)
            continue
        for item, text in bfcl_user_turns(path):
            if not text or may_be_sensitive(text):
                continue
            unit = f"bfcl-curated:{item.get('id')}"
            out.append(_row(text, "bfcl_curated_negative", f"bfcl:{path.stem}", _split_of(seed, unit), unit, None))
    return out


def named_rows(root: Path, seed: int, config: BenignConfig,
               held_out: Sequence[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """(rows, counts): public-figure requests and curated BFCL turns, leaving out any text of the
    held-out real-traffic set (``held_out``): the evaluation set wins a collision, so it stays the
    same prompts as in builds without these rows."""
    if not config.enabled:
        return [], {}
    keys = {dedup_key(r["text"]) for r in held_out}
    named = [r for r in public_figure_prompts(seed, config) if dedup_key(r["text"]) not in keys]
    curated = [r for r in (curated_bfcl_prompts(root, seed) if config.curated_bfcl else [])
               if dedup_key(r["text"]) not in keys]
    return named + curated, {"named_public_figures": len(named), "bfcl_curated": len(curated)}
