"""Word lists for the semantic matcher's guards (immutable module constants).

A guard refuses a semantic match when two requests disagree on something that changes the answer:
numbers, negation, a pole of an opposition (on/off, increase/decrease, north/south ...), a unit, a
language, a month, a weekday.  The lists are general English, not tuned to any evaluation file.
"""

from __future__ import annotations

STOPWORDS = frozenset("""
a an the and or but if then else of at by for with about against between into through during to from in on
up down out over under again further once here there when where why how what which who whom whose this that
these those am is are was were be been being have has had having do does did doing i me my myself we our ours
ourselves you your yours yourself yourselves he him his himself she her hers herself it its itself they them
their theirs themselves can could should would will shall may might must also just so than too very s t
any some such own same other each few both all only now ever even much many lot lots really quite please
thing things something anything someone anyone one ones get gets got getting go goes going went make makes made
way ways tell know let us use used using via like etc i'm i've it's what's whats there's
""".split())

# Words that carry little of a question's meaning on their own: a request that adds or drops them
# can still be the same request ("best", "ways", "tips").  Compared with their own weight.
GENERIC = frozenset("""
best good great top better easiest easy simple quick quickly fast effective effectively efficient efficiently
possible possibly actually really basically exactly generally usually typically ever currently today nowadays
tips advice guide tutorial methods method steps step ways means idea ideas example examples kind type types
important main key major common popular good explain explanation describe meaning mean means define definition
learn learning start started begin beginner beginners someone people person need needs want wants wish trying try
help helpful recommend recommended suggest suggestion suggestions should would find know
""".split())

NEGATORS = frozenset("""
not no never none nobody nothing neither nor cannot can't won't don't doesn't didn't isn't aren't wasn't weren't
shouldn't wouldn't couldn't haven't hasn't hadn't mustn't without n't nowhere
""".split())

# Oppositions: every word maps to (group, pole).  Two requests conflict when, in one group, the set of
# poles they use differs (so "turn on Bluetooth on a Mac" {+} vs "turn off Bluetooth on a Mac" {+,-}).
_OPPOSITIONS: tuple[tuple[str, ...], ...] = (
    ("on", "off"),
    ("in into inward inbound incoming", "out outward outbound outgoing"),
    ("enable enabled enabling enables activate activated activation", "disable disabled disabling disables deactivate deactivated deactivation"),
    ("lock locked locking locks", "unlock unlocked unlocking unlocks"),
    ("encrypt encrypted encrypting encryption", "decrypt decrypted decrypting decryption"),
    ("encode encoded encoding encoder", "decode decoded decoding decoder"),
    ("compress compressed compressing compression zip zipped", "decompress decompressed decompressing decompression unzip unzipped extract"),
    ("install installed installing installation", "uninstall uninstalled uninstalling uninstallation"),
    ("mount mounted mounting", "unmount unmounted unmounting"),
    ("add added adding adds create created creating insert inserted", "remove removed removing removes delete deleted deleting deletes drop erase"),
    ("increase increased increasing increases raise raising boost grow growing gain gaining", "decrease decreased decreasing decreases reduce reduced reducing reduces lower lowering cut shrink lose losing loss"),
    ("maximize maximise maximized maximum max maximal", "minimize minimise minimized minimum min minimal"),
    ("up upward upwards", "down downward downwards"),
    ("upload uploaded uploading uploads", "download downloaded downloading downloads"),
    ("import imported importing imports", "export exported exporting exports"),
    ("input inputs", "output outputs"),
    ("push pushed pushing", "pull pulled pulling"),
    ("buy buying bought purchase purchasing", "sell selling sold"),
    ("before prior earlier", "after later"),
    ("first", "last final"),
    ("start starting started begin beginning", "stop stopping stopped end ending finish finishing"),
    ("open opened opening", "close closed closing shut"),
    ("north northern", "south southern"),
    ("east eastern", "west western"),
    ("left", "right"),
    ("above", "below"),
    ("top", "bottom"),
    ("high higher highest", "low lower lowest"),
    ("more", "less fewer"),
    ("most", "least"),
    ("big bigger biggest large larger largest", "small smaller smallest little tiny"),
    ("long longer longest", "short shorter shortest"),
    ("hot hotter hottest warm warmer heat heating", "cold colder coldest cool cooler cooling freeze frozen"),
    ("fast faster fastest quick quicker", "slow slower slowest"),
    ("early earlier earliest", "late later latest"),
    ("old older oldest", "new newer newest young younger youngest"),
    ("plus add addition sum", "minus subtract subtraction difference"),
    ("multiply multiplied multiplication times product", "divide divided division quotient"),
    ("positive", "negative"),
    ("true", "false"),
    ("win won winning winner", "lose lost losing loser"),
    ("pros advantages advantage benefits benefit upside upsides", "cons disadvantages disadvantage risks risk drawbacks drawback downsides downside dangers"),
    ("good better best", "bad worse worst"),
    ("love loving", "hate hating"),
    ("like likes", "dislike dislikes"),
    ("agree", "disagree"),
    ("accept accepted accepting", "reject rejected rejecting decline declined"),
    ("allow allowed allowing permit", "deny denied block blocked blocking forbid ban banned"),
    ("include included including", "exclude excluded excluding"),
    ("show showing shown unhide", "hide hiding hidden"),
    ("visible", "invisible"),
    ("connect connected connecting connection", "disconnect disconnected disconnecting"),
    ("subscribe subscribed", "unsubscribe unsubscribed"),
    ("follow followed following", "unfollow unfollowed"),
    ("login signin", "logout signout"),
    ("mute muted", "unmute unmuted"),
    ("pause paused", "resume resumed unpause"),
    ("join joined joining", "leave leaving quit quitting"),
    ("arrive arrival arriving", "depart departure departing"),
    ("ascending ascend", "descending descend"),
    ("uppercase upper capital", "lowercase lower"),
    ("horizontal horizontally", "vertical vertically"),
    ("inside interior internal inner", "outside exterior external outer"),
    ("front forward forwards", "back backward backwards rear"),
    ("previous prev", "next"),
    ("prefix", "suffix"),
    ("male men man boy boys husband father dad son brother king", "female women woman girl girls wife mother mom daughter sister queen"),
    ("summer", "winter"),
    ("spring", "autumn fall"),
    ("morning", "evening night"),
    ("yesterday", "tomorrow"),
    ("past", "future"),
    ("legal legally", "illegal illegally"),
    ("possible", "impossible"),
    ("safe safely safety", "unsafe dangerous harmful"),
    ("healthy", "unhealthy"),
    ("rich wealthy", "poor"),
    ("cheap cheaper cheapest inexpensive", "expensive costly"),
    ("light lighter", "dark darker heavy heavier"),
    ("wet", "dry"),
    ("full", "empty"),
    ("easy easier easiest", "hard harder hardest difficult"),
    ("strong stronger strongest", "weak weaker weakest"),
    ("send sent sending", "receive received receiving"),
    ("give giving", "take taking"),
    ("borrow borrowing", "lend lending"),
    ("teacher", "student"),
    ("parent parents", "child children kid kids"),
    ("employer", "employee"),
    ("server", "client"),
    ("sender", "recipient receiver"),
    ("asleep sleep", "awake wake"),
    ("inhale", "exhale"),
    ("success successful", "failure failed fail"),
    ("with", "without"),
    ("public", "private"),
    ("static", "dynamic"),
    ("synchronous sync", "asynchronous async"),
    ("absolute", "relative"),
    ("online", "offline"),
    ("global", "local"),
    ("debit", "credit"),
    ("profit profits", "loss losses"),
    ("asset assets", "liability liabilities"),
    ("acid acidic", "base basic alkaline"),
    ("mean average", "median"),
    ("mitosis", "meiosis"),
    ("dominant", "recessive"),
    ("offense offensive", "defense defensive"),
)


def _build_oppositions() -> dict[str, tuple[int, int]]:
    table: dict[str, tuple[int, int]] = {}
    for group, poles in enumerate(_OPPOSITIONS):
        for pole, words in enumerate(poles):
            for word in words.split():
                table.setdefault(word, (group, pole))
    return table


OPPOSITIONS: dict[str, tuple[int, int]] = _build_oppositions()

# Units, currencies and measures: requests must use the same ones, in the same order.
_UNIT_GROUPS = """
km kilometer kilometers kilometre kilometres kms
mile miles mi
meter meters metre metres m
centimeter centimeters centimetre centimetres cm
millimeter millimeters millimetre millimetres mm
foot feet ft
inch inches in.
yard yards yd
kilogram kilograms kg kgs kilo kilos
gram grams g
milligram milligrams mg
pound pounds lb lbs
ounce ounces oz
ton tons tonne tonnes
liter liters litre litres l
milliliter milliliters millilitre millilitres ml
gallon gallons gal
quart quarts
pint pints
cup cups
tablespoon tablespoons tbsp
teaspoon teaspoons tsp
celsius centigrade
fahrenheit
kelvin
second seconds sec secs
minute minutes mins
hour hours hr hrs
day days
week weeks
month months
year years
decade decades
century centuries
byte bytes
kilobyte kilobytes kb
megabyte megabytes mb
gigabyte gigabytes gb
terabyte terabytes tb
bit bits
watt watts w
kilowatt kilowatts kw
volt volts v
amp amps ampere amperes
joule joules
calorie calories kcal
mph
kph kmh
acre acres
hectare hectares
dollar dollars usd $
euro euros eur €
rupee rupees inr rs
yen jpy ¥
sterling gbp £
yuan rmb cny
percent percentage %
degree degrees
radian radians
"""

UNITS: dict[str, str] = {w: line.split()[0] for line in _UNIT_GROUPS.strip().splitlines() for w in line.split()}
# Ambiguous short forms counted as units only right after a number ("5 m", "3 l", "10 g").
UNIT_AFTER_NUMBER_ONLY = frozenset({"m", "mi", "g", "l", "w", "v", "in.", "gal", "sec", "mins", "hr", "rs", "kb", "mb",
                                    "gb", "tb", "ft", "yd", "oz", "lb", "lbs", "kg", "km", "cm", "mm", "ml"})

_NAMED_GROUPS = {
    "language": """english german french spanish italian portuguese russian chinese mandarin cantonese japanese korean
        arabic hindi urdu bengali punjabi tamil telugu marathi gujarati dutch swedish norwegian danish finnish polish
        czech greek turkish hebrew persian farsi thai vietnamese indonesian malay swahili latin ukrainian romanian
        hungarian irish welsh python java javascript typescript c++ c# golang rust ruby php perl kotlin swift scala
        haskell sql html css bash powershell matlab fortran cobol""",
    "month": """january february march april june july august september october november december jan feb mar
        apr jun jul aug sep sept oct nov dec""",
    "weekday": "monday tuesday wednesday thursday friday saturday sunday",
    "planet": "mercury venus earth mars jupiter saturn uranus neptune pluto moon sun",
    "os": "windows linux ubuntu debian fedora centos macos mac osx ios android chromeos unix",
    "browser": "chrome firefox safari edge opera",
    "color": "red green blue yellow orange purple pink black white grey gray brown violet",
}
NAMED: dict[str, str] = {w: group for group, words in _NAMED_GROUPS.items() for w in words.split()}

NUMBER_WORDS: dict[str, str] = {
    "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6", "seven": "7",
    "eight": "8", "nine": "9", "ten": "10", "eleven": "11", "twelve": "12", "thirteen": "13", "fourteen": "14",
    "fifteen": "15", "sixteen": "16", "seventeen": "17", "eighteen": "18", "nineteen": "19", "twenty": "20",
    "thirty": "30", "forty": "40", "fifty": "50", "sixty": "60", "seventy": "70", "eighty": "80", "ninety": "90",
    "hundred": "100", "thousand": "1000", "million": "1e6", "billion": "1e9", "trillion": "1e12",
    "dozen": "12", "half": "0.5", "quarter": "0.25", "double": "x2", "twice": "x2", "triple": "x3", "thrice": "x3",
    "once": "x1", "single": "1", "couple": "2", "pair": "2",
    "second": "2nd", "third": "3rd", "fourth": "4th", "fifth": "5th", "sixth": "6th",
    "seventh": "7th", "eighth": "8th", "ninth": "9th", "tenth": "10th",
    "ii": "2", "iii": "3", "iv": "4", "vi": "6", "vii": "7", "viii": "8", "ix": "9", "xi": "11", "xii": "12",
    "squared": "^2", "square": "^2", "cubed": "^3", "cube": "^3",
}
ORDINAL_FIRST = "1st"

# Equivalent spellings and a few safe synonyms (mapped onto one canonical word before comparison).
SYNONYMS: dict[str, str] = {
    "quickest": "fastest", "quickly": "fast", "rapidly": "fast", "speedily": "fast",
    "simplest": "easiest", "simply": "easy", "easily": "easy",
    "methods": "way", "method": "way", "ways": "way", "techniques": "way", "technique": "way",
    "approaches": "way", "approach": "way", "tips": "way", "tricks": "way", "strategies": "way", "strategy": "way",
    "top": "best", "greatest": "best", "finest": "best",
    "movie": "film", "movies": "film", "films": "film",
    "cellphone": "phone", "smartphone": "phone", "mobile": "phone",
    "pc": "computer",
    "usa": "us", "u.s.": "us", "u.s": "us", "u.s.a.": "us",
    "uk": "britain", "u.k.": "britain",
    "automobile": "car",
    "buy": "purchase", "obtain": "get", "acquire": "get",
    "reduce": "lose", "shed": "lose",
    "job": "job", "career": "job", "occupation": "job", "profession": "job",
    "begin": "start", "commence": "start",
    "big": "large", "huge": "large", "enormous": "large",
    "fix": "solve", "resolve": "solve", "repair": "solve",
    "create": "make", "build": "make",
    "money": "money", "cash": "money", "income": "money", "earn": "money", "earning": "money",
    "online": "online", "internet": "online", "web": "online",
    "study": "learn", "studying": "learn", "learning": "learn",
    "improve": "improve", "enhance": "improve", "boost": "improve",
    "gf": "girlfriend", "bf": "boyfriend",
}

# British -> American spellings (applied to every token before the guards, so "colour"/"color",
# "organise"/"organize", "grey"/"gray" are the same word).
_ISE_STEMS = """organ real recogn apolog optim custom priorit minim maxim util special summar memor categor critic
emphas final author normal visual initial serial synchron standard character modern global capital central
personal legal monet digit stabil neutral industrial commercial civil fertil steril harmon jeopard familiar
hospital item local mobil motor penal popular public rational revolution social subsid symbol theor tranquil
vapor victim western general"""
_ISE_SUFFIXES = (("ise", "ize"), ("ised", "ized"), ("ises", "izes"), ("ising", "izing"), ("isation", "ization"),
                 ("isations", "izations"), ("iser", "izer"), ("isers", "izers"))
_OUR_STEMS = "colo favo behavio hono labo neighbo humo flavo harbo rumo vapo savo endeavo armo"
SPELLING: dict[str, str] = {
    **{stem + br: stem + us for stem in _ISE_STEMS.split() for br, us in _ISE_SUFFIXES},
    **{stem + "ur" + end: stem + "r" + end for stem in _OUR_STEMS.split()
       for end in ("", "s", "ed", "ing", "ite", "ites", "ful", "able", "hood", "al")},
    "analyse": "analyze", "analysed": "analyzed", "analysing": "analyzing", "paralyse": "paralyze",
    "centre": "center", "centres": "centers", "theatre": "theater", "theatres": "theaters", "fibre": "fiber",
    "metre": "meter", "metres": "meters", "litre": "liter", "litres": "liters", "kilometre": "kilometer",
    "kilometres": "kilometers", "centimetre": "centimeter", "centimetres": "centimeters",
    "defence": "defense", "licence": "license", "offence": "offense", "pretence": "pretense",
    "programme": "program", "programmes": "programs", "catalogue": "catalog", "dialogue": "dialog",
    "travelling": "traveling", "travelled": "traveled", "traveller": "traveler", "travellers": "travelers",
    "cancelled": "canceled", "cancelling": "canceling", "modelling": "modeling", "labelled": "labeled",
    "labelling": "labeling", "jewellery": "jewelry", "grey": "gray", "tyre": "tire", "tyres": "tires",
    "cheque": "check", "cheques": "checks", "aluminium": "aluminum", "mum": "mom", "maths": "math",
    "aeroplane": "airplane", "aeroplanes": "airplanes", "ageing": "aging", "enrol": "enroll",
    "fulfil": "fulfill", "skilful": "skillful", "whilst": "while", "amongst": "among", "learnt": "learned",
    "pyjamas": "pajamas", "plough": "plow", "sceptical": "skeptical", "manoeuvre": "maneuver",
    "oestrogen": "estrogen", "paediatric": "pediatric", "anaemia": "anemia", "diarrhoea": "diarrhea",
    "haemoglobin": "hemoglobin", "orthopaedic": "orthopedic", "encyclopaedia": "encyclopedia",
}
