"""The tables behind the synthetic catalog: categories, attribute schemas, features, problems.

This module is data, not logic: synthetic.py composes products and queries from it and explains
why it looks the way it does. One rule binds the tables, and synthetic.py checks it before it
generates anything: no word of a problem phrase (`Problem.phrases`), of a problem-query frame or
of a broad-query filler may occur, under the search engine's analyzer (lower-case + English
stemmer), in any text that a product can be made of (names, brands, attribute keys and values,
features, title and description templates). Words in `STOPWORDS` are exempt. Editing a table so
that the rule breaks makes `synthetic.generate` raise, naming the offending words.

Title templates use `{name}`, `{brand}`, `{feature}` and the category's attribute keys; a template
with `{feature}` is used only for products that have at least one feature.
"""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, kw_only=True)
class Problem:
    """A need that shoppers describe in their own words, and the features that meet it.

    Attributes:
      phrases: how a shopper says it ("back pain"); none of these words is in any product text.
      features: the category's feature phrases a product must have to solve it, all of them.
    """

    phrases: tuple[str, ...]
    features: tuple[str, ...]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Category:
    """One product category and its own attribute schema.

    Attributes:
      key: identifier, used by `complements`.
      names: what products of the category are called; names[0] is the primary name, which every
        description and the `category` attribute use; titles and queries use any of them.
      attributes: (key, values) pairs; the brand comes first. Values differ between categories.
      features: optional phrases a product may have (each with `SyntheticConfig.feature_rate`).
      problems: problem-oriented needs mapped to features.
      titles: title templates, several per category, with different wording and word order.
      complements: keys of related categories (a chair mat for an office chair): grade 1.
    """

    key: str
    names: tuple[str, ...]
    attributes: tuple[tuple[str, tuple[str, ...]], ...]
    features: tuple[str, ...]
    problems: tuple[Problem, ...]
    titles: tuple[str, ...]
    complements: tuple[str, ...] = ()


# Brand pools: related categories share brands, so a brand query ("ironclad drill") meets
# products of the same brand in other categories, the hard negatives a real engine shows.
FURNITURE = ("Oakhurst", "Marlowe", "Nordvik", "Sitwell", "Haverly", "Linden Home")
TEXTILE = ("Cozyloom", "Softhaven", "Weavecraft", "Dreamfield", "Pemberly", "Linden Home")
LIGHTING = ("Lumina", "Brightway", "Halden", "Westglow", "Corvex")
TOOLS = ("Ironclad", "Voltmaster", "Brackwell", "Torqline", "Stanmore", "Redfield")
PAINT = ("Colorcraft", "Truecoat", "Benfield", "Valmont", "Stanmore")
KITCHEN_BATH = ("Aquaris", "Brookline", "Delmar", "Kessler", "Riverton")

# Words that carry no meaning for BM25 worth closing a gap over; exempt from the disjointness rule.
STOPWORDS = frozenset(
    "a an and are at be by for from i in into is it its me my no not of on or our so that the "
    "their them to too up us we what when which who with".split())

# Problem queries: "{noun}" is a category name, "{problem}" one of a problem's phrases.
PROBLEM_FRAMES = ("{noun} for {problem}", "best {noun} for {problem}", "good {noun} for {problem}",
                  "{noun} recommended for {problem}", "which {noun} helps with {problem}")
# Broad queries: a category name with a word that names no attribute.
BROAD_FILLERS = ("", "best", "cheap", "buy", "shop", "affordable", "popular", "deals on")
BRAND_FRAMES = ("{brand} {noun}", "{noun} {brand}", "{brand} brand {noun}")

# Description sentences (synthetic.py picks one of each kind per product).
INTROS = ("This {name} is made by {brand}.", "{brand} presents a dependable {name}.",
          "A {name} from the {brand} collection.", "Built by {brand}, this {name} is made to last.",
          "The {brand} {name} for everyday use.")
DETAIL_LEADS = ("Details:", "Specifications:", "Product facts:", "Key specs:")
FEATURE_LEADS = ("Includes {features}.", "Key features: {features}.",
                 "Highlights include {features}.", "Comes with {features}.")
PLAIN_ENDINGS = ("A simple, well made {name}.", "Standard model.", "")

CATEGORIES: tuple[Category, ...] = (
    Category(
        key="office_chair", names=("office chair", "desk chair", "task chair"),
        attributes=(("brand", FURNITURE),
                    ("color", ("black", "gray", "white", "navy", "burgundy")),
                    ("material", ("leather", "mesh", "fabric", "vinyl")),
                    ("style", ("executive", "ergonomic", "drafting", "gaming"))),
        features=("lumbar support", "padded headrest", "memory foam seat", "adjustable armrests",
                  "rubber casters", "extra wide seat"),
        problems=(Problem(phrases=("back pain", "a sore lower back", "an aching spine"),
                          features=("lumbar support",)),
                  Problem(phrases=("a stiff neck", "neck strain"), features=("padded headrest",)),
                  Problem(phrases=("dents in hardwood", "gouges in laminate"),
                          features=("rubber casters",)),
                  Problem(phrases=("big and tall people", "tall guys"),
                          features=("extra wide seat",))),
        titles=("{brand} {style} {name}, {color} {material}",
                "{color} {material} {name} by {brand}",
                "{name} with {feature} - {brand} {style}, {color}",
                "{brand} {name} in {color} {material}"),
        complements=("chair_mat", "desk")),
    Category(
        key="chair_mat", names=("chair mat", "office chair mat"),
        attributes=(("brand", FURNITURE),
                    ("material", ("polycarbonate", "vinyl", "pvc", "bamboo")),
                    ("shape", ("rectangular", "lipped", "round")),
                    ("size", ("36 x 48 in", "45 x 53 in", "46 x 60 in"))),
        features=("studded grip underside", "flat smooth underside", "beveled edge",
                  "anti static coating"),
        problems=(Problem(phrases=("carpet", "wall to wall carpeting"),
                          features=("studded grip underside",)),
                  Problem(phrases=("tile", "porcelain tile"), features=("flat smooth underside",)),
                  Problem(phrases=("getting zapped", "jolts when touching things"),
                          features=("anti static coating",))),
        titles=("{brand} {material} {name}, {size}", "{shape} {name} {size} - {brand}",
                "{name} with {feature}, {material}, {brand}"),
        complements=("office_chair",)),
    Category(
        key="desk", names=("desk", "computer desk", "writing desk"),
        attributes=(("brand", FURNITURE),
                    ("finish", ("walnut", "white", "black", "espresso", "natural oak")),
                    ("material", ("solid wood", "engineered wood", "metal", "glass")),
                    ("width", ("40 inch", "48 inch", "55 inch", "60 inch"))),
        features=("sit stand height adjustment", "built in drawers", "cable management tray",
                  "keyboard tray", "compact footprint"),
        problems=(Problem(phrases=("a sedentary job", "being sedentary"),
                          features=("sit stand height adjustment",)),
                  Problem(phrases=("messy wires", "tangled wiring"),
                          features=("cable management tray",)),
                  Problem(phrases=("a small apartment", "a cramped studio"),
                          features=("compact footprint",)),
                  Problem(phrases=("wrist strain", "sore wrists"),
                          features=("keyboard tray",))),
        titles=("{brand} {width} {name}, {finish} {material}",
                "{finish} {name} by {brand} ({width})",
                "{name} with {feature}, {finish}, {brand}", "{material} {name} - {brand} {finish}"),
        complements=("office_chair", "desk_lamp")),
    Category(
        key="desk_lamp", names=("desk lamp", "task lamp"),
        attributes=(("brand", LIGHTING),
                    ("color", ("matte black", "brushed brass", "white", "silver")),
                    ("style", ("swing arm", "architect", "gooseneck", "mini"))),
        features=("dimmable", "usb charging port", "adjustable color temperature", "clamp mount",
                  "flicker free diffused light"),
        problems=(Problem(phrases=("tired eyes", "eyestrain"),
                          features=("flicker free diffused light",)),
                  Problem(phrases=("keeping my phone alive", "a dying phone"),
                          features=("usb charging port",)),
                  Problem(phrases=("a crowded workspace", "a cluttered tabletop"),
                          features=("clamp mount",)),
                  Problem(phrases=("late night studying",), features=("dimmable",))),
        titles=("{brand} {style} {name}, {color}", "{color} {style} {name} by {brand}",
                "{name} with {feature} - {brand}, {color}"),
        complements=("desk", "light_bulb")),
    Category(
        key="sofa", names=("sofa", "couch"),
        attributes=(("brand", FURNITURE),
                    ("color", ("charcoal", "beige", "navy", "emerald", "cream", "gray")),
                    ("material", ("velvet", "linen", "performance fabric", "leather")),
                    ("style", ("mid century", "sectional", "chesterfield", "tuxedo")),
                    ("seats", ("2 seat", "3 seat", "4 seat"))),
        features=("stain resistant fabric", "fold out bed", "removable washable covers",
                  "deep seats", "reclining seats"),
        problems=(Problem(phrases=("toddlers who spill", "spilled juice"),
                          features=("stain resistant fabric",)),
                  Problem(phrases=("overnight guests", "visitors staying the weekend"),
                          features=("fold out bed",)),
                  Problem(phrases=("dog hair", "muddy paws"),
                          features=("removable washable covers",)),
                  Problem(phrases=("dozing off", "watching movies"),
                          features=("reclining seats",))),
        titles=("{brand} {style} {name}, {color} {material}", "{seats} {color} {material} {name}",
                "{name} with {feature} - {brand} {style}", "{color} {name} by {brand}, {seats}"),
        complements=("throw_pillow", "coffee_table", "area_rug")),
    Category(
        key="throw_pillow", names=("throw pillow", "accent pillow", "decorative pillow"),
        attributes=(("brand", TEXTILE),
                    ("color", ("mustard", "sage", "blush", "ivory", "terracotta", "navy")),
                    ("material", ("cotton", "velvet", "linen", "faux fur")),
                    ("size", ("18 x 18 in", "20 x 20 in", "14 x 24 in"))),
        features=("hidden zipper", "feather insert", "fade resistant", "reversible design",
                  "hypoallergenic fill"),
        problems=(Problem(phrases=("a sunny windowsill", "afternoon sun"),
                          features=("fade resistant",)),
                  Problem(phrases=("allergies", "constant sneezing"),
                          features=("hypoallergenic fill",)),
                  Problem(phrases=("swapping looks by season", "a seasonal refresh"),
                          features=("reversible design",))),
        titles=("{brand} {color} {material} {name} {size}", "{name}, {color}, {size} - {brand}",
                "{color} {name} with {feature} by {brand}"),
        complements=("sofa",)),
    Category(
        key="coffee_table", names=("coffee table", "cocktail table"),
        attributes=(("brand", FURNITURE),
                    ("finish", ("walnut", "white oak", "black", "rustic brown", "espresso")),
                    ("material", ("solid wood", "marble", "glass", "metal")),
                    ("shape", ("round", "rectangular", "oval", "square"))),
        features=("lift top", "hidden storage", "rounded corners", "open shelf"),
        problems=(Problem(phrases=("eating meals while watching tv", "tv dinners"),
                          features=("lift top",)),
                  Problem(phrases=("a crawling baby", "toddler safety"),
                          features=("rounded corners",)),
                  Problem(phrases=("clutter everywhere", "stashing magazines"),
                          features=("hidden storage",))),
        titles=("{brand} {shape} {name}, {finish} {material}",
                "{shape} {material} {name} by {brand}",
                "{finish} {name} with {feature} - {brand}"),
        complements=("sofa", "area_rug")),
    Category(
        key="area_rug", names=("area rug", "rug"),
        attributes=(("brand", TEXTILE),
                    ("color", ("ivory", "navy", "charcoal", "rust", "sage", "multicolor")),
                    ("material", ("wool", "jute", "polypropylene", "cotton")),
                    ("size", ("5 x 8 ft", "8 x 10 ft", "9 x 12 ft", "2 x 3 ft")),
                    ("style", ("shag", "flatweave", "braided", "persian"))),
        features=("machine washable", "low pile", "non shedding", "water resistant",
                  "thick plush pile"),
        problems=(Problem(phrases=("puppy accidents", "a new puppy"),
                          features=("machine washable",)),
                  Problem(phrases=("a wheelchair", "a rolling walker"), features=("low pile",)),
                  Problem(phrases=("chilly mornings", "cold toes"),
                          features=("thick plush pile",)),
                  Problem(phrases=("fluff everywhere", "fuzzballs"), features=("non shedding",))),
        titles=("{brand} {style} {name}, {color} {material}, {size}",
                "{size} {color} {name} by {brand}", "{color} {style} {name} with {feature}",
                "{material} {name} {size} - {brand}"),
        complements=("rug_pad", "sofa", "coffee_table")),
    Category(
        key="rug_pad", names=("rug pad", "rug underlay"),
        attributes=(("brand", TEXTILE),
                    ("material", ("felt", "natural rubber", "memory foam")),
                    ("thickness", ("1/8 in", "1/4 in", "3/8 in")),
                    ("size", ("5 x 8 ft", "8 x 10 ft", "9 x 12 ft"))),
        features=("non slip grip", "extra cushioning", "trim to fit", "noise dampening"),
        problems=(Problem(phrases=("sliding around", "tripping hazards"),
                          features=("non slip grip",)),
                  Problem(phrases=("downstairs neighbors hearing footsteps",),
                          features=("noise dampening",)),
                  Problem(phrases=("an irregular layout", "odd dimensions"),
                          features=("trim to fit",))),
        titles=("{brand} {material} {name}, {thickness}, {size}", "{size} {name} - {brand}",
                "{name} with {feature}, {material} by {brand}"),
        complements=("area_rug",)),
    Category(
        key="ceiling_fan", names=("ceiling fan",),
        attributes=(("brand", LIGHTING),
                    ("finish", ("brushed nickel", "matte black", "white", "oil rubbed bronze")),
                    ("span", ("42 inch", "52 inch", "60 inch")),
                    ("blades", ("3 blades", "4 blades", "5 blades"))),
        features=("whisper quiet motor", "high airflow", "remote control", "integrated led light",
                  "damp rated"),
        problems=(Problem(phrases=("a hot bedroom", "sweltering summer nights"),
                          features=("whisper quiet motor", "high airflow")),
                  Problem(phrases=("a porch", "a screened patio"),
                          features=("damp rated",)),
                  Problem(phrases=("a chain i cannot reach", "unreachable chains"),
                          features=("remote control",)),
                  Problem(phrases=("a gloomy den", "a dim den"),
                          features=("integrated led light",))),
        titles=("{brand} {span} {name}, {finish}", "{span} {finish} {name} with {blades}",
                "{name} with {feature} by {brand}, {span}"),
        complements=("light_bulb",)),
    Category(
        key="light_bulb", names=("light bulb", "led bulb"),
        attributes=(("brand", LIGHTING),
                    ("wattage", ("40 watt", "60 watt", "75 watt", "100 watt")),
                    ("base", ("e26", "e12 candelabra", "gu10")),
                    ("temperature", ("soft white 2700k", "bright white 3000k", "daylight 5000k")),
                    ("shape", ("a19", "br30", "globe", "edison filament"))),
        features=("dimmable", "smart wifi", "energy saving", "25000 hour lifespan",
                  "enclosed fixture rated"),
        problems=(Problem(phrases=("voice assistant", "turning on with alexa"),
                          features=("smart wifi",)),
                  Problem(phrases=("a dimmer switch",), features=("dimmable",)),
                  Problem(phrases=("utility bills", "lowering utility costs"),
                          features=("energy saving",)),
                  Problem(phrases=("a ladder every few months", "replacing rarely"),
                          features=("25000 hour lifespan",))),
        titles=("{brand} {wattage} {shape} {name}, {temperature}",
                "{name} {wattage} {base} - {brand}", "{temperature} {name} with {feature}, {base}"),
        complements=("ceiling_fan", "desk_lamp")),
    Category(
        key="space_heater", names=("space heater", "portable heater"),
        attributes=(("brand", LIGHTING),
                    ("color", ("black", "white", "gray", "silver")),
                    ("type", ("oil filled radiator", "infrared", "ceramic", "fan forced")),
                    ("wattage", ("750 watt", "1500 watt"))),
        features=("tip over shutoff", "programmable thermostat", "overheat protection",
                  "silent operation", "eco mode"),
        problems=(Problem(phrases=("a curious dog", "rambunctious kids"),
                          features=("tip over shutoff",)),
                  Problem(phrases=("a chilly nursery",),
                          features=("silent operation", "overheat protection")),
                  Problem(phrases=("a drafty basement",), features=("programmable thermostat",))),
        titles=("{brand} {type} {name}, {wattage}", "{wattage} {color} {name} by {brand}",
                "{type} {name} with {feature} - {brand}"),
        complements=()),
    Category(
        key="cordless_drill", names=("cordless drill", "drill driver", "power drill"),
        attributes=(("brand", TOOLS),
                    ("voltage", ("12v", "18v", "20v max")),
                    ("chuck", ("3/8 in chuck", "1/2 in chuck")),
                    ("kit", ("bare tool", "single battery kit", "dual battery kit"))),
        features=("brushless motor", "hammer drill mode", "led work light", "compact lightweight",
                  "2 speed gearbox", "belt clip"),
        problems=(Problem(phrases=("holes in brick", "anchoring into concrete"),
                          features=("hammer drill mode",)),
                  Problem(phrases=("tired wrists", "forearm fatigue"),
                          features=("compact lightweight",)),
                  Problem(phrases=("a dark crawlspace", "unlit closets"),
                          features=("led work light",)),
                  Problem(phrases=("dies halfway through a project",),
                          features=("brushless motor",))),
        titles=("{brand} {voltage} {name}, {kit}", "{name} {voltage} with {feature} - {brand}",
                "{brand} {name} {chuck}, {kit}", "{voltage} {name} by {brand} ({chuck})"),
        complements=("drill_bit_set",)),
    Category(
        key="drill_bit_set", names=("drill bit set", "drill bits"),
        attributes=(("brand", TOOLS),
                    ("material", ("titanium coated", "cobalt", "black oxide", "carbide tipped")),
                    ("count", ("21 piece", "29 piece", "50 piece", "100 piece")),
                    ("shank", ("hex shank", "round shank"))),
        features=("masonry bits", "storage case", "self centering tips",
                  "split point tips"),
        problems=(Problem(phrases=("wandering off the mark", "skidding when starting"),
                          features=("self centering tips",)),
                  Problem(phrases=("a messy toolbox", "misplacing things"),
                          features=("storage case",)),
                  Problem(phrases=("holes in brick", "anchoring into concrete"),
                          features=("masonry bits",))),
        titles=("{brand} {count} {material} {name}",
                "{material} {name}, {count}, {shank} - {brand}",
                "{name} with {feature} by {brand} ({count})"),
        complements=("cordless_drill",)),
    Category(
        key="circular_saw", names=("circular saw",),
        attributes=(("brand", TOOLS),
                    ("blade", ("6-1/2 in", "7-1/4 in")),
                    ("power", ("corded 15 amp", "cordless 20v max"))),
        features=("laser guide", "electric brake", "dust blower", "bevel stops",
                  "magnesium shoe"),
        problems=(Problem(phrases=("crooked cuts", "cutting straight lines"),
                          features=("laser guide",)),
                  Problem(phrases=("sawdust in my eyes", "seeing the pencil mark"),
                          features=("dust blower",)),
                  Problem(phrases=("kickback worries", "coasting after release"),
                          features=("electric brake",))),
        titles=("{brand} {blade} {name}, {power}", "{name} {blade} with {feature} - {brand}",
                "{power} {name} by {brand}"),
        complements=("saw_blade",)),
    Category(
        key="saw_blade", names=("saw blade", "circular saw blade"),
        attributes=(("brand", TOOLS),
                    ("diameter", ("6-1/2 in", "7-1/4 in", "10 in")),
                    ("teeth", ("24 tooth", "40 tooth", "60 tooth")),
                    ("material", ("carbide", "steel", "diamond"))),
        features=("fine finish", "thin kerf", "anti vibration slots", "non stick coating"),
        problems=(Problem(phrases=("splintered plywood", "tearout on veneer"),
                          features=("fine finish",)),
                  Problem(phrases=("bogging", "sluggish ripping"), features=("thin kerf",)),
                  Problem(phrases=("screeching", "a loud whine"),
                          features=("anti vibration slots",))),
        titles=("{brand} {diameter} {teeth} {name}", "{material} {name} {diameter} - {brand}",
                "{diameter} {name} with {feature}, {teeth}"),
        complements=("circular_saw",)),
    Category(
        key="interior_paint", names=("interior paint", "latex paint"),
        attributes=(("brand", PAINT),
                    ("color", ("swiss coffee white", "agreeable gray", "navy blue", "sage green",
                               "greige")),
                    ("sheen", ("flat", "eggshell", "satin", "semi gloss")),
                    ("volume", ("1 gallon", "5 gallon", "1 quart"))),
        features=("paint and primer in one", "mildew resistant", "scrubbable finish", "zero voc",
                  "one coat coverage"),
        problems=(Problem(phrases=("a steamy bathroom", "humid bathrooms"),
                          features=("mildew resistant",)),
                  Problem(phrases=("a nursery with a newborn", "chemical smell"),
                          features=("zero voc",)),
                  Problem(phrases=("crayon on walls", "kids drawing on walls"),
                          features=("scrubbable finish",)),
                  Problem(phrases=("skipping a second pass",), features=("one coat coverage",))),
        titles=("{brand} {name}, {color}, {sheen}, {volume}", "{color} {sheen} {name} - {brand}",
                "{name} with {feature} by {brand} ({volume})"),
        complements=("paint_roller",)),
    Category(
        key="paint_roller", names=("paint roller", "roller cover"),
        attributes=(("brand", PAINT),
                    ("nap", ("1/4 in nap", "3/8 in nap", "1/2 in nap", "3/4 in nap")),
                    ("width", ("4 inch", "9 inch", "18 inch")),
                    ("material", ("microfiber", "woven", "foam", "lambswool"))),
        features=("shed resistant", "extension pole", "paint tray", "lint free"),
        problems=(Problem(phrases=("fuzz stuck on walls", "fibers left behind"),
                          features=("lint free",)),
                  Problem(phrases=("tall stairwells", "reaching way up"),
                          features=("extension pole",)),
                  Problem(phrases=("a first time painter", "a beginner without supplies"),
                          features=("paint tray",))),
        titles=("{brand} {width} {name}, {nap}", "{material} {name} {width} - {brand}",
                "{name} with {feature}, {material}, {nap}"),
        complements=("interior_paint",)),
    Category(
        key="kitchen_faucet", names=("kitchen faucet", "sink faucet"),
        attributes=(("brand", KITCHEN_BATH),
                    ("finish", ("polished chrome", "brushed nickel", "matte black",
                                "stainless")),
                    ("handles", ("single handle", "two handle")),
                    ("style", ("pull down", "bridge", "commercial", "gooseneck"))),
        features=("touchless sensor", "spot resistant finish", "magnetic docking spray head",
                  "drip free ceramic valve", "high arc spout"),
        problems=(Problem(phrases=("raw chicken hands", "germs when cooking"),
                          features=("touchless sensor",)),
                  Problem(phrases=("fingerprints", "smudges"), features=("spot resistant finish",)),
                  Problem(phrases=("a tall stockpot", "big pots"),
                          features=("high arc spout",)),
                  Problem(phrases=("a constant leak", "leaking"),
                          features=("drip free ceramic valve",))),
        titles=("{brand} {style} {name}, {finish}", "{finish} {handles} {name} by {brand}",
                "{name} with {feature} - {brand} {style}"),
        complements=("kitchen_sink",)),
    Category(
        key="kitchen_sink", names=("kitchen sink",),
        attributes=(("brand", KITCHEN_BATH),
                    ("material", ("stainless steel", "granite composite", "fireclay",
                                  "cast iron")),
                    ("mount", ("undermount", "drop in", "farmhouse apron")),
                    ("bowls", ("single bowl", "double bowl"))),
        features=("sound dampening pads", "scratch resistant surface", "rear drain", "deep basin",
                  "bottom grid and strainer"),
        problems=(Problem(phrases=("loud clanging dishes", "noisy dishwashing"),
                          features=("sound dampening pads",)),
                  Problem(phrases=("soaking big roasting pans", "washing large stockpots"),
                          features=("deep basin",)),
                  Problem(phrases=("knives leaving marks", "pots leaving marks"),
                          features=("scratch resistant surface",))),
        titles=("{brand} {material} {mount} {name}, {bowls}",
                "{bowls} {name} by {brand}, {material}",
                "{mount} {name} with {feature} - {brand}"),
        complements=("kitchen_faucet",)),
    Category(
        key="shower_head", names=("shower head", "showerhead"),
        attributes=(("brand", KITCHEN_BATH),
                    ("finish", ("polished chrome", "brushed nickel", "matte black",
                                "oil rubbed bronze")),
                    ("type", ("rain", "handheld", "dual", "fixed")),
                    ("flow", ("1.8 gpm", "2.5 gpm"))),
        features=("high pressure", "water saving", "vitamin c filter", "massage spray",
                  "anti clog nozzles"),
        problems=(Problem(phrases=("a weak trickle", "a dribble"),
                          features=("high pressure",)),
                  Problem(phrases=("itchy skin", "chlorine smell"), features=("vitamin c filter",)),
                  Problem(phrases=("sore muscles after the gym",), features=("massage spray",))),
        titles=("{brand} {type} {name}, {finish}", "{finish} {type} {name} {flow} - {brand}",
                "{name} with {feature} by {brand}"),
        complements=("bath_towel",)),
    Category(
        key="bath_towel", names=("bath towel", "bath sheet"),
        attributes=(("brand", TEXTILE),
                    ("color", ("white", "gray", "navy", "aqua", "sand", "blush")),
                    ("material", ("egyptian cotton", "turkish cotton", "bamboo", "microfiber")),
                    ("pieces", ("2 piece", "4 piece", "6 piece"))),
        features=("quick dry", "extra absorbent", "oversized 35 x 70 in", "fade resistant",
                  "lint free"),
        problems=(Problem(phrases=("a humid climate", "a musty odor"), features=("quick dry",)),
                  Problem(phrases=("curly hair", "a swimming pool"),
                          features=("extra absorbent",)),
                  Problem(phrases=("tall people", "a big frame"),
                          features=("oversized 35 x 70 in",))),
        titles=("{brand} {material} {name}, {color}, {pieces}", "{color} {name} set by {brand}",
                "{pieces} {material} {name} with {feature}"),
        complements=("shower_head",)),
    Category(
        key="mattress", names=("mattress", "bed mattress"),
        attributes=(("brand", TEXTILE),
                    ("size", ("twin", "full", "queen", "king")),
                    ("type", ("memory foam", "hybrid", "innerspring", "latex")),
                    ("firmness", ("soft", "medium", "firm"))),
        features=("cooling gel layer", "edge support", "motion isolation",
                  "pressure relief zones", "organic cotton cover"),
        problems=(Problem(phrases=("sleeping hot", "night sweats"),
                          features=("cooling gel layer",)),
                  Problem(phrases=("a restless partner", "a partner who tosses and turns"),
                          features=("motion isolation",)),
                  Problem(phrases=("hip and shoulder aches",),
                          features=("pressure relief zones",))),
        titles=("{brand} {size} {type} {name}, {firmness}", "{firmness} {type} {name} - {brand}",
                "{size} {name} with {feature} by {brand}"),
        complements=("bed_pillow",)),
    Category(
        key="bed_pillow", names=("bed pillow",),
        attributes=(("brand", TEXTILE),
                    ("fill", ("goose down", "polyester cluster", "shredded memory foam",
                              "buckwheat")),
                    ("size", ("standard", "queen", "king")),
                    ("firmness", ("soft", "medium", "firm"))),
        features=("cooling cover", "adjustable loft", "hypoallergenic fill",
                  "contoured cervical design"),
        problems=(Problem(phrases=("a stiff neck", "waking with neck pain"),
                          features=("contoured cervical design",)),
                  Problem(phrases=("lying on my stomach", "lying on my side"),
                          features=("adjustable loft",)),
                  Problem(phrases=("allergies", "a stuffy nose"),
                          features=("hypoallergenic fill",))),
        titles=("{brand} {fill} {name}, {size}, {firmness}", "{size} {firmness} {name} by {brand}",
                "{fill} {name} with {feature} - {brand}"),
        complements=("mattress",)),
)
