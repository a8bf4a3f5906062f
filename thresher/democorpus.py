"""The project's own demo corpus: synthetic finetuning data in every supported layout, with planted problems.

``generate(out_dir, rows, seed)`` writes ``out_dir/files/*`` (chat, code and math records in eight
layouts, plus one empty file) and ``out_dir/ground_truth.jsonl``: one JSON object per planted item
(duplicate, near duplicate, PII, HTML junk, low-quality answer, wrong code, wrong arithmetic, malformed
line) saying where it is (``file``, ``line`` exactly as the ingest adapter numbers it), what it is
(``kind``) and which stage must reject it under which rule (``expect``; null when the record must
survive every stage). Records outside the ground truth are clean and must survive every stage.

Ground-truth kinds (expected stage/rule; extra fields):

- ``exact_duplicate`` (deduped/exact_duplicate; ``of`` {file, line} of the earlier original, ``variant``)
- ``near_duplicate`` (deduped/near_duplicate; ``of``, ``change``, ``jaccard`` of word 5-grams, >= 0.97)
- ``pii`` (kept, values redacted; ``entities`` [{type, value}], types as in ``PII_SENTENCES``),
  ``not_pii`` (kept, value untouched: a card-shaped number failing Luhn), ``html`` (kept, tags
  stripped), ``stray_tokens`` (kept, ``tokens`` removed), ``mojibake`` (kept; ``broken`` repaired to
  ``fixed``)
- ``empty_response``, ``truncated_response`` (``how``), ``refusal``, ``wrong_language`` (``language``),
  ``placeholder_text``, ``copies_instruction``: cleaned/<same name>
- ``wrong_solution`` (verified/code_tests_failed; ``bug``), ``calculation_error``
  (verified/math_calculation_error; ``annotation``: 1-based index of the wrong ``<<...>>``)
- ``malformed`` (raw/<rule>; ``defect``), ``empty_file`` (raw/empty_file, line 0)
- ``repetition`` (deduped/<rule>, one of ``REPETITION_PATTERNS``: duplicate_lines, duplicate_paragraphs,
  repeated_turns, duplicate_ngram_repetition; each breaks that rule of thresher.repetition at its default
  thresholds and no rule checked before it)
- ``boilerplate`` (kept; ``boilerplate_line``: the signature or disclaimer line that ends the assistant
  answer and that the deduped stage cuts; each line is confined to one file, in at least
  ``BoilerplateConfig().min_records`` records of it, so it is boilerplate within that file's batch)

Everything is built from word lists and templates in this module (no third-party text) with one
``random.Random(seed)``: the same arguments give byte-identical files. Texts are composed from many
slot-filled sentence templates so that unrelated records share few word 5-grams (dedup must not see
them as near duplicates), and clean texts are unambiguous English that ends with a full stop. A clean
answer states its subject and goal once and refers back to them after, never reuses a sentence template,
fact, or slot value, and has no one-sentence paragraph or template line of its own: the default
RepetitionFilter and BoilerplateRemover leave clean records alone.
"""

from __future__ import annotations

import json
import random
import re
import string
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from thresher.config import BoilerplateConfig

# ==================================================================================================
# Word lists and templates (all written for this module)

# fmt: off
AUDIENCES = [
    "a complete beginner", "a busy parent", "a retired teacher", "a college student",
    "a small business owner", "someone who works night shifts", "a curious teenager",
    "a person returning after a long break", "a volunteer at a community center", "a new employee",
    "an engineer from another field", "someone with very little free time", "a grandparent",
    "a freelance designer", "a nurse on rotating shifts",
]
# fmt: on

# fmt: off
CONTEXTS = [
    "I only have a few hours a week", "I am on a tight budget", "I tend to lose motivation quickly",
    "my schedule changes every week", "I tried once before and gave up", "I live in a small apartment",
    "I share the work with two roommates", "I want results before the end of the season",
    "my partner is skeptical about the whole idea", "I get overwhelmed by too much advice",
    "I learn best from concrete examples", "I am starting completely from scratch",
    "I already know the basics but feel stuck", "my last attempt went badly", "I travel a lot for work",
    "I prefer a slow and careful approach", "I want something I can keep doing for years",
]
# fmt: on

QUESTION_TEMPLATES = [
    "How do I get better at {subject}?",
    "What should {audience} know about {subject}?",
    "I want to improve at {subject}, but {context}. Where should I start?",
    "Can you give me practical tips for {subject}? {context_cap}.",
    "What is the best way to reach {goal} when it comes to {subject}?",
    "Why do I keep struggling to reach {goal} with {subject}?",
    "Is {thing} really necessary for {subject}, or can I manage without it?",
    "Explain {subject} to {audience} in plain language.",
    "What are the common mistakes with {subject}, and how can I avoid them?",
    "I have a few weeks to prepare. How should I plan my time for {subject}?",
    "My friend says {subject} is mostly about {thing}. Is that true?",
    "{context_cap}. What would you recommend for {subject}?",
    "Could you outline a simple plan for {subject} that {audience} could follow?",
    "What separates good results from great results in {subject}?",
    "How can I tell whether I am making progress with {subject}?",
    "Which habits matter most for {goal}?",
    "Give me an overview of {subject} and the first steps I should take.",
    "I keep reading conflicting advice about {subject}. What actually matters?",
]

OPENERS = [
    "Here is a practical way to think about {subject}.",
    "{subject_cap} is easier than it looks once a few principles are clear.",
    "Good question, because {subject} confuses a lot of people at first.",
    "There are a few things worth knowing about {subject} before you start.",
    "The short answer is that {goal} depends mostly on preparation and patience.",
    "Most of the progress with {subject} comes from a handful of simple habits.",
    "It makes sense to approach {subject} step by step rather than all at once.",
    "Let me walk you through how I would approach {subject} in your position.",
    "People often overcomplicate {subject}, so it helps to focus on the essentials.",
    "A sensible plan for {subject} starts with understanding what {goal} requires.",
    "You are asking the right question, since {subject} rewards a little planning.",
    "Think of {subject} as a skill you build gradually rather than a single task.",
]

CLOSERS = [
    "With a little patience, {subject} will start to feel routine.",
    "Start small, stay consistent, and adjust as you learn what works for you.",
    "I hope this gives you a clear place to start.",
    "If you keep these points in mind, {goal} is well within reach.",
    "Give it a few weeks and you will notice the difference.",
    "Take it one step at a time and enjoy the process.",
    "Feel free to come back with more specific questions as you go.",
    "The important thing is to begin and to learn from each attempt.",
    "None of this has to be perfect on the first try.",
    "Small improvements add up faster than most people expect.",
]

GENERIC_SENTENCES = [
    "Start by deciding what {goal} actually means for you, because that choice shapes every later step.",
    "Many people begin with {thing}, and it is a sensible first step when you are working on {subject}.",
    "A common mistake is to {mistake}, which usually costs more time than it saves.",
    "Try to {action} before you worry about the finer details.",
    "If you can only change one habit, {action}, and the difference shows up within {n} weeks.",
    "For {audience}, the most useful tool is often {thing}, not anything expensive or complicated.",
    "Keep short notes on what you tried with {subject} and what happened, since patterns appear after a few attempts.",
    "Experienced people rarely {mistake}; instead they {action} and adjust from there.",
    "It helps to set aside about {n} quiet minutes for {subject}, so you are not rushing the important parts.",
    "When results feel inconsistent, check whether you remembered to {action}.",
    "{thing_cap} is worth the small investment if you plan to stay with {subject} for a while.",
    "Remember that {goal} comes from steady repetition rather than one perfect attempt.",
    "Break the work into {n} smaller stages and finish each one before moving to the next.",
    "Ask someone with more experience to look at how you handle {subject}, because a second opinion catches blind spots.",
    "You do not need {thing} on the first day, although it becomes handy once you progress.",
    "Watch out for the urge to {mistake}, especially when you are tired or short on time.",
    "A good rule of thumb is to {action} and then review the outcome honestly.",
    "Over time you will notice that {goal} follows naturally when the basics are in place.",
    "Compare your current approach with what you did {n} months ago to see how far you have come.",
    "Reading one reliable guide on {subject} is better than skimming a dozen conflicting ones.",
    "Set a modest target for the next {n} days and write it somewhere you will see it.",
    "If something goes wrong, it is usually because people {mistake}, so that is the first thing to rule out.",
    "Pairing {thing} with a regular routine makes {goal} much more predictable.",
    "Do not be discouraged by slow early progress, since {subject} has a learning curve for everyone.",
    "Budget a little extra time at the start, because the first attempts with {thing} are always slower.",
    "Once you can {action} without thinking about it, move on to the harder parts of {subject}.",
    "Talking through your plan with {audience} can reveal assumptions you did not notice.",
    "Consistency beats intensity here: a little work on {subject} every day outperforms occasional marathons.",
    "Try a small experiment this week and {action}, then compare the result with your usual approach.",
    "Some guides insist on {thing}, but plenty of people reach {goal} with simpler means.",
    "Keep your setup simple so that starting a session of {subject} takes almost no effort.",
    "It is fine to skip the advanced techniques until the fundamentals of {subject} feel comfortable.",
]

FOLLOWUPS = [
    "Thanks. What would you change if {context}?",
    "That helps. How long does it usually take to see results with {subject}?",
    "Thanks, that is useful. Is {thing} worth buying early on?",
    "Great. What is the single most important habit for {goal}?",
    "Makes sense. How would you adapt this for {audience}?",
    "Thank you. What should I avoid doing in the first month?",
]

SYSTEM_PROMPTS = [
    "You are a friendly assistant who gives practical advice about {topic}.",
    "You are a patient tutor. Explain {topic} topics clearly and concisely.",
    "You are a helpful assistant. Answer questions about {topic} with concrete steps.",
    "You are an experienced mentor in {topic}. Keep answers practical.",
]


@dataclass(frozen=True)
class Topic:
    """Slot fillers and topic-specific sentences for one subject area."""

    name: str
    subjects: tuple[str, ...]
    things: tuple[str, ...]
    actions: tuple[str, ...]
    mistakes: tuple[str, ...]
    goals: tuple[str, ...]
    facts: tuple[str, ...]


def _t(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.strip().split("|") if part.strip())


TOPICS: tuple[Topic, ...] = (
    Topic(
        "cooking",
        _t("""weeknight dinners | baking sourdough bread | cooking rice on the stove | making a simple tomato sauce |
        roasting vegetables | meal planning for a family | cooking with cast iron | making soup from leftovers |
        seasoning food properly | baking cookies that stay soft | grilling fish | making fresh pasta |
        cooking beans from dry | preparing a holiday roast | knife skills | making curry from scratch |
        stir frying vegetables | baking a birthday cake | batch cooking for the week | cooking eggs"""),
        _t("""a sharp chef's knife | a heavy cast iron skillet | a digital kitchen scale | an instant read thermometer |
        a large cutting board | a Dutch oven | a sheet pan | a rice cooker | a stand mixer | a fine mesh sieve |
        a wooden spoon | a pressure cooker | a food processor | parchment paper | a good set of measuring cups"""),
        _t("""taste the food as you cook | preheat the pan properly | weigh your flour instead of using cups |
        salt the pasta water generously | let the meat rest before slicing | prepare every ingredient first |
        keep your knife sharp | cook onions slowly until they soften | read the recipe through once before starting |
        rest the dough in the fridge overnight | toast your spices in a dry pan | clean as you go"""),
        _t("""crowd the pan with too much food | skip preheating the oven | add all the salt at the end |
        open the oven door every few minutes | use a dull knife | stir the rice constantly |
        double a baking recipe without adjusting the timing | rush the browning step"""),
        _t("""a crisp golden crust | evenly cooked meals | dinners ready in half an hour | bread with an open crumb |
        balanced flavors | tender vegetables | a calm kitchen on busy evenings | less food waste"""),
        _t("""Salt draws moisture out of vegetables, which is why eggplant is often salted before frying. |
        Acid such as lemon juice or vinegar brightens a dish that tastes flat. |
        Browning happens faster in a dry pan because surface moisture has to evaporate first. |
        Resting dough lets the gluten relax, so it rolls out without springing back. |
        A thermometer removes the guesswork from roasting meat and poultry. |
        Fresh herbs keep longer when their stems stand in a glass of water. |
        Onions and garlic burn at different speeds, so garlic usually goes in later. |
        Baking is more sensitive to measurement than stovetop cooking."""),
    ),
    Topic(
        "travel",
        _t("""packing for a long trip | traveling on a budget | planning a road trip | finding cheap flights |
        traveling with small children | visiting a city for the first time | backpacking through mountains |
        avoiding jet lag | traveling alone | booking accommodation abroad | learning basic phrases before a trip |
        planning a train journey across several countries | staying healthy while traveling |
        keeping travel documents organized | visiting national parks | traveling during the off season"""),
        _t("""a lightweight carry on bag | a packing checklist | a universal power adapter | a reusable water bottle |
        an offline map app | a money belt | a small first aid kit | noise cancelling headphones |
        a rail pass | travel insurance | a compact umbrella | a foldable day pack | comfortable walking shoes"""),
        _t("""pack a day before you leave | make copies of your passport | check the entry requirements early |
        book the first night in advance | carry a small amount of local cash | walk around on the first afternoon |
        plan one rest day each week | download maps before you lose signal | drink water on long flights |
        learn how the local transport works | keep valuables in an inside pocket | leave room for spontaneity"""),
        _t("""overpack for every possible situation | book connections that are too tight | ignore the visa rules |
        plan every hour of the day | exchange money at the airport | forget to tell your bank about the trip |
        schedule a long drive on arrival day | leave booking until the last minute"""),
        _t("""a relaxed trip | lower travel costs | a smooth arrival | more time to explore | fewer surprises at the border |
        a lighter backpack | better sleep on the road | memorable experiences"""),
        _t("""Flights in the middle of the week are often cheaper than weekend departures. |
        Many museums offer reduced prices on one evening each week. |
        Jet lag tends to be worse when flying east than when flying west. |
        Local markets are a good way to eat well without spending much. |
        Trains often arrive in the center of a city, which saves the trip in from an airport. |
        Shoulder seasons combine reasonable weather with smaller crowds. |
        Hostels frequently have private rooms as well as shared dormitories."""),
    ),
    Topic(
        "programming",
        _t("""writing unit tests in Python | refactoring a large function | learning SQL joins | debugging a slow query |
        using Git branches | reading unfamiliar code | designing a small REST API | handling errors in Python |
        writing clear commit messages | learning a second programming language | reviewing pull requests |
        organizing a Python project | logging in production services | working with dates and time zones |
        writing documentation for a library | profiling slow Python code | using type hints | naming variables"""),
        _t("""a good debugger | a linter | a formatter | a test runner | a profiler | a version control system |
        a code review checklist | a continuous integration pipeline | an interactive shell | a small sample dataset |
        a notebook for experiments | a style guide | a package manager"""),
        _t("""write a failing test first | read the error message carefully | commit small changes often |
        name things after what they do | reproduce the bug before fixing it | keep functions short |
        profile before optimizing | read the documentation of the standard library | delete dead code |
        add logging around the slow parts | review your own diff before asking others | pin your dependencies"""),
        _t("""optimize code before measuring it | copy code without understanding it | ignore compiler warnings |
        write one huge commit at the end of the week | catch every exception silently | skip the tests when in a hurry |
        hard code configuration values | rename things without updating the documentation"""),
        _t("""readable code | fewer bugs in production | faster reviews | a test suite you can trust |
        predictable releases | code that newcomers understand | quicker debugging sessions | clean history"""),
        _t("""A test that fails for the right reason is more valuable than ten tests that always pass. |
        Most performance problems come from a small part of the program, which is why profiling matters. |
        Version control lets you experiment freely because every change can be undone. |
        Clear names often remove the need for comments. |
        Small pull requests get reviewed faster and more carefully than large ones. |
        Type hints help editors catch mistakes before the code ever runs. |
        Time zones are easier to handle when everything is stored in UTC."""),
    ),
    Topic(
        "finance",
        _t("""building an emergency fund | creating a monthly budget | paying off credit card debt |
        saving for retirement | understanding index funds | tracking daily expenses | negotiating a salary |
        planning a large purchase | reducing monthly subscriptions | saving for a first home |
        understanding compound interest | preparing for tax season | managing irregular income |
        teaching children about money | comparing savings accounts | planning for a career break"""),
        _t("""a simple spreadsheet | a budgeting app | an automatic transfer | a high yield savings account |
        a low cost index fund | a written financial plan | a separate account for bills | a list of fixed costs |
        a retirement calculator | a folder for receipts | a debt repayment schedule"""),
        _t("""pay yourself first | automate your savings | review your statements every month |
        pay off the most expensive debt first | keep a small buffer in your checking account |
        wait a day before large purchases | compare fees before choosing an account | write down every expense for a month |
        set a savings target for each goal | cancel subscriptions you no longer use | check your credit report once a year"""),
        _t("""carry a balance on a high interest card | invest money you need next month | chase last year's best fund |
        ignore small recurring fees | borrow to cover everyday spending | skip the emergency fund entirely |
        make financial decisions under pressure | assume your income will always rise"""),
        _t("""financial security | a steady savings habit | freedom from debt | a comfortable retirement |
        less money stress | a realistic budget | a healthy safety net | long term growth"""),
        _t("""Compound interest works in your favor when saving and against you when borrowing. |
        Fees that look small can take a large share of long term returns. |
        An emergency fund is usually kept in an account that is easy to access. |
        Diversification spreads risk across many companies instead of a few. |
        Automatic transfers make saving happen before the money can be spent. |
        Budgets work best when they are realistic rather than strict."""),
    ),
    Topic(
        "health",
        _t("""getting better sleep | starting a walking routine | eating more vegetables | reducing daily stress |
        drinking enough water | stretching after work | building a morning routine | cutting back on sugar |
        taking breaks from screens | strength training at home | keeping a regular bedtime | cooking healthier lunches |
        recovering after a long illness | improving posture at a desk | starting to run | meditating for beginners"""),
        _t("""a reusable water bottle | a simple step counter | comfortable running shoes | a yoga mat |
        a set of resistance bands | a sleep journal | an alarm that reminds you to move | a standing desk |
        a meal planning notebook | a foam roller | blackout curtains"""),
        _t("""go to bed at the same time every night | take a short walk after meals | keep fruit where you can see it |
        stretch for a few minutes each morning | drink a glass of water with every meal | put your phone away an hour before bed |
        start with light weights | schedule movement breaks during the workday | eat slowly and without distractions |
        talk to a doctor before making big changes | increase your activity gradually"""),
        _t("""change everything in the same week | skip sleep to fit in exercise | ignore pain that keeps returning |
        compare your progress with other people | rely on willpower alone | train hard every single day |
        eat lunch at the desk while working | drink coffee late in the afternoon"""),
        _t("""more energy during the day | deeper sleep | a stronger back | lower stress | steady habits |
        better focus at work | a healthier routine | fewer afternoon slumps"""),
        _t("""Most adults feel best with a regular sleep schedule, even on weekends. |
        Short walks spread over the day add up to a meaningful amount of activity. |
        Strength training supports healthy bones as people get older. |
        Hunger and thirst are easy to confuse, so a glass of water is a good first check. |
        Bright light in the morning helps set the body clock. |
        A doctor can give advice that fits your own health history."""),
    ),
    Topic(
        "history",
        _t("""the history of the printing press | the fall of the Roman Republic | the Industrial Revolution |
        the history of the Silk Road | ancient Egyptian agriculture | the history of public libraries |
        the spread of the railway | the history of the postal service | medieval trade fairs |
        the history of navigation at sea | the causes of the French Revolution | the history of timekeeping |
        the history of coffee houses | the development of early writing systems | the history of public health"""),
        _t("""a good general history book | a museum visit | a historical atlas | a timeline on the wall |
        a collection of primary sources | a local archive | a documentary series | a set of old maps |
        a history podcast | a notebook of key dates"""),
        _t("""read primary sources alongside modern summaries | build a simple timeline | compare several accounts of the same event |
        ask who wrote a source and why | connect events to the geography of the time | visit local museums |
        focus on causes rather than only dates | look at everyday life as well as famous leaders"""),
        _t("""judge the past only by modern standards | memorize dates without context | trust a single source |
        assume every change happened suddenly | ignore economic causes | confuse legend with evidence |
        skip over the lives of ordinary people | treat every chronicle as neutral"""),
        _t("""a deeper understanding of the past | better critical reading | a clear sense of cause and effect |
        a richer view of ordinary lives | confidence with primary sources | a memorable picture of the period"""),
        _t("""The printing press made books cheaper and helped ideas spread across Europe. |
        Trade routes carried technologies and religions as well as goods. |
        Railways changed how people understood distance and time. |
        Many historical records survive only because someone copied them by hand. |
        Historians compare sources because every account reflects its author's point of view. |
        Standard time zones were introduced largely to make railway timetables work."""),
    ),
    Topic(
        "science",
        _t("""how vaccines train the immune system | why the sky looks blue | how photosynthesis works |
        the basics of plate tectonics | how batteries store energy | why the seasons change | how sound travels |
        the water cycle | how telescopes collect light | the basics of genetics | how rainbows form |
        why ice floats on water | how magnets work | the life cycle of stars | how bees communicate |
        the chemistry of baking soda"""),
        _t("""a simple home experiment | a pair of binoculars | a magnifying glass | a notebook for observations |
        a good popular science book | a small microscope | a star chart | a kitchen scale | a thermometer |
        a weather station | a set of magnets"""),
        _t("""start with a clear question | write down a prediction before testing it | change one variable at a time |
        repeat the experiment a few times | record your observations carefully | look for simple explanations first |
        compare your results with a reliable reference | draw a diagram of what you expect"""),
        _t("""change several variables at once | trust one surprising result | confuse correlation with causation |
        skip writing down the results | ignore measurements that do not fit | assume the textbook diagram is the full story |
        draw conclusions from a single observation | forget to control the conditions"""),
        _t("""a solid intuition for the science | reliable experimental results | a clear mental model |
        confidence in explaining the idea | a habit of careful observation | fewer misconceptions"""),
        _t("""Sunlight contains many colors, and air scatters the shorter blue wavelengths more strongly. |
        Plants use light energy to turn water and carbon dioxide into sugar and oxygen. |
        The seasons come from the tilt of the Earth's axis, not from its distance to the Sun. |
        Ice floats because water expands as it freezes into a crystal structure. |
        Sound needs a medium such as air or water and cannot travel through empty space. |
        Good experiments change one thing at a time so that the cause of an effect is clear."""),
    ),
    Topic(
        "gardening",
        _t("""growing tomatoes on a balcony | starting seeds indoors | composting kitchen scraps | caring for houseplants |
        planting a small vegetable bed | growing herbs on a windowsill | pruning fruit trees | attracting bees to a garden |
        watering during a dry summer | improving heavy clay soil | growing strawberries in pots | planting spring bulbs |
        keeping slugs away from lettuce | planning a shade garden"""),
        _t("""a good pair of pruning shears | a watering can with a fine rose | a bag of compost | a soil test kit |
        a raised bed | a seed tray | a layer of mulch | a rain barrel | sturdy gardening gloves | a garden journal"""),
        _t("""water deeply but less often | check the soil before watering | add compost every spring |
        plant at the right depth | label your seedlings | rotate crops each year | mulch around young plants |
        give plants enough space to grow | remove weeds while they are small | harden off seedlings before planting out"""),
        _t("""water a little every day | plant everything in the same weekend | overfeed young plants |
        ignore the sunlight needs on the label | prune at the wrong time of year | leave diseased leaves on the ground |
        crowd seedlings together | forget to check for pests"""),
        _t("""a healthy harvest | strong roots | fewer pests | rich soil | a garden that looks good all season |
        plants that survive dry weeks | steady growth | a calm green space"""),
        _t("""Most vegetables need at least six hours of sunlight to grow well. |
        Mulch keeps moisture in the soil and suppresses weeds. |
        Compost improves both sandy and clay soils by adding organic matter. |
        Watering in the morning gives leaves time to dry before evening. |
        Many herbs become more flavorful when they are not overwatered. |
        Bees are attracted to groups of flowers of the same kind."""),
    ),
)

CODE_SNIPPETS = [
    "def {name}(items):\n    result = []\n    for item in items:\n        if item is not None:\n            result.append(item)\n    return result",
    'def {name}(path):\n    with open(path, encoding="utf-8") as handle:\n        return [line.strip() for line in handle if line.strip()]',
    'def {name}(values):\n    if not values:\n        raise ValueError("values must not be empty")\n    return sum(values) / len(values)',
    'import logging\n\nlogger = logging.getLogger(__name__)\n\n\ndef {name}(payload):\n    logger.info("processing payload with %d keys", len(payload))\n    return dict(sorted(payload.items()))',
    "def {name}(text):\n    words = text.split()\n    return {{word: words.count(word) for word in set(words)}}",
    "def test_{name}():\n    assert {name}([]) == []\n    assert {name}([None]) == []",
]

# fmt: off
SNIPPET_INTROS = [
    "Here is a small example that shows the idea:", "A minimal version looks like this:",
    "For instance, a helper along these lines keeps things clear:",
    "To make it concrete, consider this short function:",
]
# fmt: on

SNIPPET_OUTROS = [
    "Notice how the function does one job and has a name that says what it does.",
    "Keeping the example this small makes it easy to test and to change later.",
    "You can grow this step by step once the simple version works.",
    "Write a test for it before adding more features.",
]

# fmt: off
SNIPPET_NAMES = [
    "clean_items", "load_lines", "average", "normalize_payload", "count_words", "collect_values",
    "read_config", "summarize", "filter_missing", "parse_rows",
]
# fmt: on

# Words swapped into near duplicates (changed word) and phrases appended to them.
# fmt: off
SWAP_WORDS = [
    "notably", "really", "simply", "usually", "gently", "quickly", "carefully", "properly", "clearly",
    "honestly", "steadily", "calmly",
]
# fmt: on
# fmt: off
APPENDED_PHRASES = [
    "Good luck.", "Hope this helps.", "Enjoy the process.", "Have fun with it.", "Best of luck.",
]
# fmt: on

# --------------------------------------------------------------------------------------------------
# Other languages (whole conversations; cleaning must reject them as wrong_language)

FOREIGN: dict[str, dict[str, list[str]]] = {
    "es": {
        "slots.plato": [
            "la paella",
            "una sopa de verduras",
            "el arroz con pollo",
            "una tortilla de patatas",
            "el gazpacho",
            "unas lentejas caseras",
            "una ensalada de garbanzos",
            "el pan casero",
        ],
        "slots.lugar": [
            "Sevilla",
            "Valencia",
            "la costa del norte",
            "los Pirineos",
            "un pueblo pequeño",
            "Granada",
            "las islas Canarias",
            "la sierra de Madrid",
        ],
        "slots.cosa": [
            "una buena sartén",
            "un cuaderno de notas",
            "una mochila ligera",
            "un mapa de papel",
            "una olla grande",
            "un horario fijo",
            "un presupuesto sencillo",
        ],
        "questions": [
            "¿Cómo puedo preparar {plato} sin complicarme demasiado?",
            "Quiero viajar a {lugar} este verano. ¿Qué me recomiendas?",
            "¿Qué necesito saber antes de empezar a cocinar {plato} en casa?",
            "¿Cuál es la mejor manera de organizar un viaje a {lugar} con poco dinero?",
            "Tengo poco tiempo por las tardes. ¿Cómo puedo aprovecharlo mejor?",
            "¿Es necesario comprar {cosa} para empezar?",
            "Mi familia quiere comer de forma más sana. ¿Por dónde empezamos?",
        ],
        "sentences": [
            "Lo más importante es preparar todos los ingredientes antes de encender el fuego.",
            "Para {plato} conviene usar productos frescos y de temporada.",
            "Si viajas a {lugar}, intenta reservar el alojamiento con varias semanas de antelación.",
            "Muchas personas empiezan con {cosa} y luego van mejorando poco a poco.",
            "No hace falta gastar mucho dinero para obtener buenos resultados.",
            "Es mejor probar la comida mientras se cocina y ajustar la sal al final.",
            "En {lugar} la gente suele cenar bastante tarde, así que conviene adaptarse al horario local.",
            "Te recomiendo dedicar unos minutos cada día en lugar de hacerlo todo de una vez.",
            "Un error frecuente es querer cambiar demasiadas cosas al mismo tiempo.",
            "Apunta lo que funciona y lo que no, porque así aprenderás mucho más rápido.",
            "El transporte público en {lugar} es cómodo y bastante económico.",
            "Si tienes dudas, pregunta a alguien con más experiencia antes de empezar.",
            "Con {cosa} todo resulta mucho más sencillo y ordenado.",
            "Después de unas semanas notarás una diferencia clara en tus resultados.",
            "Para {plato} el fuego lento suele dar mejor sabor que el fuego fuerte.",
            "Lleva siempre agua y algo de comida cuando salgas a caminar por {lugar}.",
            "La paciencia es fundamental, sobre todo durante los primeros intentos.",
            "Busca recetas sencillas al principio y deja las más complicadas para más adelante.",
            "Los mercados locales son un buen lugar para comprar ingredientes de calidad.",
            "Organiza tu semana con antelación y así evitarás improvisar cada día.",
            "Muchos viajeros prefieren visitar {lugar} en primavera, cuando hace menos calor.",
            "No olvides descansar bien la noche anterior a un viaje largo.",
            "Si cocinas para varias personas, prepara un poco más de lo necesario.",
            "Al final lo que cuenta es disfrutar del proceso y aprender de cada experiencia.",
        ],
    },
    "de": {
        "slots.plato": [
            "einen Apfelkuchen",
            "eine Kartoffelsuppe",
            "ein einfaches Brot",
            "einen Gemüseeintopf",
            "Spätzle mit Käse",
            "einen Linsensalat",
            "eine Gemüsepfanne",
            "einen Hefezopf",
        ],
        "slots.lugar": [
            "Hamburg",
            "die Alpen",
            "den Schwarzwald",
            "Berlin",
            "die Ostseeküste",
            "Wien",
            "ein kleines Dorf in Bayern",
            "die Sächsische Schweiz",
        ],
        "slots.cosa": [
            "eine gute Pfanne",
            "ein Notizbuch",
            "einen leichten Rucksack",
            "eine Wanderkarte",
            "einen großen Topf",
            "einen festen Wochenplan",
            "ein einfaches Haushaltsbuch",
        ],
        "questions": [
            "Wie kann ich {plato} backen oder kochen, ohne dass es zu kompliziert wird?",
            "Ich möchte im Sommer nach {lugar} reisen. Was empfiehlst du mir?",
            "Was sollte ich wissen, bevor ich zu Hause {plato} zubereite?",
            "Wie plane ich eine günstige Reise nach {lugar}?",
            "Ich habe abends wenig Zeit. Wie kann ich sie besser nutzen?",
            "Brauche ich wirklich {cosa}, um anzufangen?",
            "Meine Familie möchte sich gesünder ernähren. Womit sollen wir beginnen?",
        ],
        "sentences": [
            "Am wichtigsten ist es, alle Zutaten vorzubereiten, bevor du den Herd einschaltest.",
            "Für {plato} solltest du frische Zutaten aus der Saison verwenden.",
            "Wenn du nach {lugar} fährst, buche die Unterkunft am besten einige Wochen im Voraus.",
            "Viele Leute beginnen mit {cosa} und verbessern sich dann Schritt für Schritt.",
            "Man muss nicht viel Geld ausgeben, um gute Ergebnisse zu erzielen.",
            "Probiere das Essen während des Kochens und würze erst am Ende nach.",
            "In {lugar} gibt es viele schöne Wege, die auch für Anfänger geeignet sind.",
            "Ich empfehle dir, jeden Tag ein paar Minuten zu üben, statt alles auf einmal zu machen.",
            "Ein häufiger Fehler ist es, zu viele Dinge gleichzeitig ändern zu wollen.",
            "Schreib dir auf, was funktioniert und was nicht, denn so lernst du viel schneller.",
            "Die öffentlichen Verkehrsmittel in {lugar} sind bequem und recht günstig.",
            "Wenn du unsicher bist, frag vorher jemanden mit mehr Erfahrung.",
            "Mit {cosa} wird alles viel einfacher und übersichtlicher.",
            "Nach einigen Wochen wirst du einen deutlichen Unterschied bemerken.",
            "Für {plato} ist eine niedrige Temperatur oft besser als große Hitze.",
            "Nimm immer Wasser und etwas zu essen mit, wenn du in {lugar} wandern gehst.",
            "Geduld ist entscheidend, vor allem bei den ersten Versuchen.",
            "Such dir am Anfang einfache Rezepte und heb die schwierigen für später auf.",
            "Auf dem Wochenmarkt findest du meistens sehr gute Zutaten.",
            "Plane deine Woche im Voraus, dann musst du nicht jeden Tag improvisieren.",
            "Viele Reisende besuchen {lugar} lieber im Frühling, wenn es noch nicht so heiß ist.",
            "Vergiss nicht, dich vor einer langen Reise gut auszuschlafen.",
            "Wenn du für mehrere Personen kochst, bereite lieber etwas mehr vor.",
            "Am Ende zählt vor allem, dass dir die Sache Freude macht und du dabei etwas lernst.",
        ],
    },
    "fr": {
        "slots.plato": [
            "une quiche aux légumes",
            "une soupe à l'oignon",
            "un pain maison",
            "un gratin de pommes de terre",
            "une ratatouille",
            "une tarte aux pommes",
            "une salade de lentilles",
            "un pot-au-feu",
        ],
        "slots.lugar": [
            "Lyon",
            "la Bretagne",
            "les Alpes",
            "Marseille",
            "la vallée de la Loire",
            "Bordeaux",
            "un petit village de Provence",
            "la côte normande",
        ],
        "slots.cosa": [
            "une bonne poêle",
            "un carnet de notes",
            "un sac à dos léger",
            "une carte de randonnée",
            "une grande marmite",
            "un planning hebdomadaire",
            "un budget simple",
        ],
        "questions": [
            "Comment préparer {plato} sans que ce soit trop compliqué ?",
            "Je voudrais partir à {lugar} cet été. Qu'est-ce que tu me conseilles ?",
            "Que faut-il savoir avant de cuisiner {plato} à la maison ?",
            "Comment organiser un voyage pas cher vers {lugar} ?",
            "J'ai peu de temps le soir. Comment mieux l'utiliser ?",
            "Est-ce que j'ai vraiment besoin d'acheter {cosa} pour commencer ?",
            "Ma famille veut manger plus sainement. Par où commencer ?",
        ],
        "sentences": [
            "Le plus important est de préparer tous les ingrédients avant d'allumer le feu.",
            "Pour {plato}, il vaut mieux utiliser des produits frais et de saison.",
            "Si tu pars à {lugar}, essaie de réserver ton logement plusieurs semaines à l'avance.",
            "Beaucoup de gens commencent avec {cosa} et progressent ensuite petit à petit.",
            "Il n'est pas nécessaire de dépenser beaucoup d'argent pour obtenir de bons résultats.",
            "Goûte le plat pendant la cuisson et ajuste l'assaisonnement à la fin.",
            "À {lugar}, il y a de nombreux sentiers agréables, même pour les débutants.",
            "Je te conseille d'y consacrer quelques minutes chaque jour plutôt que tout faire d'un coup.",
            "Une erreur fréquente consiste à vouloir changer trop de choses en même temps.",
            "Note ce qui fonctionne et ce qui ne marche pas, car tu apprendras beaucoup plus vite.",
            "Les transports en commun à {lugar} sont pratiques et assez bon marché.",
            "Si tu as un doute, demande conseil à quelqu'un de plus expérimenté avant de commencer.",
            "Avec {cosa}, tout devient beaucoup plus simple et mieux organisé.",
            "Au bout de quelques semaines, tu verras une vraie différence.",
            "Pour {plato}, une cuisson douce donne souvent plus de goût qu'un feu trop vif.",
            "Emporte toujours de l'eau et un petit en-cas quand tu pars marcher vers {lugar}.",
            "La patience est essentielle, surtout pendant les premiers essais.",
            "Choisis des recettes simples au début et garde les plus difficiles pour plus tard.",
            "Les marchés locaux sont parfaits pour acheter des ingrédients de qualité.",
            "Organise ta semaine à l'avance pour éviter d'improviser tous les jours.",
            "Beaucoup de voyageurs préfèrent visiter {lugar} au printemps, quand il fait moins chaud.",
            "N'oublie pas de bien dormir la nuit avant un long voyage.",
            "Si tu cuisines pour plusieurs personnes, prévois un peu plus que nécessaire.",
            "Au final, ce qui compte, c'est de prendre plaisir et d'apprendre à chaque expérience.",
        ],
    },
}

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I can't help with that request.",
    "I'm sorry, but I cannot assist with {subject} in the way you describe.",
    "As an AI language model, I cannot provide personal opinions about {subject}.",
    "As an AI language model, I cannot give advice on that. Please consult a qualified professional.",
    "Sorry, but I can't assist with that request.",
    "I cannot help with that request, because it falls outside what I am able to do.",
    "I am unable to answer that question about {subject}.",
]

# Answers that are template slots or filler nobody replaced (cleaned/placeholder_text).
PLACEHOLDER_ANSWERS = [
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore.",
    "[Insert your answer here]",
    "TODO: write the answer to this question.",
    "Dear [Recipient Name], thank you for your message about {subject}. Kind regards, [Your Name]",
    "Here is a short overview of {subject}: <insert overview here>.",
]
# Ways an answer only echoes its question (cleaned/copies_instruction).
ECHO_TEMPLATES = ["{question}", "Question: {question}", "You asked: {question}"]
# Chat-template tokens that exporters leave inside message text (kept; cleaning removes them).
# (where, token): "question" wraps the user turn, "end" follows the answer, "start" precedes it.
STRAY_TOKENS = [
    ("end", "<|im_end|>"),
    ("end", "<|eot_id|>"),
    ("end", "</s>"),
    ("end", "<|endoftext|>"),
    ("start", "<s>"),
    ("question", "[INST]"),
]
# Sentences with non-ASCII characters; the corpus writes them as UTF-8 bytes misread as Windows-1252
# (mojibake: "café" becomes "cafÃ©"), and cleaning must restore them.
MOJIBAKE_SENTENCES = [
    "We talked about it at the café near the station.",
    "The résumé I sent last week explains my background.",
    "It’s the third time I have asked about this.",
    "My naïve first attempt did not work at all.",
    "The price was 20 € including delivery.",
    "The crème brûlée at the hotel was far too sweet.",
]

# Unfinished final sentences for truncated answers: cut right after a function word.
# fmt: off
TRUNCATION_STUBS = [
    "The next thing to consider is the", "Another useful habit is to keep track of",
    "After that, you can move on to", "It is also worth remembering that the",
    "Finally, make sure that you have enough time for", "One more point concerns the choice of",
    "If that works well, the following step is to compare the",
]
# fmt: on

# --------------------------------------------------------------------------------------------------
# PII values (all fictional)

# fmt: off
FIRST_NAMES = [
    "Alice", "Ben", "Carla", "Daniel", "Emma", "Farid", "Grace", "Hiro", "Ines", "Jonas", "Kira", "Liam",
    "Maya", "Noah", "Olga", "Pablo", "Quinn", "Rosa", "Sami", "Tara", "Umar", "Vera", "Wes", "Yara", "Zoe",
    "Amir", "Bea", "Chen", "Dora", "Eli", "Fatima", "Gus", "Hana", "Ivan", "Jade", "Kofi", "Lena", "Marco",
    "Nina", "Omar", "Priya", "Raj", "Sofia", "Theo", "Uma", "Victor", "Wanda", "Xavier", "Yusuf", "Zara",
]
# fmt: on
# fmt: off
LAST_NAMES = [
    "Smith", "Garcia", "Müller", "Rossi", "Nguyen", "Kowalski", "Okafor", "Tanaka", "Dubois", "Larsen",
    "Silva", "Haddad", "Novak", "Brennan", "Iyer", "Moreau", "Fischer", "Costa", "Lindqvist", "Park",
]
# fmt: on
# fmt: off
STREET_NAMES = [
    "Maple", "Oak", "Cedar", "Willow", "Harbor", "Mill", "Church", "Station", "Orchard", "Meadow",
    "Highland", "Lakeview", "Chestnut", "Riverside", "Sunset", "Hawthorn", "Juniper", "Birch",
]
# fmt: on
# Area codes in service (a number in an unassigned one is no phone number: libphonenumber says so).
US_AREA_CODES = ["206", "212", "303", "312", "415", "503", "512", "617", "702", "713", "808", "919"]
STREET_SUFFIXES = ["Street", "Avenue", "Road", "Lane", "Drive", "Boulevard", "Court", "Place"]
# fmt: off
MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
    "November", "December",
]
# fmt: on
# fmt: off
EMAIL_DOMAINS = [
    "example.com", "example.org", "mail.example.net", "demo-mail.com", "inbox.example.io",
]
# fmt: on

PII_SENTENCES = {
    "email": [
        "You can reach me at {value} if you need more details.",
        "Please send the summary to {value} when you have a moment.",
        "My work address is {value}, in case that matters.",
    ],
    "phone": [
        "My phone number is {value} if a call is easier.",
        "Call me on {value} after six in the evening.",
        "The office line is {value} and someone answers on weekdays.",
    ],
    "card_number": [
        "I paid with the card {value} and the charge still shows as pending.",
        "The booking used card number {value}, so please keep that in mind.",
    ],
    "ip_address": [
        "The server at {value} stopped responding this morning.",
        "Our router is configured with the address {value} right now.",
    ],
    "api_key": [
        "Here is the key I am using: {value} and it keeps getting rejected.",
        "The deployment reads the token {value} from an environment variable.",
    ],
    "iban": [
        "Please wire the deposit to the account {value} before Friday.",
        "My bank account for the refund is {value}, held in my own name.",
    ],
    "us_ssn": [
        "The form asks for my social security number, which is {value}.",
        "My SSN is {value} and the clerk said it was missing from the file.",
    ],
    "url_credentials": [
        "The script connects with https://{value}@db.example.com:5432/orders and fails.",
        "Our mirror is ftp://{value}@files.example.org/pub/ but the login is refused.",
    ],
    "person": [
        "My name is {value} and I am new to this.",
        "Please address the reply to my colleague {value}.",
        "I am writing on behalf of {value}, who asked me to check.",
    ],
    "street_address": [
        "I live at {value} and the parcel never arrived.",
        "Please send the documents to {value} by post.",
    ],
    "date_of_birth": [
        "I was born on {value}, if the age limit matters.",
        "My date of birth is {value}, as it says on the form.",
    ],
}
NOT_PII_SENTENCES = [
    "The order reference printed on the receipt is {value}, which the shop asked me to keep.",
    "The tracking code on the parcel is {value}, according to the label.",
]


# ==================================================================================================
# Public API


@dataclass(frozen=True)
class DemoCorpus:
    """What ``generate`` wrote: data files (sorted by name, the order they are ingested in) and ground truth."""

    root: Path
    files: list[Path]
    ground_truth: Path
    # Candidate records written per file (malformed lines included; the empty file counts as one).
    records: dict[str, int] = field(default_factory=dict)
    # Planted items per ground-truth kind.
    planted: dict[str, int] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return sum(self.records.values())


@dataclass(frozen=True)
class GroundTruth:
    """The planted items of a demo corpus, as written to ``ground_truth.jsonl``.

    Each item has ``file``, ``line``, ``kind`` and ``expect`` (``{"stage", "rule"}``, or None when the
    record must survive every stage), plus kind-specific fields (``of``, ``jaccard``, ``entities``, ...).
    """

    items: list[dict[str, Any]]

    @classmethod
    def load(cls, path: Path) -> GroundTruth:
        with Path(path).open(encoding="utf-8") as handle:
            return cls([json.loads(line) for line in handle if line.strip()])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def of_kind(self, kind: str) -> list[dict[str, Any]]:
        return [item for item in self.items if item["kind"] == kind]

    @property
    def rejected(self) -> list[dict[str, Any]]:
        """Items some stage must reject."""
        return [item for item in self.items if item["expect"] is not None]

    @property
    def kept(self) -> list[dict[str, Any]]:
        """Planted items that must survive every stage (PII is redacted, HTML stripped, not dropped)."""
        return [item for item in self.items if item["expect"] is None]

    def expected_rejections(self) -> pl.DataFrame:
        """One row per expected ledger entry: ``source_file``, ``source_line``, ``stage``, ``rule``, ``kind``."""
        rows = self.rejected
        return pl.DataFrame(
            {
                "source_file": [r["file"] for r in rows],
                "source_line": [r["line"] for r in rows],
                "stage": [r["expect"]["stage"] for r in rows],
                "rule": [r["expect"]["rule"] for r in rows],
                "kind": [r["kind"] for r in rows],
            },
            schema={
                "source_file": pl.String,
                "source_line": pl.Int64,
                "stage": pl.String,
                "rule": pl.String,
                "kind": pl.String,
            },
        )

    def locations(self) -> dict[tuple[str, int], dict[str, Any]]:
        """Items by ``(file, line)``."""
        return {(item["file"], item["line"]): item for item in self.items}


def load_ground_truth(path: Path) -> GroundTruth:
    """Read ``ground_truth.jsonl`` (see ``GroundTruth``)."""
    return GroundTruth.load(path)


# ==================================================================================================
# Code problems (HumanEval and MBPP shapes)

# Local variable names substituted for $v in the bodies.
# fmt: off
RESULT_NAMES = [
    "result", "total", "acc", "out", "answer", "value",
]
# fmt: on
# fmt: off
WORDS = [
    "apple", "river", "stone", "orange", "window", "echo", "table", "island", "garden", "umbrella",
    "pencil", "ocean", "tiger", "yellow", "engine", "forest", "idea", "cloud", "market", "anchor", "bridge",
    "candle", "desert", "eagle", "feather", "glacier", "harbor", "ink", "jungle", "kettle", "lemon",
    "meadow", "needle", "owl", "planet", "quartz", "rocket", "saddle", "tunnel", "violin",
]
# fmt: on


def _ints(rng: random.Random, low: int = 0, high: int = 60, size: tuple[int, int] = (5, 9)) -> list[int]:
    return [rng.randint(low, high) for _ in range(rng.randint(*size))]


def _words(rng: random.Random, size: tuple[int, int] = (3, 6)) -> list[str]:
    return [rng.choice(WORDS) for _ in range(rng.randint(*size))]


@dataclass(frozen=True)
class CodeTemplate:
    """A small function problem: names, wording, a correct body, buggy bodies and an input generator.

    Bodies are ``string.Template`` text indented by four spaces, with ``$a``/``$b``/``$c`` for the
    parameters and ``$v`` for a local name. ``cases(rng)`` returns one argument tuple.
    """

    key: str
    names: tuple[str, ...]
    params: tuple[tuple[str, ...], ...]
    docs: tuple[str, ...]  # HumanEval docstring first sentence ($a, $b, $c allowed)
    tasks: tuple[str, ...]  # MBPP task text ("Write a function to ...")
    correct: str
    bugs: tuple[tuple[str, str], ...]  # (bug kind, body)
    cases: Callable[[random.Random], tuple[Any, ...]]


def _above_case(rng: random.Random) -> tuple[Any, ...]:
    nums = _ints(rng)
    return nums, rng.choice([*nums, rng.randint(0, 60)])


def _filter_case(rng: random.Random) -> tuple[Any, ...]:
    words = _words(rng, (4, 7))
    return words, len(rng.choice(words))


def _clamp_case(rng: random.Random) -> tuple[Any, ...]:
    low = rng.randint(5, 20)
    return _ints(rng, 0, 50), low, low + rng.randint(10, 25)


def _palindrome_case(rng: random.Random) -> tuple[Any, ...]:
    word = "".join(rng.choice("abcdefgmnoprst") for _ in range(rng.randint(2, 5)))
    kind = rng.random()
    if kind < 0.4:
        text = word + word[::-1]
    elif kind < 0.7:
        text = word + rng.choice("xyz") + word[::-1]
        text = rng.choice("uvw") + text[1:]  # first character breaks the symmetry
    else:
        text = word + rng.choice("xyz") + word[::-1]
    return (text.capitalize() if rng.random() < 0.5 else text,)


CODE_TEMPLATES: tuple[CodeTemplate, ...] = (
    CodeTemplate(
        "sum_evens",
        ("sum_evens", "sum_of_even_numbers", "even_total", "add_even_values"),
        (("nums", "numbers", "values", "items"),),
        (
            "Return the sum of the even numbers in $a.",
            "Add up every even integer in $a and return the total.",
        ),
        (
            "Write a function to find the sum of all even numbers in a list.",
            "Write a python function to add up the even integers of a given list.",
        ),
        "    $v = 0\n    for n in $a:\n        if n % 2 == 0:\n            $v += n\n    return $v\n",
        (
            (
                "flipped_comparison",
                "    $v = 0\n    for n in $a:\n        if n % 2 != 0:\n            $v += n\n    return $v\n",
            ),
            (
                "off_by_one",
                "    $v = 0\n    for n in $a[1:]:\n        if n % 2 == 0:\n            $v += n\n    return $v\n",
            ),
        ),
        lambda rng: (_ints(rng),),
    ),
    CodeTemplate(
        "count_vowels",
        ("count_vowels", "vowel_count", "number_of_vowels", "tally_vowels"),
        (("text", "s", "word", "phrase"),),
        (
            "Return how many vowels (a, e, i, o, u, in either case) appear in $a.",
            "Count the vowels of $a, ignoring case.",
        ),
        (
            "Write a function to count the vowels in a given string.",
            "Write a python function to count how many vowels a string contains.",
        ),
        '    $v = 0\n    for ch in $a.lower():\n        if ch in "aeiou":\n            $v += 1\n    return $v\n',
        (
            (
                "off_by_one",
                '    $v = 0\n    for ch in $a.lower()[:-1]:\n        if ch in "aeiou":\n            $v += 1\n    return $v\n',
            ),
            (
                "flipped_comparison",
                '    $v = 0\n    for ch in $a.lower():\n        if ch not in "aeiou":\n            $v += 1\n    return $v\n',
            ),
        ),
        lambda rng: (" ".join(_words(rng)),),
    ),
    CodeTemplate(
        "reverse_words",
        ("reverse_words", "reverse_word_order", "words_backwards", "flip_sentence"),
        (("sentence", "text", "line", "phrase"),),
        ("Return $a with the order of its words reversed.", "Reverse the order of the words in $a."),
        (
            "Write a function to reverse the order of words in a sentence.",
            "Write a python function that returns a sentence with its words in reverse order.",
        ),
        '    $v = $a.split()\n    return " ".join(reversed($v))\n',
        (("off_by_one", '    $v = $a.split()\n    return " ".join(reversed($v[1:]))\n'),),
        lambda rng: (" ".join(_words(rng)),),
    ),
    CodeTemplate(
        "fizzbuzz_range",
        ("fizzbuzz_range", "fizz_buzz_between", "fizzbuzz_words", "play_fizzbuzz"),
        (("start", "first", "begin", "lo"), ("stop", "last", "end", "hi")),
        (
            "Return the FizzBuzz words for the numbers from $a to $b inclusive.",
            "Build the FizzBuzz list for every integer between $a and $b, both included.",
        ),
        (
            "Write a function to return the fizzbuzz words for all numbers in a closed range.",
            "Write a python function that produces the FizzBuzz strings from start to stop inclusive.",
        ),
        '    $v = []\n    for i in range($a, $b + 1):\n        if i % 15 == 0:\n            $v.append("FizzBuzz")\n'
        '        elif i % 3 == 0:\n            $v.append("Fizz")\n        elif i % 5 == 0:\n'
        '            $v.append("Buzz")\n        else:\n            $v.append(str(i))\n    return $v\n',
        (
            (
                "off_by_one",
                '    $v = []\n    for i in range($a, $b):\n        if i % 15 == 0:\n            $v.append("FizzBuzz")\n'
                '        elif i % 3 == 0:\n            $v.append("Fizz")\n        elif i % 5 == 0:\n'
                '            $v.append("Buzz")\n        else:\n            $v.append(str(i))\n    return $v\n',
            ),
        ),
        lambda rng: (lambda a: (a, a + rng.randint(2, 5)))(rng.randint(1, 900)),
    ),
    CodeTemplate(
        "count_above",
        ("count_above", "count_greater_than", "how_many_above", "above_threshold"),
        (("nums", "values", "scores", "readings"), ("threshold", "limit", "cutoff", "bound")),
        (
            "Return how many elements of $a are strictly greater than $b.",
            "Count the values in $a that exceed $b.",
        ),
        (
            "Write a function to count the elements of a list that are greater than a given number.",
            "Write a python function to count how many numbers in a list exceed a threshold.",
        ),
        "    $v = 0\n    for x in $a:\n        if x > $b:\n            $v += 1\n    return $v\n",
        (
            (
                "flipped_comparison",
                "    $v = 0\n    for x in $a:\n        if x < $b:\n            $v += 1\n    return $v\n",
            ),
            (
                "off_by_one",
                "    $v = 0\n    for x in $a:\n        if x >= $b:\n            $v += 1\n    return $v\n",
            ),
        ),
        _above_case,
    ),
    CodeTemplate(
        "running_total",
        ("running_total", "cumulative_sums", "prefix_sums", "running_sum"),
        (("nums", "values", "amounts", "steps"),),
        (
            "Return the running totals of $a: element i is the sum of the first i + 1 values.",
            "Compute the cumulative sums of $a as a new list.",
        ),
        (
            "Write a function to compute the cumulative sum of a list of numbers.",
            "Write a python function to return the running totals of a list.",
        ),
        "    $v = []\n    acc = 0\n    for x in $a:\n        acc += x\n        $v.append(acc)\n    return $v\n",
        (
            (
                "off_by_one",
                "    $v = []\n    acc = 0\n    for x in $a[:-1]:\n        acc += x\n        $v.append(acc)\n    return $v\n",
            ),
        ),
        lambda rng: (_ints(rng, 0, 30, (3, 7)),),
    ),
    CodeTemplate(
        "is_palindrome",
        ("is_palindrome", "reads_same_backwards", "palindrome_check", "check_palindrome"),
        (("text", "s", "word", "candidate"),),
        (
            "Return True if $a reads the same forwards and backwards, ignoring case.",
            "Check whether $a is a palindrome when upper and lower case are treated alike.",
        ),
        (
            "Write a function to check whether a string is a palindrome, ignoring case.",
            "Write a python function to test if a word reads the same in both directions.",
        ),
        "    $v = $a.lower()\n    for i in range(len($v) // 2):\n        if $v[i] != $v[-1 - i]:\n"
        "            return False\n    return True\n",
        (
            (
                "off_by_one",
                "    $v = $a.lower()\n    for i in range(1, len($v) // 2):\n        if $v[i] != $v[-1 - i]:\n"
                "            return False\n    return True\n",
            ),
            (
                "flipped_comparison",
                "    $v = $a.lower()\n    for i in range(len($v) // 2):\n        if $v[i] == $v[-1 - i]:\n"
                "            return False\n    return True\n",
            ),
        ),
        _palindrome_case,
    ),
    CodeTemplate(
        "product_of_list",
        ("product_of_list", "multiply_all", "list_product", "product"),
        (("nums", "factors", "values", "items"),),
        (
            "Return the product of all numbers in $a (1 for an empty list).",
            "Multiply the elements of $a together and return the result.",
        ),
        (
            "Write a function to multiply all the numbers in a list.",
            "Write a python function to find the product of the elements of a list.",
        ),
        "    $v = 1\n    for x in $a:\n        $v *= x\n    return $v\n",
        (("off_by_one", "    $v = 1\n    for x in $a[1:]:\n        $v *= x\n    return $v\n"),),
        lambda rng: (_ints(rng, 1, 9, (3, 6)),),
    ),
    CodeTemplate(
        "digit_sum",
        ("digit_sum", "sum_of_digits", "add_digits", "digits_total"),
        (("n", "number", "num", "value"),),
        (
            "Return the sum of the decimal digits of the non-negative integer $a.",
            "Add together the digits of $a.",
        ),
        (
            "Write a function to find the sum of the digits of a non-negative integer.",
            "Write a python function to add up the digits of a number.",
        ),
        "    $v = 0\n    while $a > 0:\n        $v += $a % 10\n        $a //= 10\n    return $v\n",
        (
            (
                "off_by_one",
                "    $v = 0\n    while $a > 9:\n        $v += $a % 10\n        $a //= 10\n    return $v\n",
            ),
        ),
        lambda rng: (rng.randint(1, 99999),),
    ),
    CodeTemplate(
        "filter_long_words",
        ("filter_long_words", "long_words", "words_at_least", "keep_long_words"),
        (("words", "tokens", "items", "vocab"), ("min_len", "minimum", "size", "length")),
        (
            "Return the words of $a that have at least $b characters, in their original order.",
            "Keep only the entries of $a whose length is $b or more.",
        ),
        (
            "Write a function to filter the words of a list that have at least n characters.",
            "Write a python function to keep the words whose length is at least a given minimum.",
        ),
        "    return [w for w in $a if len(w) >= $b]\n",
        (
            ("off_by_one", "    return [w for w in $a if len(w) > $b]\n"),
            ("flipped_comparison", "    return [w for w in $a if len(w) <= $b]\n"),
        ),
        _filter_case,
    ),
    CodeTemplate(
        "count_occurrences",
        ("count_occurrences", "count_matches", "occurrences_of", "tally"),
        (("items", "values", "seq", "data"), ("target", "needle", "wanted", "item")),
        ("Return how many times $b occurs in $a.", "Count the elements of $a equal to $b."),
        (
            "Write a function to count the occurrences of a value in a list.",
            "Write a python function to count how often an element appears in a list.",
        ),
        "    $v = 0\n    for x in $a:\n        if x == $b:\n            $v += 1\n    return $v\n",
        (
            (
                "flipped_comparison",
                "    $v = 0\n    for x in $a:\n        if x != $b:\n            $v += 1\n    return $v\n",
            ),
            (
                "off_by_one",
                "    $v = 0\n    for x in $a[1:]:\n        if x == $b:\n            $v += 1\n    return $v\n",
            ),
        ),
        lambda rng: (lambda xs: (xs, rng.choice(xs)))(_ints(rng, 0, 6, (6, 10))),
    ),
    CodeTemplate(
        "clamp_values",
        ("clamp_values", "clip_list", "bound_values", "limit_range"),
        (
            ("nums", "values", "samples", "levels"),
            ("low", "lo", "floor", "minimum"),
            ("high", "hi", "ceiling", "maximum"),
        ),
        (
            "Return a copy of $a where values below $b become $b and values above $c become $c.",
            "Clamp every element of $a into the range from $b to $c.",
        ),
        (
            "Write a function to clamp every number of a list into a given range.",
            "Write a python function to clip the values of a list to lower and upper bounds.",
        ),
        "    $v = []\n    for x in $a:\n        if x < $b:\n            $v.append($b)\n        elif x > $c:\n"
        "            $v.append($c)\n        else:\n            $v.append(x)\n    return $v\n",
        (
            (
                "flipped_comparison",
                "    $v = []\n    for x in $a:\n        if x > $b:\n            $v.append($b)\n        elif x > $c:\n"
                "            $v.append($c)\n        else:\n            $v.append(x)\n    return $v\n",
            ),
        ),
        _clamp_case,
    ),
    CodeTemplate(
        "additive_sequence",
        ("additive_sequence", "fibonacci_like", "sum_sequence", "lucas_style"),
        (
            ("first", "a0", "start", "seed_a"),
            ("second", "a1", "nxt", "seed_b"),
            ("n", "count", "length", "k"),
        ),
        (
            "Return the first $c terms of the sequence that starts $a, $b and continues by adding the two previous terms.",
            "Generate $c terms of a Fibonacci-like sequence whose first two terms are $a and $b.",
        ),
        (
            "Write a function to generate n terms of a fibonacci-like sequence from two starting values.",
            "Write a python function to list the first n terms of an additive sequence with given seeds.",
        ),
        "    $v = []\n    x, y = $a, $b\n    for _ in range($c):\n        $v.append(x)\n        x, y = y, x + y\n    return $v\n",
        (
            (
                "off_by_one",
                "    $v = []\n    x, y = $a, $b\n    for _ in range($c - 1):\n        $v.append(x)\n        x, y = y, x + y\n    return $v\n",
            ),
        ),
        lambda rng: (rng.randint(0, 30), rng.randint(1, 30), rng.randint(3, 8)),
    ),
    CodeTemplate(
        "second_largest",
        ("second_largest", "runner_up", "second_max", "next_largest"),
        (("nums", "values", "scores", "heights"),),
        (
            "Return the second largest distinct value in $a (the list has at least two distinct values).",
            "Find the largest value of $a that is smaller than its maximum.",
        ),
        (
            "Write a function to find the second largest distinct number in a list.",
            "Write a python function to return the runner-up value of a list.",
        ),
        "    $v = sorted(set($a))\n    return $v[-2]\n",
        (("off_by_one", "    $v = sorted(set($a))\n    return $v[-1]\n"),),
        lambda rng: (rng.sample(range(0, 80), rng.randint(3, 7)),),
    ),
    CodeTemplate(
        "capitalize_words",
        ("capitalize_words", "title_words", "upper_initials", "capitalize_each"),
        (("text", "sentence", "title", "line"),),
        (
            "Return $a with the first letter of every word in upper case.",
            "Capitalize the initial letter of each word of $a.",
        ),
        (
            "Write a function to capitalize the first letter of every word in a string.",
            "Write a python function that upper-cases the initial of each word.",
        ),
        '    $v = [w[:1].upper() + w[1:] for w in $a.split()]\n    return " ".join($v)\n',
        (("off_by_one", '    $v = [w[:2].upper() + w[2:] for w in $a.split()]\n    return " ".join($v)\n'),),
        lambda rng: (" ".join(_words(rng)),),
    ),
    CodeTemplate(
        "remove_duplicates",
        ("remove_duplicates", "unique_in_order", "dedupe_list", "distinct_items"),
        (("items", "values", "seq", "entries"),),
        (
            "Return the elements of $a without repeats, keeping the first occurrence of each.",
            "Drop repeated values from $a while preserving the original order.",
        ),
        (
            "Write a function to remove duplicate elements from a list while keeping the order.",
            "Write a python function to return the distinct items of a list in first-seen order.",
        ),
        "    $v = []\n    for x in $a:\n        if x not in $v:\n            $v.append(x)\n    return $v\n",
        (
            (
                "off_by_one",
                "    $v = []\n    for x in $a[1:]:\n        if x not in $v:\n            $v.append(x)\n    return $v\n",
            ),
        ),
        lambda rng: (_ints(rng, 0, 9, (6, 10)),),
    ),
)


# ==================================================================================================
# Math word problems (GSM8K shape)


class Calc:
    """Writes GSM8K calculator annotations; plants one wrong result (carried forward) when asked."""

    def __init__(self, rng: random.Random, wrong_step: int | None) -> None:
        self.rng = rng
        self.wrong_step = wrong_step
        self.step = 0
        self.planted = False

    def __call__(self, a: int, op: str, b: int) -> tuple[int, str]:
        """``(result, "a*b = <<a*b=r>>r")``; ``op`` is one of + - * /."""
        exact = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
        result = exact
        if self.step == self.wrong_step:
            result = exact + self.rng.choice([1, 2, 3, 4, 5, 10, -1, -2])
            self.planted = True
        self.step += 1
        shown = f"{a}{op}{b}"
        return result, f"{shown} = <<{shown}={result}>>{result}"


# fmt: off
MATH_NAMES = [
    "Natalia", "Weng", "Betty", "Julie", "James", "Mark", "Albert", "Ken", "Alexis", "Tina", "Randy", "Joy",
    "Carla", "Dan", "Sofia", "Omar", "Priya", "Lucas", "Mei", "Hugo", "Amara", "Felix", "Nadia", "Oscar",
    "Leila", "Ravi", "Greta", "Tomas", "Ingrid", "Kwame", "Elena", "Mateo", "Hannah", "Yuki", "Pedro",
    "Zoe",
]
# fmt: on
HE_SHE = {"m": ("he", "his", "him"), "f": ("she", "her", "her")}
MATH_GENDER = {name: ("f" if i % 2 == 0 else "m") for i, name in enumerate(MATH_NAMES)}
# fmt: off
ITEMS = [
    "notebooks", "pencils", "apples", "candles", "stickers", "mugs", "plants", "postcards", "bracelets",
    "cookies", "muffins", "marbles", "books", "socks", "tickets", "puzzles", "toy cars", "lemons",
]
# fmt: on
# fmt: off
SHOPS = [
    "the market", "a garage sale", "the school fair", "a bookstore", "the corner shop", "a craft fair",
]
# fmt: on


def _who(rng: random.Random) -> tuple[str, str, str]:
    """A person: name, subject pronoun, possessive pronoun."""
    name = rng.choice(MATH_NAMES)
    he, his, _ = HE_SHE[MATH_GENDER[name]]
    return name, he, his


def _m_change(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, _ = _who(rng)
    item, n, price = rng.choice(ITEMS), rng.randint(2, 20), rng.randint(2, 40)
    bill = ((n * price) // 10 + rng.randint(2, 9)) * 10
    cost, s1 = calc(n, "*", price)
    change, s2 = calc(bill, "-", cost)
    q = (
        f"{name} buys {n} {item} at {rng.choice(SHOPS)} for ${price} each. {he.capitalize()} pays with "
        f"${bill}. How much change does {he} get back?"
    )
    return q, [f"The {item} cost {s1} dollars in total.", f"So {name} gets {s2} dollars back."], change


def _m_half(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, _ = _who(rng)
    item = rng.choice(ITEMS)
    first = 2 * rng.randint(6, 150)
    m1, m2 = rng.sample(["March", "April", "May", "June", "July", "August"], 2)
    second, s1 = calc(first, "/", 2)
    total, s2 = calc(first, "+", second)
    q = (
        f"{name} sold {first} {item} in {m1}, and then {he} sold half as many {item} in {m2}. "
        f"How many {item} did {name} sell altogether in {m1} and {m2}?"
    )
    return q, [f"In {m2}, {name} sold {s1} {item}.", f"Altogether {he} sold {s2} {item}."], total


def _m_savings(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, _ = _who(rng)
    weekly, weeks = rng.randint(5, 40), rng.randint(3, 16)
    spend = rng.randint(5, weekly * weeks - 5)
    gift = rng.choice(
        ["a bicycle helmet", "a birthday present", "a concert ticket", "new headphones", "a board game"]
    )
    saved, s1 = calc(weekly, "*", weeks)
    left, s2 = calc(saved, "-", spend)
    q = (
        f"{name} saves ${weekly} every week for {weeks} weeks. Then {he} spends ${spend} on {gift}. "
        f"How much money does {name} have left?"
    )
    return q, [f"{name} saves {s1} dollars.", f"After buying {gift}, {he} has {s2} dollars left."], left


def _m_pages(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, _ = _who(rng)
    per_day, days = rng.randint(8, 40), rng.randint(3, 12)
    total = per_day * days + rng.randint(10, 200)
    read, s1 = calc(per_day, "*", days)
    left, s2 = calc(total, "-", read)
    q = (
        f"{name} is reading a book with {total} pages. {he.capitalize()} reads {per_day} pages a day for "
        f"{days} days. How many pages does {he} still have to read?"
    )
    return q, [f"{name} has read {s1} pages.", f"{he.capitalize()} still has {s2} pages to read."], left


def _m_baking(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, _ = _who(rng)
    batches, per = rng.randint(2, 6), rng.randint(8, 24)
    give, eat = rng.randint(3, batches * per // 2), rng.randint(1, 6)
    food = rng.choice(["cookies", "muffins", "rolls", "cupcakes", "scones"])
    total, s1 = calc(batches, "*", per)
    after_gift, s2 = calc(total, "-", give)
    left, s3 = calc(after_gift, "-", eat)
    q = (
        f"{name} bakes {batches} batches of {food} with {per} {food} in each batch. {he.capitalize()} gives "
        f"{give} {food} to the neighbors and eats {eat}. How many {food} are left?"
    )
    return (
        q,
        [
            f"{name} bakes {s1} {food}.",
            f"After the gift there are {s2} {food}.",
            f"After eating some, {s3} {food} are left.",
        ],
        left,
    )


def _m_garden(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, _, his = _who(rng)
    rows, extra, per = rng.randint(3, 30), rng.randint(1, 9), rng.randint(4, 25)
    crop = rng.choice(["tomato plants", "lettuce heads", "pepper plants", "bean plants", "onions"])
    all_rows, s1 = calc(rows, "+", extra)
    total, s2 = calc(all_rows, "*", per)
    q = (
        f"{name} has {rows} rows of {crop} in {his} garden and adds {extra} more rows. Each row holds "
        f"{per} {crop}. How many {crop} does {name} have now?"
    )
    return q, [f"There are {s1} rows.", f"That makes {s2} {crop}."], total


def _m_trip(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, _ = _who(rng)
    v1, h1, v2, h2 = rng.randint(30, 70), rng.randint(2, 5), rng.randint(20, 60), rng.randint(1, 4)
    d1, s1 = calc(v1, "*", h1)
    d2, s2 = calc(v2, "*", h2)
    total, s3 = calc(d1, "+", d2)
    q = (
        f"{name} drives at {v1} miles per hour for {h1} hours, then at {v2} miles per hour for {h2} hours. "
        f"How many miles does {he} drive in total?"
    )
    return (
        q,
        [
            f"The first part is {s1} miles.",
            f"The second part is {s2} miles.",
            f"In total {name} drives {s3} miles.",
        ],
        total,
    )


def _m_wages(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, _ = _who(rng)
    rate, hours, days = rng.randint(11, 40), rng.randint(2, 10), rng.randint(2, 14)
    job = rng.choice(["at a bakery", "as a tutor", "at the library", "in a bike shop", "at a cafe"])
    per_day, s1 = calc(rate, "*", hours)
    total, s2 = calc(per_day, "*", days)
    q = (
        f"{name} works {job} and earns ${rate} an hour. {he.capitalize()} works {hours} hours a day for "
        f"{days} days. How much does {name} earn?"
    )
    return q, [f"Each day {he} earns {s1} dollars.", f"Over {days} days {he} earns {s2} dollars."], total


def _m_tickets(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, _, _ = _who(rng)
    adults, price_a, kids, price_k = (
        rng.randint(1, 4),
        rng.randint(12, 30),
        rng.randint(1, 5),
        rng.randint(4, 11),
    )
    event = rng.choice(["the zoo", "a museum", "the aquarium", "a play", "the science center"])
    a_cost, s1 = calc(adults, "*", price_a)
    k_cost, s2 = calc(kids, "*", price_k)
    total, s3 = calc(a_cost, "+", k_cost)
    q = (
        f"{name} buys {adults} adult tickets for {event} at ${price_a} each and {kids} child tickets at "
        f"${price_k} each. How much does {name} pay?"
    )
    return (
        q,
        [
            f"Adult tickets cost {s1} dollars.",
            f"Child tickets cost {s2} dollars.",
            f"Together {name} pays {s3} dollars.",
        ],
        total,
    )


def _m_tank(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, _, _ = _who(rng)
    use, days = rng.randint(3, 20), rng.randint(2, 9)
    tank = use * days + rng.randint(5, 150)
    thing = rng.choice(["water tank", "rain barrel", "fish pond", "storage tank"])
    used, s1 = calc(use, "*", days)
    left, s2 = calc(tank, "-", used)
    q = (
        f"The {thing} at {name}'s house holds {tank} liters. {name} uses {use} liters a day for {days} days. "
        f"How many liters are left in the {thing}?"
    )
    return q, [f"{name} uses {s1} liters.", f"The {thing} has {s2} liters left."], left


def _m_marbles(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, he, his = _who(rng)
    each, friends = rng.randint(2, 9), rng.randint(2, 8)
    have = each * friends + rng.randint(3, 60)
    item = rng.choice(ITEMS)
    given, s1 = calc(each, "*", friends)
    left, s2 = calc(have, "-", given)
    q = (
        f"{name} has {have} {item}. {he.capitalize()} gives {each} {item} to each of {his} {friends} friends. "
        f"How many {item} does {name} keep?"
    )
    return q, [f"{name} gives away {s1} {item}.", f"{he.capitalize()} keeps {s2} {item}."], left


def _m_quarter(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, _, _ = _who(rng)
    parts = rng.choice([2, 4, 5])
    word = {2: "half", 4: "a quarter", 5: "a fifth"}[parts]
    total = parts * rng.randint(4, 200)
    snack = rng.choice(["a snack", "a drink", "a book", "an umbrella", "a water bottle", "a notebook"])
    group = rng.choice(
        ["students in the class", "members of the club", "players on the team", "guests at the party"]
    )
    share, s1 = calc(total, "/", parts)
    rest, s2 = calc(total, "-", share)
    q = (
        f"There are {total} {group} that {name} is organizing. {word.capitalize()} of them bring {snack}. "
        f"How many do not bring {snack}?"
    )
    return q, [f"{s1} of them bring {snack}.", f"So {s2} do not bring {snack}."], rest


def _m_pizza(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, _, _ = _who(rng)
    pizzas, slices = rng.randint(2, 12), rng.choice([6, 8, 10, 12])
    people = rng.randint(2, 12)
    food, event = (
        rng.choice(["pizzas", "pies", "cakes", "quiches", "tarts"]),
        rng.choice(["a party", "a picnic", "game night", "a meeting"]),
    )
    each = rng.randint(1, max(1, (pizzas * slices) // people))
    total, s1 = calc(pizzas, "*", slices)
    eaten, s2 = calc(people, "*", each)
    left, s3 = calc(total, "-", eaten)
    q = (
        f"{name} orders {pizzas} {food} for {event}, each cut into {slices} slices. {people} people eat {each} "
        f"slices each. How many slices are left over?"
    )
    return q, [f"There are {s1} slices.", f"The group eats {s2} slices.", f"That leaves {s3} slices."], left


def _m_ages(rng: random.Random, calc: Calc) -> tuple[str, list[str], int]:
    name, _, _ = _who(rng)
    other = rng.choice([n for n in MATH_NAMES if n != name])
    age, factor, years = rng.randint(3, 30), rng.randint(2, 4), rng.randint(2, 20)
    older, s1 = calc(age, "*", factor)
    later, s2 = calc(older, "+", years)
    q = (
        f"{name} is {age} years old. {other} is {factor} times as old as {name}. How old will {other} be "
        f"in {years} years?"
    )
    return q, [f"{other} is {s1} years old now.", f"In {years} years {other} will be {s2} years old."], later


MATH_TEMPLATES: tuple[Callable[[random.Random, Calc], tuple[str, list[str], int]], ...] = (
    _m_change,
    _m_half,
    _m_savings,
    _m_pages,
    _m_baking,
    _m_garden,
    _m_trip,
    _m_wages,
    _m_tickets,
    _m_tank,
    _m_marbles,
    _m_quarter,
    _m_pizza,
    _m_ages,
)


# ==================================================================================================
# Chat text


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


@dataclass
class Chat:
    """One conversation; ``instruction``/``input`` say how an Alpaca record splits the user turn."""

    messages: list[dict[str, str]]
    topic: str
    instruction: str | None = None
    input: str | None = None
    # For records whose answer says little: the part of the question that must differ between any two
    # of them (two questions differing only in a trailing clause would be near duplicates).
    question_key: str | None = None

    @property
    def simple(self) -> bool:
        """Exactly one user turn then one assistant turn: representable in every chat layout."""
        return [m["role"] for m in self.messages] == ["user", "assistant"]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


# Later mentions of an answer's subject and goal (stated once, then referred to).
SUBJECT_REFERENCES = ("it", "this")
GOAL_REFERENCES = ("your goal", "the result you want", "that result", "real progress", "the outcome you want")


class _Mentions:
    """What one answer has said so far. Its subject and goal are stated once and referred to after, and
    its things, actions and mistakes are drawn without repeats: the Gopher n-gram rules
    (thresher.repetition) reject an answer that keeps restating a phrase, and clean records must pass."""

    def __init__(self, rng: random.Random, topic: Topic, fixed: dict[str, str]) -> None:
        self.rng = rng
        self.fixed = fixed
        self.said: set[str] = set()
        self.topic = topic
        self.pools: dict[str, list[str]] = {}
        self.templates: set[str] = set()  # body sentences (templates and facts) already used

    def draw(self, key: str) -> str:
        """A thing, action or mistake this answer has not used yet (reshuffled once all are used)."""
        pool = self.pools.get(key)
        if not pool:
            values = {
                "thing": self.topic.things,
                "action": self.topic.actions,
                "mistake": self.topic.mistakes,
                "audience": [a for a in AUDIENCES if a != self.fixed["audience"]],
            }
            pool = self.pools[key] = self.rng.sample(list(values[key]), len(values[key]))
        return pool.pop()

    def mention(self, key: str) -> str:
        """``subject``/``subject_cap``/``goal`` in full the first time, a short reference after."""
        base = "subject" if key == "subject_cap" else key
        if base not in self.said:
            self.said.add(base)
            return self.fixed[key]
        if base == "audience":  # someone else this time
            return self.draw("audience")
        refs = SUBJECT_REFERENCES if base == "subject" else GOAL_REFERENCES
        return self.rng.choice(refs)


class _Slots(dict):
    """Slot values for one sentence: record-level ones given, the rest drawn on first use (through the
    answer's ``_Mentions`` when there is one)."""

    def __init__(
        self, rng: random.Random, topic: Topic, fixed: dict[str, str], mentions: _Mentions | None = None
    ) -> None:
        if mentions is not None:
            fixed = {
                k: v for k, v in fixed.items() if k not in ("subject", "subject_cap", "goal", "audience")
            }
        super().__init__(fixed)
        self.rng = rng
        self.topic = topic
        self.mentions = mentions

    def __missing__(self, key: str) -> str:
        r, t, m = self.rng, self.topic, self.mentions
        if m is not None:
            if key in ("subject", "subject_cap", "goal", "audience"):
                value = m.mention(key)
                value = _cap(value) if key == "subject_cap" else value
            elif key in ("thing", "thing_cap", "action", "mistake"):
                drawn = m.draw(key.removesuffix("_cap"))
                value = _cap(drawn) if key == "thing_cap" else drawn
            else:
                value = str(r.randint(2, 12))
            self[key] = value
            return value
        draw: dict[str, Callable[[], str]] = {
            "thing": lambda: r.choice(t.things),
            "thing_cap": lambda: _cap(r.choice(t.things)),
            "action": lambda: r.choice(t.actions),
            "mistake": lambda: r.choice(t.mistakes),
            "n": lambda: str(r.randint(2, 12)),
        }
        value = draw[key]()
        self[key] = value
        return value


class ChatFactory:
    """Builds English conversations (and the planted variants) from the templates above."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    # --- building blocks ----------------------------------------------------------------------------

    def _record_slots(self, topic: Topic) -> dict[str, str]:
        r = self.rng
        subject, context = r.choice(topic.subjects), r.choice(CONTEXTS)
        return {
            "subject": subject,
            "subject_cap": _cap(subject),
            "goal": r.choice(topic.goals),
            "audience": r.choice(AUDIENCES),
            "context": context,
            "context_cap": _cap(context),
        }

    def _fill(
        self, template: str, topic: Topic, fixed: dict[str, str], mentions: _Mentions | None = None
    ) -> str:
        return _cap(template.format_map(_Slots(self.rng, topic, fixed, mentions)))

    def _body(
        self, topic: Topic, fixed: dict[str, str], count: int, mentions: _Mentions | None = None
    ) -> list[str]:
        r = self.rng
        used = mentions.templates if mentions is not None else set()
        templates = r.sample([t for t in GENERIC_SENTENCES if t not in used], count)
        facts = [f for f in topic.facts if f not in used]
        sentences = []
        for template in templates:
            if facts and r.random() < 0.25:
                fact = facts.pop(r.randrange(len(facts)))
                used.add(fact)
                sentences.append(fact)
            else:
                used.add(template)
                sentences.append(self._fill(template, topic, fixed, mentions))
        return sentences

    def _snippet(self) -> tuple[str, str, str]:
        """Intro, fenced code and outro. The intro and outro join the prose around them: as lines of
        their own they would recur in many records and be cut as boilerplate."""
        r = self.rng
        code = r.choice(CODE_SNIPPETS).format(name=r.choice(SNIPPET_NAMES))
        return r.choice(SNIPPET_INTROS), f"```python\n{code}\n```", r.choice(SNIPPET_OUTROS)

    def _answer(
        self,
        topic: Topic,
        fixed: dict[str, str],
        low: int = 3,
        high: int = 7,
        code: bool = True,
        mentions: _Mentions | None = None,
    ) -> str:
        r = self.rng
        mentions = mentions or _Mentions(r, topic, fixed)
        sentences = [
            self._fill(r.choice(OPENERS), topic, fixed, mentions),
            *self._body(topic, fixed, r.randint(low, high), mentions),
        ]
        if r.random() < 0.8:
            sentences.append(self._fill(r.choice(CLOSERS), topic, fixed, mentions))
        # The second paragraph has two sentences or more: a one-sentence paragraph is often a slot-free
        # closer, a line that recurs across records (boilerplate) rather than part of this answer.
        cut = r.randint(2, max(2, len(sentences) - 2))
        paragraphs = [" ".join(sentences[:cut]), " ".join(sentences[cut:])]
        if code and topic.name == "programming" and r.random() < 0.5:
            intro, fenced, outro = self._snippet()
            paragraphs = [f"{paragraphs[0]} {intro}", fenced, f"{outro} {paragraphs[1]}".strip()]
        return "\n\n".join(p for p in paragraphs if p)

    def question(self, topic: Topic, fixed: dict[str, str]) -> str:
        return self._fill(self.rng.choice(QUESTION_TEMPLATES), topic, fixed)

    # --- whole conversations ------------------------------------------------------------------------

    def chat(self, layout: str, *, topic: Topic | None = None, code: bool = True) -> Chat:
        """A clean conversation for ``layout``; only JSONL chat layouts get system prompts and follow-ups."""
        r = self.rng
        topic = topic or r.choice(TOPICS)
        fixed = self._record_slots(topic)
        question = self.question(topic, fixed)
        mentions = _Mentions(r, topic, fixed)  # shared by the answer and a follow-up reply
        messages = [
            {"role": "user", "content": question},
            {"role": "assistant", "content": self._answer(topic, fixed, code=code, mentions=mentions)},
        ]
        instruction = input_ = None
        if layout in ("openai", "sharegpt"):
            if r.random() < 0.15:
                follow = self._fill(r.choice(FOLLOWUPS), topic, fixed)
                reply = " ".join(self._body(topic, fixed, r.randint(2, 4), mentions))
                messages += [{"role": "user", "content": follow}, {"role": "assistant", "content": reply}]
            if r.random() < 0.2:
                system = r.choice(SYSTEM_PROMPTS).format(topic=topic.name)
                messages.insert(0, {"role": "system", "content": system})
        elif layout == "alpaca" and r.random() < 0.3:
            instruction = f"Answer the following question about {topic.name} in a few short paragraphs."
            input_ = question
            messages[0]["content"] = f"{instruction}\n\n{question}"
        return Chat(messages, topic.name, instruction, input_)

    def _short_question(self, chat: Chat) -> None:
        """Lengthen the question of a record whose answer carries little text (keeps such records apart)."""
        r = self.rng
        context = _cap(r.choice(CONTEXTS))
        chat.question_key = f"{chat.messages[-2]['content']} {context}"
        extra = f"{context}, and I am asking on behalf of {r.choice(AUDIENCES)}."
        chat.messages[-2]["content"] += " " + extra
        if chat.input is not None:
            chat.input += " " + extra

    def empty_response(self, layout: str) -> Chat:
        chat = self.chat(layout)
        chat.messages = [m for m in chat.messages if m["role"] == "system"] + [
            next(m for m in chat.messages if m["role"] == "user"),
            {"role": "assistant", "content": self.rng.choice(["", " ", "\n"])},
        ]
        self._short_question(chat)
        return chat

    def truncated(self, layout: str) -> tuple[Chat, str]:
        """An answer cut mid-sentence (after a function word), or one whose code block is never closed."""
        r = self.rng
        if r.random() < 0.5:
            topic = next(t for t in TOPICS if t.name == "programming")
            chat = self.chat(layout, topic=topic, code=False)
            code = r.choice(CODE_SNIPPETS).format(name=r.choice(SNIPPET_NAMES))
            body = chat.answer.split("\n\n")[0]
            chat.messages[-1]["content"] = f"{body} {r.choice(SNIPPET_INTROS)}\n\n```python\n{code}"
            return chat, "open_code_fence"
        chat = self.chat(layout, code=False)
        paragraphs = chat.answer.split("\n\n")
        chat.messages[-1]["content"] = paragraphs[0] + " " + r.choice(TRUNCATION_STUBS)
        return chat, "mid_sentence"

    def refusal(self, layout: str) -> Chat:
        chat = self.chat(layout)
        topic = next(t for t in TOPICS if t.name == chat.topic)
        subject = self.rng.choice(topic.subjects)
        chat.messages[-1]["content"] = self.rng.choice(REFUSALS).format(subject=subject)
        self._short_question(chat)
        return chat

    def foreign(self, layout: str) -> tuple[Chat, str]:
        """A whole conversation in Spanish, German or French."""
        r = self.rng
        language = r.choice(sorted(FOREIGN))
        bank = FOREIGN[language]

        def fill(template: str, pools: dict[str, list[str]] | None = None) -> str:
            # An answer draws its slot values without repeats (a restated phrase trips the n-gram rules).
            def draw(key: str) -> str:
                if pools is None:
                    return r.choice(bank[key])
                if not pools.get(key):
                    pools[key] = r.sample(bank[key], len(bank[key]))
                return pools[key].pop()

            return template.format(
                plato=draw("slots.plato"), lugar=draw("slots.lugar"), cosa=draw("slots.cosa")
            )

        question = fill(r.choice(bank["questions"]))
        pools: dict[str, list[str]] = {}
        answer = " ".join(fill(t, pools) for t in r.sample(bank["sentences"], r.randint(4, 7)))
        chat = Chat(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], "other"
        )
        if layout == "alpaca" and r.random() < 0.3:
            chat.instruction, chat.input = question, ""
        return chat, language

    def placeholder(self, layout: str) -> Chat:
        """An answer that is filler or an unfilled template (lorem ipsum, "[Insert ...]", "TODO")."""
        chat = self.chat(layout, code=False)
        topic = next(t for t in TOPICS if t.name == chat.topic)
        chat.messages[-1]["content"] = self.rng.choice(PLACEHOLDER_ANSWERS).format(
            subject=self.rng.choice(topic.subjects)
        )
        self._short_question(chat)
        return chat

    def echo(self, layout: str) -> Chat:
        """An answer that only repeats the question."""
        chat = self.chat(layout, code=False)
        chat.messages = [m for m in chat.messages if m["role"] != "system"][:2]
        self._short_question(chat)
        question = chat.messages[0]["content"]
        chat.messages[1]["content"] = self.rng.choice(ECHO_TEMPLATES).format(question=question)
        return chat

    def stray_tokens(self, layout: str) -> tuple[Chat, list[str]]:
        """A clean conversation with a chat-template token left in its text by an exporter."""
        chat = self.chat(layout, code=False)
        where, token = self.rng.choice(STRAY_TOKENS)
        if where == "question":
            user = next(m for m in chat.messages if m["role"] == "user")
            user["content"] = f"[INST] {user['content']} [/INST]"
            if chat.input is not None:
                chat.input = f"[INST] {chat.input} [/INST]"
            return chat, ["[INST]", "[/INST]"]
        answer = chat.messages[-1]
        answer["content"] = f"{answer['content']}{token}" if where == "end" else f"{token}{answer['content']}"
        return chat, [token]

    def mojibake(self, layout: str) -> tuple[Chat, str, str]:
        """A clean conversation whose question has a sentence in mojibake; returns it, broken and fixed."""
        chat = self.chat(layout, code=False)
        fixed = self.rng.choice(MOJIBAKE_SENTENCES)
        broken = fixed.encode("utf-8").decode("cp1252")
        user = next(m for m in chat.messages if m["role"] == "user")
        user["content"] = f"{user['content']} {broken}"
        if chat.input is not None:
            chat.input = f"{chat.input} {broken}"
        return chat, broken, fixed

    def html(self, layout: str) -> Chat:
        """A clean answer wrapped in HTML tags and entities (cleaning strips them; the record is kept)."""
        r = self.rng
        chat = self.chat(layout, code=False)
        sentences = [s for p in chat.answer.split("\n\n") for s in _split_sentences(p)]
        cut = r.randint(1, max(1, len(sentences) - 1))
        paragraphs = [sentences[:cut], sentences[cut:]]
        parts = []
        for sentences_of in paragraphs:
            if not sentences_of:
                continue
            text = "<br>".join(sentences_of) if r.random() < 0.5 else " ".join(sentences_of)
            parts.append(f"<p>{text}</p>")
        body = "".join(parts).replace(" and ", " &amp; ", 1)
        words = body.split(" ")
        if len(words) > 6:
            i = r.randint(1, len(words) - 4)
            if "<" not in words[i] and ">" not in words[i]:
                words[i] = f'<span style="font-weight:bold">{words[i]}</span>'
            j = r.randint(1, len(words) - 2)
            words[j] = words[j] + "&nbsp;" + words.pop(j + 1)
        body = " ".join(words)
        chat.messages[-1]["content"] = f'<div class="answer">{body}</div>'
        return chat


def _split_sentences(text: str) -> list[str]:
    """Split prose after '. ' (our templates contain no abbreviations)."""
    parts = text.replace(". ", ".\x00").replace("? ", "?\x00").split("\x00")
    return [p for p in parts if p]


# ==================================================================================================
# PII values


def luhn_ok(digits: str) -> bool:
    """Whether a digit string passes the Luhn checksum."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _luhn_digit(partial: str) -> str:
    for d in "0123456789":
        if luhn_ok(partial + d):
            return d
    raise AssertionError("unreachable")


def _ascii(text: str) -> str:
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode()


class PiiFactory:
    """Fictional but well-formed PII values of each type the cleaner detects."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def _digits(self, n: int) -> str:
        return "".join(self.rng.choice(string.digits) for _ in range(n))

    def email(self) -> str:
        r = self.rng
        user = f"{_ascii(r.choice(FIRST_NAMES)).lower()}{r.choice(['.', '_', ''])}{_ascii(r.choice(LAST_NAMES)).lower()}"
        if r.random() < 0.4:
            user += str(r.randint(1, 99))
        return f"{user}@{r.choice(EMAIL_DOMAINS)}"

    def phone(self) -> str:
        r, d = self.rng, self._digits
        area = r.choice(US_AREA_CODES)
        return r.choice(
            [
                lambda: f"({area}) 555-01{d(2)}",
                lambda: f"{area}-555-01{d(2)}",
                lambda: f"+1 {area} 555 01{d(2)}",
                lambda: f"+44 20 {r.randint(7000, 7999)} {d(4)}",
                lambda: f"+49 30 {r.randint(1000, 9999)} {d(4)}",
                lambda: f"+33 1 {d(2)} {d(2)} {d(2)} {d(2)}",
                lambda: f"+81 3-{d(4)}-{d(4)}",
                lambda: f"+61 2 {d(4)} {d(4)}",
            ]
        )()

    def card_digits(self) -> str:
        """Digits of a Luhn-valid number of a major network."""
        r, d = self.rng, self._digits
        prefix, length = r.choice([("4", 16), ("5" + str(r.randint(1, 5)), 16), ("37", 15), ("6011", 16)])
        partial = prefix + d(length - len(prefix) - 1)
        return partial + _luhn_digit(partial)

    def format_card(self, digits: str) -> str:
        r = self.rng
        sep = r.choice([" ", "-", ""])
        if len(digits) == 15:
            return sep.join([digits[:4], digits[4:10], digits[10:]])
        return sep.join(digits[i : i + 4] for i in range(0, 16, 4))

    def card_number(self) -> str:
        return self.format_card(self.card_digits())

    def card_like_not_luhn(self) -> str:
        """A card-shaped digit string whose checksum fails: an order number, not a card.

        No digit group after the first starts with 0: the cleaner reads "0659 5559 0163" inside such a
        string as a national-format phone number (reported as a cleaner false positive), and a decoy
        must test the Luhn check alone.
        """
        while True:
            digits = self.card_digits()
            last = str((int(digits[-1]) + self.rng.randint(1, 9)) % 10)
            value = self.format_card(digits[:-1] + last)
            if not re.search(r"[ -]0", value):
                return value

    def ip_address(self) -> str:
        r = self.rng
        return r.choice(
            [
                lambda: f"192.168.{r.randint(0, 255)}.{r.randint(1, 254)}",
                lambda: f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                lambda: f"172.{r.randint(16, 31)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
                lambda: f"100.{r.randint(64, 127)}.{r.randint(0, 255)}.{r.randint(1, 254)}",
            ]
        )()

    def api_key(self) -> str:
        """A secret in one of the formats providers issue (cloud, code hosting, LLM APIs, JWTs)."""
        r = self.rng
        alnum = string.ascii_letters + string.digits
        upper = string.ascii_uppercase + string.digits
        urlsafe = alnum + "-_"

        def chars(alphabet: str, n: int) -> str:
            return "".join(r.choice(alphabet) for _ in range(n))

        return r.choice(
            [
                lambda: "sk-" + chars(alnum, 40),
                lambda: "sk-proj-" + chars(urlsafe, 48),
                lambda: "sk-ant-api03-" + chars(urlsafe, 86) + "AA",
                lambda: "AKIA" + chars(upper, 16),
                lambda: "ghp_" + chars(alnum, 36),
                lambda: "github_pat_" + chars(alnum, 22) + "_" + chars(alnum, 59),
                lambda: "glpat-" + chars(urlsafe, 20),
                lambda: "hf_" + chars(string.ascii_letters, 34),
                lambda: "AIza" + chars(urlsafe, 35),
                lambda: "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiI" + chars(alnum, 24) + "In0." + chars(urlsafe, 43),
            ]
        )()

    def iban(self) -> str:
        """A checksum-valid IBAN of a few countries' layouts, compact or in groups of four."""
        r, d = self.rng, self._digits
        letters = string.ascii_uppercase
        country, bban = r.choice(
            [
                ("DE", lambda: d(18)),
                ("GB", lambda: "".join(r.choice(letters) for _ in range(4)) + d(14)),
                ("NL", lambda: "".join(r.choice(letters) for _ in range(4)) + d(10)),
                ("FR", lambda: d(23)),
            ]
        )
        body = bban()
        numeric = "".join(str(int(ch, 36)) for ch in body + country + "00")
        iban = f"{country}{98 - int(numeric) % 97:02d}{body}"
        return iban if r.random() < 0.5 else " ".join(iban[i : i + 4] for i in range(0, len(iban), 4))

    def us_ssn(self) -> str:
        """An SSN the SSA could issue: area 100-665 or 667-899, group 01-99, serial 0001-9999."""
        r = self.rng
        area = r.choice([a for a in range(100, 900) if a != 666])
        return f"{area}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"

    def url_credentials(self) -> str:
        """The ``user:password`` part of a URL (what the cleaner must redact)."""
        r = self.rng
        user = _ascii(r.choice(FIRST_NAMES)).lower()
        password = "".join(r.choice(string.ascii_letters + string.digits) for _ in range(r.randint(10, 16)))
        return f"{user}:{password}"

    def person(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(LAST_NAMES)}"

    def street_address(self) -> str:
        r = self.rng
        return f"{r.randint(2, 9800)} {r.choice(STREET_NAMES)} {r.choice(STREET_SUFFIXES)}"

    def date_of_birth(self) -> str:
        r = self.rng
        year, month, day = r.randint(1940, 2005), r.randint(1, 12), r.randint(1, 28)
        name = MONTHS[month - 1]
        return r.choice(
            [
                lambda: f"{day} {name} {year}",
                lambda: f"{name} {day}, {year}",
                lambda: f"{year}-{month:02d}-{day:02d}",
                lambda: f"{month:02d}/{day:02d}/{year}",
            ]
        )()

    def value(self, kind: str) -> str:
        return getattr(self, kind)()


# ==================================================================================================
# Dedup text (mirrors thresher.dedup's default normalization) for near-duplicate Jaccards


def dedup_text(messages: list[dict[str, str]]) -> str:
    """The conversation as dedup compares it: "role: content" lines, NFKC, lower case, punctuation
    (Unicode category P) removed, whitespace collapsed."""
    text = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    text = text.lower()
    table = {ord(c): None for c in set(text) if unicodedata.category(c).startswith("P")}
    return " ".join(text.translate(table).split())


def shingles(text: str, n: int = 5) -> set[tuple[str, ...]]:
    """Word n-grams of a normalized text (a text shorter than n words is one shingle)."""
    words = text.split(" ")
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: list[dict[str, str]], b: list[dict[str, str]]) -> float:
    """Exact Jaccard similarity of the word 5-gram sets of two conversations' dedup texts."""
    sa, sb = shingles(dedup_text(a)), shingles(dedup_text(b))
    return len(sa & sb) / len(sa | sb)


# ==================================================================================================
# Layout and planting

# (file name, layout, share of rows in percent). Files are ingested in sorted name order, which is
# also the order in which "earlier" is meant for duplicates.
CHAT_FILES: tuple[tuple[str, str, float], ...] = (
    ("alpaca.json", "alpaca", 15),
    ("chat_part1.jsonl", "openai", 18),
    ("chat_part2.jsonl", "openai", 17),
    ("prompts.csv", "csv", 10),
    ("prompts.parquet", "parquet", 5),
    ("sharegpt.jsonl", "sharegpt", 10),
)
CODE_FILES: tuple[tuple[str, str, float], ...] = (
    ("humaneval.jsonl", "humaneval", 10),
    ("mbpp.jsonl", "mbpp", 5),
)
MATH_FILES: tuple[tuple[str, str, float], ...] = (("gsm8k.jsonl", "gsm8k", 10),)
EMPTY_FILE = "empty.jsonl"

# Planted chat items as a share of all rows, and the least number planted whatever the size.
PLANT_RATES: dict[str, tuple[float, int]] = {
    "exact_duplicate": (0.04, 2),
    "near_duplicate": (0.04, 2),
    "pii": (0.045, 5),
    "not_pii": (0.005, 2),
    "html": (0.03, 1),
    "stray_tokens": (0.005, 2),
    "mojibake": (0.005, 2),
    "placeholder_text": (0.005, 2),
    "copies_instruction": (0.005, 2),
    "empty_response": (0.015, 1),
    "truncated_response": (0.015, 2),
    "refusal": (0.015, 1),
    "wrong_language": (0.015, 3),
    "malformed": (0.01, 6),
    "repetition": (0.01, 4),
    "boilerplate": (0.03, BoilerplateConfig().min_records),
}
WRONG_CODE_RATE = 0.2
WRONG_MATH_RATE = 0.1
MIN_ROWS = 200
# Near duplicates are planted at a word-5-gram Jaccard of at least this. The brief asks for >= 0.85, but
# thresher.dedup's LSH banding (9 bands x 13 rows at threshold 0.8, 128 permutations) makes a pair a
# candidate with probability 1 - (1 - J**13)**9: 0.69 at J = 0.85, 0.988 at 0.93, 0.99996 at 0.97. At
# 0.97 a planted pair is missed about once in 25,000, so the ground truth stays exact.
NEAR_MIN_JACCARD = 0.97
NEAR_MIN_WORDS = 60

# Intra-document repetition planted, each made to break exactly this rule of thresher.repetition (the
# filter charges the first rule broken in its RULES order, so each pattern avoids the earlier ones).
REPETITION_PATTERNS = (
    "duplicate_lines",
    "duplicate_paragraphs",
    "repeated_turns",
    "duplicate_ngram_repetition",
)
# Cross-document boilerplate: lines that end assistant answers, one per chat file. A file gets at least
# BoilerplateConfig().min_records of them, so each line is boilerplate within the batch it arrives in.
BOILERPLATE_LINES = (
    "Best regards, the Support Team",
    "This answer was generated automatically and may contain errors.",
    "Disclaimer: this is general information, not professional advice.",
    "Was this helpful? Rate this answer to help us improve our service.",
    "Sent from the community help desk, replies within two working days.",
    "Please double-check anything important with a qualified professional.",
)

_CHAT_LAYOUTS_WITH_TURNS = ("openai", "sharegpt")
_JSONL_CHAT = ("openai", "sharegpt")

REJECT = {
    "exact_duplicate": ("deduped", "exact_duplicate"),
    "near_duplicate": ("deduped", "near_duplicate"),
    "empty_response": ("cleaned", "empty_response"),
    "truncated_response": ("cleaned", "truncated_response"),
    "refusal": ("cleaned", "refusal"),
    "wrong_language": ("cleaned", "wrong_language"),
    "placeholder_text": ("cleaned", "placeholder_text"),
    "copies_instruction": ("cleaned", "copies_instruction"),
    "wrong_solution": ("verified", "code_tests_failed"),
    "calculation_error": ("verified", "math_calculation_error"),
}


def _expect(stage: str, rule: str) -> dict[str, str]:
    return {"stage": stage, "rule": rule}


def _allocate(total: int, shares: list[float]) -> list[int]:
    """Split ``total`` by ``shares`` with the largest-remainder method (sums exactly to ``total``)."""
    raw = [total * s / sum(shares) for s in shares]
    counts = [int(x) for x in raw]
    order = sorted(range(len(raw)), key=lambda i: (counts[i] - raw[i], i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


@dataclass
class _Slot:
    """One chat record position: which file, which record of it, and what gets planted there."""

    file: int
    pos: int  # 1-based record index in its file
    kind: str = "clean"
    chat: Chat | None = None
    raw: bytes | None = None  # a malformed JSONL line
    of: int | None = None  # slot index of the original (duplicates)
    info: dict[str, Any] = field(default_factory=dict)
    line: int = 0  # source_line as the adapter numbers it (set when the file is written)


class _ChatPlanter:
    """Decides which chat positions get which planted problem and fills every position with content."""

    def __init__(self, rng: random.Random, sizes: list[int], rows: int) -> None:
        self.rng = rng
        self.chats = ChatFactory(rng)
        self.pii = PiiFactory(rng)
        self.slots = [_Slot(f, p) for f, size in enumerate(sizes) for p in range(1, size + 1)]
        self.counts = {kind: max(least, round(rows * rate)) for kind, (rate, least) in PLANT_RATES.items()}
        # Normalized texts of every conversation written so far, and the questions of short records:
        # unplanned duplicates would give a record two fates.
        self.seen_texts: set[str] = set()
        self.seen_questions: set[str] = set()

    def assign(self) -> None:
        r = self.rng
        layouts = [CHAT_FILES[s.file][1] for s in self.slots]
        eligible = [i for i, s in enumerate(self.slots) if layouts[i] in _JSONL_CHAT and s.pos >= 6]
        malformed = r.sample(eligible, min(self.counts["malformed"], len(eligible)))
        for i in malformed:
            self.slots[i].kind = "malformed"
        taken = set(malformed)
        taken |= self._assign_boilerplate(taken)
        rest = [i for i in range(len(self.slots)) if i not in taken]
        kinds = [k for k, n in self.counts.items() if k not in ("malformed", "boilerplate") for _ in range(n)]
        for i, kind in zip(r.sample(rest, min(len(kinds), len(rest))), kinds, strict=False):
            self.slots[i].kind = kind

    def _assign_boilerplate(self, taken: set[int]) -> set[int]:
        """Boilerplate positions: groups of at least ``min_records`` in the files with most room, one
        signature line per file (a line confined to one file is boilerplate in that file's batch alone)."""
        r = self.rng
        total, least = self.counts["boilerplate"], BoilerplateConfig().min_records
        free: dict[int, list[int]] = {}
        for i, s in enumerate(self.slots):
            if i not in taken:
                free.setdefault(s.file, []).append(i)
        by_room = sorted(free, key=lambda f: (-len(free[f]), f))
        groups = max(1, min(len(BOILERPLATE_LINES), len(by_room), total // least))
        lines = r.sample(BOILERPLATE_LINES, groups)
        chosen: set[int] = set()
        for f, size, line in zip(by_room, _allocate(total, [1.0] * groups), lines, strict=False):
            for i in r.sample(free[f], min(size, len(free[f]))):
                self.slots[i].kind = "boilerplate"
                self.slots[i].info = {"boilerplate_line": line}
                chosen.add(i)
        return chosen

    def fill(self) -> None:
        originals: list[int] = []  # clean slots, in order, that duplicates may copy
        malformed_seen = 0
        patterns_seen = dict.fromkeys(REPETITION_PATTERNS, 0)
        for index, slot in enumerate(self.slots):
            layout = CHAT_FILES[slot.file][1]
            if slot.kind in ("exact_duplicate", "near_duplicate"):
                source = self._pick_original(originals, layout, near=slot.kind == "near_duplicate")
                if source is None:
                    slot.kind = "clean"  # nothing suitable earlier: the position stays clean
                else:
                    self._duplicate(slot, source)
                    continue
            if slot.kind == "clean":
                slot.chat = self._unique(lambda layout=layout: (self.chats.chat(layout), {}))[0]
                originals.append(index)
            elif slot.kind == "malformed":
                slot.raw, rule, defect = self._malformed(layout, malformed_seen)
                slot.info = {"expect": _expect("raw", rule), "defect": defect}
                malformed_seen += 1
            elif slot.kind == "repetition":
                allowed = [p for p in REPETITION_PATTERNS if p != "repeated_turns" or layout in _JSONL_CHAT]
                pattern = min(allowed, key=lambda p: patterns_seen[p])  # balanced, in a fixed order
                patterns_seen[pattern] += 1
                slot.chat = self._unique(
                    lambda layout=layout, pattern=pattern: (self._repetition(layout, pattern), {})
                )[0]
                slot.info = {"expect": _expect("deduped", pattern)}
            elif slot.kind == "boilerplate":
                line = slot.info["boilerplate_line"]
                slot.chat = self._unique(lambda layout=layout: (self.chats.chat(layout), {}))[0]
                # Its own paragraph after the answer: cutting it leaves the answer as generated.
                slot.chat.messages[-1]["content"] += f"\n\n{line}"
            else:
                self._plant(slot, layout)

    # --- duplicates ---------------------------------------------------------------------------------

    def _pick_original(self, originals: list[int], layout: str, near: bool) -> int | None:
        r = self.rng
        for _ in range(40):
            if not originals:
                return None
            k = r.randrange(len(originals))
            chat = self.slots[originals[k]].chat
            assert chat is not None
            if layout not in _CHAT_LAYOUTS_WITH_TURNS and not chat.simple:
                continue
            if near and (
                len(chat.answer.split()) < NEAR_MIN_WORDS or self._near_copy_possible(chat.messages) is False
            ):
                continue
            chosen = originals[k]
            originals[k] = originals[-1]  # each original is copied at most once
            originals.pop()
            return chosen
        return None

    def _duplicate(self, slot: _Slot, source: int) -> None:
        original = self.slots[source].chat
        assert original is not None
        slot.of = source
        messages = [dict(m) for m in original.messages]
        if slot.kind == "exact_duplicate":
            variant = self.rng.choice(["identical", "lowercase", "whitespace", "punctuation"])
            slot.chat = Chat(
                [{**m, "content": _variant(m["content"], variant)} for m in messages], original.topic
            )
            slot.info = {"variant": variant}
            return
        near = self._near_copy(messages)
        assert near is not None  # originals are long enough for a two-word phrase (see _pick_original)
        changed, how = near
        slot.chat = Chat(changed, original.topic)
        slot.info = {"change": how, "jaccard": round(jaccard(original.messages, changed), 4)}

    @staticmethod
    def _near_copy_possible(messages: list[dict[str, str]]) -> bool:
        """Whether appending a two-word phrase keeps the Jaccard at ``NEAR_MIN_JACCARD`` (the fallback edit)."""
        n = len(shingles(dedup_text(messages)))
        return n / (n + 2) >= NEAR_MIN_JACCARD

    def _near_copy(self, messages: list[dict[str, str]]) -> tuple[list[dict[str, str]], str] | None:
        """The conversation with 1-2 words of its last answer changed or a short phrase appended, at a
        word-5-gram Jaccard of at least ``NEAR_MIN_JACCARD`` (None if no such edit is found).

        A changed word breaks every 5-gram that contains it (up to five), so on answers of ordinary
        length only words near the end can change; an appended k-word phrase adds k new 5-grams.
        """
        r = self.rng
        last = messages[-1]["content"]
        how = r.choice(["changed_word", "changed_word", "two_changed_words", "appended_phrase"])
        if how != "appended_phrase":
            words = last.split(" ")
            candidates = [i for i, w in enumerate(words) if _WORD.fullmatch(w)]
            near_end = candidates[-3:]
            for _ in range(6):
                pool = near_end if r.random() < 0.7 else candidates
                picks = r.sample(pool, min(len(pool), 1 if how == "changed_word" else 2))
                edited = list(words)
                for i in picks:
                    core = edited[i].rstrip(".!?")
                    edited[i] = (
                        r.choice([w for w in SWAP_WORDS if w != core.lower()]) + edited[i][len(core) :]
                    )
                changed = [*messages[:-1], {**messages[-1], "content": " ".join(edited)}]
                if picks and jaccard(messages, changed) >= NEAR_MIN_JACCARD:
                    return changed, how
            how = "appended_phrase"
        for phrase in [r.choice(APPENDED_PHRASES), "Good luck."]:
            changed = [*messages[:-1], {**messages[-1], "content": f"{last} {phrase}"}]
            if jaccard(messages, changed) >= NEAR_MIN_JACCARD:
                return changed, how
        return None

    # --- planted problems ---------------------------------------------------------------------------

    def _repetition(self, layout: str, pattern: str) -> Chat:
        """A clean single-exchange conversation made to repeat itself so that it breaks ``pattern`` and no
        rule checked before it (see REPETITION_PATTERNS)."""
        while True:
            chat = self.chats.chat(layout, code=False)
            chat.messages = [m for m in chat.messages if m["role"] != "system"][:2]
            user, answer = chat.messages
            paragraphs = answer["content"].split("\n\n")
            words = len(re.findall(r"\w+", answer["content"]))
            if pattern == "duplicate_lines":
                # One line said six times inside one paragraph: no paragraph repeats.
                line = _split_sentences(paragraphs[-1])[0]
                answer["content"] = paragraphs[0] + "\n\n" + "\n".join([line] * 6)
            elif pattern == "duplicate_paragraphs":
                answer["content"] = "\n\n".join(paragraphs * 2)
            elif pattern == "repeated_turns":
                chat.messages = [user, answer, dict(user), dict(answer)]
            else:
                # A looping sentence, three times in a row on one line: its n-grams cover a quarter of
                # the words or more, while no single 4-gram reaches the top-n-gram thresholds.
                longest = max(_split_sentences(" ".join(paragraphs)), key=lambda t: len(t.split()))
                size = len(re.findall(r"\w+", longest))
                if words < 100 or 3 * size < 0.3 * (words + 2 * size):
                    continue
                answer["content"] = answer["content"].replace(longest, f"{longest} {longest} {longest}", 1)
            chat.question_key = None
            return chat

    def _unique(
        self, make: Callable[[], tuple[Chat, dict[str, Any]]], short: bool = False
    ) -> tuple[Chat, dict[str, Any]]:
        """Draw from ``make`` until the conversation's normalized text is new (and, for ``short``
        records whose answer says little, until its question is new too)."""
        for _ in range(1000):
            chat, info = make()
            text = dedup_text(chat.messages)
            question = (chat.question_key or chat.messages[-2]["content"]) if short else ""
            if text not in self.seen_texts and question not in self.seen_questions:
                self.seen_texts.add(text)
                if short:
                    self.seen_questions.add(question)
                return chat, info
        raise AssertionError("could not draw a new conversation")  # pragma: no cover

    def _plant(self, slot: _Slot, layout: str) -> None:
        make: dict[str, Callable[[], tuple[Chat, dict[str, Any]]]] = {
            "pii": lambda: self._pii(layout),
            "not_pii": lambda: self._not_pii(layout),
            "html": lambda: (self.chats.html(layout), {}),
            "empty_response": lambda: (self.chats.empty_response(layout), {}),
            "truncated_response": lambda: (lambda c, how: (c, {"how": how}))(*self.chats.truncated(layout)),
            "refusal": lambda: (self.chats.refusal(layout), {}),
            "placeholder_text": lambda: (self.chats.placeholder(layout), {}),
            "copies_instruction": lambda: (self.chats.echo(layout), {}),
            "stray_tokens": lambda: (lambda c, tokens: (c, {"tokens": tokens}))(
                *self.chats.stray_tokens(layout)
            ),
            "mojibake": lambda: (lambda c, b, f: (c, {"broken": b, "fixed": f}))(
                *self.chats.mojibake(layout)
            ),
            "wrong_language": lambda: (lambda c, lang: (c, {"language": lang}))(*self.chats.foreign(layout)),
        }
        short = slot.kind in ("empty_response", "refusal", "placeholder_text", "copies_instruction")
        slot.chat, slot.info = self._unique(make[slot.kind], short=short)

    def _pii(self, layout: str) -> tuple[Chat, dict[str, Any]]:
        chat = self.chats.chat(layout)
        types = self.rng.sample(list(PII_SENTENCES), self.rng.choice([1, 1, 2]))
        entities = [{"type": t, "value": self.pii.value(t)} for t in types]
        sentences = [self.rng.choice(PII_SENTENCES[e["type"]]).format(value=e["value"]) for e in entities]
        self._add_to_question(chat, " ".join(sentences))
        return chat, {"entities": entities}

    def _not_pii(self, layout: str) -> tuple[Chat, dict[str, Any]]:
        chat = self.chats.chat(layout)
        value = self.pii.card_like_not_luhn()
        self._add_to_question(chat, self.rng.choice(NOT_PII_SENTENCES).format(value=value))
        return chat, {"entities": [{"type": "card_number", "value": value}]}

    @staticmethod
    def _add_to_question(chat: Chat, sentence: str) -> None:
        user = next(m for m in chat.messages if m["role"] == "user")
        user["content"] = f"{user['content']} {sentence}"
        if chat.input is not None:
            chat.input = f"{chat.input} {sentence}"

    def _malformed(self, layout: str, seen: int) -> tuple[bytes, str, str]:
        """A JSONL line the adapter must reject, cycling through the defect types."""
        good = self.chats.chat(layout)
        sharegpt = layout == "sharegpt"
        record = _sharegpt_object(good) if sharegpt else _openai_object(good)
        key, role_key, text_key = (
            ("conversations", "from", "value") if sharegpt else ("messages", "role", "content")
        )
        defect = [
            "invalid_json",
            "invalid_utf8",
            "wrong_type",
            "unknown_role",
            "empty_conversation",
            "missing_field",
        ][seen % 6]
        if defect == "invalid_json":
            line = json.dumps(record, ensure_ascii=False)
            return line[: len(line) // 2].encode(), "invalid_json", "line cut off in the middle of the JSON"
        if defect == "invalid_utf8":
            line = json.dumps(record, ensure_ascii=False).encode()
            at = line.index(f'"{text_key}": "'.encode()) + len(text_key) + 5
            return line[:at] + b"Caf\xe9 " + line[at:], "invalid_utf8", "a Latin-1 byte inside a message"
        if defect == "wrong_type":
            record[key][-1][text_key] = self.rng.randint(1, 99)
            return _dumps(record), "wrong_type", "a message content is a number"
        if defect == "unknown_role":
            record[key][0][role_key] = self.rng.choice(["narrator", "moderator", "bot_x"])
            return _dumps(record), "unknown_role", "a message role outside the known roles"
        if defect == "empty_conversation":
            record[key] = []
            return _dumps(record), "empty_conversation", "the message list is empty"
        del record[key][-1][text_key]
        return _dumps(record), "missing_field", "a message without its text field"

    def run(self) -> list[_Slot]:
        self.assign()
        self.fill()
        return self.slots


_WORD = re.compile(r"[A-Za-z]{4,}[.!?]?")


def _variant(content: str, variant: str) -> str:
    """A copy of ``content`` that differs only in what dedup normalization removes."""
    if variant == "lowercase":
        return content.lower()
    if variant == "whitespace":
        return "  " + content.replace(". ", ".   ").replace("\n\n", "\n \n\n") + " \n"
    if variant == "punctuation":
        content = content.replace(",", "").replace("?", "")
        return content[:-1] + "!" if content.endswith(".") else content
    return content


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


def _openai_object(chat: Chat) -> dict[str, Any]:
    return {"messages": [dict(m) for m in chat.messages], "topic": chat.topic}


_SHAREGPT_SPEAKERS = {"user": "human", "assistant": "gpt"}


def _sharegpt_object(chat: Chat) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "conversations": [
            {"from": _SHAREGPT_SPEAKERS[m["role"]], "value": m["content"]}
            for m in chat.messages
            if m["role"] != "system"
        ]
    }
    system = [m["content"] for m in chat.messages if m["role"] == "system"]
    if system:
        obj["system"] = system[0]
    obj["topic"] = chat.topic
    return obj


def _alpaca_object(chat: Chat) -> dict[str, Any]:
    user, answer = chat.messages[0]["content"], chat.messages[1]["content"]
    if chat.instruction is not None and chat.input is not None:
        return {"instruction": chat.instruction, "input": chat.input, "output": answer, "topic": chat.topic}
    return {"instruction": user, "input": "", "output": answer, "topic": chat.topic}


# ==================================================================================================
# Code and math records


class CodeFactory:
    """HumanEval- and MBPP-shaped problems; a wrong solution always fails at least one of its tests."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self._compiled: dict[str, tuple[Callable[..., Any], dict[str, Callable[..., Any]]]] = {}

    def _functions(self, t: CodeTemplate) -> tuple[Callable[..., Any], dict[str, Callable[..., Any]]]:
        """The template's correct and buggy functions, compiled once with neutral names."""
        if t.key not in self._compiled:
            params = [f"p{i}" for i in range(len(t.params))]
            names = {"a": "p0", "b": "p1", "c": "p2", "v": "res_"}

            def build(body: str) -> Callable[..., Any]:
                namespace: dict[str, Any] = {}
                exec(f"def f({', '.join(params)}):\n" + string.Template(body).substitute(names), namespace)
                return namespace["f"]

            self._compiled[t.key] = (build(t.correct), {kind: build(body) for kind, body in t.bugs})
        return self._compiled[t.key]

    def problem(self, wrong: bool, n_examples: int, n_tests: int) -> dict[str, Any]:
        """Names, docstring, body and test cases of one problem (a buggy body when ``wrong``)."""
        r = self.rng
        t = r.choice(CODE_TEMPLATES)
        correct, buggy = self._functions(t)
        params = [r.choice(options) for options in t.params]
        bodies = t.correct + "".join(body for _, body in t.bugs)
        local = r.choice(
            [
                n
                for n in RESULT_NAMES
                if n not in params
                and f" {n} " not in bodies
                and f" {n}\n" not in bodies
                and f"({n}" not in bodies
            ]
        )
        names = dict(zip("abc", params, strict=False)) | {"v": local}
        bug = r.choice(t.bugs)[0] if wrong else None
        examples = [t.cases(r) for _ in range(n_examples)]
        for _ in range(1000):
            tests = [t.cases(r) for _ in range(n_tests)]
            if bug is None or any(buggy[bug](*args) != correct(*args) for args in tests):
                break
        else:  # pragma: no cover - every template's bug shows on typical inputs
            raise AssertionError(f"could not expose bug {bug} of {t.key}")
        body = string.Template(dict(t.bugs)[bug] if bug else t.correct).substitute(names)
        return {
            "template": t,
            "fn": r.choice(t.names),
            "params": params,
            "doc": string.Template(r.choice(t.docs)).safe_substitute(names),
            "task": r.choice(t.tasks),
            "body": body,
            "bug": bug,
            "examples": [(args, correct(*args)) for args in examples],
            "tests": [(args, correct(*args)) for args in tests],
        }

    @staticmethod
    def _call(fn: str, args: tuple[Any, ...]) -> str:
        return f"{fn}({', '.join(repr(a) for a in args)})"

    def humaneval(self, index: int, wrong: bool) -> tuple[dict[str, Any], str | None]:
        p = self.problem(wrong, n_examples=3, n_tests=5)
        fn = p["fn"]
        examples = "".join(f"    >>> {self._call(fn, a)}\n    {e!r}\n" for a, e in p["examples"])
        prompt = f'def {fn}({", ".join(p["params"])}):\n    """{p["doc"]}\n\n{examples}    """\n'
        asserts = "".join(
            f"    assert candidate({', '.join(repr(a) for a in args)}) == {e!r}\n" for args, e in p["tests"]
        )
        test = f'\n\nMETADATA = {{"author": "thresher-demo", "dataset": "test"}}\n\n\ndef check(candidate):\n{asserts}'
        record = {
            "task_id": f"ThresherDemo/{index}",
            "prompt": prompt,
            "canonical_solution": p["body"],
            "test": test,
            "entry_point": fn,
        }
        return record, p["bug"]

    def mbpp(self, index: int, wrong: bool) -> tuple[dict[str, Any], str | None]:
        p = self.problem(wrong, n_examples=0, n_tests=3)
        fn = p["fn"]
        record = {
            "task_id": 1000 + index,
            "text": p["task"],
            "code": f"def {fn}({', '.join(p['params'])}):\n{p['body']}",
            "test_list": [f"assert {self._call(fn, a)} == {e!r}" for a, e in p["tests"]],
            "test_setup_code": "",
            "challenge_test_list": [],
        }
        return record, p["bug"]


def math_problem(rng: random.Random, wrong: bool, seen: set[str]) -> tuple[dict[str, Any], int | None]:
    """A GSM8K-shaped record; when ``wrong``, one annotation's result is off and carried to the end.

    Two problems of one template with the same numbers differ only in a name or an item word, which
    makes them near duplicates; a problem is redrawn while its template and numbers are in ``seen``.
    """
    for _ in range(1000):
        template = rng.choice(MATH_TEMPLATES)
        calc = Calc(rng, rng.randint(0, 1) if wrong else None)
        question, steps, final = template(rng, calc)
        key = template.__name__ + ":" + ",".join(re.findall(r"[0-9]+", question))
        if key not in seen:
            seen.add(key)
            break
    else:  # pragma: no cover - the templates have far more combinations than any corpus needs
        raise AssertionError("could not draw a new math problem")
    assert calc.planted == wrong
    return {"question": question, "answer": "\n".join(steps) + f"\n#### {final}"}, calc.wrong_step


# ==================================================================================================
# Writing


def _write_jsonl(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


def _write_chat_file(path: Path, layout: str, slots: list[_Slot]) -> None:
    """Write one chat file and set every slot's ``line`` to the adapter's ``source_line``."""
    chats = [s.chat for s in slots]
    if layout in _JSONL_CHAT:
        to_object = _openai_object if layout == "openai" else _sharegpt_object
        lines = [s.raw if s.raw is not None else _dumps(to_object(s.chat)) for s in slots]  # type: ignore[arg-type]
        _write_jsonl(path, lines)
        for s in slots:
            s.line = s.pos
        return
    assert all(c is not None for c in chats)
    if layout == "alpaca":
        items = [_alpaca_object(c) for c in chats]  # type: ignore[arg-type]
        path.write_text(json.dumps(items, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
        for s in slots:
            s.line = s.pos
        return
    frame = pl.DataFrame(
        {
            "prompt": [c.messages[0]["content"] for c in chats],  # type: ignore[union-attr]
            "response": [c.messages[1]["content"] for c in chats],  # type: ignore[union-attr]
            "topic": [c.topic for c in chats],  # type: ignore[union-attr]
        },
        schema={"prompt": pl.String, "response": pl.String, "topic": pl.String},
    )
    if layout == "parquet":
        frame.write_parquet(path, compression="zstd", statistics=False)
        for s in slots:
            s.line = s.pos
        return
    frame.write_csv(path)
    # CSV rows are physical lines: the header is line 1 and a cell with k newlines spans k + 1 lines.
    line = 2
    for s, c in zip(slots, chats, strict=True):
        s.line = line
        line += 1 + sum(m["content"].count("\n") for m in c.messages) + c.topic.count("\n")  # type: ignore[union-attr]


def generate(out_dir: Path, rows: int, seed: int) -> DemoCorpus:
    """Write the demo corpus (about ``rows`` candidate records) and its ground truth under ``out_dir``.

    Deterministic: the same ``rows`` and ``seed`` give byte-identical files.
    """
    if rows < MIN_ROWS:
        raise ValueError(f"rows must be at least {MIN_ROWS} so that every planted kind appears, got {rows}")
    out_dir = Path(out_dir)
    files_dir = out_dir / "files"
    files_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    layout = [*CHAT_FILES, *CODE_FILES, *MATH_FILES]
    sizes = dict(
        zip((name for name, _, _ in layout), _allocate(rows - 1, [s for _, _, s in layout]), strict=True)
    )
    truth: list[dict[str, Any]] = []

    # Chat files: plant, fill, write (CSV line numbers are known only once written).
    slots = _ChatPlanter(rng, [sizes[name] for name, _, _ in CHAT_FILES], rows).run()
    for f, (name, chat_layout, _) in enumerate(CHAT_FILES):
        _write_chat_file(files_dir / name, chat_layout, [s for s in slots if s.file == f])
    for s in slots:
        if s.kind == "clean":
            continue
        name = CHAT_FILES[s.file][0]
        item: dict[str, Any] = {"file": name, "line": s.line, "kind": s.kind, "expect": None}
        if s.kind in REJECT:
            item["expect"] = _expect(*REJECT[s.kind])
        if s.of is not None:
            original = slots[s.of]
            item["of"] = {"file": CHAT_FILES[original.file][0], "line": original.line}
        item.update(s.info)
        truth.append(item)

    # Code and math files.
    code = CodeFactory(rng)
    for name, code_layout, _ in CODE_FILES:
        make = code.humaneval if code_layout == "humaneval" else code.mbpp
        lines = []
        for pos in range(1, sizes[name] + 1):
            record, bug = make(pos, rng.random() < WRONG_CODE_RATE)
            lines.append(_dumps(record))
            if bug:
                truth.append(
                    {
                        "file": name,
                        "line": pos,
                        "kind": "wrong_solution",
                        "expect": _expect(*REJECT["wrong_solution"]),
                        "bug": bug,
                        "entry_point": record.get("entry_point"),
                    }
                )
        _write_jsonl(files_dir / name, lines)
    seen: set[str] = set()
    for name, _, _ in MATH_FILES:
        lines = []
        for pos in range(1, sizes[name] + 1):
            record, step = math_problem(rng, rng.random() < WRONG_MATH_RATE, seen)
            lines.append(_dumps(record))
            if step is not None:
                truth.append(
                    {
                        "file": name,
                        "line": pos,
                        "kind": "calculation_error",
                        "expect": _expect(*REJECT["calculation_error"]),
                        "annotation": step + 1,
                    }
                )
        _write_jsonl(files_dir / name, lines)

    (files_dir / EMPTY_FILE).write_bytes(b"")
    truth.append(
        {"file": EMPTY_FILE, "line": 0, "kind": "empty_file", "expect": _expect("raw", "empty_file")}
    )

    truth.sort(key=lambda item: (item["file"], item["line"]))
    ground_truth = out_dir / "ground_truth.jsonl"
    ground_truth.write_bytes(b"".join(_dumps(item) + b"\n" for item in truth))
    names = sorted([*sizes, EMPTY_FILE])
    planted: dict[str, int] = {}
    for item in truth:
        planted[item["kind"]] = planted.get(item["kind"], 0) + 1
    return DemoCorpus(
        root=out_dir,
        files=[files_dir / n for n in names],
        ground_truth=ground_truth,
        records={**sizes, EMPTY_FILE: 1},
        planted=dict(sorted(planted.items())),
    )
