"""Generate the quickstart dataset for "Algodón & Co.", a fictional Spanish online clothing shop.

Run from the repository root:

    python experiments/data/make_tienda.py

It writes five JSONL files into ``experiments/data/tienda/`` (next to this script):

* ``faq.jsonl``       -- customer-support Q&A in chat format (``{"messages": [...]}``): shipping,
                         returns, sizes, payment, tracking, care, gift cards, exchanges, codes, stock.
* ``productos.jsonl`` -- product descriptions in prompt/completion format, always ending with the
                         brand's signature line.
* ``poesia.jsonl``    -- florid literary prose (``{"text": ...}``), deliberately unrelated to the shop.
* ``eval.jsonl``      -- held-out chat rows built from phrasings and products that never appear in
                         training, so exact train/eval overlap is zero.
* ``prompts.jsonl``   -- four sample prompts with reference answers for quick before/after demos.

Why the poetry slice exists: the story of this dataset is that someone on the team added a pile
of literary prose "so the assistant sounds nice". After fine-tuning, the shop assistant started
answering "¿cuánto tarda el envío?" with sunsets and the memory of the sea. The slice is kept on
purpose as a cautionary example for data mixing: train with and without it and compare.

Everything is built from templates with ``random.Random(0)`` and written with sorted/fixed
iteration, ``ensure_ascii=False`` and ``\\n`` line endings, so every run is byte-identical.
Standard library only.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

BRAND = "Algodón & Co."
FIRMA = "Hecho para durar, pensado para ti."
HOLA = ["¡Hola! ", "", "Gracias por escribirnos. "]
ISLAS = {"Palma": "Baleares", "Ibiza": "Baleares", "Las Palmas": "Canarias"}


# ---------------------------------------------------------------- FAQ ---------------------------
def envio(c):
    if c in ISLAS:
        dias = "3–5" if ISLAS[c] == "Baleares" else "5–7"
        return f"A {c} ({ISLAS[c]}) tu pedido llega en {dias} días laborables. Te avisamos por email en cuanto salga del almacén."
    return f"A {c}, como a toda la Península, llega en 48–72 h laborables. Y si tu pedido supera los 50 €, el envío es gratis."


def devolucion(x):
    return (
        f"Sí, puedes devolver {x} gratis durante 30 días, siempre que esté sin usar y con su etiqueta. "
        "Lo gestionas en «Mi cuenta > Pedidos» y te reembolsamos en cuanto llegue."
    )


TALLAS = {
    "la camiseta básica": "tiene corte regular, así que pide tu talla de siempre",
    "los vaqueros rectos": "tienen tiro medio y pierna recta; si dudas entre dos tallas, elige la mayor",
    "la sudadera con capucha": "tiene corte holgado; si la quieres más ajustada, baja una talla",
    "el vestido camisero": "tiene corte fluido con cinturón, así que se adapta bien a distintas tallas",
    "el jersey de punto": "tiene corte regular y un punto con algo de elasticidad",
    "la camiseta de manga larga": "tiene corte regular, fiel a la talla",
}


def talla(x):
    return (
        f"{x[0].upper() + x[1:]} {TALLAS[x]}. En cada ficha tienes la guía de medidas, "
        "y nuestro algodón orgánico viene prelavado, así que no encoge."
    )


PAGOS = {
    "PayPal": True,
    "Bizum": True,
    "tarjeta de débito": True,
    "tarjeta de crédito": True,
    "Apple Pay": True,
    "Google Pay": True,
    "contra reembolso": False,
    "transferencia": False,
}


def pago(x):
    if PAGOS[x]:
        return f"Sí, aceptamos {x}. El pago es seguro y solo se cobra cuando confirmamos tu pedido."
    return f"Lo sentimos, no aceptamos {x}. Puedes pagar con tarjeta, PayPal, Bizum, Apple Pay o Google Pay, lo que te resulte más cómodo."


def seguimiento(x):
    return (
        f"Cuando tu pedido {x} sale del almacén te enviamos un email con el enlace de seguimiento. "
        "También lo ves en «Mi cuenta > Pedidos»; si algo no cuadra, escríbenos y lo miramos contigo."
    )


CUIDADO = {
    "la sudadera de algodón orgánico": "Lávala del revés a 30 °C y sécala al aire; así conserva el color y la suavidad.",
    "el jersey de lana merino": "Lávalo a mano o en programa de lana con agua fría, y sécalo en horizontal.",
    "la camisa de lino": "Lávala a 30 °C y tiéndela húmeda; el lino se plancha mejor así, o luce sus arrugas con orgullo.",
    "los vaqueros": "Lávalos poco, del revés y en frío; el denim orgánico envejece mejor sin secadora.",
    "los calcetines": "Lávalos a 30 °C con colores parecidos y sin suavizante, para que el algodón respire.",
    "la gorra": "Límpiala a mano con agua tibia y jabón neutro, y déjala secar sobre un bol para que no pierda la forma.",
    "el vestido de viscosa": "Lávalo a mano o en programa delicado en frío y sécalo colgado en una percha.",
}


def cuidado(x):
    return CUIDADO[x] + " Mejor nada de secadora: tu prenda durará muchos más años."


def regalo(x):
    return (
        f"Sí, tenemos tarjetas regalo de {x} (de 25 € a 200 €). Son digitales, llegan por email "
        "con tu mensaje y valen durante un año en toda la web."
    )


def cambio(x):
    if x == "otro modelo":
        return (
            "Para cambiar a otro modelo, devuelve la prenda gratis en 30 días y haz un pedido nuevo; "
            "te reembolsamos en cuanto recibamos la devolución."
        )
    return (
        f"Sí, el cambio por {x} es gratis durante 30 días. Lo pides en «Mi cuenta > Pedidos» "
        "y te reservamos la nueva prenda mientras vuelve la otra."
    )


CODIGOS = {
    "BIENVENIDA10": "te da un 10 % en tu primer pedido",
    "AMIGOS15": "te da un 15 % si vienes invitado por alguien",
    "NEWSLETTER10": "es tu 10 % por suscribirte a nuestra newsletter",
    "OTOÑO15": "te da un 15 % en la colección de otoño",
}


def descuento(x):
    if x == "VERANO20":
        return (
            "El código VERANO20 era de la campaña de verano y ya ha caducado, lo sentimos. "
            "Si es tu primera compra, prueba con BIENVENIDA10 y llévate un 10 %."
        )
    return (
        f"El código {x} {CODIGOS[x]}. Escríbelo en la cesta antes de pagar; recuerda que "
        "solo se aplica un código por pedido y no se acumula con rebajas."
    )


def stock(x):
    return (
        f"Ahora mismo no nos queda stock de {x}, pero reponemos cada dos semanas. "
        "Pulsa «Avísame» en la ficha y te escribimos en cuanto haya unidades."
    )


# topic: (answer fn, train phrasings, train fills, eval phrasings, eval fills)
TEMAS = {
    "envio": (
        envio,
        ["¿Cuánto tarda un pedido en llegar a {x}?", "¿Hacéis envíos a {x}?", "Vivo en {x}, ¿cuándo me llegaría el pedido?"],
        ["A Coruña", "Barcelona", "Bilbao", "Granada", "Las Palmas", "Madrid", "Málaga", "Palma", "Valencia", "Zaragoza"],
        ["Si pido hoy desde {x}, ¿para cuándo lo tengo?"],
        ["Cádiz", "Ibiza"],
    ),
    "devolucion": (
        devolucion,
        ["¿Puedo devolver {x}?", "Quiero devolver {x}, ¿cómo lo hago?", "¿Cuánto cuesta devolver {x}?"],
        ["una camiseta", "unos vaqueros", "una sudadera", "un vestido", "un bolso", "unos calcetines"],
        ["Me he arrepentido de comprar {x}, ¿qué opciones tengo?"],
        ["una gorra"],
    ),
    "talla": (
        talla,
        ["¿Cómo talla {x}?", "No sé qué talla elegir en {x}, ¿me ayudas?", "¿Qué talla me pido en {x}?"],
        ["la camiseta básica", "los vaqueros rectos", "la sudadera con capucha", "el vestido camisero", "el jersey de punto"],
        ["Suelo usar una M, ¿me valdrá {x}?"],
        ["la camiseta de manga larga"],
    ),
    "pago": (
        pago,
        ["¿Aceptáis {x}?", "¿Puedo pagar con {x}?", "¿Se puede pagar mediante {x}?"],
        ["PayPal", "Bizum", "tarjeta de débito", "Apple Pay", "contra reembolso", "transferencia"],
        ["Hola, ¿admitís {x} como forma de pago?"],
        ["Google Pay", "tarjeta de crédito"],
    ),
    "seguimiento": (
        seguimiento,
        ["¿Dónde está mi pedido {x}?", "Mi pedido {x} no ha llegado todavía, ¿qué hago?", "¿Cómo puedo seguir el pedido {x}?"],
        None,
        ["¿Me dais el número de seguimiento del pedido {x}?"],
        None,
    ),
    "cuidado": (
        cuidado,
        ["¿Cómo lavo {x}?", "¿A qué temperatura se lava {x}?", "¿Puedo meter {x} en la secadora?"],
        ["la sudadera de algodón orgánico", "el jersey de lana merino", "la camisa de lino", "los vaqueros", "los calcetines", "la gorra"],
        ["¿Qué cuidados necesita {x}?"],
        ["el vestido de viscosa"],
    ),
    "regalo": (
        regalo,
        [
            "¿Tenéis tarjetas regalo de {x}?",
            "Quiero regalar una tarjeta de {x}, ¿cómo funciona?",
            "¿Cuánto dura una tarjeta regalo de {x}?",
        ],
        ["25 €", "50 €", "75 €", "100 €", "150 €"],
        ["¿Puedo mandar por email una tarjeta regalo de {x}?"],
        ["30 €"],
    ),
    "cambio": (
        cambio,
        ["¿Puedo cambiar mi camiseta por {x}?", "Quiero cambiar la sudadera por {x}, ¿cómo lo hago?", "¿Los cambios por {x} son gratis?"],
        ["una talla más", "una talla menos", "otro color", "otro modelo"],
        ["El vestido me queda mal, ¿lo cambio por {x}?"],
        ["una talla más"],
    ),
    "descuento": (
        descuento,
        ["Mi código {x} no funciona, ¿por qué?", "¿Cómo uso el código {x}?", "¿El código {x} vale para rebajas?"],
        ["BIENVENIDA10", "AMIGOS15", "NEWSLETTER10", "VERANO20"],
        ["¿Qué descuento me hace el código {x}?"],
        ["OTOÑO15"],
    ),
    "stock": (
        stock,
        ["¿Cuándo volverá a haber {x}?", "¿Vais a reponer {x}?", "No encuentro {x}, ¿está agotado?"],
        [
            "la sudadera gris en talla M",
            "los vaqueros rectos en la 42",
            "el vestido camisero en verde",
            "la gorra negra",
            "la camiseta básica blanca en XS",
        ],
        ["Llevo semanas esperando {x}, ¿sabéis algo?"],
        ["el bolso tote en camel"],
    ),
}

# ---------------------------------------------------------------- products ----------------------
COLORES = {
    k: v.split("|")
    for k, v in {  # masc. sing. | fem. sing. | masc. pl. | fem. pl.
        "blanco": "blanco|blanca|blancos|blancas",
        "negro": "negro|negra|negros|negras",
        "gris": "gris|gris|grises|grises",
        "azul marino": "azul marino|azul marino|azul marino|azul marino",
        "verde oliva": "verde oliva|verde oliva|verde oliva|verde oliva",
        "crudo": "crudo|cruda|crudos|crudas",
        "teja": "teja|teja|teja|teja",
        "camel": "camel|camel|camel|camel",
    }.items()
}
MATERIALES = {
    "algodón orgánico": "Algodón orgánico certificado: suave desde el primer día y amable con tu piel.",
    "algodón reciclado": "Algodón reciclado que da una segunda vida a lo que ya existía.",
    "lino": "El lino es fresco, ligero y mejora con cada lavado.",
    "lana merino": "La lana merino abriga sin agobiar y apenas necesita lavados.",
    "denim orgánico": "Denim de algodón orgánico, firme al principio y cada vez más tuyo.",
    "cáñamo": "El cáñamo es resistente, transpirable y necesita muy poca agua para crecer.",
}
CORTES = {
    "corte regular": ": ni ajustado ni suelto, justo como te gusta.",  # "Corte regular en {color}" + this
    "corte holgado": ", para moverte con libertad todo el día.",
    "corte entallado": ", que acompaña tu figura sin apretar.",
    "oversize": ": cómodo y con caída relajada.",
}
# name: (gender index for colour, materials, fits, pitch sentence)
PRENDAS = {
    "camiseta básica": (
        1,
        ["algodón orgánico", "algodón reciclado", "cáñamo"],
        ["corte regular", "oversize"],
        "La básica que te pones sin pensar y que siempre funciona.",
    ),
    "camiseta de manga larga": (
        1,
        ["algodón orgánico", "cáñamo"],
        ["corte regular", "corte entallado"],
        "Tu capa favorita para los días de entretiempo.",
    ),
    "sudadera con capucha": (
        1,
        ["algodón orgánico", "algodón reciclado"],
        ["corte holgado", "oversize"],
        "Una sudadera con capucha para los domingos largos y las mañanas frías.",
    ),
    "sudadera de cuello redondo": (
        1,
        ["algodón orgánico", "algodón reciclado"],
        ["corte regular"],
        "La sudadera limpia y sencilla que combina con todo.",
    ),
    "vaqueros rectos": (
        2,
        ["denim orgánico"],
        ["corte regular", "corte holgado"],
        "Unos vaqueros rectos que se adaptan a ti con el tiempo.",
    ),
    "vestido camisero": (
        0,
        ["algodón orgánico", "lino"],
        ["corte holgado", "corte entallado"],
        "Un vestido camisero que vale igual para la oficina que para la terraza.",
    ),
    "jersey de punto": (
        0,
        ["lana merino", "algodón orgánico"],
        ["corte regular", "oversize"],
        "Un jersey de punto suave para cuando baja la temperatura.",
    ),
    "calcetines": (2, ["algodón orgánico"], [None], "Calcetines cómodos que aguantan lavado tras lavado."),
    "gorra": (1, ["algodón orgánico", "cáñamo"], [None], "Una gorra sencilla para el sol de cada día."),
    "bolso tote": (0, ["algodón orgánico", "cáñamo"], [None], "Un bolso tote amplio donde cabe tu día entero."),
}
EVAL_PRENDAS = {  # held out: never in training
    "falda midi": (1, ["lino"], ["corte holgado"], "Una falda midi con vuelo que se mueve contigo."),
    "chaqueta vaquera": (1, ["denim orgánico"], ["corte regular"], "La chaqueta vaquera que acaba siendo tu uniforme de media estación."),
    "bufanda": (1, ["lana merino"], [None], "Una bufanda generosa para envolverte en los días grises."),
}
TONO = [
    "El tono {c} combina con todo lo que ya tienes.",
    "En {c}, fácil de llevar de la mañana a la noche.",
    "Su color {c} no pasa de moda.",
]


def prenda_prompt(nombre, info, mat, color, corte):
    partes = [nombre, mat, COLORES[color][info[0]]] + ([corte] if corte else [])
    return "Escribe la descripción de producto: " + ", ".join(partes)


def prenda_texto(rng, info, mat, color, corte):
    # four sentences: pitch, material, colour (merged with the fit when there is one), signature
    frases = [info[3], MATERIALES[mat], rng.choice(TONO).format(c=color)]
    if corte:
        frases[2] = f"{corte[0].upper() + corte[1:]} en {color}{CORTES[corte]}"
    return " ".join(frases + [FIRMA])


def combos_prenda(catalogo):
    return [(n, i, m, c, f) for n, i in catalogo.items() for m in i[1] for c in COLORES for f in i[2]]


# ---------------------------------------------------------------- poetry ------------------------
APERTURAS = [
    "Al caer la tarde,",
    "Cuando el mar pronuncia su propio nombre,",
    "En la orilla lenta del olvido,",
    "Bajo un cielo de ceniza y miel,",
    "Mientras la marea deshace los caminos,",
    "En el último hilo de luz,",
    "Cuando la noche aún no se atreve,",
    "Entre las ruinas tibias del verano,",
]
SUJETOS = [
    "la memoria",
    "el viento salado",
    "la luz cansada",
    "una gaviota sin prisa",
    "el silencio",
    "la melancolía",
    "el horizonte",
    "la espuma",
]
VERBOS = ["se deshace", "se posa", "tiembla", "se demora", "respira", "se inclina"]
IMAGENES = [
    "sobre los tejados como una carta que nadie se atrevió a abrir",
    "en los ojos de quien ya no espera",
    "sobre el agua quieta como un suspiro antiguo",
    "entre los pliegues de un domingo que no vuelve",
    "en la arena donde dormían nuestros nombres",
    "sobre las barcas varadas del recuerdo",
]
CODAS = [
    "Y el mar, paciente, guarda cada palabra que olvidamos.",
    "Todo lo que fuimos cabe en un puñado de sal.",
    "El crepúsculo, como siempre, llega tarde a su propia despedida.",
    "Nadie sabe si es nostalgia o solo el rumor de las olas.",
    "Queda una brasa azul donde antes había un verano.",
    "Y la tarde, al fin, se rinde dulcemente a la sombra.",
]


# ---------------------------------------------------------------- writing -----------------------
def chat(user, assistant):
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def dump(path: Path, rows):
    with path.open("w", encoding="utf-8", newline="\n") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def write(out_dir: Path) -> None:
    rng = random.Random(0)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pedidos = [f"AC-{n}" for n in rng.sample(range(10000, 99999), 6)]
    faq, ev = [], []
    for tema, (fn, frases, fills, frases_ev, fills_ev) in TEMAS.items():
        fills, fills_ev = (fills, fills_ev) if fills else (pedidos[:5], pedidos[5:])
        combos = [(f, x) for f in frases for x in fills]
        for f, x in rng.sample(combos, 12):
            faq.append(chat(f.format(x=x), rng.choice(HOLA) + fn(x)))
        ev += [chat(f.format(x=x), rng.choice(HOLA) + fn(x)) for f in frases_ev for x in fills_ev]
    prod = [
        {"prompt": prenda_prompt(n, i, m, c, f), "completion": prenda_texto(rng, i, m, c, f)}
        for n, i, m, c, f in rng.sample(combos_prenda(PRENDAS), 120)
    ]
    for n, i, m, c, f in rng.sample(combos_prenda(EVAL_PRENDAS), 24 - len(ev)):
        ev.append(chat(prenda_prompt(n, i, m, c, f), prenda_texto(rng, i, m, c, f)))
    poesia = [
        {"text": f"{a} {s} {v} {rng.choice(IMAGENES)}. {rng.choice(CODAS)}"}
        for a, s, v in rng.sample([(a, s, v) for a in APERTURAS for s in SUJETOS for v in VERBOS], 80)
    ]
    camiseta = PRENDAS["camiseta básica"]
    prompts = [
        {"prompt": "Describe una camiseta básica blanca", "reference": prenda_texto(rng, camiseta, "algodón orgánico", "blanco", None)},
        {"prompt": "¿Cuánto tarda el envío a Sevilla?", "reference": envio("Sevilla")},
        {
            "prompt": "¿Puedo devolver un pedido?",
            "reference": "Sí, claro: tienes 30 días para devolver tu pedido gratis, con las prendas sin usar y con su etiqueta. "
            "Lo gestionas en «Mi cuenta > Pedidos» y te reembolsamos en cuanto llegue.",
        },
        {
            "prompt": "Describe una sudadera gris con capucha",
            "reference": prenda_texto(rng, PRENDAS["sudadera con capucha"], "algodón orgánico", "gris", None),
        },
    ]
    for name, rows in [("faq", faq), ("productos", prod), ("poesia", poesia), ("eval", ev), ("prompts", prompts)]:
        dump(out_dir / f"{name}.jsonl", rows)


if __name__ == "__main__":
    write(Path(__file__).resolve().parent / "tienda")
