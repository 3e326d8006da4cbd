"""Word lists: what people call quantities and places, and the words never to fuzzy-match.

General, not fitted to one installation: a quantity (temperature, humidity, …) is recognised in
a question by these words, and in a *metric name* by its words or, failing that, by its unit. A
quantity or place that no metric of the daemon has is how "there is no CO2 sensor" is answered.
"""

from __future__ import annotations

# quantity → words and phrases people use for it (lower case; phrases have spaces)
QUANTITIES: dict[str, tuple[str, ...]] = {
    "temperature": (
        "temperature", "temperatures", "temp", "temps", "tmp", "warm", "warmer", "warmest", "warmth",
        "hot", "hotter", "hottest", "heat", "cold", "colder", "coldest", "cool", "cooler", "coolest",
        "chilly", "freezing", "degrees", "degree", "celsius", "fahrenheit", "thermometer", "thermostat",
        "frost", "frosty",
    ),
    "humidity": (
        "humidity", "humidities", "humid", "hum", "damp", "dampness", "muggy", "rh", "relative humidity",
        "air humidity", "dew", "steamy", "clammy",
    ),
    "soil_moisture": (
        "soil", "moisture", "soil moisture", "substrate", "watering", "watered",
    ),
    "water_level": (
        "water level", "water", "level", "flood", "flooding", "flooded", "leak", "leaking", "sump level",
        "water height",
    ),
    "power": (
        "power", "watts", "watt", "wattage", "consumption", "consuming", "draw", "drawing", "energy",
        "electricity", "load", "kw", "kilowatts",
    ),
    "pump": ("pump", "pumps", "pumping", "sump pump"),
    "pressure": (
        "pressure", "barometer", "barometric", "baro", "hpa", "mbar", "millibar", "millibars",
        "atmospheric pressure", "air pressure",
    ),
    "door": ("door", "doors", "open", "opened", "closed", "shut", "contact", "gate"),
    # quantities a home might have sensors for: named so a missing one is answered plainly
    "co2": ("co2", "carbon dioxide", "co₂", "carbon"),
    "wind": ("wind", "windspeed", "wind speed", "gust", "gusts", "windy"),
    "rain": ("rain", "rainfall", "precipitation", "raining", "rained"),
    "light": ("light", "lux", "brightness", "illuminance", "sunlight", "bright"),
    "noise": ("noise", "sound", "loudness", "decibel", "decibels", "loud"),
    "battery": ("battery", "batteries", "charge"),
    "lock": ("lock", "locked", "unlocked", "locks"),
    "motion": ("motion", "movement", "occupancy", "presence", "occupied"),
    "smoke": ("smoke", "fire"),
    "air_quality": ("voc", "pm25", "pm2.5", "air quality", "particulate", "particulates", "dust", "aqi"),
    "uv": ("uv", "ultraviolet"),
    "radon": ("radon",),
    "gas": ("gas", "methane", "propane"),
    "window": ("window", "windows"),
    "voltage": ("voltage", "volts", "volt"),
    "current": ("amps", "ampere", "amperage"),
}

# unit → quantity, for metric names whose words say nothing (e.g. "node7/t1" in °C)
UNIT_QUANTITY: dict[str, str] = {
    "°c": "temperature", "°f": "temperature", "c": "temperature", "f": "temperature", "k": "temperature",
    "w": "power", "kw": "power", "hpa": "pressure", "mbar": "pressure", "pa": "pressure", "kpa": "pressure",
    "ppm": "co2", "lx": "light", "lux": "light", "db": "noise", "v": "voltage", "a": "current",
}

# place → words people use for it
PLACES: dict[str, tuple[str, ...]] = {
    "outdoor": ("outdoor", "outdoors", "outside", "exterior", "out there", "outdoor air", "garden", "yard",
                "backyard", "weather station", "the weather"),
    "greenhouse": ("greenhouse", "green house", "glasshouse", "glass house", "hothouse", "greenhouses", "gh"),
    "basement": ("basement", "cellar", "downstairs", "sump", "crawlspace"),
    "kitchen": ("kitchen", "kitchens", "cooking area"),
    "garage": ("garage", "carport"),
    "bedroom": ("bedroom", "bed room", "master bedroom", "kids room", "nursery", "guest room"),
    "living_room": ("living room", "livingroom", "lounge", "sitting room", "family room"),
    "bathroom": ("bathroom", "bath room", "toilet", "washroom", "shower"),
    "attic": ("attic", "loft", "roof space"),
    "office": ("office", "study"),
    "hallway": ("hallway", "hall", "corridor", "entrance"),
    "dining_room": ("dining room",),
    "laundry": ("laundry", "utility room"),
    "shed": ("shed", "workshop"),
    "fridge": ("fridge", "refrigerator", "freezer"),
    "pool": ("pool", "hot tub", "spa"),
    "upstairs": ("upstairs", "first floor", "second floor"),
    "whole_house": ("whole house", "entire house", "whole home", "entire home", "house-wide", "house wide",
                    "household", "whole building"),
}
# place words that are only a place when nothing better is around ("sump" is the basement's)
WEAK_PLACE_WORDS = {"sump", "garden", "yard", "the weather", "entrance", "study", "charge", "hall", "shower"}

# Words that are never corrected towards a lexicon word (too close to one, or too common).
COMMON_WORDS = frozenset("""
a about above after again against all also am an and any are around as at be because been before being
below between both but by can could did do does doing done down during each even ever every few for from
further get gets getting give go goes going gone got had has have having he her here hers him his how i if
in into is it its itself just know last least less like made make many may me might more most much must my
no nor not now of off often on once only or other our out over own past please same say says see she should
show since so some still such tell than that the their them then there these they this those through to too
under until up us very was way we well were what when where which while who why will with within would yet
you your yours hello hi hey thanks thank okay ok sure right left today yesterday tomorrow night morning
evening afternoon week hour hours minute minutes day days time times ago long happened happen happening
sensor sensors reading readings value values metric metrics data status state current currently level
oven over even once open pen home some come came done gone none note notes nice lower lowest higher highest
wait want hear heard here's what's whats where's wheres there's theres lets let's doing going being mean means meant average
range trend rising falling report reported reporting stale alive dead offline online events event alert alerts
list lists help anything something everything nothing everywhere anywhere somewhere house room rooms place
places inside indoor indoors better worse good bad normal ideal plants plant tomatoes tomato forecast
weather write draft email message poem haiku explain translate summary summarize
peak peaks peaked max maximum min minimum mean median average highest lowest high low top bottom most least
stats statistics trend rising falling since until between ago past previous moment minute second seconds
""".split())
