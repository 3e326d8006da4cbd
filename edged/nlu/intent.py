"""What a question asks for: cue phrases, scored, plus what the metric and time parsers found.

Intents: ``current_value``, ``stats`` (with ``stat`` min/max/mean/range/count), ``trend``,
``anomalies``, ``list``, ``stale``, ``help``, ``out_of_scope`` (knowledge beyond the sensors, or a
sensor that does not exist) and ``cloud`` (why / what should I do / drafting / long multi-part).
Each cue list is general English for that intent, not a copy of any question set's lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# ------------------------------------------------------------------ cue phrases (regex fragments)
WHY = [r"\bwhy\b", r"\bhow come\b", r"\bwhat (?:caused|causes|is causing|could cause|made)\b", r"\breasons?\b",
       r"\bcause of\b", r"\bexplain\b", r"\bwhat does (?:that|this|it) mean\b", r"\bwhat'?s (?:causing|behind)\b"]
ADVICE = [r"\bshould (?:i|we|you)\b", r"\bwhat (?:i|we) should\b", r"\bwhat (?:i|we) (?:can|could|need to) do\b", r"\bwhat (?:should|can|could|do) (?:i|we) do\b", r"\bdo (?:i|we) need to\b",
          r"\brecommend", r"\badvi[cs]e\b", r"\bsuggest", r"\bis (?:it|that|this) (?:safe|ok|okay|fine|good|bad|too|enough|normal|healthy|dangerous|a problem)\b",
          r"\b(?:good|bad|ok|okay|fine|safe|healthy|ideal|optimal|right) for\b", r"\bideal\b", r"\boptimal\b",
          r"\bbest (?:time|way|temperature|humidity|setting)\b", r"\bworth\b", r"\bhow (?:do|can|could|should) (?:i|we)\b",
          r"\bhow to\b", r"\bwhat to do\b", r"\bany (?:tips|ideas)\b", r"\btips?\b", r"\bwhat would you\b",
          r"\bis (?:\d+(?:\.\d+)?\s*(?:%|°|degrees|c\b|cm|w\b)|that|this) (?:too|good|bad|ok|okay|normal|high|low|fine)\b",
          r"\bworr(?:y|ied)\b", r"\bconcerned?\b", r"\bdangerous\b", r"\bfix\b", r"\brepair\b", r"\bcall a\b",
          r"\bneed (?:a|an|to)\b", r"\bmould|mold\b", r"\bcould (?:\w+ ){0,4}be\b", r"\bbroken\b", r"\bmight (?:\w+ ){0,4}be\b",
          r"\bgiven (?:the|that|these)\b"]
DRAFT = [r"\bwrite\b", r"\bdraft\b", r"\bcompose\b", r"\be-?mail\b", r"\bpoem\b", r"\bhaiku\b", r"\blimerick\b",
         r"\bstory\b", r"\btweet\b", r"\bletter\b", r"\btranslate\b", r"\bin (?:german|french|spanish|italian|dutch|polish|japanese|chinese)\b",
         r"\byaml\b", r"\bautomation\b", r"\bscript\b", r"\bcode\b", r"\bsong\b", r"\bslogan\b", r"\bjoke\b",
         r"\bmessage (?:to|for)\b", r"\bnote (?:to|for)\b", r"\btext (?:to|for|my)\b", r"\bsms\b", r"\bsummari[sz]e .* (?:for|as|in)\b",
         r"\breport for\b", r"\bexplanation\b", r"\bparagraph\b", r"\bessay\b", r"\bpost\b", r"\bchecklist\b", r"\bplan\b"]
KNOWLEDGE = [r"\bforecast\b", r"\btomorrow\b", r"\bnext (?:week|month|year|days?)\b", r"\bwill it (?:rain|snow|be)\b",
             r"\bgoing to (?:rain|snow)\b", r"\bweather (?:in|for|at)\b", r"\bin (?:london|paris|berlin|new york|tokyo|munich|vienna|madrid|rome)\b",
             r"\bprice\b", r"\bcost\b", r"\bhow much (?:does|do|is a|are)\b", r"\bwhat is an? \w+\b(?! (?:sensor|reading|value))",
             r"\bwhat are \w+\b(?! (?:the|my|your|all))", r"\bdefine\b", r"\bdefinition\b", r"\bwho\b", r"\bcapital of\b", r"\brecipe\b",
             r"\btomato(?:es)?\b", r"\bplants?\b(?! sensor)", r"\bcucumbers?\b", r"\bseedlings?\b", r"\borchids?\b",
             r"\bbasil\b", r"\bherbs?\b", r"\bvegetables?\b", r"\bdew point\b", r"\bheat index\b", r"\bfeels like\b",
             r"\bsunrise\b", r"\bsunset\b", r"\bnews\b", r"\bstock\b", r"\bmeaning of\b", r"\bhistory of\b",
             r"\bhow (?:does|do) (?:a|an|the)? ?\w+ work\b", r"\bwhat'?s a good\b", r"\btypical (?:for|in)\b",
             r"\bnormal (?:for|in)\b", r"\bclimate\b", r"\bseason\b", r"\bwinter\b", r"\bsummer\b", r"\bthe internet\b",
             r"\bweather like\b", r"\bflood risk\b", r"\binsurance\b", r"\bwarranty\b", r"\bmanual\b"]
HELP = [r"\bhelp\b", r"\bwhat can (?:you|i) (?:do|ask|say)\b", r"\bwhat (?:questions|commands|kinds? of questions)\b",
        r"\bhow (?:does|do) (?:this|you) work\b", r"\bwho are you\b", r"\bwhat are you\b", r"\bhow do i use\b", r"\busage\b",
        r"\bexamples?\b", r"\bcapabilit", r"\bwhat do you do\b", r"\binstructions\b", r"\bhow can you help\b",
        r"\bwhat can you tell\b", r"\bwhat do you know\b", r"^\s*\?\s*$"]
GREETING = re.compile(r"^\s*(?:hi|hello|hey|hallo|yo|good (?:morning|afternoon|evening)|thanks?(?: you)?|thank you|cheers|ok(?:ay)?|ping|test)\b[\s!.?,]*(?:there|again|edged|bot)?[\s!.?]*$")
LIST = [r"\b(?:which|what) (?:sensors|metrics|devices|things|data|measurements|readings)\b", r"\blist\b",
        r"\bwhat (?:do|can) you (?:measure|monitor|track|see|watch|sense|read)\b", r"\bwhat (?:are you|is being) (?:measuring|monitoring|tracking)\b",
        r"\ball (?:the )?(?:sensors|metrics|devices)\b", r"\bhow many (?:sensors|metrics|devices)\b", r"\boverview\b",
        r"\bsensors? (?:status|overview)\b", r"\bstatus of (?:all|every|the) (?:sensors|metrics|devices)\b",
        r"\bwhat sensors?\b", r"\b(?:which|what) (?:rooms|places|areas|locations|zones)\b", r"\binventory\b", r"\bwhat(?:'s| is) (?:there|available|connected)\b", r"\bdo you have\b",
        r"\bis there an?\b", r"\bare there any (?:sensors|metrics)\b", r"\bsystem status\b", r"\bdashboard\b", r"\bstatus\b"]
STALE = [r"\bstale\b", r"\bnot (?:reporting|sending|updating|responding|working)\b", r"\bstopped (?:reporting|sending|working|updating)\b",
         r"\boffline\b", r"\bsilent\b", r"\bgone (?:quiet|silent|dark)\b", r"\bdead\b", r"\bno (?:new )?(?:data|readings|updates)\b",
         r"\bnot (?:been )?updated\b", r"\blast (?:heard|seen|update|report)", r"\bhear(?:d)? from\b", r"\bhaven'?t (?:reported|sent|updated|heard)\b",
         r"\bhasn'?t (?:reported|sent|updated)\b", r"\bunresponsive\b", r"\bout of date\b", r"\boutdated\b", r"\bquiet\b",
         r"\bdropped out\b", r"\blost (?:contact|connection)\b", r"\b(?:all|every) (?:sensors?|devices?|metrics?) (?:working|alive|online|ok|okay|reporting)\b",
         r"\bworking\b", r"\balive\b", r"\bonline\b", r"\breporting\b", r"\bmissing\b", r"\bold (?:data|readings?|values?)\b",
         r"\bup to date\b", r"\bfresh\b", r"\bstill (?:sending|reporting|working|alive|online|updating|there)\b",
         r"\bsending (?:data|readings)\b"]
ANOMALY = [r"\banomal", r"\bunusual", r"\babnormal", r"\bweird", r"\bstrange", r"\bodd\b", r"\bwrong\b", r"\bproblems?\b",
           r"\bissues?\b", r"\balerts?\b", r"\balarms?\b", r"\bspikes?\b", r"\bspiked\b", r"\bincidents?\b", r"\boutliers?\b",
           r"\bwhat happened\b", r"\banything (?:happen|going on|interesting|new|special|notable|to report)", r"\bevents?\b",
           r"\bglitch", r"\birregular", r"\bout of the ordinary\b", r"\bsuspicious\b", r"\bjump(?:ed|s)?\b", r"\bsurge",
           r"\bfaults?\b", r"\bfaulty\b", r"\bstuck\b", r"\bfrozen\b", r"\bflatlin", r"\bwarnings?\b", r"\bnotable\b",
           r"\bexcursions?\b", r"\bpeaks? (?:event|episode)s?\b", r"\bepisodes?\b", r"\bleaks?\b", r"\bflood(?:ing|ed)?\b",
           r"\bnotice\b", r"\bnoticed\b", r"\bhiccups?\b", r"\bdrama\b", r"\bany trouble\b", r"\bis everything (?:ok|okay|fine|normal|alright|all right)\b",
           r"\ball (?:ok|okay|good|fine|normal|quiet)\b"]
TREND = [r"\btrend", r"\brising\b", r"\bfalling\b", r"\bgoing (?:up|down)\b", r"\bincreas", r"\bdecreas", r"\bdropping\b",
         r"\bclimbing\b", r"\bchang(?:ing|ed)\b", r"\bwent (?:up|down)\b", r"\brate of\b", r"\bper hour\b", r"\bdeclin",
         r"\bgetting (?:warmer|colder|hotter|cooler|wetter|drier|higher|lower|more|less)\b", r"\bheading\b", r"\bdirection\b"]
STAT_MAX = [r"\bmax(?:imum)?\b", r"\bhighest\b", r"\bpeak(?:ed)?\b", r"\btop\b", r"\bhottest\b", r"\bwarmest\b",
            r"\bmost humid\b", r"\bwettest\b", r"\bhigh point\b", r"\bhow (?:hot|warm|high|humid|damp|wet|much) (?:did|has|was|were|had)\b",
            r"\bhow (?:hot|warm|high|humid|damp) .{0,30}\b(?:get|got|go|went|reach|climb)\b", r"\bbiggest\b", r"\blargest\b",
            r"\bupper\b", r"\breached\b", r"\bat (?:the|its) most\b", r"\bat (?:the|its) highest\b"]
STAT_MIN = [r"\bmin(?:imum)?\b", r"\blowest\b", r"\bcoldest\b", r"\bcoolest\b", r"\bdriest\b", r"\blow point\b",
            r"\bhow (?:cold|cool|low|dry) (?:did|has|was|were|had)\b", r"\bhow (?:cold|cool|low|dry) .{0,30}\b(?:get|got|go|went|drop|fall|fell)\b",
            r"\bsmallest\b", r"\bbottom(?:ed)?\b", r"\blower bound\b", r"\bat (?:the|its) least\b", r"\bat (?:the|its) lowest\b"]
STAT_MEAN = [r"\bav(?:era)?ge?\b", r"\bavg\b", r"\bmean\b", r"\btypical(?:ly)?\b", r"\bon average\b", r"\boverall\b"]
STAT_RANGE = [r"\brange\b", r"\bmin(?:imum)? and max(?:imum)?\b", r"\bmax(?:imum)? and min(?:imum)?\b", r"\bhighs? and lows?\b",
              r"\blows? and highs?\b", r"\bhighest and lowest\b", r"\blowest and highest\b", r"\bstats\b", r"\bstatistics\b",
              r"\bsummary\b", r"\bspread\b", r"\bfluctuat", r"\bvar(?:y|ied|iation)\b", r"\bswing\b"]
STAT_COUNT = [r"\bhow (?:many|often) (?:times)?\b", r"\bhow often\b", r"\bnumber of times\b", r"\bcount\b", r"\bhow many\b"]
COMPARE = re.compile(r"\b(warmer|hotter|colder|cooler|higher|lower|more|less|wetter|drier|damper|more humid|bigger|smaller)\b(?:.{0,40})\bthan\b|\bcompare|\bdifference between\b|\bvs\.?\b|\bversus\b")
YES_NO = re.compile(r"^\s*(?:is|are|was|were|did|does|do|has|have|had|can|could|any|anything)\b")


@dataclass(frozen=True, slots=True)
class IntentScore:
    cloud_why: bool
    cloud_advice: bool
    cloud_draft: bool
    knowledge: bool
    help: bool
    greeting: bool
    list: bool
    stale: bool
    anomalies: bool
    trend: bool
    stat: str | None
    count: bool
    compare: bool
    yes_no: bool


def _any(patterns: list[str], q: str) -> bool:
    return any(re.search(p, q) for p in patterns)


def _compiled(patterns: list[str]) -> list[re.Pattern]:
    return [re.compile(p) for p in patterns]


_C = {name: _compiled(p) for name, p in {
    "why": WHY, "advice": ADVICE, "draft": DRAFT, "knowledge": KNOWLEDGE, "help": HELP, "list": LIST, "stale": STALE,
    "anomaly": ANOMALY, "trend": TREND, "max": STAT_MAX, "min": STAT_MIN, "mean": STAT_MEAN, "range": STAT_RANGE,
    "count": STAT_COUNT}.items()}


def _hit(name: str, q: str) -> bool:
    return any(p.search(q) for p in _C[name])


def score(q: str) -> IntentScore:
    """Cue flags of a normalised (lower-case) question."""
    stat = None
    hits = {s: _hit(s, q) for s in ("max", "min", "mean", "range")}
    if hits["range"] or (hits["max"] and hits["min"]):
        stat = "range"
    elif hits["mean"]:
        stat = "mean"
    elif hits["max"]:
        stat = "max"
    elif hits["min"]:
        stat = "min"
    return IntentScore(
        cloud_why=_hit("why", q), cloud_advice=_hit("advice", q), cloud_draft=_hit("draft", q),
        knowledge=_hit("knowledge", q), help=_hit("help", q), greeting=bool(GREETING.match(q)), list=_hit("list", q),
        stale=_hit("stale", q), anomalies=_hit("anomaly", q), trend=_hit("trend", q), stat=stat,
        count=_hit("count", q), compare=bool(COMPARE.search(q)), yes_no=bool(YES_NO.match(q)),
    )
